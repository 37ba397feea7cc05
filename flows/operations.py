"""Operating tidegate through a Prefect server: the ``gate``, ``deployments``, ``blocks``,
``automations`` and ``worker`` subcommands, and the flow hooks that clean up after a failed run.

Invariants:

- Every command talks to the server named by ``PREFECT_API_URL`` (environment or Prefect
  profile) and refuses to run against Prefect's throw-away ephemeral API: a deployment
  registered there would vanish with the process.
- ``tidegate gate`` never hangs and never passes silently: it waits at most ``--timeout``
  seconds (and ``--start-timeout`` for a worker to pick the run up), cancels a run it gave up
  on, and maps the final state to 0 (Completed), 1 (the gate or a stage failed) or 2 (anything
  else: bad parameters, unreachable cluster, Crashed, Cancelled, no worker, timeout).
- Secret values are read from the environment and written to a Secret block; they are never
  printed, logged or put in an event.

Example (CI)::

    tidegate gate --deployment release-gate --param image=registry/vllm:0.7 \\
        --junit junit.xml --timeout 3600
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import secrets as _secrets
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import CredentialsError, SpecError, TidegateError

FLOW_NAME = "elastic-rollout-validation"
FAILED_EVENT = "tidegate.run.failed"
DEFAULT_BLOCK = "tidegate-oss"
AUTOMATION_FILE = Path(__file__).resolve().parent.parent / "automations" / "notify-on-failed-gate.yaml"
_EXC_IN_MESSAGE = re.compile(r"encountered an exception:\s*([A-Za-z_][A-Za-z0-9_.]*)(?::|\(|$)")


class PrefectApiError(TidegateError, ConnectionError):
    """The Prefect API is not configured, unreachable, or refused a request."""


# -- the Prefect API ---------------------------------------------------------------------------
def api_url() -> str:
    """The configured PREFECT_API_URL, or a PrefectApiError that says how to set one."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise PrefectApiError(
            "PREFECT_API_URL is not set: deployments, workers and gates need a Prefect server",
            hint="start one with `prefect server start` and run "
                 "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return str(url)


@contextlib.contextmanager
def client():
    """A synchronous Prefect client for the configured server, checked to answer."""
    from prefect import get_client

    url = api_url()
    with get_client(sync_client=True) as c:
        exc = c.api_healthcheck()
        if exc is not None:
            raise PrefectApiError(f"Prefect API {url} is unreachable ({type(exc).__name__})",
                                  hint="is `prefect server start` running?")
        yield c


def ensure_work_pool(c, name: str, pool_type: str = "process", base_job_template: dict | None = None):
    """The work pool ``name``, created with ``pool_type`` when missing."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        return c.read_work_pool(name)
    except ObjectNotFound:
        pass
    create = WorkPoolCreate(name=name, type=pool_type, **({"base_job_template": base_job_template}
                                                           if base_job_template else {}))
    c.create_work_pool(create)
    return c.read_work_pool(name)


def online_workers(c, pool: str) -> list[str]:
    from prefect.client.schemas.objects import WorkerStatus

    try:
        workers = c.read_workers_for_work_pool(pool)
    except Exception:  # noqa: BLE001 - a missing pool has no workers
        return []
    return [w.name for w in workers if w.status == WorkerStatus.ONLINE]


# -- deployments register ----------------------------------------------------------------------
def register_deployments(settings=None) -> list[tuple[str, str, str]]:
    """Create or update nightly, manual and release-gate; return (name, id, schedule) rows."""
    from flows.deployments import DeploymentSettings, build_deployments

    s = settings or DeploymentSettings()
    with client() as c:
        ensure_work_pool(c, s.work_pool, "process")
    rows = []
    for d in build_deployments(s):
        dep_id = d.apply(work_pool_name=s.work_pool)
        sched = ", ".join(f"cron '{sc.schedule.cron}' {sc.schedule.timezone}" for sc in d.schedules or []) or "-"
        rows.append((f"{FLOW_NAME}/{d.name}", str(dep_id), sched))
    return rows


def cmd_deployments(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.deployments import DeploymentSettings

    overrides = {k: v for k, v in dict(work_pool=args.work_pool, nightly_spec=args.spec,
                                       nightly_cron=args.cron, nightly_timezone=args.timezone,
                                       release_spec=args.release_spec).items() if v is not None}
    if args.paused:
        overrides["nightly_paused"] = True
    try:
        settings = DeploymentSettings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(f"deployments: {'.'.join(map(str, err['loc']))}: "
                        f"{err['msg'].removeprefix('Value error, ')}") from None
    rows = register_deployments(settings)
    print(f"tidegate: registered {len(rows)} deployments on work pool {settings.work_pool!r} "
          f"at {api_url()}")
    for name, dep_id, sched in rows:
        print(f"  {name:<45} {dep_id}  schedule: {sched}")
    print(f"start a worker with `tidegate worker --pool {settings.work_pool}`")
    return 0


# -- gate ------------------------------------------------------------------------------------
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
        verdict = {0: "PASS", 1: "FAIL"}.get(self.exit_code, "ERROR")
        msg = f": {self.message}" if self.message else ""
        return (f"{verdict} {self.deployment} run {self.flow_run_name} ended {self.state_name} "
                f"after {self.seconds:.1f}s{msg}")


def exit_code_for_state(state_type: str, message: str | None) -> int:
    """0 Completed; 1 when the flow failed with GateFailed/StageFailed; 2 for everything else."""
    if state_type == "COMPLETED":
        return 0
    if state_type != "FAILED":
        return 2
    m = _EXC_IN_MESSAGE.search(message or "")
    if not m:
        return 2
    from tasks import errors

    cls = getattr(errors, m.group(1).rsplit(".", 1)[-1], None)
    if isinstance(cls, type) and issubclass(cls, errors.TidegateError):
        return cls.exit_code
    return 2


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
    return 1 if report.get("verdict") == "fail" else code


def junit_from_result(result: GateResult, ui_url: str | None = None) -> str:
    """A one-case JUnit document for a run that wrote no report (or whose report is elsewhere)."""
    suites = ET.Element("testsuites")
    failures = "1" if result.exit_code == 1 else "0"
    errors = "1" if result.exit_code not in (0, 1) else "0"
    suite = ET.SubElement(suites, "testsuite", name=f"tidegate.gate.{result.deployment}", tests="1",
                          failures=failures, errors=errors, skipped="0",
                          timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    case = ET.SubElement(suite, "testcase", classname="tidegate.gate", name=result.deployment,
                         time=f"{result.seconds:.3f}")
    message = f"{result.state_name}: {result.message}" if result.message else result.state_name
    if result.exit_code == 1:
        ET.SubElement(case, "failure", message=message, type=result.state_type)
    elif result.exit_code != 0:
        ET.SubElement(case, "error", message=message, type=result.state_type)
    out = ET.SubElement(case, "system-out")
    link = f"\n{ui_url.rstrip('/')}/runs/flow-run/{result.flow_run_id}" if ui_url else ""
    out.text = (f"flow run {result.flow_run_name} ({result.flow_run_id}) ended {result.state_name}"
                f"{'; run id ' + result.run_id if result.run_id else ''}{link}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


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


# -- blocks create -----------------------------------------------------------------------------
def create_oss_secret_block(name: str, key_id_env: str, key_secret_env: str, *, overwrite: bool) -> None:
    """Save ``{"access_key_id", "access_key_secret"}`` from the environment as Secret block
    ``name`` (the shape ``OssCredentials.resolve`` reads). Never echoes a value."""
    from prefect.blocks.system import Secret

    missing = [n for n in (key_id_env, key_secret_env) if not os.environ.get(n)]
    if missing:
        raise CredentialsError(f"blocks create: environment variable(s) {', '.join(missing)} not set",
                               hint="export them, or name others with --access-key-id-env/--access-key-secret-env")
    api_url()
    with client():
        pass
    value = {"access_key_id": os.environ[key_id_env], "access_key_secret": os.environ[key_secret_env]}
    try:
        Secret(value=value).save(name, overwrite=overwrite)
    except ValueError as exc:
        if "already" in str(exc).lower():
            raise PrefectApiError(f"blocks create: Secret block {name!r} already exists",
                                  hint="pass --overwrite to replace it") from None
        raise PrefectApiError(f"blocks create: could not save Secret block {name!r} "
                              f"({type(exc).__name__})") from None


def cmd_blocks(args: argparse.Namespace) -> int:
    from tasks.spec import OssCredentials, load_spec

    creds = load_spec(args.spec, args.set or []).storage.oss.credentials if args.spec else OssCredentials()
    key_id_env = args.access_key_id_env or creds.access_key_id_env
    key_secret_env = args.access_key_secret_env or creds.access_key_secret_env
    name = args.name or creds.secret_block or DEFAULT_BLOCK
    create_oss_secret_block(name, key_id_env, key_secret_env, overwrite=args.overwrite)
    print(f"tidegate: saved Prefect Secret block {name!r} from ${key_id_env} and ${key_secret_env} "
          f"(values not shown); use it with storage.oss.credentials.secret_block: {name}")
    return 0


# -- automations create ------------------------------------------------------------------------
def create_automation(notify_block: str, path: Path = AUTOMATION_FILE) -> str:
    """Create (or replace, by name) the automation in ``path``, sending notifications through
    the block ``<block-type-slug>/<name>``, e.g. ``slack-webhook/ops``. Returns its id."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore
    from prefect.exceptions import ObjectNotFound

    slug, sep, block_name = notify_block.partition("/")
    if not sep or not slug or not block_name:
        raise SpecError(f"--notify-block {notify_block!r}: expected <block-type-slug>/<name>, "
                        f"e.g. slack-webhook/ops-alerts")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"automation {path}: cannot read: {exc}") from None
    with client() as c:
        try:
            block = c.read_block_document_by_name(block_name, slug, include_secrets=False)
        except ObjectNotFound:
            raise PrefectApiError(f"no {slug} block named {block_name!r}",
                                  hint="create it in the UI (Blocks) or with Python first") from None
        for action in data.get("actions", []):
            if action.get("type") == "send-notification":
                action["block_document_id"] = str(block.id)
        automation = AutomationCore.model_validate(data)
        for old in c.read_automations_by_name(automation.name):
            c.delete_automation(old.id)
        return str(c.create_automation(automation))


def cmd_automations(args: argparse.Namespace) -> int:
    auto_id = create_automation(args.notify_block, Path(args.file))
    print(f"tidegate: automation from {args.file} created ({auto_id}); notifications go to {args.notify_block}")
    return 0


# -- worker ------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    """Ensure the process pool exists, then become ``prefect worker start`` (signals included)."""
    with client() as c:
        ensure_work_pool(c, args.pool, "process")
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", args.pool, "--type", "process"]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    if args.name:
        argv += ["--name", args.name]
    print(f"tidegate: starting a process worker for pool {args.pool!r} at {api_url()}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - execv does not return


# -- flow hooks --------------------------------------------------------------------------------
def outcome_for_state(state_type: str, message: str | None) -> str:
    """gate-failed | stage-failed | error | crashed | cancelled: the event's tidegate.outcome."""
    if state_type == "CRASHED":
        return "crashed"
    if state_type in ("CANCELLED", "CANCELLING"):
        return "cancelled"
    m = _EXC_IN_MESSAGE.search(message or "")
    name = m.group(1).rsplit(".", 1)[-1] if m else ""
    return {"GateFailed": "gate-failed", "StageFailed": "stage-failed"}.get(name, "error")


def _spec_from_parameters(params: dict[str, Any]):
    """The spec a run validated, rebuilt from its parameters (either flow's), or None."""
    try:
        if "spec_path" in params or params.get("spec") is None:
            from flows.deployments import release_spec

            return release_spec(params.get("spec_path") or "", params.get("image"), params.get("model_source"),
                                params.get("overrides"), params.get("spec"))
        from tasks.spec import spec_from_dict

        return spec_from_dict(params["spec"], "<flow run parameters>")
    except Exception:  # noqa: BLE001 - the hook works without it (no teardown)
        return None


def _nothing_created(run_id: str) -> bool:
    from tasks.report import reports_root

    try:
        stages = json.loads((reports_root() / run_id / "report.json").read_text()).get("stages", {})
    except (OSError, ValueError):
        return False
    if stages.get("teardown", {}).get("status") == "passed":
        return True
    return all(stages.get(s, {}).get("status") in ("skipped", "not_run", None) for s in ("prepare", "deploy"))


def teardown_run(spec, run_id: str) -> str:
    """Delete what run ``run_id`` labelled in the spec's namespace (bounded by its timeout)."""
    from flows.validation import resolve_profile
    from tasks.cluster import teardown
    from tasks.kube import Kube

    kube = Kube.connect(kubeconfig=resolve_profile(spec), context=spec.cluster.context,
                        in_cluster=spec.cluster.in_cluster)
    kube.ping()
    deleted = teardown(kube, run_id, [spec.cluster.namespace], timeout_s=spec.teardown.timeout_s)
    return f"deleted {len(deleted)} objects of run {run_id}"


def _after_failure(flow, flow_run, state, kind: str) -> None:
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run)
    params = dict(flow_run.parameters or {})
    run_id = params.get("run_id")
    spec = _spec_from_parameters(params)
    if not run_id and spec is not None:
        from flows.validation import run_id_for_flow_run

        run_id = run_id_for_flow_run(spec.name, flow_run.id)
    teardown_note = "skipped"
    if run_id and spec is not None and spec.teardown.policy == "always" and not _nothing_created(run_id):
        try:
            teardown_note = teardown_run(spec, run_id)
            logger.info("%s hook: %s", kind, teardown_note)
        except Exception as exc:  # noqa: BLE001 - a hook must never mask the run's own failure
            teardown_note = f"failed: {type(exc).__name__}"
            one = exc.one_line() if isinstance(exc, TidegateError) else str(exc).splitlines()[0] if str(exc) else ""
            logger.warning("%s hook: teardown of run %s failed (%s); run `tidegate cleanup --run-id %s` "
                           "when the cluster is reachable", kind, run_id, one, run_id)
    elif not run_id:
        logger.info("%s hook: no run_id parameter, teardown left to the flow (`tidegate cleanup --run-id ...`)", kind)
    emit_failed_event(flow_run, state, run_id=run_id, spec_name=spec.name if spec else None,
                      teardown=teardown_note)


def emit_failed_event(flow_run, state, *, run_id: str | None, spec_name: str | None, teardown: str) -> None:
    """Emit ``tidegate.run.failed`` for automations (resource ``tidegate.run.<run id>``)."""
    from prefect.events import emit_event

    from tasks.report import redact, secret_values

    stype = state.type.value if state is not None else "FAILED"
    message = redact(" ".join((state.message or "").split())[:500], secret_values()) if state is not None else ""
    outcome = outcome_for_state(stype, message)
    deployment = ""
    try:
        from prefect.runtime import deployment as rt_deployment

        deployment = rt_deployment.name or ""
    except Exception:  # noqa: BLE001
        pass
    emit_event(
        event=FAILED_EVENT,
        resource={"prefect.resource.id": f"tidegate.run.{run_id or flow_run.id}",
                  "prefect.resource.name": run_id or flow_run.name,
                  "tidegate.outcome": outcome,
                  "tidegate.spec": spec_name or "",
                  "tidegate.deployment": deployment},
        related=[{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                  "prefect.resource.role": "flow-run", "prefect.resource.name": flow_run.name}],
        payload={"state": stype, "message": message, "outcome": outcome,
                 "exit_code": exit_code_for_state(stype, message) if stype != "CRASHED" else 2,
                 "run_id": run_id, "teardown": teardown},
    )


def on_failure(flow, flow_run, state) -> None:
    """Flow ``on_failure`` hook: tear down by run id (policy always) and emit the event."""
    _after_failure(flow, flow_run, state, "on_failure")


def on_crashed(flow, flow_run, state) -> None:
    """Flow ``on_crashed`` hook: same as on_failure for a run whose process died."""
    _after_failure(flow, flow_run, state, "on_crashed")


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

    dp = sub.add_parser("deployments", help="Prefect deployments of the flow (nightly, manual, release-gate)")
    dsub = dp.add_subparsers(dest="action", required=True)
    r = dsub.add_parser("register", help="create or update the deployments on PREFECT_API_URL")
    r.add_argument("--work-pool", help="work pool (created as a process pool if missing; "
                                       "default $TIDEGATE_WORK_POOL or tidegate-local)")
    r.add_argument("--spec", help="nightly spec: default parameters of nightly and manual "
                                  "(default $TIDEGATE_NIGHTLY_SPEC or examples/qwen-chat.local.yaml)")
    r.add_argument("--cron", help="nightly cron (default $TIDEGATE_NIGHTLY_CRON or '0 2 * * *')")
    r.add_argument("--timezone", help="IANA time zone of the cron (default $TIDEGATE_NIGHTLY_TIMEZONE or UTC)")
    r.add_argument("--release-spec", help="default spec_path of release-gate")
    r.add_argument("--paused", action="store_true", help="register the nightly schedule paused")
    r.set_defaults(func=cmd_deployments)

    bp = sub.add_parser("blocks", help="Prefect blocks tidegate uses")
    bsub = bp.add_subparsers(dest="action", required=True)
    c = bsub.add_parser("create", help="Secret block with the OSS keys from the environment (never echoed)")
    c.add_argument("--spec", help="take the env variable names (and block name) from this spec")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    c.add_argument("--name", help=f"block name (default the spec's secret_block or {DEFAULT_BLOCK})")
    c.add_argument("--access-key-id-env", help="env variable holding the AccessKey ID")
    c.add_argument("--access-key-secret-env", help="env variable holding the AccessKey secret")
    c.add_argument("--overwrite", action="store_true", help="replace an existing block")
    c.set_defaults(func=cmd_blocks)

    ap = sub.add_parser("automations", help="Prefect automations (notification on a failed run)")
    asub = ap.add_subparsers(dest="action", required=True)
    a = asub.add_parser("create", help="create the automation of automations/notify-on-failed-gate.yaml")
    a.add_argument("--notify-block", required=True, metavar="SLUG/NAME",
                   help="notification block, e.g. slack-webhook/ops-alerts")
    a.add_argument("--file", default=str(AUTOMATION_FILE), help=argparse.SUPPRESS)
    a.set_defaults(func=cmd_automations)

    w = sub.add_parser("worker", help="start a Prefect process worker (wraps `prefect worker start`)")
    w.add_argument("--pool", default=os.environ.get("TIDEGATE_WORK_POOL", "tidegate-local"),
                   help="work pool (created as a process pool if missing; default tidegate-local)")
    w.add_argument("--limit", type=int, help="at most this many concurrent flow runs")
    w.add_argument("--name", help="worker name")
    w.set_defaults(func=cmd_worker)
