"""The Prefect flow ``elastic-rollout-validation``: RolloutSpec in, report and verdict out.

Stages run in a fixed order (data moves one way); ``stages`` selects a subset. Each stage is
a Prefect task over a plain function from ``tasks/``. ``report`` is always written, and
``teardown`` runs at the end whenever it is selected and the teardown policy allows it, also
after a failure, so a half-finished run leaves nothing behind. A stage that does not exist
yet fails loudly (StageNotImplemented, exit 2) instead of passing.

Outcome: the flow returns a ``RunOutcome`` when every selected stage passed and the gate did
not fail; otherwise it raises the error that decided the exit code (GateFailed / StageFailed
-> 1, anything else -> 2), after the report is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets as _secrets
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE as NO_CACHE

from tasks import report as reporting
from tasks.errors import (
    GateFailed,
    StageFailed,
    StageNotImplemented,
    TidegateError,
)
from tasks.kube import Kube
from tasks.spec import RolloutSpec

log = logging.getLogger("tidegate")

STAGES = ["stage", "prepare", "deploy", "smoke", "spike", "verify", "gate", "teardown"]
ALIASES = {"stage_model": "stage", "staging": "stage", "prepare_cluster": "prepare", "deploy_service": "deploy",
           "load": "spike", "observe": "spike", "report": "report", "cleanup": "teardown"}


def normalize_stages(stages: list[str] | str | None) -> list[str]:
    from tasks.errors import SpecError

    if not stages:
        return list(STAGES)
    if isinstance(stages, str):
        stages = [s for s in stages.split(",") if s.strip()]
    out = []
    for s in stages:
        name = ALIASES.get(s.strip(), s.strip())
        if name == "report":
            continue  # the report is always written
        if name not in STAGES:
            raise SpecError(f"--stages: unknown stage {s!r} (stages: {', '.join(STAGES)})")
        out.append(name)
    return [s for s in STAGES if s in out]


def run_id_for_flow_run(spec_name: str, flow_run_id: object) -> str:
    """The run id of a flow run started without one (nightly/manual deployments); the failure
    hooks derive the same id, so they can tear down what the run created."""
    return f"{spec_name[:40].rstrip('-')}-{str(flow_run_id).replace('-', '')[:8]}"


def new_run_id(spec: RolloutSpec) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = spec.name[:40].rstrip("-")
    return f"{base}-{stamp}-{_secrets.token_hex(2)}"


@dataclass
class RunContext:
    spec: RolloutSpec
    run_id: str
    report: reporting.RunReport
    kubeconfig: str | None = None
    kube: Kube | None = None
    results: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    created_namespaces: list[str] = field(default_factory=list)
    failure: BaseException | None = None

    def connect(self) -> Kube:
        if self.kube is None:
            c = self.spec.cluster
            self.kube = Kube.connect(kubeconfig=self.kubeconfig, context=c.context, in_cluster=c.in_cluster)
            self.kube.ping()
        return self.kube


@dataclass
class RunOutcome:
    run_id: str
    verdict: str
    report_dir: str
    exit_code: int


def resolve_profile(spec: RolloutSpec) -> str | None:
    """The kubeconfig to use: the spec's, else the test bed's for profile local.

    For profile local, OSS credentials that the environment does not set are taken from the
    test bed's key file (they are the test bed's own keys, never a user's).
    """
    if spec.profile == "local":
        from testbed.config import load_config

        cfg = load_config(saved=True)
        creds = spec.storage.oss.credentials
        if spec.storage.kind == "oss" and not (os.environ.get(creds.access_key_id_env)
                                               and os.environ.get(creds.access_key_secret_env)):
            try:
                from testbed.objectstore import load_keys

                key_id, key_secret = load_keys(cfg.state_dir)
                os.environ.setdefault(creds.access_key_id_env, key_id)
                os.environ.setdefault(creds.access_key_secret_env, key_secret)
            except (OSError, TidegateError):
                pass  # the credentials check of the stage that needs them names what is missing
        if not (spec.cluster.kubeconfig or spec.cluster.in_cluster):
            return str(cfg.kubeconfig)
    return spec.cluster.kubeconfig


# -- stage functions (plain, typed; the Prefect tasks below wrap them) -------------------------
def stage_stage(ctx: RunContext) -> str:
    try:
        from tasks import staging
    except ModuleNotFoundError as exc:
        if exc.name != "tasks.staging":
            raise
        raise StageNotImplemented("stage `stage` (stage_model) is not implemented yet; "
                                  "select the stages to run with --stages") from None
    staged = staging.stage_model_for_spec(ctx.spec, run_id=ctx.run_id)
    ctx.results["stage"] = staged
    ctx.report.staging = staged.report_block()
    return staged.summary()


def stage_prepare(ctx: RunContext) -> str:
    from tasks.cluster import apply_all, preflight
    from tasks.render import render_manifests

    kube = ctx.connect()
    report = preflight(kube, ctx.spec)
    objs = [o for o in render_manifests(ctx.spec, ctx.run_id)
            if o["kind"] not in ("InferenceService", "HorizontalPodAutoscaler")]
    rbac_kinds = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    if ctx.spec.cluster.in_cluster or not kube.can_i("create", "roles", group="rbac.authorization.k8s.io",
                                                     namespace=ctx.spec.cluster.namespace):
        # running as the pipeline's own ServiceAccount: an admin applied the RBAC once; the run
        # neither needs nor may write it (and must never delete the identity it runs as)
        objs = [o for o in objs if o["kind"] not in rbac_kinds]
        report.warnings.append("RBAC not applied: this identity may not write RBAC (applied by an admin)")
    if any(o["kind"] == "Namespace" for o in objs):
        ctx.created_namespaces.append(ctx.spec.cluster.namespace)
    secret = _credentials_secret(ctx)
    if secret:
        objs.insert(next((i for i, o in enumerate(objs) if o["kind"] == "PersistentVolume"), len(objs)), secret)
    report.applied = apply_all(kube, objs)
    ctx.results["prepare"] = report
    w = f"; warnings: {'; '.join(report.warnings)}" if report.warnings else ""
    return (f"{report.server_version}; IDC {report.idc.ready_nodes} nodes/{report.idc.gpus_allocatable} GPUs, "
            f"elastic {report.elastic.nodes} nodes (autoscaler group known: {report.elastic.autoscaler_group_known}); "
            f"applied {len(report.applied)} objects{w}")


def _credentials_secret(ctx: RunContext) -> dict | None:
    """The OSS CSI driver's Secret, built from the environment at apply time (never rendered)."""
    st = ctx.spec.storage
    if st.kind != "oss" or not st.oss.credentials.create_secret:
        return None
    from tasks.kube import RUN_LABEL

    key_id, key_secret = st.oss.credentials.resolve()  # CredentialsError names where it looked
    ctx.secrets += [key_id.get_secret_value(), key_secret.get_secret_value()]
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": st.oss.credentials.secret_name, "namespace": ctx.spec.cluster.namespace,
                         "labels": {RUN_LABEL: ctx.run_id, "app.kubernetes.io/managed-by": "tidegate"}},
            "stringData": {"akId": key_id.get_secret_value(), "akSecret": key_secret.get_secret_value()}}


def stage_deploy(ctx: RunContext) -> str:
    from tasks.deploy import deploy
    from tasks.render import render_manifests

    kube = ctx.connect()
    objs = [o for o in render_manifests(ctx.spec, ctx.run_id)
            if o["kind"] in ("InferenceService", "HorizontalPodAutoscaler")]
    handle = deploy(kube, objs, ctx.spec)
    ctx.results["deploy"] = handle
    return f"{handle.namespace}/{handle.name} Ready in {handle.ready_seconds}s with {handle.replicas} replica(s)"


def stage_smoke(ctx: RunContext) -> str:
    from tasks.smoke import smoke

    result = smoke(ctx.spec)
    ctx.results["smoke"] = result
    return "; ".join(f"{c.name} ok ({c.seconds:.2f}s, {c.detail})" for c in result.checks)


def _module_stage(module: str, func: str, name: str) -> Callable[[RunContext], str]:
    def run(ctx: RunContext) -> str:
        import importlib

        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            raise StageNotImplemented(f"stage `{name}` is not implemented yet; select the stages to run "
                                      "with --stages") from None
        return getattr(mod, func)(ctx)

    return run


def stage_teardown(ctx: RunContext) -> str:
    from tasks.cluster import run_object_names, teardown

    kube = ctx.connect()
    namespaces = sorted({ctx.spec.cluster.namespace, *ctx.created_namespaces})
    deleted = teardown(kube, ctx.run_id, namespaces, timeout_s=ctx.spec.teardown.timeout_s,
                       known=run_object_names(ctx.spec, ctx.run_id))
    return f"deleted {len(deleted)} objects labelled with run {ctx.run_id}"


STAGE_FUNCS: dict[str, Callable[[RunContext], str]] = {
    "stage": stage_stage,
    "prepare": stage_prepare,
    "deploy": stage_deploy,
    "smoke": stage_smoke,
    "spike": _module_stage("tasks.elastic", "run_spike_stage", "spike"),
    "verify": _module_stage("tasks.elastic", "run_verify_stage", "verify"),
    "gate": _module_stage("tasks.gate", "run_gate_stage", "gate"),
    "teardown": stage_teardown,
}
TASK_NAMES = {"stage": "stage_model", "prepare": "prepare_cluster", "deploy": "deploy_service", "smoke": "smoke",
              "spike": "spike", "verify": "verify", "gate": "gate", "teardown": "teardown"}


def _run_stage(ctx: RunContext, name: str) -> None:
    rec = ctx.report.stages.setdefault(name, reporting.StageRecord(status="not_run"))
    rec.status = "running"
    t0 = time.monotonic()
    try:
        rec.detail = STAGE_FUNCS[name](ctx) or ""
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
        return Failed(message=exc.one_line())
    return None


def _call_stage(ctx: RunContext, name: str, use_prefect: bool) -> None:
    if not use_prefect:
        _run_stage(ctx, name)
        return
    ctx.failure = None
    state = _stage_task.with_options(name=TASK_NAMES[name])(ctx, name, return_state=True)
    if ctx.failure is not None:
        raise ctx.failure
    if state.is_failed() or state.is_crashed() or state.is_cancelled():
        state.result()  # re-raises the unexpected exception (a bug) with its traceback
        raise StageFailed(f"stage {name}: {state.message}")


def execute(spec: RolloutSpec, stages: list[str], run_id: str, *, use_prefect: bool = True) -> RunOutcome:
    """Run the selected stages; always write the report; decide the outcome."""
    if "spike" in stages:
        # a load shape this machine cannot drive (or a bad traffic CSV) is refused before anything runs
        from tasks.load import check_capacity, shape_for

        check_capacity(shape_for(spec.load), spec.load.workers)
    report = reporting.RunReport(run_id=run_id, spec=spec.name, profile=spec.profile,
                                 started_at=reporting.now_iso())
    ctx = RunContext(spec=spec, run_id=run_id, report=report, kubeconfig=resolve_profile(spec))
    for s in STAGES:
        report.stages[s] = reporting.StageRecord(status="skipped" if s not in stages else "not_run",
                                                 detail="not selected" if s not in stages else "")
    failure: BaseException | None = None
    body = [s for s in stages if s != "teardown"]
    try:
        for name in body:
            _call_stage(ctx, name, use_prefect)
    except BaseException as exc:  # noqa: BLE001 - recorded, teardown still runs, then re-raised
        failure = exc
        for name in body:
            if report.stages[name].status == "not_run":
                report.stages[name].detail = "an earlier stage failed"
    policy = spec.teardown.policy
    created_anything = any(report.stages.get(s) and report.stages[s].status != "skipped"
                           for s in ("prepare", "deploy"))
    want_teardown = ("teardown" in stages or (failure is not None and created_anything)) and (
        policy == "always" or (policy == "on_success" and failure is None))
    if want_teardown and created_anything:
        try:
            _call_stage(ctx, "teardown", use_prefect)
        except BaseException as exc:  # noqa: BLE001
            failure = failure or exc
    elif "teardown" in stages:
        report.stages["teardown"] = reporting.StageRecord(
            status="skipped", detail=f"teardown policy {policy}" if created_anything else "nothing was created")
    report.finished_at = reporting.now_iso()
    gate_failed = any(r.get("status") == "fail" for r in report.gate)
    gate_warned = any(r.get("status") == "warn" for r in report.gate)
    if failure is None and not gate_failed:
        report.verdict = "warn" if gate_warned else "pass"
    else:
        report.verdict = "fail"
    html_doc = reporting.render_html(report, load=ctx.results.get("spike"), timeline=ctx.results.get("timeline"),
                                     spec=spec, cost=ctx.results.get("cost"))
    out_dir = reporting.write(report, secrets=ctx.secrets, tables=ctx.tables, html_doc=html_doc)
    _publish_artifacts(report, out_dir, use_prefect)
    if failure is not None:
        raise failure
    if gate_failed:
        bad = [r["rule"] for r in report.gate if r.get("status") == "fail"]
        raise GateFailed(f"gate failed: {', '.join(bad)} (report {out_dir / 'report.html'})")
    return RunOutcome(run_id, report.verdict, str(out_dir), 0)


def _publish_artifacts(report: reporting.RunReport, out_dir: Path, use_prefect: bool) -> None:
    if not use_prefect:
        return
    try:
        from prefect.artifacts import create_markdown_artifact

        key = "tidegate-" + "".join(ch if ch.isalnum() else "-" for ch in report.spec.lower())[:40]
        create_markdown_artifact(markdown=reporting.markdown_summary(report), key=key.strip("-"),
                                 description=f"tidegate report {report.run_id} ({out_dir})")
    except Exception as exc:  # noqa: BLE001 - artifacts are a convenience, never the verdict
        log.warning("could not publish Prefect artifacts: %s", exc)


def _hook(name: str):
    def hook(flow, flow_run, state) -> None:
        from flows import operations

        getattr(operations, name)(flow, flow_run, state)

    hook.__name__ = f"tidegate_{name}"
    return hook


@flow(name="elastic-rollout-validation", log_prints=True, validate_parameters=True,
      on_failure=[_hook("on_failure")], on_crashed=[_hook("on_crashed")],
      on_cancellation=[_hook("on_failure")])
def elastic_rollout_validation(spec: RolloutSpec, stages: list[str] | None = None,
                               run_id: str | None = None) -> dict:
    """Validate that the model service absorbs a spike by spilling to the elastic pool and back.

    Args:
        spec: The rollout to validate: model, storage, cluster, service, ingress, load, SLOs.
        stages: Subset of stages to run (stage, prepare, deploy, smoke, spike, verify, gate,
            teardown); empty means the spec's own list, else all.
        run_id: Label of everything this run creates; derived from the flow run when empty.
    """
    selected = normalize_stages(stages or list(getattr(spec, "stages", None) or []) or None)
    if run_id:
        rid = run_id
    else:
        from prefect.runtime import flow_run

        rid = run_id_for_flow_run(spec.name, flow_run.id) if flow_run.id else new_run_id(spec)
    outcome = execute(spec, selected, rid, use_prefect=True)
    return {"run_id": outcome.run_id, "verdict": outcome.verdict, "report_dir": outcome.report_dir}


def run_local(spec: RolloutSpec, stages: list[str] | None, *, use_prefect: bool | None = None) -> RunOutcome:
    """Entry point of ``tidegate validate``: the flow under Prefect (default) or plain."""
    if use_prefect is None:
        use_prefect = os.environ.get("TIDEGATE_NO_PREFECT") != "1"
    selected = normalize_stages(stages)
    rid = new_run_id(spec)
    # known before anything is created, so that a run killed mid-way can be cleaned up by id
    print(f"tidegate: run {rid} started", file=sys.stderr, flush=True)
    if not use_prefect:
        return execute(spec, selected, rid, use_prefect=False)
    from flows import reaper

    reaper.start(os.getpid())  # stops Prefect's temporary server should this process be SIGKILLed
    result = elastic_rollout_validation(spec=spec, stages=selected, run_id=rid)
    return RunOutcome(result["run_id"], result["verdict"], result["report_dir"], 0)
