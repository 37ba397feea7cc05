"""The stage chain: one ordered list of stages, each a plain function of the ``RunContext``.

``STAGES`` is the only list of stages: the flow runs it in order (``flows.validation``), the
CLI's ``--stages`` and the spec's ``stages`` are checked against it (``normalize_stages``), the
report's ``stages`` block and JUnit list it, and Prefect names each task run after its
``task_name``. A stage reads the context slots it ``needs``, writes the ones it ``produces``
and the report block of the same name, and returns one line for the report. Expected
failures raise a ``TidegateError`` (``StageFailed`` / ``GateFailed``: exit 1; anything else:
exit 2); the domain work lives in the stage's own module (``tasks.staging``, ``tasks.cluster``,
``tasks.deploy``, ``tasks.smoke``, ``tasks.elastic``, ``tasks.cost``, ``tasks.gate``).

The chain: stage -> prepare -> deploy -> smoke -> spike -> verify -> gate -> teardown. The
report is not a stage: it is always written (``report`` is accepted and ignored in a list).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tasks import staging
from tasks.cluster import preflight
from tasks.context import RunContext
from tasks.cost import cost_of_run
from tasks.critical_path import NO_EVENT, bill_sentence, scale_events, violation_bill
from tasks.deploy import deploy
from tasks.ownership import check_free, create_owned, delete_owned
from tasks.elastic import describe_elasticity, elastic_settled, run_spike, verify_spike
from tasks.errors import GateFailed, SpecError, StageFailed, StagingError
from tasks.goodput import good_mask, slo_limits
from tasks.gate import (
    Baselines,
    change_point_warnings,
    describe,
    evaluate,
    failure_message,
    last_passing_report,
    verdict,
)
from tasks.load import check_capacity, request_config, shape_for
from tasks.names import ALWAYS_RUN, CREATES_OBJECTS, STAGE_ALIASES, STAGE_NAMES
from tasks.render import render_manifests, render_oss_secret
from tasks.report import reports_root
from tasks.report_model import (
    CostBlock,
    ElasticityBlock,
    FindingBlock,
    LoadBlock,
    PhaseBlock,
    RepeatsBlock,
    StagingBlock,
)
from tasks.repeats import describe as describe_repeats
from tasks.repeats import repeats_block
from tasks.smoke import smoke
from tasks.spec import RolloutSpec

SERVICE_KINDS = frozenset({"InferenceService", "HorizontalPodAutoscaler"})


@dataclass(frozen=True)
class Stage:
    """One step of the chain."""

    name: str                      # what --stages, the report and JUnit call it
    task_name: str                 # the Prefect task run's name
    run: Callable[[RunContext], str]
    needs: tuple[str, ...]         # RunContext slots it reads (from earlier stages)
    produces: tuple[str, ...]      # RunContext slots and report blocks it writes
    creates_objects: bool = False  # it changes the cluster (teardown is owed when it ran)
    summary: str = ""


# -- the stage functions ---------------------------------------------------------------------------
def stage_model(ctx: RunContext) -> str:
    if ctx.spec.storage.kind == "oss":  # the key is redacted from every file the run writes
        key_id, key_secret = ctx.spec.storage.oss.credentials.resolve(ctx.profile.credentials_file)
        ctx.secrets += [key_id.get_secret_value(), key_secret.get_secret_value()]
    staged = staging.stage_model_for_spec(ctx.spec, run_id=ctx.run_id)
    ctx.staged = staged
    ctx.report.staging = StagingBlock.model_validate(staged.report_block())
    return staged.summary()


def _credentials_secret(ctx: RunContext) -> dict | None:
    """The OSS CSI driver's Secret when the run provisions the volume, built from the resolved
    credentials at apply time (never rendered into a plan or a file)."""
    st = ctx.spec.storage
    if st.kind != "oss" or not (st.provision and st.oss.credentials.create_secret):
        return None
    key_id, key_secret = st.oss.credentials.resolve(ctx.profile.credentials_file)  # names where it looked
    ctx.secrets += [key_id.get_secret_value(), key_secret.get_secret_value()]
    return render_oss_secret(ctx.spec, ctx.run_id, key_id, key_secret)


def _run_objects(ctx: RunContext) -> list[dict]:
    """What this run creates, in creation order: its namespace when it creates one and it does not
    exist yet, the OSS Secret (with storage.provision), then ``render_manifests``."""
    kube, spec = ctx.connect(), ctx.spec
    objs = render_manifests(spec, ctx.run_id)
    ns = next((o for o in objs if o["kind"] == "Namespace"), None)
    if ns is not None:
        live = kube.get("v1", "Namespace", spec.cluster.namespace)
        if live is not None and not ctx.ledger.owns(live):
            objs.remove(ns)  # it exists: used, neither created nor ever deleted by this run
    secret = _credentials_secret(ctx)
    if secret:
        objs.insert(next((i for i, o in enumerate(objs) if o["kind"] == "PersistentVolume"), len(objs)), secret)
    return objs


def prepare_cluster(ctx: RunContext) -> str:
    kube = ctx.connect()
    report = preflight(kube, ctx.spec)
    objs = _run_objects(ctx)
    # every object of the run, the deploy stage's included: a foreign one stops the run before
    # anything is created
    adopted = check_free(kube, objs, ctx.ledger, adopt=ctx.adopt)
    report.warnings += [f"taking over {o['kind']}/{o['metadata']['name']} (--adopt)" for o in adopted]
    report.applied = create_owned(kube, [o for o in objs if o["kind"] not in SERVICE_KINDS], ctx.ledger,
                                  adopt=ctx.adopt)
    ctx.cluster = report
    w = f"; warnings: {'; '.join(report.warnings)}" if report.warnings else ""
    return (f"{report.server_version}; IDC {report.idc.ready_nodes} nodes/{report.idc.gpus_allocatable} GPUs, "
            f"elastic {report.elastic.nodes} nodes (autoscaler group known: {report.elastic.autoscaler_group_known}); "
            f"created {len(report.applied)} object{'' if len(report.applied) == 1 else 's'}{w}")


def deploy_service(ctx: RunContext) -> str:
    kube = ctx.connect()
    objs = [o for o in render_manifests(ctx.spec, ctx.run_id) if o["kind"] in SERVICE_KINDS]
    check_free(kube, objs, ctx.ledger, adopt=ctx.adopt)
    handle = deploy(kube, objs, ctx.spec, create=lambda todo: create_owned(kube, todo, ctx.ledger, adopt=ctx.adopt))
    ctx.service = handle
    return f"{handle.namespace}/{handle.name} Ready in {handle.ready_seconds}s with {handle.replicas} replica(s)"


def smoke_test(ctx: RunContext) -> str:
    result = smoke(ctx.spec)
    ctx.smoke = result
    ctx.report.smoke = result.report_block()
    return result.describe()


def spike(ctx: RunContext) -> str:
    kube = ctx.connect()

    def stopped(_load, timeline) -> None:  # the timeline is kept also when the load failed
        ctx.timeline = timeline

    run = run_spike(kube, ctx.spec, ctx.run_id, reports_root() / ctx.run_id, on_stopped=stopped, ledger=ctx.ledger)
    more = _repeat_spikes(ctx, kube)
    result = run.load
    ctx.load, ctx.observed_until = result, run.ended_at
    ctx.report.load = LoadBlock.model_validate(result.report_block())
    ctx.report.phases = [PhaseBlock(name=p.name, start=p.start.isoformat(), end=p.end.isoformat())
                         for p in result.phases]
    if not result.summary.get("requests"):
        raise StageFailed(f"spike: no request completed against {ctx.spec.ingress.url} "
                          f"(Host {ctx.spec.ingress.host})")
    error_rate = result.summary.get("error_rate") or 0.0
    if error_rate > ctx.spec.load.max_error_rate:
        errors = "; ".join(f"{n}x {text}" for text, n in list((result.summary.get("errors") or {}).items())[:3])
        raise StageFailed(f"spike: {error_rate:.0%} of {result.summary['requests']} requests failed (more than "
                          f"load.max_error_rate {ctx.spec.load.max_error_rate:.0%}): {errors or 'no error text'}")
    return f"{result.describe()}; {len(run.timeline.df)} timeline entries; spill-back wait {run.settle_s}s{more}"


def _repeat_spikes(ctx: RunContext, kube) -> str:
    """load.repeat > 1: repetitions 2..N of the spike shape, each after the previous one's spill-back
    wait, into ``<report>/repeat-<k>/`` (requests, per second, timeline); kept in ``ctx.repeats``."""
    spec = ctx.spec
    if spec.load.repeat <= 1:
        return ""
    ctx.repeats = []
    for k in range(2, spec.load.repeat + 1):
        settled = elastic_settled(kube, spec)
        out = reports_root() / ctx.run_id / f"repeat-{k}"
        run = run_spike(kube, spec, ctx.run_id, out, ledger=ctx.ledger)
        run.timeline.df.to_csv(out / "timeline.csv", index=False)
        ctx.repeats.append((k, settled, run))
    return f"; {spec.load.repeat} repetitions of the shape (the others in repeat-2..{spec.load.repeat}/)"


def verify_elasticity(ctx: RunContext) -> str:
    if ctx.load is None or ctx.timeline is None:
        raise StageFailed("verify needs the spike stage's load data and timeline: select spike with verify")
    el = verify_spike(ctx.spec, ctx.load, ctx.timeline, ctx.observed_until)
    events, bill = _critical_path(ctx)
    el.scale_events, el.violation_bill = [e.block() for e in events], bill
    ctx.elasticity = el
    ctx.report.elasticity = ElasticityBlock.model_validate(el.block())
    ctx.report.findings = [FindingBlock.model_validate(f) for f in el.findings_block()]
    ctx.cost = cost_of_run(ctx.spec, ctx.load, ctx.timeline, ctx.observed_until)
    ctx.report.cost = CostBlock.model_validate(ctx.cost.block())
    head = f"{describe_elasticity(el)}; cost: {ctx.cost.describe()}"
    if ctx.repeats:
        ctx.report.repeats = RepeatsBlock.model_validate(_repeats(ctx, el))
        head += f"; {describe_repeats(ctx.report.repeats.model_dump())}"
    if bill and bill[0]["step"] != NO_EVENT:
        head += f"; {bill_sentence(bill[0])}"
    missing = [f.detail for f in el.findings if not f.ok]
    return head + ("; missing: " + "; ".join(missing) if missing else "")


def _repeats(ctx: RunContext, first) -> dict:
    """Every repetition judged as the first (verify, cost), and the intervals over them."""
    spec, load = ctx.spec, ctx.load
    reps = [{"index": 1, "started_at": load.started_at.isoformat(), "ended_at": str(ctx.observed_until),
             "settled": None, "missing": [f.name for f in first.findings if not f.ok],
             "figures": {"load": ctx.report.load.model_dump(mode="json"), "elasticity": first.block(),
                         "cost": ctx.report.cost.model_dump(mode="json")}}]
    for k, settled, run in ctx.repeats:
        if run.load is None:
            reps.append({"index": k, "settled": settled, "missing": ["the load did not run"], "figures": {}})
            continue
        el = verify_spike(spec, run.load, run.timeline, run.ended_at)
        cost = cost_of_run(spec, run.load, run.timeline, run.ended_at)
        reps.append({"index": k, "started_at": run.load.started_at.isoformat(), "ended_at": str(run.ended_at),
                     "settled": settled, "missing": [f.name for f in el.findings if not f.ok],
                     "figures": {"load": run.load.report_block(), "elasticity": el.block(), "cost": cost.block()}})
    return repeats_block(reps)


def _critical_path(ctx: RunContext) -> tuple[list, list[dict]]:
    """The scale events' critical paths and the bill of the requests that missed load.slo (a
    figure that cannot be computed is a warning, never the run)."""
    spec, load = ctx.spec, ctx.load
    try:
        events = scale_events(ctx.timeline, load_started_at=load.started_at, phases=load.phases,
                              hpa_target=float(spec.service.scale_target), elastic_pool=spec.cluster.elastic_pool_id,
                              idc_pool=spec.cluster.idc_pool_id, requests_df=load.requests)
        reqs = load.requests
        limits = slo_limits(spec.load.slo)
        bill = violation_bill(reqs, events, load_started_at=load.started_at, phases=load.phases,
                              good=lambda df: good_mask(df, limits)) if len(reqs) else []
    except Exception as exc:  # noqa: BLE001 - a derived figure must not cost the run its report
        ctx.report.warnings.append(f"critical path not computed: {type(exc).__name__}: {exc}")
        return [], []
    return events, bill


SERIES_RUNS = 30  # earlier runs a change point is looked for over


def _history(ctx: RunContext) -> Baselines | None:
    """The spec's earlier runs in the results store (``_baselines``); None when it cannot be read
    (statistical rules are then inconclusive, and no change point is looked for)."""
    from tasks.errors import TidegateError

    try:
        return _baselines(ctx)
    except (TidegateError, OSError) as exc:
        one = exc.one_line() if isinstance(exc, TidegateError) else str(exc)
        ctx.report.warnings.append(f"the results store could not be read for baselines: {one}")
        return None


def _baselines(ctx: RunContext) -> Baselines:
    """The baseline runs of the spec's statistical rules: the newest results.baseline_runs runs of
    this spec in the results store that passed the full chain, with their per-request tables; and
    the newest SERIES_RUNS of them (reports only) for change points."""
    from tasks.history import Store

    spec = ctx.spec
    store = Store.for_spec(spec, spec.results.store, endpoint=spec.results.endpoint)
    entries = store.baselines(spec.name, n=spec.results.baseline_runs, exclude=ctx.run_id)
    samples = any(r.test == "mann_whitney" for r in spec.slo)  # per-request tables only when a rule compares them
    series = [store.get(e.run_id) for e in reversed(store.baselines(spec.name, n=SERIES_RUNS, exclude=ctx.run_id))]
    return Baselines(candidate_requests=ctx.load.requests if ctx.load is not None else None,
                     runs=[(store.get(e.run_id), store.requests(e.run_id) if samples else None) for e in entries],
                     source=store.url, series=series)


def gate(ctx: RunContext) -> str:
    """Judge the report so far by the spec's rules; GateFailed when the verdict is fail."""
    doc = ctx.report.to_dict()
    baseline = None
    if any(r.relative for r in ctx.spec.slo):
        baseline = last_passing_report(reports_root(), ctx.spec.name, exclude_run=ctx.run_id)
    history = ctx.history = _history(ctx)
    results = evaluate(ctx.spec.slo, doc, baseline=baseline, history=history, score=ctx.spec.score)
    results += change_point_warnings(ctx.spec.slo, doc, history)
    ctx.gate = results
    ctx.report.gate = [r.report_block() for r in results]
    v = verdict(results)
    if v == "fail":
        raise GateFailed(failure_message(results, [f.detail for f in ctx.report.findings if not f.ok]))
    return f"{v}: {describe(results)}"


def teardown_run(ctx: RunContext) -> str:
    if not ctx.ledger.entries:
        return f"run {ctx.run_id} created nothing"
    deleted = delete_owned(ctx.connect(), ctx.ledger, timeout_s=ctx.spec.teardown.timeout_s)
    return f"deleted {len(deleted)} objects run {ctx.run_id} created ({', '.join(deleted)})"


# -- the chain -------------------------------------------------------------------------------------
STAGES: tuple[Stage, ...] = (
    Stage("stage", "stage_model", stage_model, (), ("staged", "staging"),
          summary="model weights to OSS (oss2) or NAS, with a manifest of sizes and hashes"),
    Stage("prepare", "prepare_cluster", prepare_cluster, (), ("cluster",), creates_objects=True,
          summary="preflight and ownership checks, then the run's ResourcePolicy (and with storage.provision "
                  "its PV, PVC, Secret)"),
    Stage("deploy", "deploy_service", deploy_service, (), ("service",), creates_objects=True,
          summary="InferenceService and HPA as `arena serve kserve` writes them; wait Ready"),
    Stage("smoke", "smoke", smoke_test, (), ("smoke",),
          summary="OpenAI-compatible checks through the ingress"),
    Stage("spike", "spike", spike, (), ("load", "timeline", "observed_until", "phases"),
          summary="the load shape with Locust while the observer watches the cluster"),
    Stage("verify", "verify", verify_elasticity, ("load", "timeline", "observed_until"),
          ("elasticity", "findings", "cost"),
          summary="spill-over and spill-back from the timeline; the run's cost"),
    Stage("gate", "gate", gate, (), ("gate", "history"), summary="the spec's SLO rules against the report"),
    Stage("teardown", "teardown", teardown_run, (), (),
          summary="delete exactly what the run created, by uid (also after a failure)"),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
if tuple(BY_NAME) != STAGE_NAMES or tuple(s.name for s in STAGES if s.creates_objects) != CREATES_OBJECTS:
    raise AssertionError("tasks.stages.STAGES disagrees with tasks.names")  # pragma: no cover - caught by every test


def check_inputs(spec: RolloutSpec, stages: Iterable[str]) -> None:
    """What the selected stages need from this machine, checked before anything runs (SpecError
    naming the field): a load shape the generator can drive (and a readable traffic CSV), a
    model source that parses (a local one that exists)."""
    stages = set(stages)
    if "spike" in stages:
        # users per process (closed loop) or requests/s per process (open loop); a tidal CSV is
        # read here, so a users curve under an open arrival is refused before the run
        check_capacity(shape_for(spec.load), spec.load.workers)
        # load.requests: a JSONL or trace file (and a tokenizer) read and checked now, not mid-run
        request_config(spec.load, spec.model.served_name)
    if "stage" in stages:
        try:  # no network I/O: a remote source is only parsed here
            staging.check_source(spec.model.source, storage_kind=spec.storage.kind)
        except StagingError as exc:
            raise SpecError(f"model.source: {exc}", hint=exc.hint) from None


def normalize_stages(stages: Iterable[str] | str | None) -> list[str]:
    """The selected stage names in chain order (all of them when none are given); aliases
    (``load``, ``cleanup``...) map to their stage; ``report`` is ignored (always written)."""
    if not stages:
        return list(STAGE_NAMES)
    if isinstance(stages, str):
        stages = [s for s in stages.split(",") if s.strip()]
    out = []
    for s in stages:
        name = STAGE_ALIASES.get(s.strip(), s.strip())
        if name in ALWAYS_RUN:
            continue
        if name not in BY_NAME:
            raise SpecError(f"--stages: unknown stage {s!r} (stages: {', '.join(STAGE_NAMES)})")
        out.append(name)
    return [s for s in STAGE_NAMES if s in out]


__all__ = ["BY_NAME", "STAGES", "Stage", "check_inputs", "normalize_stages"]
