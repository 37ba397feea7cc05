"""Verification: did the service spill over to the cloud pool and back, and how fast.

:func:`verify` reads the observer's :class:`~tasks.observe.Timeline` and returns
:class:`Elasticity`: the ``elasticity`` block of report.json (``Elasticity.block()``) and a
list of :class:`Finding`, one per step of the expected sequence, each citing the timeline
rows it rests on (``Event FailedScheduling ns/pod 12:00:03: 0/2 nodes are available: ...``).

The expected sequence (reference: ack-kserve-arena.md §8): the HPA rescales
(``SuccessfulRescale``) -> a new pod finds no GPU on the IDC pool (``FailedScheduling``) ->
the cluster-autoscaler scales the elastic group (``TriggeredScaleUp`` on the pod,
``ScaledUpGroup`` on its status ConfigMap) -> an elastic node is Ready -> the pod is Ready on
it; after the load stops: the HPA scales in, cloud pods are removed before IDC pods, and the
autoscaler removes the empty elastic nodes (``ScaleDown`` / ``ScaleDownEmpty``).

Definitions (all times are seconds from ``spike_started_at``; ``None`` = never observed):

- Rows count from ``spike_started_at`` (floored to the second: apiserver times are often
  whole seconds) to ``ended_at``; states (pods Ready, nodes) carry in from before.
- The service's pods: the Pods the observer watched, plus any pod named
  ``<predictor>-...`` that an event is about. Cloud = on a node whose nodepool label is
  ``spec.cluster.elastic_pool_id``; IDC = ``idc_pool_id``.
- ``hpa_max_replicas``: the largest size the HPA asked for (desiredReplicas, or the
  ``New size`` of a ``SuccessfulRescale``); ``successful_rescale_count`` counts them all.
- ``idc_pods_max`` / ``cloud_pods_max``: most Ready pods of the service at once per pool.
- ``scale_up_events``: ``TriggeredScaleUp`` events on the service's pods (attributable to
  this service); when there are none, the ``ScaledUpGroup`` "setting group ... size"
  decisions on the autoscaler's status ConfigMap. ``scale_up_events_source`` says which.
- ``scale_down_events``: the nodes the autoscaler scaled down, counted once each, named by
  its ``ScaleDown`` "marked the node as toBeDeleted" events on the nodes and its
  ``ScaleDownEmpty`` / ``ScaleDown`` "Scale-down: removing ... node" events on its status
  ConfigMap. Both count because either can be missing: events on the one long-lived
  ConfigMap are aggregated and then rate-limited by client-go (25, then one per 5 min per
  object), as seen on the test bed after a few runs. Nodes known to be IDC do not count.
  ``scale_down_events_source`` names the sources seen.
- ``time_to_hpa_rescale_s``: first HPA scale-up; ``time_to_cloud_node_s``: first elastic
  node created in the window that became Ready; ``time_to_first_cloud_pod_ready_s``: first
  service pod Ready on the elastic pool.
- ``cloud_pods_removed_before_idc``: after ``cooldown_started_at``, no IDC pod's deletion
  was requested before the deletion of every cloud pod (deletion *request* times, to the
  second; the same second counts as together, since one ReplicaSet sync removes both when
  the HPA drops two replicas at once). ``None`` when no cloud pod existed.
- ``elastic_pool_back_to_min``: elastic nodes at ``ended_at`` <= the group's configured
  min (from the autoscaler status; 0 when unknown); ``time_to_elastic_pool_min_s``: when it
  got back there after having been above.
- ``scale_in_back_to_idc``: cloud pods removed before IDC pods, the pods left at the end all
  on IDC, and the elastic pool back to its minimum by ``ended_at``. ``None`` when there was no
  spill-over (no cloud pod): there was nothing to spill back, and no spill-back is invented.
- ``first_cloud_pod_ready_phase``: the load phase (``load.phases``: baseline, ramp, spike,
  hold, cooldown; "after" once the load ended) in which the first cloud pod became Ready.
- ``time_to_cloud_pods_gone_s``: when the last Ready cloud pod went away (no cloud pod Ready
  from then to ``ended_at``), after having had one.
- ``spill_over_traffic_time`` / ``spill_back_traffic_time``: with a ``traffic_clock`` (the
  tidal shape's, mapping seconds from ``spike_started_at`` to the replayed curve's time, e.g.
  ``19:40``), the first cloud pod Ready and the cloud pods gone on the user's traffic day.

- ``placement_policy_vs_autoscaler`` (a finding only when it happened): FailedScheduling events
  on the service's pods in which a ResourcePolicy unit's ``max`` refused nodes with room
  (``POLICY_MAX_REFUSAL``), for pods that got no TriggeredScaleUp: the autoscaler, which does not
  know the policy, found them schedulable there and scaled nothing (ACK's warning that
  ResourcePolicy with autoscaling may trigger incorrect node-pool scaling).

For the tidal shape the flow passes the load's start as ``spike_started_at``: the whole replay
is the spike, so a spill-over during the day's ramp is counted, not cut off.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from tasks.names import AUTOSCALER_STATUS
from tasks.observe import Timeline, rows_lines
from tasks.report_model import CONTRACT_KEYS as REPORT_CONTRACT_KEYS
from tasks.report_model import ElasticityBlock
from tasks.spec import RolloutSpec

# the report contract's elasticity keys, then the details: from the report model
CONTRACT_KEYS = REPORT_CONTRACT_KEYS["elasticity"]
EXTRA_KEYS = tuple(k for k in ElasticityBlock.model_fields if k not in CONTRACT_KEYS)
EVIDENCE_LINES = 6


@dataclass
class Finding:
    """One step of the spill-over / spill-back sequence: observed (``ok``) or not, in words,
    with the timeline rows it rests on."""

    name: str
    ok: bool
    detail: str
    evidence: list[str] = field(default_factory=list)
    inconclusive: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Elasticity:
    """The ``elasticity`` block of report.json plus extras and findings (see the module docstring)."""

    hpa_max_replicas: int | None = None
    idc_pods_max: int = 0
    cloud_pods_max: int = 0
    scale_up_events: int = 0
    scale_down_events: int = 0
    time_to_hpa_rescale_s: float | None = None
    time_to_cloud_node_s: float | None = None
    time_to_first_cloud_pod_ready_s: float | None = None
    scale_in_back_to_idc: bool | None = None
    successful_rescale_count: int = 0
    failed_scheduling_idc: int = 0
    triggered_scale_up: int = 0
    scaled_up_group: int = 0
    scale_up_events_source: str = "none"
    scale_down_events_source: str = "none"
    elastic_nodes_max: int = 0
    elastic_pool_back_to_min: bool | None = None
    elastic_pool_min_nodes: int | None = None
    cloud_pods_removed_before_idc: bool | None = None
    time_to_elastic_pool_min_s: float | None = None
    first_cloud_pod_ready_phase: str | None = None
    time_to_cloud_pods_gone_s: float | None = None
    spill_over_traffic_time: str | None = None
    spill_back_traffic_time: str | None = None
    cloud_pods_preexisting: int = 0
    elastic_nodes_preexisting: int = 0
    hpa_metric_failures: int = 0
    not_trigger_scale_up_events: int = 0
    elastic_pool_at_max_while_pending: bool | None = None
    nodes_not_ready_in_time: int = 0
    failed_create_events: int = 0
    scale_events: list[dict[str, Any]] = field(default_factory=list)     # filled by the verify stage
    violation_bill: list[dict[str, Any]] = field(default_factory=list)   # (tasks.critical_path)
    findings: list[Finding] = field(default_factory=list)

    def block(self, *, extras: bool = True) -> dict[str, Any]:
        """The report contract's keys first, then (with ``extras``) the additional figures."""
        block = ElasticityBlock(**{k: getattr(self, k) for k in ElasticityBlock.model_fields})
        return block.model_dump(mode="json", include=set(CONTRACT_KEYS + (EXTRA_KEYS if extras else ())))

    def findings_block(self) -> list[dict[str, Any]]:
        return [f.as_dict() for f in self.findings]

    def finding(self, name: str) -> Finding | None:
        return next((f for f in self.findings if f.name == name), None)


# -- helpers ------------------------------------------------------------------------------------
def _stamp(value: datetime | pd.Timestamp | str) -> pd.Timestamp:
    out = pd.Timestamp(value)
    return out.tz_localize("UTC") if out.tzinfo is None else out.tz_convert("UTC")


def _secs(at: pd.Timestamp | None, origin: pd.Timestamp) -> float | None:
    if at is None or pd.isna(at):
        return None
    return round(max(0.0, (at - origin).total_seconds()), 3)


def _first(rows: pd.DataFrame) -> pd.Series | None:
    return rows.iloc[0] if len(rows) else None


def _max_in_window(series: pd.DataFrame, pool: str, start: pd.Timestamp, end: pd.Timestamp, column: str) -> int:
    inside = series[(series["pool"] == pool) & (series["time"] >= start) & (series["time"] <= end)]
    values = [Timeline.value_at(series, pool, start, column)] + [int(v) for v in inside[column]]
    return max(values)


def _hhmmss(at: pd.Timestamp | None) -> str:
    return at.strftime("%H:%M:%S") if at is not None and not pd.isna(at) else "never"


_NODE_IN_MESSAGE = re.compile(r'node "?([A-Za-z0-9][A-Za-z0-9._-]*)"?')


class _View:
    """The timeline cut to this run's window and service."""

    def __init__(self, tl: Timeline, spec: RolloutSpec, start: pd.Timestamp, cooldown: pd.Timestamp,
                 end: pd.Timestamp, since: str = "the spike started"):
        self.tl, self.spec, self.since = tl, spec, since
        self.origin, self.cooldown, self.end = start, cooldown, end
        self.start = start.floor("s")
        self.cooldown_floor = cooldown.floor("s")
        self.ns = spec.cluster.namespace
        self.idc = tl.idc_pool_id or spec.cluster.idc_pool_id
        self.elastic = tl.elastic_pool_id or spec.cluster.elastic_pool_id
        df = tl.df
        self.df = df
        self.win = df[(df["time"] >= self.start) & (df["time"] <= end)]
        pod_rows = df[df["kind"] == "Pod"]
        prefix = f"{self.ns}/{spec.service.predictor_name}-"
        self.pod_names = set(pod_rows["object"])
        self.pods = pod_rows
        self.hpa_object = f"{self.ns}/{spec.service.hpa_name}"
        on_pod = (self.win["kind"] == "Event") & (self.win["object_kind"] == "Pod")
        self.pod_events = self.win[on_pod & (self.win["object"].isin(self.pod_names)
                                             | self.win["object"].str.startswith(prefix, na=False))]
        self.node_pool = {r.node: r.pool for r in df[df["kind"] == "Node"].itertuples(index=False)}

    def events(self, reason: str | tuple[str, ...], *, frame: pd.DataFrame | None = None) -> pd.DataFrame:
        frame = self.win if frame is None else frame
        reasons = (reason,) if isinstance(reason, str) else reason
        return frame[(frame["kind"] == "Event") & frame["reason"].isin(reasons)]

    def pod_pool_of(self) -> dict[str, tuple[str | None, str | None]]:
        """pod object -> (pool, node) from its PodScheduled row (last one)."""
        out: dict[str, tuple[str | None, str | None]] = {}
        for r in self.pods[self.pods["reason"] == "PodScheduled"].itertuples(index=False):
            out[r.object] = (r.pool if isinstance(r.pool, str) else self.node_pool.get(r.node), r.node)
        return out


# -- the verification ---------------------------------------------------------------------------
def verify(timeline: Timeline, spec: RolloutSpec, *, spike_started_at: datetime | pd.Timestamp | str,
           cooldown_started_at: datetime | pd.Timestamp | str, ended_at: datetime | pd.Timestamp | str,
           load: Any = None, traffic_clock: Callable[[float], str] | None = None,
           since: str = "the spike started") -> Elasticity:
    """Judge the timeline of one run (see the module docstring for every definition).

    The figures come from the cluster's own record; ``load`` (the LoadResult) only names the
    phase a step fell in, ``traffic_clock`` the time on the replayed traffic curve; ``since``
    names ``spike_started_at`` in the findings' words.
    """
    start, cooldown, end = _stamp(spike_started_at), _stamp(cooldown_started_at), _stamp(ended_at)
    v = _View(timeline, spec, start, cooldown, end, since)
    el = Elasticity()
    findings: list[Finding] = []
    if timeline.gaps:
        findings.append(Finding("observer_complete", False,
                                "the observer could not watch everything, so some steps below may be "
                                "missing for that reason alone", list(timeline.gaps)))

    _hpa(v, el, findings)
    pods_per_pool = timeline.pods_per_pool()
    nodes_per_pool = timeline.nodes_per_pool()
    el.idc_pods_max = _max_in_window(pods_per_pool, v.idc, v.start, end, "pods")
    # only this run's evidence: cloud pods Ready before the spike are named, never counted
    el.cloud_pods_preexisting = Timeline.value_at(pods_per_pool, v.elastic, v.start, "pods")
    el.elastic_nodes_preexisting = Timeline.value_at(nodes_per_pool, v.elastic, v.start, "nodes")
    own = _without_preexisting_cloud_pods(v, timeline) if el.cloud_pods_preexisting else pods_per_pool
    el.cloud_pods_max = _max_in_window(own, v.elastic, v.start, end, "pods")
    el.elastic_nodes_max = _max_in_window(nodes_per_pool, v.elastic, v.start, end, "nodes")
    if el.cloud_pods_preexisting or el.elastic_nodes_preexisting:
        before = v.pods[(v.pods["reason"] == "PodReady") & (v.pods["pool"] == v.elastic) & (v.pods["time"] < v.start)]
        findings.append(Finding(
            "preexisting_cloud_capacity", True,
            f"{el.cloud_pods_preexisting} pod(s) of the service and {el.elastic_nodes_preexisting} elastic node(s) "
            f"were already on the elastic pool before {v.since}: named here, not counted "
            f"as this run's spill-over", rows_lines(before.tail(EVIDENCE_LINES), EVIDENCE_LINES)))
    _spill_over(v, el, findings)
    _spill_back(v, el, findings, nodes_per_pool)
    _when(v, el, own, load, traffic_clock)
    _plumbing(v, el, findings, nodes_per_pool)
    if timeline.gaps:
        for f in findings:
            if not f.ok and f.name != "observer_complete":
                f.inconclusive = True
                f.detail += " (inconclusive: the observer lost events, it may have happened unseen)"
    el.findings = findings
    return el


def _without_preexisting_cloud_pods(v: _View, timeline: Timeline) -> pd.DataFrame:
    """Ready pods per pool, leaving out the pods that were Ready on the elastic pool before the
    window (so that they never count as this run's spill-over)."""
    pods = v.pods
    early = set(pods[(pods["reason"] == "PodReady") & (pods["pool"] == v.elastic) & (pods["time"] < v.start)]["object"])
    df = timeline.df
    return Timeline(df=df[~((df["kind"] == "Pod") & df["object"].isin(early))]).pods_per_pool()


def _when(v: _View, el: Elasticity, pods_per_pool: pd.DataFrame, load: Any,
          traffic_clock: Callable[[float], str] | None) -> None:
    """Where in the load (phase) and in the traffic day (clock) the spill-over and -back fell."""
    steps = pods_per_pool[(pods_per_pool["pool"] == v.elastic) & (pods_per_pool["time"] <= v.end)]
    had = steps[steps["pods"] > 0]
    if len(had) and Timeline.value_at(pods_per_pool, v.elastic, v.end, "pods") == 0:
        gone = steps[(steps["time"] > had["time"].iloc[-1]) & (steps["pods"] == 0)]
        el.time_to_cloud_pods_gone_s = _secs(gone["time"].iloc[0], v.origin) if len(gone) else None
    ready_s = el.time_to_first_cloud_pod_ready_s
    if ready_s is not None and load is not None and getattr(load, "phases", None):
        at = v.origin + pd.Timedelta(seconds=ready_s)
        el.first_cloud_pod_ready_phase = next(
            (p.name for p in load.phases if _stamp(p.start) <= at < _stamp(p.end)),
            "after" if at >= _stamp(load.phases[-1].end) else "before")
    if traffic_clock is not None:
        if ready_s is not None:
            el.spill_over_traffic_time = traffic_clock(ready_s)
        if el.time_to_cloud_pods_gone_s is not None:
            el.spill_back_traffic_time = traffic_clock(el.time_to_cloud_pods_gone_s)


def _hpa(v: _View, el: Elasticity, findings: list[Finding]) -> None:
    hpa_rows = v.df[(v.df["kind"] == "HPA") & (v.df["object"] == v.hpa_object)]
    rescales = v.events("SuccessfulRescale")
    rescales = rescales[rescales["object"] == v.hpa_object]
    el.successful_rescale_count = len(rescales)
    before = hpa_rows[hpa_rows["time"] < v.start]
    inside = hpa_rows[(hpa_rows["time"] >= v.start) & (hpa_rows["time"] <= v.end)]
    sizes = [float(x) for x in inside["desired_replicas"].dropna()]
    sizes += [float(x) for x in rescales["replicas"].dropna()]
    if len(before) and not pd.isna(before["desired_replicas"].iloc[-1]):
        sizes.append(float(before["desired_replicas"].iloc[-1]))
    el.hpa_max_replicas = int(max(sizes)) if sizes else None

    # a rescale is a scale-up when its new size exceeds the size known just before it
    size_track = pd.concat([
        hpa_rows[["time", "replicas"]].rename(columns={"replicas": "size"}),
        rescales[["time", "replicas"]].rename(columns={"replicas": "size"}),
    ]).dropna().sort_values("time", kind="stable")
    ups = []
    for r in rescales.itertuples(index=False):
        prior = size_track[size_track["time"] < r.time]["size"]
        new = r.replicas
        if not pd.isna(new) and len(prior):
            if new > prior.iloc[-1]:
                ups.append(r)
        elif "above target" in (r.message or "") or "below Spec.MinReplicas" in (r.message or ""):
            ups.append(r)
    first_up = ups[0] if ups else None
    if first_up is None:
        grown = inside[inside["desired_replicas"] > inside["replicas"]]
        first_grow = _first(grown)
        at = first_grow["time"] if first_grow is not None else None
    else:
        at = first_up.time
    el.time_to_hpa_rescale_s = _secs(at, v.origin)

    metric = v.spec.service.scale_metric
    if ups:
        findings.append(Finding(
            "hpa_scaled_out", True,
            f"the HPA {v.hpa_object} scaled out {len(ups)} time(s), first after "
            f"{el.time_to_hpa_rescale_s:.0f} s, up to {el.hpa_max_replicas} replicas",
            rows_lines(ups, EVIDENCE_LINES)))
    elif at is not None:
        findings.append(Finding(
            "hpa_scaled_out", True,
            f"the HPA {v.hpa_object} asked for more replicas (status desiredReplicas, up to "
            f"{el.hpa_max_replicas}) but no SuccessfulRescale event was seen",
            rows_lines(grown, EVIDENCE_LINES)))
    else:
        peak = inside["metric_value"].max() if len(inside) else float("nan")
        peak_text = f"the highest value seen was {peak:g}" if not pd.isna(peak) else "no value of it was seen"
        trouble = v.win[(v.win["kind"] == "Event") & (v.win["object"] == v.hpa_object)
                        & v.win["reason"].str.startswith(("FailedGet", "FailedCompute", "FailedRescale"), na=False)]
        findings.append(Finding(
            "hpa_scaled_out", False,
            f"no SuccessfulRescale from the HPA {v.hpa_object} after {v.since}: did {metric} rise "
            f"above the target {v.spec.service.scale_target}? ({peak_text}"
            + (", and the HPA reported errors reading it)" if len(trouble) else ")"),
            rows_lines(trouble if len(trouble) else inside.tail(3), EVIDENCE_LINES)))


def _spill_over(v: _View, el: Elasticity, findings: list[Finding]) -> None:
    failed = v.events("FailedScheduling", frame=v.pod_events)
    el.failed_scheduling_idc = len(failed)
    triggered = v.events("TriggeredScaleUp", frame=v.pod_events)
    el.triggered_scale_up = len(triggered)
    group_events = v.events(("ScaledUpGroup",))
    group_events = group_events[group_events["object"].str.endswith(f"/{AUTOSCALER_STATUS}", na=False)]
    # only the elastic pool's own node group (cluster.autoscaler_group) counts as its scale-up
    group = v.spec.cluster.elastic_group
    decisions = group_events[group_events["message"].str.contains(f"setting group {group} ", regex=False, na=False)]
    el.scaled_up_group = len(decisions)
    if el.triggered_scale_up:
        el.scale_up_events, el.scale_up_events_source = el.triggered_scale_up, "TriggeredScaleUp"
    elif el.scaled_up_group:
        el.scale_up_events, el.scale_up_events_source = el.scaled_up_group, "ScaledUpGroup"

    # 1. the IDC pool is full: pods Pending
    if len(failed):
        findings.append(Finding(
            "idc_pool_full", True,
            f"{len(failed)} FailedScheduling event(s) on the service's pods: the IDC pool had no free GPU",
            rows_lines(failed, EVIDENCE_LINES)))
    else:
        why = (f"the HPA asked for at most {el.hpa_max_replicas} replica(s) and the IDC pool held "
               f"{el.idc_pods_max} of them" if el.hpa_max_replicas is not None
               else "the HPA was never seen asking for more replicas")
        findings.append(Finding(
            "idc_pool_full", False,
            f"no FailedScheduling on the service's pods: no pod waited for a GPU, so nothing had to spill "
            f"over ({why})", []))

    # 2. the autoscaler scales the elastic group
    not_triggered = v.events("NotTriggerScaleUp", frame=v.pod_events)
    ca_trouble = v.events(("FailedToScaleUpGroup", "ScaleUpTimedOut"))
    status_rows = v.win[(v.win["kind"] == "Autoscaler")]
    if el.scale_up_events:
        evidence = rows_lines(triggered if len(triggered) else decisions, EVIDENCE_LINES)
        if len(triggered) and len(decisions):
            evidence += rows_lines(decisions, 2)
        findings.append(Finding(
            "autoscaler_scaled_up", True,
            f"the cluster-autoscaler scaled up for the service ({el.scale_up_events} {el.scale_up_events_source} "
            f"event(s))", evidence))
    else:
        evidence = rows_lines(not_triggered, EVIDENCE_LINES) + rows_lines(ca_trouble, 3)
        if len(status_rows):
            evidence += rows_lines(status_rows.tail(2), 2)
        detail = ("no TriggeredScaleUp from the cluster-autoscaler: is it running, and does the elastic "
                  "node group's max allow a node?")
        if len(not_triggered):
            detail += f" It said NotTriggerScaleUp {len(not_triggered)} time(s): {not_triggered.iloc[-1]['message']}"
        elif not len(failed):
            detail += " (no pod was Pending, so none was needed)"
        findings.append(Finding("autoscaler_scaled_up", False, detail, evidence))

    # 3. an elastic node is Ready
    nodes = v.df[(v.df["kind"] == "Node") & (v.df["pool"] == v.elastic)]
    created = nodes[(nodes["reason"] == "NodeCreated") & (nodes["time"] >= v.start) & (nodes["time"] <= v.end)]
    ready = nodes[(nodes["reason"] == "NodeReady") & nodes["node"].isin(set(created["node"]))
                  & (nodes["time"] <= v.end)]
    first_ready = _first(ready)
    el.time_to_cloud_node_s = _secs(first_ready["time"] if first_ready is not None else None, v.origin)
    if first_ready is not None:
        findings.append(Finding(
            "cloud_node_ready", True,
            f"elastic node {first_ready['node']} was Ready {el.time_to_cloud_node_s:.0f} s after {v.since} "
            f"({len(created)} elastic node(s) added, at most {el.elastic_nodes_max} at once)",
            rows_lines(pd.concat([created.head(3), ready.head(3)]).sort_values("time", kind="stable"),
                       EVIDENCE_LINES)))
    else:
        label = f"{v.spec.cluster.nodepool_label}={v.elastic}"
        detail = f"no node of the elastic pool ({label}) became Ready after {v.since}"
        if len(created):
            detail = f"elastic node(s) {', '.join(created['node'])} were created but never Ready"
        elif el.scale_up_events:
            detail += ("; the autoscaler scaled the group but no node with that label registered: does the "
                       "node group's template carry the label, and did the provider create the node?")
        findings.append(Finding("cloud_node_ready", False, detail,
                                rows_lines(pd.concat([created, ca_trouble]), EVIDENCE_LINES)))

    # 4. a pod of the service is Ready on the elastic pool
    pods = v.pods
    cloud_ready = pods[(pods["reason"] == "PodReady") & (pods["pool"] == v.elastic)
                       & (pods["time"] >= v.start) & (pods["time"] <= v.end)]
    first_pod = _first(cloud_ready)
    el.time_to_first_cloud_pod_ready_s = _secs(first_pod["time"] if first_pod is not None else None, v.origin)
    if first_pod is not None:
        scheduled = pods[(pods["reason"] == "PodScheduled") & pods["object"].isin(set(cloud_ready["object"]))]
        findings.append(Finding(
            "cloud_pod_ready", True,
            f"pod {first_pod['object']} was Ready on elastic node {first_pod['node']} "
            f"{el.time_to_first_cloud_pod_ready_s:.0f} s after {v.since} (at most {el.cloud_pods_max} "
            f"cloud pod(s) Ready at once)",
            rows_lines(pd.concat([scheduled.head(3), cloud_ready.head(3)]).sort_values("time", kind="stable"),
                       EVIDENCE_LINES)))
    else:
        on_cloud = pods[(pods["reason"] == "PodScheduled") & (pods["pool"] == v.elastic)
                        & (pods["time"] <= v.end)]
        detail = "no pod of the service became Ready on the elastic pool"
        if len(on_cloud):
            detail = (f"pod(s) {', '.join(sorted(set(on_cloud['object'])))} were scheduled to the elastic pool but "
                      f"never Ready (image pull or model load too slow?)")
        findings.append(Finding("cloud_pod_ready", False, detail, rows_lines(on_cloud, EVIDENCE_LINES)))


def _spill_back(v: _View, el: Elasticity, findings: list[Finding], nodes_per_pool: pd.DataFrame) -> None:
    pods, end = v.pods, v.end
    pool_of = v.pod_pool_of()
    created = pods[pods["reason"] == "PodCreated"].groupby("object")["time"].min()
    deleted = pods[pods["reason"] == "PodDeleted"].groupby("object")["time"].min()

    def alive_at(obj: str, at: pd.Timestamp) -> bool:
        return created.get(obj, at) <= at and not (obj in deleted and deleted[obj] <= at)

    # cloud pods that still existed when the cool-down began, or came later
    cloud = [o for o, (pool, _) in pool_of.items() if pool == v.elastic
             and not (o in deleted and deleted[o] < v.cooldown_floor) and created.get(o, v.start) <= end]
    idc_deleted = sorted((deleted[o], o) for o, (pool, _) in pool_of.items()
                         if pool == v.idc and o in deleted and v.cooldown_floor <= deleted[o] <= end)
    cloud_deleted = {o: deleted[o] for o in cloud if o in deleted and deleted[o] <= end}
    deletions = pods[(pods["reason"] == "PodDeleted") & (pods["time"] >= v.cooldown_floor) & (pods["time"] <= end)]

    # 5. cloud pods removed before IDC pods
    if not cloud:
        el.cloud_pods_removed_before_idc = None
    else:
        late = []
        for t_idc, o_idc in idc_deleted:
            for o in cloud:
                t_cloud = cloud_deleted.get(o)
                if t_cloud is None or t_cloud.floor("s") > t_idc.floor("s"):
                    late.append((o_idc, t_idc, o, t_cloud))
        el.cloud_pods_removed_before_idc = not late
        if late:
            o_idc, t_idc, o, t_cloud = late[0]
            findings.append(Finding(
                "cloud_pods_removed_first", False,
                f"IDC pod {o_idc} was removed at {_hhmmss(t_idc)} while cloud pod {o} was still there "
                f"(removed {_hhmmss(t_cloud)}): scale-in did not take the cloud pods first (ResourcePolicy "
                f"scale-in order / pod-deletion-cost)", rows_lines(deletions, EVIDENCE_LINES)))
        else:
            detail = (f"all {len(cloud)} cloud pod(s) were removed before any IDC pod"
                      if idc_deleted else f"{len(cloud_deleted)} of {len(cloud)} cloud pod(s) removed; no IDC pod "
                                          f"was removed")
            findings.append(Finding("cloud_pods_removed_first", True, detail, rows_lines(deletions, EVIDENCE_LINES)))

    # 6. the pods left at the end are on IDC
    left = sorted(o for o in set(created.index) | set(pool_of) if alive_at(o, end))
    off_idc = [o for o in left if pool_of.get(o, (None, None))[0] != v.idc]
    pods_left_on_idc = bool(left) and not off_idc
    if cloud:
        if off_idc:
            where = ", ".join(f"{o} on {pool_of.get(o, (None, None))[0] or 'no node (Pending)'}" for o in off_idc)
            findings.append(Finding(
                "pods_left_on_idc", False,
                f"at the end {len(off_idc)} of {len(left)} pod(s) were not on the IDC pool: {where}",
                rows_lines(pods[pods["object"].isin(off_idc)].tail(EVIDENCE_LINES))))
        else:
            findings.append(Finding("pods_left_on_idc", bool(left),
                                    f"at the end all {len(left)} pod(s) were on the IDC pool" if left
                                    else "at the end no pod of the service was left",
                                    [f"Pod {o} on {pool_of.get(o, (None, None))[1]}" for o in left][:EVIDENCE_LINES]))

    # 7. the elastic pool back to its minimum
    status = v.df[(v.df["kind"] == "Autoscaler") & (v.df["time"] <= end)]
    groups = status[status["pool"] == v.elastic]
    if not len(groups):
        # one node group only (ACK names it after the scaling group, not the pool): that is the one
        names = set(status["message"].str.extract(r"^group (\S+):", expand=False).dropna())
        groups = status if len(names) == 1 else groups
    min_nodes = None
    if len(groups):
        m = re.search(r"\bmin=(\d+)", groups.iloc[-1]["message"] or "")
        min_nodes = int(m.group(1)) if m else None
    el.elastic_pool_min_nodes = min_nodes
    floor = min_nodes or 0
    at_end = Timeline.value_at(nodes_per_pool, v.elastic, end, "nodes")
    el.elastic_pool_back_to_min = at_end <= floor
    steps = nodes_per_pool[(nodes_per_pool["pool"] == v.elastic) & (nodes_per_pool["time"] <= end)]
    above = steps[steps["nodes"] > floor]
    if len(above) and at_end <= floor:
        back = steps[(steps["time"] > above["time"].iloc[-1]) & (steps["nodes"] <= floor)]
        el.time_to_elastic_pool_min_s = _secs(back["time"].iloc[0], v.origin) if len(back) else None
    scale_down_cm = v.events(("ScaleDownEmpty", "ScaleDown"))
    scale_down_cm = scale_down_cm[scale_down_cm["object"].str.endswith(f"/{AUTOSCALER_STATUS}", na=False)]
    decisions = scale_down_cm[scale_down_cm["message"].str.contains("removing", na=False)]

    def not_idc(message: str) -> bool:
        m = _NODE_IN_MESSAGE.search(message or "")
        return not m or v.node_pool.get(m.group(1)) != v.idc

    decisions = decisions[decisions["message"].map(not_idc).astype(bool)]
    marked = v.events("ScaleDown")
    marked = marked[(marked["object_kind"] == "Node") & marked["message"].str.contains("marked", na=False)
                    & (marked["pool"] != v.idc)]
    down_nodes = set(marked["object"])
    down_nodes |= {m.group(1) for m in decisions["message"].map(_NODE_IN_MESSAGE.search) if m}
    el.scale_down_events = len(down_nodes)
    sources = [name for name, rows in (("ScaleDown on nodes", marked),
                                       (f"{'/'.join(sorted(set(decisions['reason'])))} on {AUTOSCALER_STATUS}",
                                        decisions)) if len(rows)]
    el.scale_down_events_source = ", ".join(sources) or "none"
    scale_down_evidence = v.events(("ScaleDown", "ScaleDownEmpty", "ScaleDownFailed"))
    node_gone = v.win[(v.win["kind"] == "Node") & (v.win["reason"] == "NodeDeleted") & (v.win["pool"] == v.elastic)]
    min_text = f"min {min_nodes}" if min_nodes is not None else "min unknown, taken as 0"
    if el.elastic_pool_back_to_min:
        if el.elastic_nodes_max > floor:
            findings.append(Finding(
                "elastic_pool_back_to_min", True,
                f"the elastic pool went from {el.elastic_nodes_max} node(s) back to {at_end} ({min_text}) "
                f"{el.time_to_elastic_pool_min_s:.0f} s after {v.since}" if el.time_to_elastic_pool_min_s
                is not None else f"the elastic pool was back to {at_end} node(s) ({min_text}) at the end",
                rows_lines(pd.concat([scale_down_evidence, node_gone]).sort_values("time", kind="stable"),
                           EVIDENCE_LINES)))
        elif el.cloud_pods_max or cloud:
            findings.append(Finding("elastic_pool_back_to_min", True,
                                    f"the elastic pool never grew above its minimum ({min_text})", []))
    else:
        elastic_nodes = v.df[(v.df["kind"] == "Node") & (v.df["pool"] == v.elastic)]
        alive = sorted(n for n in set(elastic_nodes["node"])
                       if not ((elastic_nodes["node"] == n) & (elastic_nodes["reason"] == "NodeDeleted")
                               & (elastic_nodes["time"] <= end)).any())
        detail = (f"the elastic pool still had {at_end} node(s) at the end ({min_text}): "
                  f"{', '.join(alive) or '?'}. ")
        if not len(scale_down_evidence):
            detail += ("No ScaleDown/ScaleDownEmpty from the cluster-autoscaler before the end: is the cool-down "
                       "shorter than its scale-down-unneeded-time (+ scale-down-delay-after-add), or does a pod "
                       "or annotation keep the node?")
        else:
            detail += "The autoscaler started scaling down, but the node(s) were not gone by the end."
        findings.append(Finding("elastic_pool_back_to_min", False, detail,
                                rows_lines(pd.concat([scale_down_evidence, status.tail(1)]), EVIDENCE_LINES)))

    # the verdict on spill-back
    if not cloud and not el.cloud_pods_max:
        el.scale_in_back_to_idc = None
        findings.append(Finding("spill_back", False,
                                "no pod of the service ran on the elastic pool, so there was no spill-back to verify",
                                []))
    else:
        el.scale_in_back_to_idc = bool(el.cloud_pods_removed_before_idc is not False and pods_left_on_idc
                                       and el.elastic_pool_back_to_min)


def summary(el: Elasticity) -> str:
    """A few lines for logs: figures and the steps not observed."""
    lines = [", ".join(f"{k}={el.block()[k]}" for k in CONTRACT_KEYS)]
    lines += [f"not observed: {f.name}: {f.detail}" for f in el.findings if not f.ok]
    return "\n".join(lines)


# -- the autoscaling plumbing: each link that fails silently, as a finding and a figure ---------
_HPA_METRIC_FAILURES = ("FailedGetPodsMetric", "FailedComputeMetricsReplicas", "FailedGetResourceMetric",
                        "FailedGetExternalMetric", "FailedGetObjectMetric")
_GROUP_MAX = re.compile(r"\bmax=(\d+)")


def _grouped(findings: list[Finding], name: str, events: pd.DataFrame, what: str, reason: str) -> None:
    """A failed finding for ``events`` (when there are any), naming their most frequent message."""
    if len(events):
        top = events["message"].fillna("").map(lambda m: m[:160]).value_counts().index[0]
        findings.append(Finding(name, False, f"{what} {len(events)} time(s) ({reason}); most often: {top}",
                                rows_lines(events, EVIDENCE_LINES)))


def _plumbing(v: _View, el: Elasticity, findings: list[Finding], nodes_per_pool: pd.DataFrame) -> None:
    metric = v.spec.service.scale_metric
    # 1. the HPA could read its metric (ScalingActive=False is kubectl's `<unknown>`)
    conds = v.df[(v.df["kind"] == "HPA") & (v.df["object"] == v.hpa_object) & (v.df["reason"] == "HPACondition")]
    active = conds[conds["message"].str.startswith("ScalingActive=", na=False)]
    inactive = active[active["message"].str.startswith("ScalingActive=False", na=False)
                      & (active["time"] >= v.start) & (active["time"] <= v.end)]
    before = active[active["time"] < v.start]
    carried = bool(len(before)) and str(before.iloc[-1]["message"]).startswith("ScalingActive=False")
    events = v.win[(v.win["kind"] == "Event") & (v.win["object"] == v.hpa_object)
                   & v.win["reason"].isin(_HPA_METRIC_FAILURES)]
    el.hpa_metric_failures = len(inactive) + int(carried) + len(events)
    if el.hpa_metric_failures:
        rows = pd.concat([before.tail(1) if carried else before.head(0), inactive, events]).sort_values("time")
        last = f"{rows.iloc[-1]['reason']}: {rows.iloc[-1]['message'] or ''}"
        findings.append(Finding(
            "hpa_metric_available", False,
            f"the HPA {v.hpa_object} could not read {metric} ({el.hpa_metric_failures} time(s)"
            f"{', already before ' + v.since if carried else ''}): it was blind to the "
            f"load; is the metrics pipeline (DCGM exporter -> Prometheus -> metrics adapter) up? Last: {last}",
            rows_lines(rows, EVIDENCE_LINES)))
    else:
        seen = v.win[(v.win["kind"] == "HPA") & (v.win["object"] == v.hpa_object) & v.win["metric_value"].notna()]
        findings.append(Finding(
            "hpa_metric_available", bool(len(seen)),
            f"the HPA read {metric} {len(seen)} time(s) in the run, with no ScalingActive=False or FailedGet* event"
            if len(seen) else f"the HPA {v.hpa_object} was never seen with a value of {metric}",
            rows_lines(seen.tail(2), 2)))

    # 2. the autoscaler saw Pending pods and declined
    declined = v.events("NotTriggerScaleUp", frame=v.pod_events)
    el.not_trigger_scale_up_events = len(declined)
    _grouped(findings, "autoscaler_declined", declined, "the cluster-autoscaler declined to scale up",
             "NotTriggerScaleUp")

    # 3. the elastic pool at its max while pods waited (stockout, or a max too small)
    status = v.df[(v.df["kind"] == "Autoscaler") & (v.df["pool"] == v.elastic) & (v.df["time"] <= v.end)]
    maxes = [int(m.group(1)) for m in (_GROUP_MAX.search(str(x)) for x in status["message"]) if m]
    pending = v.events("FailedScheduling", frame=v.pod_events)
    if maxes:
        group_max = maxes[-1]
        at_max = pending[[Timeline.value_at(nodes_per_pool, v.elastic, t, "nodes") >= group_max
                          for t in pending["time"]]] if len(pending) else pending
        el.elastic_pool_at_max_while_pending = bool(len(at_max))
        if len(at_max):
            findings.append(Finding(
                "elastic_pool_capacity", False,
                f"{len(at_max)} time(s) a pod of the service waited for a GPU while the elastic pool "
                f"({v.spec.cluster.elastic_group}) was at its max of {group_max} node(s): a stockout, or a max "
                f"too small for the peak", rows_lines(pd.concat([at_max, status.tail(1)]), EVIDENCE_LINES)))

    # 4. the ReplicaSet could not create the pods the HPA asked for (quota, admission webhook, ...)
    failed_create = v.events("FailedCreate")
    failed_create = failed_create[failed_create["object"].str.startswith(
        f"{v.ns}/{v.spec.service.predictor_name}-", na=False)]
    el.failed_create_events = len(failed_create)
    _grouped(findings, "replicas_created", failed_create, "the predictor's ReplicaSet could not create pods",
             "FailedCreate")

    # 5. elastic nodes Ready within the autoscaler's max-node-provision-time
    limit = float(v.spec.cluster.max_node_provision_time_s)
    nodes = v.df[(v.df["kind"] == "Node") & (v.df["pool"] == v.elastic)]
    created = nodes[(nodes["reason"] == "NodeCreated") & (nodes["time"] >= v.start) & (nodes["time"] <= v.end)]
    late = []
    for r in created.itertuples(index=False):
        ready = nodes[(nodes["node"] == r.node) & (nodes["reason"] == "NodeReady") & (nodes["time"] >= r.time)]
        became = ready["time"].iloc[0] if len(ready) else None
        waited = ((became if became is not None else v.end) - r.time).total_seconds()
        if waited > limit:
            late.append((r.node, waited, became))
    el.nodes_not_ready_in_time = len(late)
    if late:
        node, waited, became = late[0]
        findings.append(Finding(
            "nodes_provisioned", False,
            f"{len(late)} elastic node(s) not Ready within cluster.max_node_provision_time_s ({limit:.0f} s): "
            f"{node} {'became Ready after' if became is not None else 'was still not Ready after'} {waited:.0f} s "
            f"(GPU driver, image or join trouble; the autoscaler gives such a node up)",
            rows_lines(nodes[nodes["node"].isin([n for n, _, _ in late])], EVIDENCE_LINES)))

    # 6. the placement policy and the autoscaler disagree (ACK: ResourcePolicy with autoscaling
    # "may trigger incorrect node pool scaling"): the scheduler refused nodes with room because
    # a unit reached its max, the autoscaler simulated the pod there (it does not know the
    # policy), found it fits and scaled nothing
    _placement_vs_autoscaler(v, findings)


# a scheduler extender's or plugin's refusal by a ResourcePolicy unit's max (the test bed's
# extender words it "ResourcePolicy <name>: unit <i> (<selector>) reached max <n> (<count> pods)")
POLICY_MAX_REFUSAL = re.compile(r"ResourcePolicy \S+: unit \d+ \([^)]*\) reached max \d+")


def _placement_vs_autoscaler(v: _View, findings: list[Finding]) -> None:
    failed = v.events("FailedScheduling", frame=v.pod_events)
    refused = failed[failed["message"].fillna("").str.contains(POLICY_MAX_REFUSAL)]
    if not len(refused):
        return
    triggered = set(v.events("TriggeredScaleUp", frame=v.pod_events)["object"])
    stranded = refused[~refused["object"].isin(triggered)]
    if not len(stranded):
        return
    pods = sorted(set(stranded["object"]))
    scheduled = {o for o in pods if o in v.pod_pool_of()}
    unit = POLICY_MAX_REFUSAL.search(str(stranded.iloc[-1]["message"])).group(0)
    findings.append(Finding(
        "placement_policy_vs_autoscaler", False,
        f"{len(pods)} pod(s) of the service were refused by the scheduler's ResourcePolicy on nodes with room "
        f"({unit}) and the cluster-autoscaler did not scale up for them (no TriggeredScaleUp): it simulates "
        f"Pending pods with the scheduler's own filters, finds they fit on those nodes and does not know the "
        f"policy; {len(pods) - len(scheduled)} of them never got a node. ACK: ResourcePolicy with autoscaling "
        f"must be used with instant elasticity, or the autoscaler may scale the wrong pool (or none); do not "
        f"set max on a unit that is not the autoscaled one", rows_lines(stranded, EVIDENCE_LINES)))


__all__ = ["CONTRACT_KEYS", "EXTRA_KEYS", "Elasticity", "Finding", "summary", "verify"]
