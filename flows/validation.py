"""The Prefect flow ``elastic-rollout-validation``: RolloutSpec in, report and verdict out.

The stages are ``tasks.stages.STAGES``, run in chain order (data moves one way); ``stages``
selects a subset. Each runs as a Prefect task over its plain function. The report is always
written, and ``teardown`` runs at the end whenever it is selected and the teardown policy allows
it, also after a failure, so a half-finished run leaves nothing behind.

Outcome: the flow returns a ``RunOutcome`` when every selected stage passed and the gate did
not fail; otherwise it raises the error that decided the exit code (GateFailed / StageFailed
-> 1, anything else -> 2), after the report is written.

Cancellation (SIGTERM): the stages run within ``tasks.cancel.deferring()``, also under Prefect,
whose own SIGTERM bridge it replaces for their length: the signal is recorded, the running
stage stops at its next checkpoint (``Terminated``, the stage's status ``error``,
"interrupted"), the next stage does not start, teardown runs to its end, the report is written.
The flow then re-raises it as Prefect's ``TerminationSignal``, so that Prefect ends the flow run
as it ends one it terminated itself (Crashed; Cancelled when its runner asked for a cancel).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE as NO_CACHE

from flows import clusterlock
from flows.hooks import on_crashed, on_failure
from flows.runid import check_run_id, new_run_id, run_id_for_flow_run
from tasks import cancel
from tasks import report as reporting
from tasks.context import RunContext
from tasks.errors import GateFailed, RunInconclusive, StageFailed, TidegateError
from tasks.gate import inconclusive_reasons, verdict
from tasks.names import FLOW_NAME
from tasks.ownership import Ledger, parse_adopt
from tasks.profile import resolve_profile
from tasks.realism import read_testbed_realism, realism_block
from tasks.report_model import OwnedBlock, RealismBlock, RunReport, StageRecord
from tasks.spec import RolloutSpec
from tasks.stages import BY_NAME, STAGES, check_inputs, normalize_stages

log = logging.getLogger("tidegate")


@dataclass
class RunOutcome:
    run_id: str
    verdict: str
    report_dir: str
    exit_code: int


def _run_stage(ctx: RunContext, name: str) -> None:
    rec = ctx.report.stages.setdefault(name, StageRecord(status="not_run"))
    rec.status = "running"
    t0 = time.monotonic()
    try:
        rec.detail = BY_NAME[name].run(ctx) or ""
        rec.status = "passed"
    except (StageFailed, GateFailed) as exc:
        rec.status = "failed"
        rec.detail = exc.one_line()
        raise
    except TidegateError as exc:
        rec.status = "error"
        rec.detail = exc.one_line()
        raise
    except Exception as exc:
        rec.status = "error"
        rec.detail = f"{type(exc).__name__}: {exc}"
        log.error("stage %s crashed:\n%s", name, traceback.format_exc())
        raise
    except BaseException as exc:  # SIGTERM / Ctrl-C: the report says where the run was stopped
        rec.status = "error"
        rec.detail = f"interrupted ({type(exc).__name__} {exc})".replace(" )", ")")
        raise
    finally:
        rec.seconds = round(time.monotonic() - t0, 2)
        log.info("stage %s: %s (%.1fs) %s", name, rec.status, rec.seconds, rec.detail)


@task(name="stage", cache_policy=NO_CACHE, retries=0)
def _stage_task(ctx: RunContext, name: str):
    """Expected failures end the task run Failed with their one-line message (no traceback in
    the run's logs); the exception itself is kept on the context for the flow to re-raise."""
    from prefect.states import Failed

    try:
        _run_stage(ctx, name)
    except TidegateError as exc:
        ctx.failure = exc
        return Failed(message=reporting.redact(exc.one_line(), reporting.secret_values(ctx.secrets)))
    return None


def _call_stage(ctx: RunContext, name: str, use_prefect: bool) -> None:
    if not use_prefect:
        _run_stage(ctx, name)
        return
    ctx.failure = None
    state = _stage_task.with_options(name=BY_NAME[name].task_name)(ctx, name, return_state=True)
    if ctx.failure is not None:
        raise ctx.failure
    if state.is_failed() or state.is_crashed() or state.is_cancelled():
        state.result()  # re-raises the unexpected exception (a bug) with its traceback
        raise StageFailed(f"stage {name}: {state.message}")


def execute(spec: RolloutSpec, stages: list[str], run_id: str, *, use_prefect: bool = True,
            adopt: list[str] | None = None) -> RunOutcome:
    """Run the selected stages; always write the report; decide the outcome."""
    check_run_id(run_id)  # it becomes a path (reports/<run id>/) and a label
    check_inputs(spec, stages)  # a bad load shape or model source is refused before anything runs
    adopted = parse_adopt(adopt)
    report = RunReport(run_id=run_id, spec=spec.name, profile=spec.profile, started_at=reporting.now_iso(),
                       image=spec.service.image, commit=_commit())
    ctx = RunContext(spec=spec, run_id=run_id, report=report, profile=resolve_profile(spec),
                     ledger=Ledger.open(reporting.reports_root() / run_id), adopt=adopted)
    with reporting.redacting_logs(ctx.secrets), cancel.deferring():  # secrets are redacted from its logs
        return _run(ctx, stages, use_prefect)


def _run(ctx: RunContext, stages: list[str], use_prefect: bool) -> RunOutcome:
    spec, report, run_id = ctx.spec, ctx.report, ctx.run_id
    for s in STAGES:
        report.stages[s.name] = StageRecord(status="skipped" if s.name not in stages else "not_run",
                                            detail="not selected" if s.name not in stages else "")
    failure: BaseException | None = None
    body = [s for s in stages if s != "teardown"]
    try:
        for name in body:
            cancel.check()  # SIGTERM between two stages: the next one does not start
            _call_stage(ctx, name, use_prefect)
    except BaseException as exc:  # noqa: BLE001 - recorded, teardown still runs, then re-raised
        failure = exc
        for name in body:
            if report.stages[name].status == "not_run":
                report.stages[name].detail = "an earlier stage failed"
    policy = spec.teardown.policy
    created_anything = any(report.stages[s.name].status != "skipped" for s in STAGES if s.creates_objects)
    want_teardown = ("teardown" in stages or (failure is not None and created_anything)) and (
        policy == "always" or (policy == "on_success" and failure is None))
    if want_teardown and created_anything:
        try:
            _call_stage(ctx, "teardown", use_prefect)
        except BaseException as exc:  # noqa: BLE001
            failure = failure or exc
    elif "teardown" in stages:
        report.stages["teardown"] = StageRecord(
            status="skipped", detail=f"teardown policy {policy}" if created_anything else "nothing was created")
    report.finished_at = reporting.now_iso()
    report.realism = _realism(ctx)
    report.objects = [OwnedBlock.model_validate(e.block()) for e in ctx.ledger.entries]
    report.adopt = sorted(ctx.adopt)
    gate_ran = report.stages["gate"].status in ("passed", "failed")
    gaps = evidence_gaps(ctx)
    report.verdict = verdict(ctx.gate, failed=failure is not None, gate_ran=gate_ran, evidence_gaps=gaps)
    if report.verdict == "inconclusive":
        report.inconclusive_reasons = inconclusive_reasons(ctx.gate, gate_ran=gate_ran, evidence_gaps=gaps)
    report.fill_definitions()
    html_doc = reporting.render_html(report, load=ctx.load, timeline=ctx.timeline, spec=spec, cost=ctx.cost,
                                     history=ctx.history)
    out_dir = reporting.write(report, secrets=ctx.secrets, tables=ctx.tables(), html_doc=html_doc)
    _publish_artifacts(report, out_dir, use_prefect, ctx.secrets)
    _publish_run(spec, out_dir)
    if failure is not None:
        raise failure
    if report.verdict == "fail":
        bad = [r.rule for r in report.gate if r.status == "fail"]
        raise GateFailed(f"gate failed: {', '.join(bad)} (report {out_dir / 'report.html'})")
    if report.verdict == "inconclusive":
        raise RunInconclusive(f"inconclusive: {'; '.join(report.inconclusive_reasons)} "
                              f"(report {out_dir / 'report.html'})")
    return RunOutcome(run_id, report.verdict, str(out_dir), 0)


def _realism(ctx: RunContext) -> RealismBlock | None:
    """The timings the run's cluster assumed: the test bed's realism profile (its realism.json beside
    the kubeconfig), else ``none (real cluster)``; never the verdict's business."""
    try:
        doc, source = read_testbed_realism(ctx.profile.kubeconfig)
        return realism_block(doc, ctx.report.elasticity, source=source, phases=ctx.report.phases,
                             spec_stabilization_s=ctx.spec.service.hpa_scale_down_stabilization_s)
    except Exception as exc:  # noqa: BLE001 - a realism block must never cost the report
        ctx.report.warnings = [*ctx.report.warnings, f"realism block failed: {type(exc).__name__}: {exc}"]
        return None


def evidence_gaps(ctx: RunContext) -> list[str]:
    """What this run's evidence lacks although its stages passed: events the observer lost, a
    load generator that could not hold the load."""
    gaps = []
    if ctx.timeline is not None and ctx.timeline.gaps:
        gaps.append(f"the observer lost events it could not re-list: {'; '.join(ctx.timeline.gaps)}")
    gen = (ctx.load.summary.get("generator") or {}) if ctx.load is not None else {}
    if gen.get("records_dropped"):
        gaps.append(f"the load generator dropped {gen['records_dropped']} request records")
    if gen.get("deadline_hit"):
        gaps.append("the load generator hit its time bound before the shape ended")
    if gen.get("behind"):  # open loop: it did not hold the schedule, so the latencies are not the service's
        gaps.append(f"the load generator fell behind its schedule: {'; '.join(gen['behind'])}")
    return gaps


def _commit() -> str | None:
    """The git commit of this tidegate checkout (None when it is not one)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and len(out.stdout.strip()) == 40 else None


def _publish_run(spec: RolloutSpec, out_dir: Path) -> None:
    """Put the run's report directory into the results store (``results.store``) for history and
    baselines. The run's verdict does not depend on it: a store that cannot be written is a warning."""
    if not spec.results.publish:
        return
    from tasks.history import Store

    try:
        entry = Store.for_spec(spec, spec.results.store, endpoint=spec.results.endpoint).publish(out_dir)
        log.info("run %s published to the results store (%s)", entry.run_id, spec.results.store or "default")
    except (TidegateError, OSError) as exc:
        one = exc.one_line() if isinstance(exc, TidegateError) else str(exc)
        log.warning("the run was not published to the results store: %s", one)
        print(f"tidegate: warning: the run was not published to the results store: {one}", file=sys.stderr)


def _publish_artifacts(report: RunReport, out_dir: Path, use_prefect: bool, secrets: list[str]) -> None:
    """The run's markdown artifact in Prefect (``reporting.artifact_markdown``): the verdict, the gate's
    rules and the dashboard as an image, drawn from the report directory just written; redacted."""
    if not use_prefect:
        return
    try:
        from prefect.artifacts import create_markdown_artifact

        key = "tidegate-" + "".join(ch if ch.isalnum() else "-" for ch in report.spec.lower())[:40]
        markdown = reporting.redact(reporting.artifact_markdown(report, out_dir), reporting.secret_values(secrets))
        create_markdown_artifact(markdown=markdown, key=key.strip("-"),
                                 description=f"tidegate report {report.run_id} ({out_dir})")
    except Exception as exc:  # noqa: BLE001 - artifacts are a convenience, never the verdict
        log.warning("could not publish Prefect artifacts: %s", exc)


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True,
      on_failure=[on_failure], on_crashed=[on_crashed], on_cancellation=[on_failure])
def elastic_rollout_validation(spec: RolloutSpec, stages: list[str] | None = None,
                               run_id: str | None = None, adopt: list[str] | None = None) -> dict:
    """Validate that the model service absorbs a spike by spilling to the elastic pool and back.

    Args:
        spec: The rollout to validate: model, storage, cluster, service, ingress, load, SLOs.
        stages: Subset of stages to run (stage, prepare, deploy, smoke, spike, verify, gate,
            teardown); empty means the spec's own list, else all.
        run_id: Label of everything this run creates; derived from the flow run when empty.
        adopt: Objects of the run's names that exist and that the run may take over (and delete
            at teardown), as KIND/NAME or KIND/NAMESPACE/NAME; any other existing one stops the run.
    """
    selected = normalize_stages(stages or list(getattr(spec, "stages", None) or []) or None)
    if run_id:
        rid = run_id
    else:
        from prefect.runtime import flow_run

        rid = run_id_for_flow_run(spec.name, flow_run.id) if flow_run.id else new_run_id(spec)
    try:
        with clusterlock.hold(spec):  # one validation per cluster: a second run queues behind this one
            outcome = execute(spec, selected, rid, use_prefect=True, adopt=adopt)
    except cancel.Terminated as exc:  # torn down and reported: Prefect ends the run as for its own SIGTERM
        from prefect.exceptions import TerminationSignal

        raise TerminationSignal(signal=exc.signum) from exc
    return {"run_id": outcome.run_id, "verdict": outcome.verdict, "report_dir": outcome.report_dir}


class ExpectedErrorFilter(logging.Filter):
    """Prefect logs the exception that ends a flow run with its traceback ("Encountered exception
    during execution"). For tidegate's expected failures (a ``TidegateError``: the one-line message
    the CLI prints last) the traceback is noise a user reads as a crash: keep the line, drop the
    traceback. Anything else (a bug) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TidegateError):
            record.msg, record.args = f"{record.getMessage().split(':', 1)[0]}: {exc.one_line()}", None
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def _quiet_expected_errors():
    filt = ExpectedErrorFilter()
    handlers = {h for name in ("", "prefect", "prefect.flow_runs") for h in logging.getLogger(name).handlers}
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


def _start_watchdog() -> None:
    """``flows.reaper`` for this process. It is needed until this process ends: an exit that runs
    the exit handlers has stopped Prefect's server in one of them (registered after this one, so
    run before it), and then this one stops the watchdog (a process left running from a dropped
    ``Popen`` is a ResourceWarning); a SIGKILL runs none, which is when the watchdog acts."""
    import atexit

    from flows import reaper

    dog = reaper.start(os.getpid())
    if dog is None:
        return

    def stop() -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            dog.terminate()
            dog.wait(timeout=5)

    atexit.register(stop)


def run_local(spec: RolloutSpec, stages: list[str] | None, *, use_prefect: bool | None = None,
              adopt: list[str] | None = None) -> RunOutcome:
    """Entry point of ``tidegate validate``: the flow under Prefect (default) or plain."""
    if use_prefect is None:
        use_prefect = os.environ.get("TIDEGATE_NO_PREFECT") != "1"
    selected = normalize_stages(stages)
    check_inputs(spec, selected)  # refused before a run id exists
    parse_adopt(adopt)
    rid = new_run_id(spec)
    # known before anything is created, so that a run killed mid-way can be cleaned up by id
    print(f"tidegate: run {rid} started", file=sys.stderr, flush=True)
    if not use_prefect:
        outcome = execute(spec, selected, rid, use_prefect=False, adopt=adopt)
        cancel.check()  # a SIGTERM after the last checkpoint still ends the command as terminated
        return outcome
    from prefect.exceptions import TerminationSignal

    _start_watchdog()  # stops Prefect's temporary server should this process be SIGKILLed
    # deferring here too: Prefect sends the process a second SIGTERM when its flow run ended on
    # one, and that must not raise somewhere in its exit path
    with cancel.deferring(), _quiet_expected_errors():
        try:
            result = elastic_rollout_validation(spec=spec, stages=selected, run_id=rid, adopt=adopt)
        except TerminationSignal as exc:
            raise cancel.Terminated(signal.Signals(exc.signal).name) from None
    cancel.check()
    return RunOutcome(result["run_id"], result["verdict"], result["report_dir"], 0)
