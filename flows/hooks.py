"""The flow's failure hooks (``on_failure``, ``on_crashed``, also run on cancellation): tear a
failed run down by its run id when its teardown policy is ``always``, and emit the
``tidegate.run.failed`` event the automation in automations/notify-on-failed-gate.yaml turns
into a notification.

A hook never masks the run's own failure: whatever goes wrong in it is logged, not raised. It
imports neither flow module (flows/validation.py and flows/deployments.py import it).
"""

from __future__ import annotations

import json
from typing import Any

from flows.outcomes import exit_code_for_state, outcome_for_state
from flows.runid import check_run_id, run_id_for_flow_run
from tasks.errors import TidegateError
from tasks.names import CREATES_OBJECTS

FAILED_EVENT = "tidegate.run.failed"


def _spec_from_parameters(params: dict[str, Any]):
    """The spec a run validated, rebuilt from its parameters (either flow's), or None."""
    try:
        if "spec_path" in params or params.get("spec") is None:
            from flows.release import release_spec

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
    return all(stages.get(s, {}).get("status") in ("skipped", "not_run", None) for s in CREATES_OBJECTS)


def _kept_by_selection(params: dict, spec, state) -> bool:
    """The run finished every stage it selected (it ended inconclusive or with a failed gate, not
    half-way) and teardown was not selected: the user asked to keep what it created (e.g.
    ``--stages prepare,deploy`` to look at the deployment). A failed or crashed stage still tears down."""
    from tasks.stages import normalize_stages

    message = state.message if state is not None else ""
    if outcome_for_state(state.type.value if state is not None else "FAILED", message) not in ("inconclusive",
                                                                                                "gate-failed"):
        return False
    try:
        selected = normalize_stages(params.get("stages") or spec.stages)
    except TidegateError:
        return False
    return "teardown" not in selected


def teardown_run(spec, run_id: str) -> str:
    """Delete what run ``run_id`` recorded creating (its ledger), by uid, bounded by its timeout."""
    from tasks.kube import Kube
    from tasks.ownership import Ledger, delete_owned
    from tasks.profile import resolve_profile
    from tasks.report import reports_root

    ledger = Ledger.open(reports_root() / run_id)
    if not ledger.entries:
        return f"run {run_id} recorded no object"
    kube = Kube.connect(kubeconfig=resolve_profile(spec).kubeconfig, context=spec.cluster.context,
                        in_cluster=spec.cluster.in_cluster)
    kube.ping()
    deleted = delete_owned(kube, ledger, timeout_s=spec.teardown.timeout_s)
    return f"deleted {len(deleted)} objects of run {run_id}"


def _after_failure(flow, flow_run, state, kind: str) -> None:
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run)
    params = dict(flow_run.parameters or {})
    run_id, invalid = params.get("run_id"), False
    try:
        run_id = check_run_id(run_id) if run_id else None
    except TidegateError:  # the flow refused it before creating anything
        logger.warning("%s hook: run_id parameter %r is not a valid run id; nothing to tear down by it",
                       kind, str(run_id)[:80])
        run_id, invalid = None, True
    spec = _spec_from_parameters(params)
    if not run_id and spec is not None and not invalid:
        run_id = run_id_for_flow_run(spec.name, flow_run.id)
    teardown_note = "skipped"
    if run_id and spec is not None and _kept_by_selection(params, spec, state):
        teardown_note = "kept: teardown not selected"
        logger.info("%s hook: run %s ran every stage it selected and teardown was not one of them: its objects "
                    "are kept (`tidegate cleanup --run-id %s` removes them)", kind, run_id, run_id)
    elif run_id and spec is not None and spec.teardown.policy == "always" and not _nothing_created(run_id):
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

