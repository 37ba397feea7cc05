"""The report contract as a model: ``RunReport`` and its typed blocks.

report.json is ``RunReport.model_dump(mode="json")``; ``tidegate report schema`` prints
``report_schema()`` and ``reports/schema/report.schema.json`` is that schema, committed, so that
a change to the contract shows up in review (a test compares them). Every key list and every
definition text of the report comes from here:

- ``rule_keys()``: the dotted keys a gate rule may name (``load.ttft_p95_ms``), read from the
  blocks' fields, so the spec cannot accept a rule the report never fills;
- ``CONTRACT_KEYS[block]``: the stable core of each block (fields marked ``contract``), listed
  first in report.json; the rest are details that may grow;
- ``definitions()``: the text of every figure (a field's description), shown in report.html.

The stages fill the blocks (``tasks.staging`` -> staging, ``tasks.smoke`` -> smoke,
``tasks.load`` -> load, ``tasks.verify`` -> elasticity and findings, ``tasks.cost`` -> cost,
``tasks.gate`` -> gate); this module imports none of them. ``SCHEMA_VERSION`` changes with the
contract: the minor on an added key or block, the major on a removed or retyped one.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.5.0"

StageStatus = Literal["passed", "failed", "skipped", "error", "not_run", "running"]
Verdict = Literal["pass", "warn", "fail", "inconclusive"]
RuleStatus = Literal["pass", "warn", "fail", "inconclusive"]


def _contract(description: str, default: Any = None) -> Any:
    """A field of the report contract's stable core (ARCHITECTURE.md)."""
    return Field(default, description=description, json_schema_extra={"contract": True})


def _gated(description: str, default: Any = None) -> Any:
    """A detail that gate rules may name (beyond the contract's core)."""
    return Field(default, description=description, json_schema_extra={"gate": True})


def _detail(description: str, default: Any = None, **kw: Any) -> Any:
    if "default_factory" in kw:
        return Field(description=description, **kw)
    return Field(default, description=description, **kw)


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- definitions shared by several figures -------------------------------------------------------
TTFT = ("time to first token: from sending the request to receiving the first streamed chunk with "
        "non-empty content, in ms, over successful requests")
ITL = ("inter-token latency: every gap between two consecutive streamed content chunks of a request "
       "(the first token excluded), pooled over all successful requests, in ms")
TPOT = ("time per output token: (e2e - ttft) / (output_tokens - 1) of one request, the mean decode time "
        "per token after the first, in ms")
E2E = ("end-to-end latency: from sending the request to the end of its response ([DONE] for a stream), "
       "in ms, over successful requests")


class StageRecord(_Block):
    """One stage of the run: what happened and how long it took."""

    status: StageStatus = Field(description="passed, failed (the stage judged the run bad), error (it could "
                                            "not run), skipped (not selected), not_run (an earlier stage "
                                            "failed), running (the run was stopped in it).")
    seconds: float = Field(0.0, description="Wall-clock seconds the stage took.")
    detail: str = Field("", description="One line: what the stage did or why it failed.")


class StagingBlock(_Block):
    """What staging the model weights did."""

    bytes: int = _contract("Bytes of the model's files.")
    files: int = _contract("Number of the model's files.")
    uploaded_bytes: int = _contract("Bytes uploaded by this run (unchanged files are skipped).")
    skipped_files: int = _contract("Files already in the store with the same size and hash.")
    seconds: float = _contract("Wall-clock seconds of staging.")
    MBps: float = _contract("Decimal megabytes uploaded per second of staging.")
    uri: str = _detail("Where the weights are (oss://bucket/prefix/ or a NAS path).", "")
    manifest_key: str = _detail("Object key (or path) of the manifest of sizes and SHA-256 hashes.", "")
    verified: bool = _detail("Every file's size and hash in the store matched the source.", False)
    backend: str = _detail("oss or nas.", "oss")
    uploaded_files: int = _detail("Files uploaded by this run.", 0)
    resumed_bytes: int = _detail("Bytes not re-sent because an interrupted upload was resumed.", 0)
    hashed_bytes: int = _detail("Bytes read to hash the source.", 0)
    retries: int = _detail("Retried requests to the store.", 0)
    pruned_files: int = _detail("Files under the prefix that were not in the source and were removed.", 0)
    source_kind: str = _detail("local, oss (copied server-side) or http (downloaded).", "local")
    downloaded_bytes: int = _detail("Bytes an http(s) source downloaded in this run.", 0)
    destination_check: str = _detail("NAS: the NFS mount the destination was verified on, or that the check was "
                                     "skipped (storage.nas.local).", "")


class SmokeCheckBlock(_Block):
    name: str = Field(description="models, chat or chat-stream.")
    ok: bool = Field(description="The check passed.")
    seconds: float = Field(description="Seconds the check took.")
    detail: str = Field("", description="What was seen, or what was wrong.")


class SmokeBlock(_Block):
    """The OpenAI-compatible checks through the ingress before any load."""

    ok: bool = _contract("Every check passed.", False)
    checks_passed: int = _contract("Checks that passed.", 0)
    checks_failed: int = _contract("Checks that failed.", 0)
    ttft_ms: float | None = _contract(f"Of the streamed check's request: {TTFT}.")
    checks: list[SmokeCheckBlock] = _detail("Every check, in order.", default_factory=list)


class LoadBlock(_Block):
    """What the load generator measured over the whole load shape."""

    requests: int | None = _contract("Finished requests, successful or failed (cancelled ones excluded).")
    failures: int | None = _contract("Failed requests: a non-200 status, a connection error, a timeout, an "
                                     "error event, a stream without [DONE] or a response without content.")
    error_rate: float | None = _contract("failures / requests; requests the generator itself cancelled at "
                                         "ramp-down are excluded.")
    rps: float | None = _contract("Finished requests per second of the load shape.")
    ttft_p50_ms: float | None = _contract(f"50th percentile of the {TTFT}.")
    ttft_p95_ms: float | None = _contract(f"95th percentile of the {TTFT}.")
    itl_p95_ms: float | None = _contract(f"95th percentile of the {ITL}.")
    e2e_p95_ms: float | None = _contract(f"95th percentile of the {E2E}.")
    output_tokens_per_s: float | None = _contract(
        "Completion tokens of successful requests (server-reported usage, else counted content chunks) "
        "per second of the load shape.")
    cancelled: int | None = _detail("Requests cancelled by the generator at ramp-down.")
    duration_s: float | None = _detail("Seconds of the load shape as run.")
    output_tokens: int | None = _detail("Completion tokens of successful requests.")
    ttft_p99_ms: float | None = _detail(f"99th percentile of the {TTFT}.")
    itl_p50_ms: float | None = _detail(f"50th percentile of the {ITL}.")
    itl_p99_ms: float | None = _detail(f"99th percentile of the {ITL}.")
    e2e_p50_ms: float | None = _detail(f"50th percentile of the {E2E}.")
    tpot_p50_ms: float | None = _detail(f"50th percentile of the {TPOT}.")
    tpot_p95_ms: float | None = _detail(f"95th percentile of the {TPOT}.")
    users_max: int | None = _detail("Most concurrent users at once.")
    streamed: bool | None = _detail("Tokens arrived as a stream (TTFT and ITL are measured).")
    tokens_source: dict[str, int] = _detail("Successful requests by where their token count came from "
                                            "(usage: the server's; chunks: counted).", default_factory=dict)
    errors: dict[str, int] = _detail("The ten most frequent error texts and their counts.", default_factory=dict)
    by_phase: dict[str, dict[str, Any]] = _detail(
        "The contract figures and goodput per load phase (baseline, ramp, spike, hold, cooldown), by the "
        "phase a request was sent in (intended, under open loop).", default_factory=dict)
    by_client_pool: dict[str, dict[str, Any]] = _detail(
        "Requests, failures and latency percentiles (TTFT p50/p95, ITL p95, e2e p95) per client pool: where "
        "the generator that sent the request stood (idc, elastic with load.generators.in_cluster; local "
        "otherwise), each over that pool's own requests.", default_factory=dict)
    generator: dict[str, Any] = _detail(
        "The generator's own account: processes, CPU seconds and peak %, event-loop lag p99, records "
        "dropped, stopped early, deadline hit; with open-loop arrivals also the arrival process and seed, "
        "requested rate (the realised schedule: intended send times drawn / duration), nominal rate, "
        "achieved rate and achieved/requested, schedule delay p50/p99 (actual - intended send time), "
        "in-flight peak and cap hits, and `behind`: why it fell behind (the run is then inconclusive). With "
        "load.generators.in_cluster: `in_cluster`, `workers` (per worker: index, pool, node, pod, requests, errors, "
        "share of the requests, sent, exit code, clock offset and round trip to tidegate's clock in ms), "
        "`clock_skew_ms` (the spread of the workers' offsets; their records are shifted onto tidegate's "
        "clock), `clock_uncertainty_ms` (half the largest round trip) and the collector's address.",
        default_factory=dict)
    arrival: str | None = _detail("closed (users in a closed loop) or the open-loop arrival process "
                                  "(poisson, gamma, constant).")
    slo_attainment: float | None = _gated(
        "Good requests / finished requests over the whole episode, drain included: good = succeeded and "
        "met every per-request SLO of load.slo (TTFT, ITL p95, TPOT, e2e; latencies from the intended "
        "send time under open loop); with no SLO set, good = succeeded.")
    request_goodput_rps: float | None = _gated("Good requests per second of the episode (drain included).")
    token_goodput_per_s: float | None = _gated(
        "Output tokens of good requests per second of the episode (drain included).")
    goodput: dict[str, Any] = _detail(
        "How goodput was counted: the SLOs applied, good requests, the episode's seconds.", default_factory=dict)


class ElasticityBlock(_Block):
    """Did the service spill over to the cloud pool and back, and how fast (seconds from the spike's
    start; null = never observed). The full definitions are in tasks/verify.py."""

    hpa_max_replicas: int | None = _contract("The largest size the HPA asked for.")
    idc_pods_max: int = _contract("Most Ready pods of the service at once on the IDC pool.", 0)
    cloud_pods_max: int = _contract("Most Ready pods of the service at once on the elastic (cloud) pool.", 0)
    scale_up_events: int = _contract("Autoscaler scale-ups for the service (TriggeredScaleUp on its pods, "
                                     "else ScaledUpGroup decisions).", 0)
    scale_down_events: int = _contract("Elastic nodes the autoscaler scaled down, each counted once.", 0)
    time_to_hpa_rescale_s: float | None = _contract("Seconds to the HPA's first scale-up.")
    time_to_cloud_node_s: float | None = _contract("Seconds to the first elastic node created that became Ready.")
    time_to_first_cloud_pod_ready_s: float | None = _contract("Seconds to the first service pod Ready on the "
                                                              "elastic pool.")
    scale_in_back_to_idc: bool | None = _contract(
        "Cloud pods removed before IDC pods, the pods left all on IDC, and the elastic pool back to its "
        "minimum; null when there was no spill-over.")
    successful_rescale_count: int = _detail("SuccessfulRescale events of the HPA.", 0)
    failed_scheduling_idc: int = _detail("FailedScheduling events of the service's pods.", 0)
    triggered_scale_up: int = _detail("TriggeredScaleUp events on the service's pods.", 0)
    scaled_up_group: int = _detail("ScaledUpGroup decisions on the autoscaler's status.", 0)
    scale_up_events_source: str = _detail("Which events scale_up_events counts.", "none")
    scale_down_events_source: str = _detail("Which events scale_down_events counts.", "none")
    elastic_nodes_max: int = _detail("Most elastic nodes at once.", 0)
    elastic_pool_back_to_min: bool | None = _detail("Elastic nodes at the end <= the group's minimum.")
    elastic_pool_min_nodes: int | None = _detail("The elastic group's configured minimum.")
    cloud_pods_removed_before_idc: bool | None = _detail("No IDC pod's deletion was requested before every "
                                                         "cloud pod's.")
    time_to_elastic_pool_min_s: float | None = _detail("Seconds to the elastic pool back at its minimum.")
    first_cloud_pod_ready_phase: str | None = _detail("The load phase in which the first cloud pod became Ready.")
    time_to_cloud_pods_gone_s: float | None = _detail("Seconds to the last Ready cloud pod gone.")
    spill_over_traffic_time: str | None = _detail("Tidal shape: the first cloud pod Ready, on the replayed "
                                                  "traffic day.")
    spill_back_traffic_time: str | None = _detail("Tidal shape: the cloud pods gone, on the replayed traffic day.")
    cloud_pods_preexisting: int = _gated("Service pods already Ready on the elastic pool when the spike began: "
                                         "named, never counted as spill-over.", 0)
    elastic_nodes_preexisting: int = _gated("Elastic nodes that existed when the spike began.", 0)
    hpa_metric_failures: int = _gated(
        "Times the HPA could not read its metric in the run (ScalingActive=False, FailedGetPodsMetric / "
        "FailedComputeMetricsReplicas events): the HPA was blind.", 0)
    not_trigger_scale_up_events: int = _gated("NotTriggerScaleUp events on the service's pods: the autoscaler "
                                              "saw them Pending and decided not to add a node.", 0)
    elastic_pool_at_max_while_pending: bool | None = _gated(
        "Pods of the service waited for a GPU while the elastic pool was at its max size (stockout or a "
        "max too small); null when the group's max is unknown.")
    nodes_not_ready_in_time: int = _gated("Elastic nodes not Ready within cluster.max_node_provision_time_s of "
                                          "their creation.", 0)
    failed_create_events: int = _gated("FailedCreate events of the predictor's ReplicaSets: pods the HPA asked "
                                       "for were never created (quota, admission).", 0)
    scale_events: list[dict[str, Any]] = _detail(
        "The critical path of every scale event, up and down (tasks/critical_path.py): {direction, replicas_from, "
        "replicas_to, pool, pod, steps: [{step, started_at, seconds, evidence}], not_needed, total_s}; a step "
        "the cluster does not reveal is unknown (seconds null, evidence 'unknown: why'), never guessed.",
        default_factory=list)
    violation_bill: list[dict[str, Any]] = _detail(
        "Requests that missed load.slo, by the step of a scale event's critical path in effect when they were "
        "sent ({step, span, requests, share, phases}), largest first.", default_factory=list)


class CostBlock(_Block):
    """What the run's GPU pools cost and the per-day estimates. Money in ``currency``."""

    status: str = _contract("ok, or 'no data: <why>'.", "ok")
    currency: str = _contract("ISO 4217 code of every figure.", "CNY")
    compression_factor: float | None = _contract("Real seconds per run second of the replayed traffic "
                                                 "(tidal shape; 1 for spike).")
    cloud_cost_run: float | None = _contract(
        "Cloud cost of this run: each cloud node billed on its own, its Ready time rounded up to the billing "
        "granularity and at least the minimum charge, at the node-hour price.")
    cloud_cost_per_day: float | None = _contract(
        "Cloud cost of one real day: each cloud node's Ready time x compression factor, billed as for the "
        "run, scaled to 24 h of traffic.")
    idc_cost_per_day: float | None = _contract("The IDC pool paid all day (amortised).")
    hybrid_cost_per_day: float | None = _contract("(a) One real day as measured: the IDC pool paid all day "
                                                  "(amortised) plus cloud_cost_per_day.")
    idc_for_peak_cost_per_day: float | None = _contract("(b) An IDC pool sized for the peak: peak Ready replicas "
                                                        "x GPUs per replica x 24 h at the IDC GPU-hour price.")
    cloud_only_cost_per_day: float | None = _contract(
        "(c) Cloud only: every replica's Ready time x compression factor on a cloud instance of its own, "
        "billed, at the cloud GPU-hour price.")
    cloud_cost_per_day_idle_unscaled: float | None = _detail(
        "cloud_cost_per_day with idle cloud node time (no Ready pod on it) not multiplied by the compression "
        "factor: autoscaler delays run in real seconds, so cloud_cost_per_day overstates them.")
    node_seconds: dict[str, float | None] = _detail(
        "Per node pool: seconds each node was Ready (NodeReady to NodeDeleted), summed, within the measured "
        "window.", default_factory=dict)
    replica_seconds: dict[str, float | None] = _detail(
        "Per node pool: seconds each pod of the service was Ready (PodReady to PodNotReady or PodDeleted) on a "
        "node of that pool, summed.", default_factory=dict)
    cloud_node_seconds: float | None = _detail("node_seconds of the cloud pool.")
    cloud_nodes: int = _detail("Cloud nodes that were Ready in the window.", 0)
    cloud_billed_s: float | None = _detail("Cloud node seconds as billed (granularity and minimum charge).")
    peak_replicas: int | None = _detail("Most Ready replicas of the service at once.")
    gpu_utilisation: dict[str, float | None] = _detail(
        "Per pool: GPU-seconds of Ready replicas over GPU-seconds of Ready nodes.", default_factory=dict)
    idc_gpu_utilisation: float | None = _detail("gpu_utilisation of the IDC pool.")
    cloud_gpu_utilisation: float | None = _detail("gpu_utilisation of the cloud pool.")
    cloud_idle_node_s: float | None = _detail("Cloud node-seconds with no Ready pod of the service on the node.")
    scale_down_lag_s: float | None = _detail("Cloud node-seconds kept after the last cloud pod left (spare "
                                             "capacity after the peak), in run seconds.")
    requests_served: int | None = _detail("Successful requests.")
    requests_per_gpu_hour: float | None = _detail("Successful requests over the GPU-hours held by the "
                                                  "service's Ready replicas.")
    window_s: float | None = _detail("Seconds of the measured window.")
    traffic_span_s: float | None = _detail("Seconds of replayed traffic in the window.")
    real_span_s: float | None = _detail("traffic_span_s x compression factor: the real time it stands for.")
    day_scale: float | None = _detail("24 h / real_span_s: how the per-day figures scale the run.")
    billing_granularity: str = _detail("Unit each cloud node's time is rounded up to.", "second")
    minimum_charge_s: int = _detail("Each cloud node is billed for at least this many seconds.", 0)
    prices: dict[str, dict[str, Any]] = _detail("The spec's price per pool.", default_factory=dict)
    gpus_time_averaged: dict[str, float] = _detail(
        "Per pool: GPUs held by the service's Ready replicas, averaged over the window.", default_factory=dict)
    idc_cost_run: float | None = _detail("The IDC pool's amortised cost over this run's window.")
    cost_run: float | None = _gated("idc_cost_run + cloud_cost_run: what this run cost.")
    good_output_tokens: int | None = _detail("Output tokens of SLO-good requests (load.slo; drain included).")
    slo_attainment: float | None = _detail("SLO-good requests / finished requests (as load.slo_attainment).")
    cost_per_million_good_output_tokens: float | None = _gated(
        "cost_run per million output tokens of SLO-good requests: what good service cost.")
    basis: dict[str, str] = _detail("For each figure: measured over the run, or extrapolated (by what factor, "
                                    "from what).", default_factory=dict)
    pools: dict[str, str] = _detail("The pool ids: idc and cloud.", default_factory=dict)
    notes: list[str] = _detail("What the figures assume or could not measure.", default_factory=list)


class GateRuleResult(_Block):
    """One SLO rule judged against the report."""

    rule: str = Field(description="Dotted report key, e.g. load.ttft_p95_ms.")
    status: RuleStatus = Field(description="pass, warn, fail, or inconclusive (no data, no baseline).")
    value: Any = Field(None, description="The run's value (null: no data).")
    threshold: bool | int | float | str | None = Field(
        None, description="The rule's threshold; for a statistical rule what it compares with (e.g. '+10% vs "
                          "baseline', 'no change point').")
    op: str = Field("", description="The comparator.")
    detail: str = Field("", description="Why, when it is not a plain comparison.")
    critical: bool = Field(False, description="The rule decides alone and is never scored.")
    weight: int = Field(1, description="The rule's weight in the spec's score.")
    scored: bool = Field(False, description="Counted in the spec's score (the gate.score result): its own "
                                            "status does not decide the verdict alone.")


class FindingBlock(_Block):
    """One step of the spill-over / spill-back sequence (or a link of the autoscaling plumbing),
    with the timeline rows it rests on."""

    name: str
    ok: bool
    detail: str
    evidence: list[str] = Field(default_factory=list)
    inconclusive: bool = Field(False, description="Not observed, but the observer lost events: it may have "
                                                  "happened unseen.")


class PhaseBlock(_Block):
    name: str = Field(description="baseline, ramp, spike, hold or cooldown.")
    start: str = Field(description="ISO time the phase began.")
    end: str = Field(description="ISO time the phase ended.")


class OwnedBlock(_Block):
    """An object the run created (or took over with --adopt): teardown and `tidegate cleanup`
    delete exactly these, by uid (the run's ledger, objects.json)."""

    kind: str = Field(description="Kubernetes kind.")
    namespace: str | None = Field(None, description="Namespace (none for cluster-scoped objects).")
    name: str = Field(description="Object name.")
    uid: str = Field(description="metadata.uid as the server returned it on creation.")
    adopted: bool = Field(False, description="It existed and was taken over because --adopt named it.")


class RepeatInterval(_Block):
    """A per-run figure over the repetitions: the mean with its two-sided Student-t interval."""

    n: int = Field(description="Repetitions with a value.")
    mean: float | None = None
    median: float | None = None
    stdev: float | None = Field(None, description="Sample standard deviation (n - 1).")
    ci_low: float | None = Field(None, description="Lower bound of the interval of the mean (null: n < 2).")
    ci_high: float | None = Field(None, description="Upper bound of the interval of the mean (null: n < 2).")
    confidence: float = 0.95
    note: str = Field("", description="Why there is no interval, or how many repetitions had no value.")


class RepeatRun(_Block):
    """One repetition of the spike shape."""

    index: int = Field(description="1 is the run's main figures.")
    started_at: str | None = None
    ended_at: str | None = None
    settled: bool | None = Field(None, description="The elastic pool was back at its minimum before the next "
                                                   "repetition (false: it started from a spilled state).")
    missing: list[str] = Field(default_factory=list, description="Findings of this repetition that did not hold.")
    figures: dict[str, float | None] = Field(default_factory=dict, description="The repetition's per-run figures.")


class RepeatsBlock(_Block):
    """load.repeat > 1: the spike shape ran this many times in the run (measured, one after the other
    on the same deployment); the confidence intervals of the per-run figures over the repetitions.
    The load, elasticity and cost blocks are the first repetition's."""

    n: int
    confidence: float = 0.95
    method: str = ""
    intervals: dict[str, RepeatInterval] = Field(default_factory=dict)
    runs: list[RepeatRun] = Field(default_factory=list)
class RealismFigureBlock(_Block):
    """One timing the run's cluster assumed (a test bed realism profile's figure)."""

    name: str = Field(description="The figure (``tidegate testbed up --set realism.<name>=...``).")
    value: float | str | None = Field(description="Its value on the test bed the run used.")
    unit: str = Field("", description="s, GB, MB/s or '' for a choice.")
    what: str = Field("", description="The link of the scale-up/scale-down chain it times.")
    source: str = Field("", description="Where the figure comes from (URL / citation), or 'set by the user'.")


class ProjectedFigureBlock(_Block):
    """One critical-path figure of this run, measured and projected onto another profile."""

    figure: str = Field(description="elasticity.<key>, or a scale event's total_s.")
    measured_s: float | None = Field(description="As measured in this run (null: not observed).")
    projected_s: float | None = Field(description="measured_s + added_s (null when measured_s is).")
    added_s: float = Field(description="The projection's difference of timings over the steps up to this figure.")
    steps: dict[str, float] = Field(default_factory=dict, description="Step of the critical path -> seconds added.")


class RealismProjectionBlock(_Block):
    """A projection, not a measurement: this run's critical-path figures had the cluster taken the
    other profile's timings. Each step's measured seconds get the difference of the timings that
    step waits for; the rest of the run (load, replicas, decisions) is assumed unchanged."""

    onto: str = Field(description="The profile projected onto (ack-gpu).")
    statement: str = Field(description="What the projection is and what it rests on, in one sentence.")
    figures: list[ProjectedFigureBlock] = Field(default_factory=list, description="time_to_hpa_rescale_s, "
                                                "time_to_cloud_node_s, time_to_first_cloud_pod_ready_s.")
    scale_events: list[ProjectedFigureBlock] = Field(
        default_factory=list, description="Every scale event of elasticity.scale_events: its total_s projected.")
    step_deltas: dict[str, str] = Field(default_factory=dict,
                                        description="Step -> the timings whose difference it gets (the formula).")
    notes: list[str] = Field(default_factory=list, description="What the projection means for this spec's load.")


class RealismBlock(_Block):
    """The cluster's timings the run assumed: a test bed's realism profile (docs/realism.md) with
    every figure and its source, or ``none (real cluster)``; for a ``fast`` test bed, the projection
    of the critical-path figures onto ``ack-gpu``."""

    profile: str = _contract("fast or ack-gpu (the test bed's realism profile), or 'none (real cluster)'.")
    source: str = Field("", description="Where the run read it (the test bed's realism.json beside the kubeconfig).")
    overridden: list[str] = Field(default_factory=list, description="Figures set by the user on top of the profile.")
    figures: list[RealismFigureBlock] = Field(default_factory=list, description="Every timing the profile applied.")
    projection: RealismProjectionBlock | None = Field(None, description=RealismProjectionBlock.__doc__)


class RunReport(BaseModel):
    """One run of tidegate: report.json."""

    model_config = ConfigDict(extra="forbid", title="tidegate run report", validate_assignment=True)

    schema_version: str = Field(SCHEMA_VERSION, description="Version of this contract.")
    verdict: Verdict = Field("fail", description="pass / warn (exit 0), fail (exit 1), inconclusive (exit 3: "
                                                 "the run could not decide; see inconclusive_reasons).")
    inconclusive_reasons: list[str] = Field(default_factory=list,
                                            description="Why the run could not decide (empty unless inconclusive).")
    run_id: str = Field(description="Label of everything the run created; the report's directory name.")
    spec: str = Field(description="The spec's name; runs of one spec are compared with each other.")
    profile: str = Field(description="local (the test bed) or ack.")
    image: str | None = Field(None, description="The service image under test (service.image).")
    commit: str | None = Field(None, description="The git commit of the tidegate checkout that ran, when known.")
    started_at: str = Field(description="ISO time the run started.")
    finished_at: str = Field("", description="ISO time the run finished.")
    stages: dict[str, StageRecord] = Field(default_factory=dict, description="Every stage, in order.")
    staging: StagingBlock | None = Field(None, description=StagingBlock.__doc__)
    smoke: SmokeBlock | None = Field(None, description=SmokeBlock.__doc__)
    load: LoadBlock | None = Field(None, description=LoadBlock.__doc__)
    elasticity: ElasticityBlock | None = Field(None, description=ElasticityBlock.__doc__)
    cost: CostBlock | None = Field(None, description=CostBlock.__doc__)
    repeats: RepeatsBlock | None = Field(None, description=RepeatsBlock.__doc__)
    realism: RealismBlock | None = Field(None, description=RealismBlock.__doc__)
    gate: list[GateRuleResult] = Field(default_factory=list, description="Every SLO rule judged.")
    findings: list[FindingBlock] = Field(default_factory=list, description=FindingBlock.__doc__)
    phases: list[PhaseBlock] = Field(default_factory=list, description="The load shape's phases as run.")
    objects: list[OwnedBlock] = Field(default_factory=list, description=OwnedBlock.__doc__)
    adopt: list[str] = Field(default_factory=list,
                             description="--adopt as given: existing objects the run was allowed to take over.")
    definitions: dict[str, str] = Field(default_factory=dict,
                                        description="The definition of every figure in the report's blocks.")
    warnings: list[str] = Field(default_factory=list, description="What went wrong without deciding the verdict.")

    def to_dict(self) -> dict[str, Any]:
        """report.json as a dict (what the gate's rules read)."""
        return self.model_dump(mode="json")

    def fill_definitions(self) -> None:
        """``definitions`` for every block the run filled, from the blocks' field descriptions."""
        self.definitions = {k: v for k, v in definitions().items() if getattr(self, k.split(".")[0]) is not None}


# the blocks a gate rule may read, by report key
BLOCKS: dict[str, type[_Block]] = {"staging": StagingBlock, "smoke": SmokeBlock, "load": LoadBlock,
                                   "elasticity": ElasticityBlock, "cost": CostBlock}

CONTRACT_KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(f for f, info in model.model_fields.items()
                if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("contract"))
    for name, model in BLOCKS.items()}


# blocks whose rules may name only the contract's keys (the stable core); the others, every key
RULES_ON_CONTRACT_ONLY = ("staging", "load", "elasticity")
# sections a rule may read without a block model (``stages.deploy.seconds``)
OPEN_RULE_SECTIONS = ("stages",)


GATED_KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(f for f, info in model.model_fields.items()
                if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("gate"))
    for name, model in BLOCKS.items()}


def rule_keys() -> dict[str, tuple[str, ...]]:
    """block -> the keys of that block a gate rule may name."""
    return {name: CONTRACT_KEYS[name] + GATED_KEYS[name] if name in RULES_ON_CONTRACT_ONLY
            else tuple(model.model_fields) for name, model in BLOCKS.items()}


def definitions() -> dict[str, str]:
    """``block.key`` -> the figure's definition, for every block field with one."""
    return {f"{name}.{f}": info.description for name, model in BLOCKS.items()
            for f, info in model.model_fields.items() if info.description}


def report_schema() -> dict[str, Any]:
    """The JSON Schema of report.json (what ``tidegate report schema`` prints)."""
    schema = RunReport.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://tidegate.dev/schema/report-{SCHEMA_VERSION}.json"
    return schema


def report_schema_text() -> str:
    return json.dumps(report_schema(), indent=2, sort_keys=True) + "\n"


__all__ = ["BLOCKS", "CONTRACT_KEYS", "RepeatInterval", "RepeatRun", "RepeatsBlock", "CostBlock", "ElasticityBlock", "FindingBlock", "GateRuleResult",
           "LoadBlock", "PhaseBlock", "ProjectedFigureBlock", "RealismBlock", "RealismFigureBlock",
           "RealismProjectionBlock", "RunReport", "SCHEMA_VERSION", "SmokeBlock", "SmokeCheckBlock",
           "OPEN_RULE_SECTIONS", "StageRecord", "StagingBlock", "definitions", "report_schema", "report_schema_text", "rule_keys"]
