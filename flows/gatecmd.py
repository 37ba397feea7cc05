"""``tidegate gate``: trigger a deployment run on the Prefect server, wait for it, map its final
state to an exit code and write JUnit for the CI system.

Invariants:

- ``tidegate gate`` never hangs and never passes silently: it waits at most ``--timeout``
  seconds (and ``--start-timeout`` for a worker to pick the run up), cancels a run it gave up
  on, and maps the final state to 0 (Completed), 1 (the gate or a stage failed) or 2 (anything
  else: bad parameters, unreachable cluster, Crashed, Cancelled, no worker, timeout).
- Like every Prefect command it refuses to run without a configured ``PREFECT_API_URL``
  (flows/prefect_admin.py).

Example (CI)::

    tidegate gate --deployment release-gate --param image=registry/vllm:0.7 \\
        --junit junit.xml --timeout 3600
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets as _secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.outcomes import exit_code_for_state
from flows.prefect_admin import PrefectApiError, api_url, client, online_workers
from tasks.errors import SpecError

FLOW_NAME = "elastic-rollout-validation"


@dataclass
class GateResult:
    """The outcome of one triggered deployment run, as CI sees it."""

    deployment: str
    flow_run_id: str
    flow_run_name: str
    state_type: str          # COMPLETED, FAILED, CRASHED, CANCELLED, ... or TIMEOUT / NOT_STARTED
    state_name: str
    message: str
    exit_code: int
    seconds: float
    run_id: str | None
    report_junit: Path | None

    def one_line(self) -> str:
        verdict = {0: "PASS", 1: "FAIL", 3: "INCONCLUSIVE"}.get(self.exit_code, "ERROR")
        msg = f": {self.message}" if self.message else ""
        return (f"{verdict} {self.deployment} run {self.flow_run_name} ended {self.state_name} "
                f"after {self.seconds:.1f}s{msg}")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; v is JSON when it parses as JSON, else the string (as `prefect deployment
    run --param` does)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--param {item[:80]!r}: expected name=value")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _short_detail(exc: Exception) -> str:
    resp = getattr(exc, "response", None)
    if resp is not None:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text
        return " ".join(str(detail).split())[:400]
    return str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__


def _cancel(c, flow_run_id, running: bool, message: str) -> None:
    from prefect.states import Cancelled, Cancelling

    try:
        c.set_flow_run_state(flow_run_id, (Cancelling if running else Cancelled)(message=message), force=True)
    except Exception:  # noqa: BLE001 - best effort; the message already says what happened
        pass


def run_gate(deployment: str, params: dict[str, Any], *, timeout_s: float = 3600,
             start_timeout_s: float = 120, poll_s: float = 2.0, log=None) -> GateResult:
    """Trigger ``deployment``, wait for a terminal state (bounded), return the GateResult."""
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    from tasks.report import reports_root

    log = log or (lambda m: print(f"tidegate gate: {m}", file=sys.stderr, flush=True))
    name = deployment if "/" in deployment else f"{FLOW_NAME}/{deployment}"
    with client() as c:
        try:
            dep = c.read_deployment_by_name(name)
        except ObjectNotFound:
            raise PrefectApiError(f"no deployment {name!r} on {api_url()}",
                                  hint="register them with `tidegate deployments register`") from None
        accepted = set((dep.parameter_openapi_schema or {}).get("properties", {}))
        params = dict(params)
        if "run_id" in accepted and not params.get("run_id"):
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
            params["run_id"] = f"gate-{dep.name}-{stamp}-{_secrets.token_hex(2)}"[:63]
        unknown = sorted(set(params) - accepted) if accepted else []
        if unknown:
            raise SpecError(f"--param {', '.join(unknown)}: not a parameter of {name} "
                            f"(parameters: {', '.join(sorted(accepted))})")
        pool = dep.work_pool_name
        if pool and not online_workers(c, pool):
            log(f"no worker is online for work pool {pool!r}; start one with `tidegate worker --pool {pool}` "
                f"(waiting up to {start_timeout_s:.0f}s for one to pick the run up)")
        try:
            fr = c.create_flow_run_from_deployment(dep.id, parameters=params, tags=["tidegate-gate"])
        except PrefectHTTPStatusError as exc:
            status = exc.response.status_code
            if status in (409, 422):
                raise SpecError(f"{name}: parameters refused by the deployment's schema: "
                                f"{_short_detail(exc)}") from None
            raise PrefectApiError(f"{name}: could not create a run (HTTP {status}): {_short_detail(exc)}") from None
        log(f"triggered {name} run {fr.name} ({fr.id}); waiting up to {timeout_s:.0f}s")
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        start_deadline = t0 + min(start_timeout_s, timeout_s)
        last = None
        started = False
        while True:
            fr = c.read_flow_run(fr.id)
            st = fr.state
            if st is not None and st.name != last:
                log(f"{fr.name}: {st.name}" + (f" ({st.message})" if st.message and st.is_final() else ""))
                last = st.name
            if st is not None and st.type.value not in ("SCHEDULED",):
                started = True
            if st is not None and st.is_final():
                stype, sname, message = st.type.value, st.name, st.message or ""
                code = exit_code_for_state(stype, message)
                break
            now = time.monotonic()
            if not started and now >= start_deadline:
                msg = (f"no worker picked the run up within {min(start_timeout_s, timeout_s):.0f}s "
                       f"(work pool {pool!r}, online workers: {', '.join(online_workers(c, pool)) or 'none'}); "
                       f"cancelled it; start one with `tidegate worker --pool {pool}`")
                _cancel(c, fr.id, False, msg)
                stype, sname, message, code = "NOT_STARTED", "NotStarted", msg, 2
                break
            if now >= deadline:
                msg = f"run did not finish within {timeout_s:.0f}s; cancelled it"
                _cancel(c, fr.id, st is not None and st.is_running(), msg)
                stype, sname, message, code = "TIMEOUT", "TimedOut", msg, 2
                break
            time.sleep(min(poll_s, max(0.05, deadline - now)))
    run_id = params.get("run_id")
    junit = reports_root() / run_id / "junit.xml" if run_id else None
    if junit is not None and code == 1 and stype == "FAILED":
        code = _report_exit_code(junit.parent / "report.json", code)
    return GateResult(deployment=name, flow_run_id=str(fr.id), flow_run_name=fr.name, state_type=stype,
                      state_name=sname, message=" ".join(message.split()), exit_code=code,
                      seconds=round(time.monotonic() - t0, 2), run_id=run_id,
                      report_junit=junit if junit is not None and junit.is_file() else None)


def _report_exit_code(report_json: Path, code: int) -> int:
    """The report's verdict confirms a gate failure; it never turns an error into a pass."""
    try:
        report = json.loads(report_json.read_text())
    except (OSError, ValueError):
        return code
    if report.get("verdict") == "fail":
        return 1
    return 3 if report.get("verdict") == "inconclusive" and code == 0 else code


def junit_from_result(result: GateResult, ui_url: str | None = None) -> str:
    """A one-case JUnit document for a run that wrote no report (or whose report is elsewhere)."""
    from tasks.report import JUnitCase, junit_document

    message = f"{result.state_name}: {result.message}" if result.message else result.state_name
    outcome = "passed" if result.exit_code == 0 else "failure" if result.exit_code == 1 else "error"
    link = f"\n{ui_url.rstrip('/')}/runs/flow-run/{result.flow_run_id}" if ui_url else ""
    case = JUnitCase("tidegate.gate", result.deployment, result.seconds, outcome,
                     message if outcome != "passed" else "", result.state_type,
                     output=(f"flow run {result.flow_run_name} ({result.flow_run_id}) ended {result.state_name}"
                             f"{'; run id ' + result.run_id if result.run_id else ''}{link}"))
    return junit_document(f"tidegate.gate.{result.deployment}", [case],
                          dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def write_junit(result: GateResult, path: Path) -> str:
    """Write the run's own junit.xml when it wrote one, else the one-case document; return which."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if result.report_junit is not None:
        path.write_bytes(result.report_junit.read_bytes())
        return f"report {result.report_junit}"
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    path.write_text(junit_from_result(result, str(ui) if ui else None))
    return "flow run state"


def cmd_gate(args: argparse.Namespace) -> int:
    params = parse_params(args.param or [])
    result = run_gate(args.deployment, params, timeout_s=args.timeout, start_timeout_s=args.start_timeout,
                      poll_s=args.poll)
    if args.junit:
        source = write_junit(result, Path(args.junit))
        print(f"tidegate gate: JUnit {args.junit} (from {source})", file=sys.stderr)
    print(f"tidegate: {result.one_line()}")
    return result.exit_code


# -- argparse ----------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gate", help="trigger a Prefect deployment run, wait, map its state to 0/1/2, write JUnit")
    p.add_argument("--deployment", required=True,
                   help="deployment name (release-gate) or flow/deployment")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="run parameter (VALUE parsed as JSON if it is JSON), e.g. image=repo/vllm:0.7")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML file for the CI system")
    p.add_argument("--timeout", type=float, default=3600, metavar="S",
                   help="give up (and cancel the run) after S seconds (default 3600)")
    p.add_argument("--start-timeout", type=float, default=120, metavar="S",
                   help="give up when no worker picked the run up within S seconds (default 120)")
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_gate)
