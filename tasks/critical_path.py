"""The critical path of every scale event, and which of its steps the SLO violations fell in.

:func:`scale_events` reads the observer's timeline (:class:`~tasks.observe.Timeline` or its
DataFrame, columns as documented in :mod:`tasks.observe`) and returns one :class:`ScaleEvent`
per pod that an HPA change added or removed, each with the steps of its critical path;
:func:`violation_bill` attributes every request that missed its SLO to the step that was in
effect when the request was sent; :func:`bill_sentence` says one entry of the bill in words.

Steps of a scale-up (``UP_STEPS``), each resting on one timeline row:

================================  ===========================================================
load step                         the phase start (or the load start) at or before the metric
                                  crossing: what the service reacted to
metric above target               the first HPA reading (``metric_value`` of HPA rows) of the
                                  run of readings above ``hpa_target * (1 + hpa_tolerance)``
                                  that lasted up to the rescale; readings at or before the
                                  previous rescale do not count (they were that one's signal)
HPA desired increase              ``desired_replicas`` of ``HPAReplicas`` rows going up, or a
                                  ``SuccessfulRescale`` event to a larger size (the earlier)
pod created                       ``PodCreated`` of the pod the ReplicaSet made for this change
pod Pending on IDC                the pod's first ``FailedScheduling`` (only when it happened)
autoscaler decision               ``TriggeredScaleUp`` on the pod, else the first
                                  ``ScaledUpGroup`` between the pod's creation and its node's
node created / node Ready         ``NodeCreated`` / ``NodeReady`` of the node the pod landed on
node GPU allocatable              ``NodeGPUAllocatable`` of that node (the time the observer's
                                  watch saw its nvidia.com/gpu allocatable: no object stamps it)
pod scheduled                     ``PodScheduled`` (its pool and node say where the pod went)
image pulled / container started  the kubelet's ``Pulled`` / ``Started`` events on the pod
pod Ready                         ``PodReady`` (the end of the warm-up)
first request served              the first successful request served by the pod (its first
                                  token), from a requests table with a pod column
================================  ===========================================================

Steps of a scale-down (``DOWN_STEPS``): ``metric below target`` (as above, below
``hpa_target * (1 - hpa_tolerance)``), ``HPA desired decrease`` (the gap from the crossing is
the HPA's scale-down stabilization), ``pod deleted`` (``PodDeleted``, the deletion request; the
event's ``pool`` says which pool's pod went), ``node unneeded`` (the autoscaler's status for the
elastic pool turning to ``scaleDown=CandidatesPresent``), ``node marked for deletion``
(``ScaleDown`` "marked the node as toBeDeleted" on the node), ``node removed``
(``NodeDeleted``, else ``RemovingNode`` or the status ConfigMap's "removed" event).

Invariants:

- Pods are matched to the HPA change that made them in time order: each change of ``n``
  replicas takes the next ``n`` pods created (deleted) at or after it that no earlier change
  took, so two overlapping scale events each get their own pod and steps. A change of several
  replicas gives one event per pod (all with the same ``replicas_from`` / ``replicas_to``).
- A step the cluster did not reveal is kept, with ``seconds`` None and evidence
  ``"unknown: <why>"``, never guessed. A step that did not have to happen (autoscaler and node
  steps of a pod that landed on the IDC pool or on an elastic node that already existed, the
  Pending step of a pod scheduled at once, node steps of a scale-down that removed an IDC pod)
  is left out of ``steps`` and named in ``not_needed``.
- Steps are in their causal order and their times never go back: a row stamped before the
  previous known step (apiserver times are often whole seconds) is taken as simultaneous with
  it, and its evidence says so. ``seconds`` of a known step is the time since the previous
  *known* step (0 for the first), so the known steps' seconds add up to ``total_s`` (first to
  last known step), up to rounding; the time of an unknown step is inside the next known one.

The bill (:func:`violation_bill`): a request belongs to the step in effect when it was sent
(``load_started_at + t_s``): between two known steps of an event, the later one is what the
service was waiting for. Steps are grouped into lags (``STEP_LAGS``: e.g. node created, node
Ready and GPU allocatable are all "waiting for the cloud node"); when unknown steps lie
between two known ones, the interval cannot be split and its lag names them all ("waiting for
the autoscaler's decision or for the cloud node (autoscaler decision unknown)"). When events
overlap, the request goes to the event that started first (its capacity was the next to
arrive); outside every event it goes to "no scale event in progress", with the count per load
phase beside it as in every entry.

Example::

    events = scale_events(timeline, load_started_at=load.started_at, phases=load.phases,
                          hpa_target=50, elastic_pool="np-elastic", idc_pool="np-idc")
    report["elasticity"]["scale_events"] = [e.block() for e in events]
    bill = violation_bill(load.requests, events, load_started_at=load.started_at,
                          good=lambda r: good_mask(r, {"ttft_ms": 150.0}))
    bill_sentence(bill[0])   # "412 requests (61% of all violations) were sent while ..."
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from tasks.observe import Timeline, event_line

UP_STEPS = ("load step", "metric above target", "HPA desired increase", "pod created", "pod Pending on IDC",
            "autoscaler decision", "node created", "node Ready", "node GPU allocatable", "pod scheduled",
            "image pulled", "container started", "pod Ready", "first request served")
DOWN_STEPS = ("metric below target", "HPA desired decrease", "pod deleted", "node unneeded",
              "node marked for deletion", "node removed")
_CLOUD_UP_STEPS = ("autoscaler decision", "node created", "node Ready", "node GPU allocatable")
_CLOUD_DOWN_STEPS = ("node unneeded", "node marked for deletion", "node removed")

NO_EVENT = "no scale event in progress"
# (direction, step) -> (what the service waited for while the step was due, the span it covers)
STEP_LAGS: dict[tuple[str, str], tuple[str, str]] = {
    ("up", "metric above target"): ("waiting for the load to show in the HPA metric (signal lag)",
                                    "load step -> metric above target"),
    ("up", "HPA desired increase"): ("waiting for the HPA to ask for more replicas (ask lag)",
                                     "metric above target -> HPA desired increase"),
    ("up", "pod created"): ("waiting for the ReplicaSet to create the pod", "HPA desired increase -> pod created"),
    ("up", "pod Pending on IDC"): ("waiting for the scheduler to find no GPU on IDC",
                                   "pod created -> pod Pending on IDC"),
    ("up", "autoscaler decision"): ("waiting for the autoscaler's decision",
                                    "pod Pending on IDC -> autoscaler decision"),
    ("up", "node created"): ("waiting for the cloud node", "autoscaler decision -> node Ready"),
    ("up", "node Ready"): ("waiting for the cloud node", "autoscaler decision -> node Ready"),
    ("up", "node GPU allocatable"): ("waiting for the cloud node", "autoscaler decision -> node Ready"),
    ("up", "pod scheduled"): ("waiting for the pod to be scheduled", "pod created or node Ready -> pod scheduled"),
    ("up", "image pulled"): ("waiting for the new pod to warm up", "pod scheduled -> pod Ready"),
    ("up", "container started"): ("waiting for the new pod to warm up", "pod scheduled -> pod Ready"),
    ("up", "pod Ready"): ("waiting for the new pod to warm up", "pod scheduled -> pod Ready"),
    ("up", "first request served"): ("waiting for the first request to reach the new pod",
                                     "pod Ready -> first request served"),
    ("down", "HPA desired decrease"): ("waiting for the HPA to scale in (stabilization)",
                                       "metric below target -> HPA desired decrease"),
    ("down", "pod deleted"): ("waiting for the pod deletion", "HPA desired decrease -> pod deleted"),
    ("down", "node unneeded"): ("waiting for the cloud node to be removed", "pod deleted -> node removed"),
    ("down", "node marked for deletion"): ("waiting for the cloud node to be removed", "pod deleted -> node removed"),
    ("down", "node removed"): ("waiting for the cloud node to be removed", "pod deleted -> node removed"),
}


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of a critical path: when it was reached (``at``; None = unknown), the seconds
    since the previous known step, and the timeline row it rests on (or ``unknown: why``)."""

    step: str
    at: pd.Timestamp | None
    seconds: float | None
    evidence: str

    @property
    def known(self) -> bool:
        return self.at is not None

    def block(self) -> dict[str, Any]:
        return {"step": self.step, "started_at": self.at.isoformat() if self.at is not None else None,
                "seconds": self.seconds, "evidence": self.evidence}


@dataclass
class ScaleEvent:
    """One pod added (``up``) or removed (``down``) by an HPA change, with its critical path."""

    direction: str
    replicas_from: int | None
    replicas_to: int | None
    pool: str | None
    pod: str | None
    steps: list[Step] = field(default_factory=list)
    not_needed: list[str] = field(default_factory=list)

    @property
    def known_steps(self) -> list[Step]:
        return [s for s in self.steps if s.known]

    @property
    def started_at(self) -> pd.Timestamp | None:
        known = self.known_steps
        return known[0].at if known else None

    @property
    def ended_at(self) -> pd.Timestamp | None:
        known = self.known_steps
        return known[-1].at if known else None

    @property
    def total_s(self) -> float | None:
        if self.started_at is None:
            return None
        return round((self.ended_at - self.started_at).total_seconds(), 3)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.step == name), None)

    def block(self) -> dict[str, Any]:
        """The event as ``elasticity.scale_events[]`` of report.json holds it."""
        return {"direction": self.direction, "replicas_from": self.replicas_from, "replicas_to": self.replicas_to,
                "pool": self.pool, "pod": self.pod, "steps": [s.block() for s in self.steps],
                "not_needed": list(self.not_needed), "total_s": self.total_s}


# -- inputs -------------------------------------------------------------------------------------
def _stamp(value: datetime | pd.Timestamp | str | None) -> pd.Timestamp | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    out = pd.Timestamp(value)
    return out.tz_localize("UTC") if out.tzinfo is None else out.tz_convert("UTC")


def _frame(timeline: Timeline | pd.DataFrame) -> pd.DataFrame:
    df = timeline.df if isinstance(timeline, Timeline) else timeline
    df = df.copy()
    df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601")
    for c in ("count", "replicas", "desired_replicas", "metric_value"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in ("kind", "object", "object_kind", "reason", "message", "pool", "node"):
        if c not in df:
            df[c] = None
        df[c] = df[c].astype("object").where(df[c].notna(), None)
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def _phases(phases: Iterable[Any] | None) -> list[tuple[str, pd.Timestamp, pd.Timestamp | None]]:
    """Phases as (name, start, end): dicts or objects with name/start/end (``load.Phase``)."""
    out = []
    for p in phases or ():
        get = p.get if isinstance(p, dict) else (lambda k, _p=p: getattr(_p, k, None))
        start = _stamp(get("start"))
        if start is not None:
            out.append((str(get("name")), start, _stamp(get("end"))))
    return sorted(out, key=lambda x: x[1])


def _unknown(why: str) -> str:
    return f"unknown: {why}"


@dataclass
class _Ask:
    """One change of the HPA's desired replicas."""

    at: pd.Timestamp
    replicas_from: int | None
    replicas_to: int
    rows: list[Any]

    @property
    def direction(self) -> str:
        if self.replicas_from is None:  # a rescale event with no HPA status before it: its reason tells
            return "down" if "below" in str(self.rows[0].message or "") else "up"
        return "up" if self.replicas_to > self.replicas_from else "down"

    def evidence(self) -> str:
        rescale = [r for r in self.rows if r.reason == "SuccessfulRescale"]
        return event_line((rescale or self.rows)[0])


# -- the extraction -----------------------------------------------------------------------------
class _Extractor:
    def __init__(self, df: pd.DataFrame, *, load_started_at: pd.Timestamp | None, phases: list,
                 hpa_target: float, hpa_tolerance: float, elastic_pool: str, idc_pool: str, hpa: str | None,
                 served: pd.DataFrame | None, served_why: str):
        self.df = df
        self.load_started_at, self.phases = load_started_at, phases
        self.target, self.tolerance = float(hpa_target), float(hpa_tolerance)
        self.elastic, self.idc = elastic_pool, idc_pool
        hpa_rows = df[df["kind"] == "HPA"]
        rescales = df[(df["kind"] == "Event") & (df["reason"] == "SuccessfulRescale")]
        if hpa is not None:
            hpa_rows = hpa_rows[hpa_rows["object"] == hpa]
            rescales = rescales[rescales["object"] == hpa]
        else:
            rescales = rescales[rescales["object_kind"].isin(["HorizontalPodAutoscaler", None])
                                | rescales["object"].isin(set(hpa_rows["object"]))]
        self.hpa_rows, self.rescales = hpa_rows, rescales
        self.readings = hpa_rows[hpa_rows["metric_value"].notna()]
        self.pods = df[df["kind"] == "Pod"]
        self.nodes = df[df["kind"] == "Node"]
        self.events = df[df["kind"] == "Event"]
        self.node_pool = {r.node: r.pool for r in self.nodes.itertuples(index=False) if r.node}
        self.served, self.served_why = served, served_why

    # -- the HPA --------------------------------------------------------------------------------
    def asks(self) -> list[_Ask]:
        # an HPA status with desiredReplicas 0 is one the controller has not computed yet (a new
        # HPA whose metric is not served: minReplicas is at least 1); a scale to zero shows as
        # its SuccessfulRescale event ("New size: 0")
        rows = pd.concat([self.hpa_rows[(self.hpa_rows["reason"] == "HPAReplicas")
                                        & self.hpa_rows["desired_replicas"].notna()
                                        & (self.hpa_rows["desired_replicas"] != 0)],
                          self.rescales[self.rescales["replicas"].notna()]]).sort_values("time", kind="stable")
        asks: list[_Ask] = []
        desired: int | None = None
        for r in rows.itertuples(index=False):
            size = int(r.desired_replicas if r.kind == "HPA" else r.replicas)
            if desired is None:
                current = r.replicas if r.kind == "HPA" else None
                if current is not None and not pd.isna(current) and int(current) != size:
                    asks.append(_Ask(r.time, int(current), size, [r]))
                elif r.kind == "Event":  # a rescale seen before any HPA status: its previous size is unknown
                    asks.append(_Ask(r.time, None, size, [r]))
                desired = size
            elif size != desired:
                asks.append(_Ask(r.time, desired, size, [r]))
                desired = size
            elif asks and asks[-1].replicas_to == size and (r.time - asks[-1].at).total_seconds() <= 2:
                asks[-1].rows.append(r)  # the same change, seen from the HPA status and its event
        return asks

    def crossing(self, ask: _Ask, previous: pd.Timestamp | None) -> tuple[pd.Timestamp | None, str]:
        up = ask.direction == "up"
        limit = self.target * (1 + self.tolerance) if up else self.target * (1 - self.tolerance)
        word = "above" if up else "below"
        r = self.readings[self.readings["time"] <= ask.at]
        if previous is not None:
            r = r[r["time"] > previous]
        if not len(r):
            return None, _unknown("no HPA metric reading between the previous rescale and this one")
        beyond = (r["metric_value"] > limit) if up else (r["metric_value"] < limit)
        if not bool(beyond.iloc[-1]):
            last = r.iloc[-1]
            return None, _unknown(f"the last HPA reading before the rescale ({last['metric_value']:g} at "
                                  f"{last['time'].strftime('%H:%M:%S')}) was not {word} {limit:g}")
        flags = beyond.to_numpy()
        first = len(flags) - 1
        while first > 0 and flags[first - 1]:
            first -= 1
        row = r.iloc[first]
        return row["time"], event_line(row)

    def load_step(self, before: pd.Timestamp) -> tuple[pd.Timestamp | None, str]:
        candidates = [(start, f"load phase {name} started") for name, start, _ in self.phases]
        if self.load_started_at is not None:
            candidates.append((self.load_started_at, "load started"))
        earlier = sorted((c for c in candidates if c[0] <= before), key=lambda c: c[0])
        if not earlier:
            if not candidates:
                return None, _unknown("neither the load start nor its phases were given")
            return None, _unknown("the HPA metric was already beyond its target before the load started")
        at, what = earlier[-1]
        return at, f"{what} at {at.strftime('%H:%M:%S.%f')[:-3]}"

    # -- rows of one object -----------------------------------------------------------------------
    def _first(self, frame: pd.DataFrame, reason: str | tuple[str, ...], obj: str,
               after: pd.Timestamp | None = None, contains: str | None = None) -> Any:
        reasons = (reason,) if isinstance(reason, str) else reason
        rows = frame[frame["reason"].isin(reasons) & (frame["object"] == obj)]
        if after is not None:
            rows = rows[rows["time"] >= after.floor("s")]
        if contains is not None:
            rows = rows[rows["message"].str.contains(contains, regex=False, na=False)]
        return rows.iloc[0] if len(rows) else None

    def _pool_of(self, row: Any) -> str | None:
        pool = row.get("pool")
        if pool is None and row.get("node"):
            pool = self.node_pool.get(row.get("node"))
        return pool

    def _unready_while(self, since: pd.Timestamp | None, until: pd.Timestamp) -> str:
        """Why an HPA may sit above its target without adding a replica: a pod of the service it
        counts was not Ready yet (the HPA takes an unready pod's usage as 0 when scaling up)."""
        if since is None or until <= since:
            return ""
        created = self.pods[(self.pods["reason"] == "PodCreated") & (self.pods["time"] < until)]
        for row in created.itertuples(index=False):
            ready = self._first(self.pods, "PodReady", row.object)
            if ready is not None and since < ready["time"] <= until:
                return (f" (until {ready['time'].strftime('%H:%M:%S')} pod {row.object} was not Ready: the HPA counts an "
                        f"unready pod's usage as 0 when it scales up)")
        return ""

    # -- one event --------------------------------------------------------------------------------
    def up(self, ask: _Ask, previous: pd.Timestamp | None, pod: str | None) -> ScaleEvent:
        raw: dict[str, tuple[pd.Timestamp | None, str]] = {}
        not_needed: list[str] = []
        cross_at, cross_ev = self.crossing(ask, previous)
        raw["load step"] = self.load_step(cross_at if cross_at is not None else ask.at)
        raw["metric above target"] = (cross_at, cross_ev)
        raw["HPA desired increase"] = (ask.at, ask.evidence() + self._unready_while(cross_at, ask.at))
        pool = None
        if pod is None:
            why = "no pod was created for this rescale in the timeline"
            for name in UP_STEPS[3:]:
                raw[name] = (None, _unknown(why))
            return self._event("up", ask, None, None, raw, not_needed)
        created = self._first(self.pods, "PodCreated", pod)
        raw["pod created"] = (created["time"], event_line(created))
        scheduled = self._first(self.pods, "PodScheduled", pod)
        pending = self._first(self.events, "FailedScheduling", pod, after=created["time"])
        if pending is not None:
            raw["pod Pending on IDC"] = (pending["time"], event_line(pending))
        elif scheduled is not None:
            not_needed.append("pod Pending on IDC")
        else:
            raw["pod Pending on IDC"] = (None, _unknown("the pod was never scheduled in the timeline, and no "
                                                        "FailedScheduling event on it was seen"))
        node = scheduled["node"] if scheduled is not None else None
        pool = self._pool_of(scheduled) if scheduled is not None else None
        node_created = self._first(self.nodes, "NodeCreated", node) if node else None
        if scheduled is not None and (pool != self.elastic or (
                node_created is not None and node_created["time"].floor("s") < created["time"].floor("s"))):
            not_needed += list(_CLOUD_UP_STEPS)  # IDC, or an elastic node that was already there
        else:
            decision = self._first(self.events, "TriggeredScaleUp", pod, after=created["time"])
            if decision is None:
                groups = self.events[(self.events["reason"] == "ScaledUpGroup")
                                     & (self.events["time"] >= created["time"].floor("s"))]
                if node_created is not None:
                    groups = groups[groups["time"] <= node_created["time"]]
                setting = groups[groups["message"].str.contains("setting group", regex=False, na=False)]
                groups = setting if len(setting) else groups
                decision = groups.iloc[0] if len(groups) else None
            raw["autoscaler decision"] = ((decision["time"], event_line(decision)) if decision is not None else
                                          (None, _unknown("no TriggeredScaleUp on the pod and no ScaledUpGroup "
                                                          "after its creation in the timeline")))
            if node is None:
                why = "the pod was never scheduled in the timeline, so no node can be tied to it"
                raw["node created"] = raw["node Ready"] = (None, _unknown(why))
            else:
                ready = self._first(self.nodes, "NodeReady", node)
                raw["node created"] = ((node_created["time"], event_line(node_created)) if node_created is not None
                                       else (None, _unknown(f"no NodeCreated row for node {node}")))
                raw["node Ready"] = ((ready["time"], event_line(ready)) if ready is not None
                                     else (None, _unknown(f"no NodeReady row for node {node}")))
            gpu = self._first(self.nodes, "NodeGPUAllocatable", node) if node is not None else None
            raw["node GPU allocatable"] = (
                (gpu["time"], event_line(gpu)) if gpu is not None else
                (None, _unknown("no NodeGPUAllocatable row: the timeline does not show when the node's "
                                "nvidia.com/gpu became allocatable")))
        raw["pod scheduled"] = ((scheduled["time"], event_line(scheduled)) if scheduled is not None
                                else (None, _unknown("the pod was never scheduled in the timeline")))
        for name, reason in (("image pulled", "Pulled"), ("container started", "Started")):
            row = self._first(self.events, reason, pod)
            raw[name] = ((row["time"], event_line(row)) if row is not None else
                         (None, _unknown(f"no kubelet {reason} event on the pod in the timeline (the test bed's "
                                         f"fake kubelets emit none)")))
        ready = self._first(self.pods, "PodReady", pod)
        raw["pod Ready"] = ((ready["time"], event_line(ready)) if ready is not None
                            else (None, _unknown("the pod was never Ready in the timeline")))
        raw["first request served"] = self._first_served(pod)
        return self._event("up", ask, pool, pod, raw, not_needed)

    def _first_served(self, pod: str) -> tuple[pd.Timestamp | None, str]:
        if self.served is None:
            return None, _unknown(self.served_why)
        short = pod.split("/")[-1]
        mine = self.served[self.served["pod"].isin([pod, short])]
        if not len(mine):
            return None, _unknown(f"no successful request in the requests table was served by {short}")
        first = mine.loc[mine["first_token_at"].idxmin()]
        return first["first_token_at"], (f"request {first.get('id', '?')} served by {short}: first token at "
                                         f"{first['first_token_at'].strftime('%H:%M:%S.%f')[:-3]}")

    def down(self, ask: _Ask, previous: pd.Timestamp | None, pod: str | None) -> ScaleEvent:
        raw: dict[str, tuple[pd.Timestamp | None, str]] = {}
        not_needed: list[str] = []
        raw["metric below target"] = self.crossing(ask, previous)
        raw["HPA desired decrease"] = (ask.at, ask.evidence())
        if pod is None:
            for name in DOWN_STEPS[2:]:
                raw[name] = (None, _unknown("no pod deletion followed this rescale in the timeline"))
            return self._event("down", ask, None, None, raw, not_needed)
        deleted = self._first(self.pods, "PodDeleted", pod)
        raw["pod deleted"] = (deleted["time"], event_line(deleted))
        node = deleted["node"]
        scheduled = self._first(self.pods, "PodScheduled", pod)
        if node is None and scheduled is not None:
            node = scheduled["node"]
        pool = self._pool_of(deleted) or (self._pool_of(scheduled) if scheduled is not None else None)
        if pool != self.elastic:
            if pool is not None:
                not_needed += list(_CLOUD_DOWN_STEPS)  # IDC nodes stay
            else:
                for name in _CLOUD_DOWN_STEPS:
                    raw[name] = (None, _unknown("the deleted pod's node and pool are not in the timeline"))
            return self._event("down", ask, pool, pod, raw, not_needed)
        since = deleted["time"]
        gone = self._first(self.nodes, "NodeDeleted", node, after=since)
        if gone is None:
            gone = self._first(self.events, "RemovingNode", node, after=since)
        if gone is None:
            cm = self.events[(self.events["reason"].isin(["ScaleDownEmpty", "ScaleDown"]))
                             & (self.events["time"] >= since.floor("s"))
                             & self.events["message"].str.contains(node, regex=False, na=False)
                             & self.events["message"].str.contains("removed", regex=False, na=False)]
            gone = cm.iloc[0] if len(cm) else None
        marked = self._first(self.events, "ScaleDown", node, after=since, contains="marked")
        until = gone["time"] if gone is not None else (marked["time"] if marked is not None else None)
        status = self.df[(self.df["kind"] == "Autoscaler") & (self.df["pool"] == self.elastic)
                         & (self.df["time"] >= since.floor("s"))]
        if until is not None:
            status = status[status["time"] <= until]
        unneeded = status[status["message"].str.contains("scaleDown=CandidatesPresent", regex=False, na=False)]
        not_removed = f"node {node} was not removed before the timeline ended"
        raw["node unneeded"] = ((unneeded.iloc[0]["time"], event_line(unneeded.iloc[0])) if len(unneeded) else
                                (None, _unknown("no autoscaler status with scale-down candidates for the elastic "
                                                "pool after the pod's deletion")))
        raw["node marked for deletion"] = ((marked["time"], event_line(marked)) if marked is not None else
                                           (None, _unknown(f"no ScaleDown 'marked the node as toBeDeleted' event "
                                                           f"on {node}" + ("" if gone is not None else
                                                                            f"; {not_removed}"))))
        raw["node removed"] = ((gone["time"], event_line(gone)) if gone is not None
                               else (None, _unknown(not_removed)))
        return self._event("down", ask, pool, pod, raw, not_needed)

    @staticmethod
    def _event(direction: str, ask: _Ask, pool: str | None, pod: str | None,
               raw: dict[str, tuple[pd.Timestamp | None, str]], not_needed: list[str]) -> ScaleEvent:
        order = UP_STEPS if direction == "up" else DOWN_STEPS
        steps: list[Step] = []
        last: pd.Timestamp | None = None
        for name in order:
            if name not in raw:
                continue
            at, evidence = raw[name]
            if at is None:
                steps.append(Step(name, None, None, evidence))
                continue
            at = _stamp(at)
            if last is not None and at < last:
                evidence += (f" (stamped {(last - at).total_seconds():.3f} s before the previous step: taken as "
                             f"simultaneous)")
                at = last
            seconds = 0.0 if last is None else round((at - last).total_seconds(), 3)
            steps.append(Step(name, at, seconds, evidence))
            last = at
        return ScaleEvent(direction, ask.replicas_from, ask.replicas_to, pool, pod, steps, not_needed)


def _served(requests_df: pd.DataFrame | None, load_started_at: pd.Timestamp | None,
            pod_column: str) -> tuple[pd.DataFrame | None, str]:
    """Successful requests with the pod that served them and their first token's time."""
    if requests_df is None:
        return None, "no requests table was given, so the first request served by the pod cannot be told"
    if pod_column not in requests_df:
        return None, (f"the requests table has no '{pod_column}' column (which pod served a request is not "
                      f"recorded), so the first request served by the pod cannot be told")
    if load_started_at is None:
        return None, "the load start was not given, so the requests' send times are not known"
    reqs = requests_df[requests_df["ok"].astype(bool) & requests_df[pod_column].notna()]
    ttft = pd.to_numeric(reqs["ttft_ms"], errors="coerce").fillna(0.0) if "ttft_ms" in reqs else 0.0
    at = load_started_at + pd.to_timedelta(pd.to_numeric(reqs["t_s"], errors="coerce"), unit="s") \
        + pd.to_timedelta(ttft, unit="ms")
    out = pd.DataFrame({"pod": reqs[pod_column].astype(str), "first_token_at": at})
    if "id" in reqs:
        out["id"] = reqs["id"]
    return out.dropna(subset=["first_token_at"]), ""


def scale_events(timeline_df: Timeline | pd.DataFrame, *, load_started_at: datetime | pd.Timestamp | str | None,
                 phases: Iterable[Any] | None, hpa_target: float, elastic_pool: str, idc_pool: str,
                 hpa_tolerance: float = 0.0, hpa: str | None = None, requests_df: pd.DataFrame | None = None,
                 pod_column: str = "pod") -> list[ScaleEvent]:
    """Every scale event of the timeline, up and down, with its critical path (module docstring).

    ``phases``: the load's phases (``load.Phase`` or dicts with name, start, end); a phase start
    or ``load_started_at`` is the load step of a scale-up. ``hpa_target``: the HPA's target
    average of its metric; ``hpa_tolerance`` (Kubernetes' default is 0.1) makes "crosses" mean
    "beyond the band in which the HPA does not act"; 0 compares with the target itself.
    ``hpa``: the HPA object (``namespace/name``) when the timeline holds several.
    ``requests_df`` with a ``pod_column`` (the pod that served each request) tells the first
    request served by each new pod; without one that step is unknown.
    Events are in the order of their HPA changes (then of their pods).
    """
    df = _frame(timeline_df)
    start = _stamp(load_started_at)
    served, why = _served(requests_df, start, pod_column)
    x = _Extractor(df, load_started_at=start, phases=_phases(phases), hpa_target=hpa_target,
                   hpa_tolerance=hpa_tolerance, elastic_pool=elastic_pool, idc_pool=idc_pool, hpa=hpa,
                   served=served, served_why=why)
    created = x.pods[x.pods["reason"] == "PodCreated"].drop_duplicates("object")
    deleted = x.pods[x.pods["reason"] == "PodDeleted"].drop_duplicates("object")
    taken: dict[str, set[str]] = {"up": set(), "down": set()}
    events: list[ScaleEvent] = []
    previous: pd.Timestamp | None = None
    asks = x.asks()
    for i, ask in enumerate(asks):
        up = ask.direction == "up"
        if ask.replicas_from is None:
            count = 1
        else:
            count = abs(ask.replicas_to - ask.replicas_from)
        pool_rows = created if up else deleted
        at = pool_rows["time"].dt.floor("s")
        window = at >= ask.at.floor("s")
        # a pod created (deleted) after the HPA's next change belongs to that change: the
        # ReplicaSet acts within a second of each scale, never for an earlier one much later
        later = next((a.at.floor("s") for a in asks[i + 1:] if a.at.floor("s") > ask.at.floor("s")), None)
        if later is not None:
            window &= at < later
        candidates = pool_rows[window & ~pool_rows["object"].isin(taken[ask.direction])]
        pods = list(candidates["object"].iloc[:count])
        taken[ask.direction].update(pods)
        pods += [None] * (count - len(pods))
        for pod in pods:
            events.append(x.up(ask, previous, pod) if up else x.down(ask, previous, pod))
        previous = ask.at
    return events


# -- the violation bill ---------------------------------------------------------------------------
def _good(requests_df: pd.DataFrame, good: str | Callable[[pd.DataFrame], Any]) -> pd.Series:
    mask = good(requests_df) if callable(good) else requests_df[good]
    return pd.Series(np.asarray(mask, dtype=bool), index=requests_df.index)


def violation_bill(requests_df: pd.DataFrame, events: Sequence[ScaleEvent], *,
                   load_started_at: datetime | pd.Timestamp | str,
                   good: str | Callable[[pd.DataFrame], Any] = "good",
                   phases: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    """Every request that missed its SLO, attributed to the step in effect when it was sent.

    ``requests_df``: one row per request with ``t_s`` (intended send time, seconds since
    ``load_started_at``); ``good``: the name of a boolean column, or a callable returning a
    boolean Series (e.g. ``lambda r: goodput.good_mask(r, {"ttft_ms": 150.0})``). Requests the
    generator cancelled (``cancelled``) count nowhere, as in :mod:`tasks.goodput`.
    Returns ``[{step, span, requests, share, phases}]`` sorted by ``requests`` (largest first),
    ``share`` of all violations (they sum to 1), ``phases`` the count per load phase the
    requests were sent in (from ``phases``, else the table's ``phase`` column). ``step`` is the
    lag the service was in (``STEP_LAGS``), ``NO_EVENT`` outside every event, or
    "send time unknown". Empty when nothing was violated.
    """
    reqs = requests_df
    if "cancelled" in reqs:
        reqs = reqs[~reqs["cancelled"].fillna(False).astype(bool)]
    bad = reqs[~_good(reqs, good)]
    if not len(bad):
        return []
    start = _stamp(load_started_at)
    sent = start + pd.to_timedelta(pd.to_numeric(bad["t_s"], errors="coerce"), unit="s")
    t = sent.to_numpy(dtype="datetime64[ns]") if len(sent) else np.array([], dtype="datetime64[ns]")
    known_time = ~pd.isna(sent).to_numpy()
    labels = np.full(len(bad), NO_EVENT, dtype=object)
    spans = np.full(len(bad), "", dtype=object)
    labels[~known_time] = "send time unknown"
    assigned = ~known_time
    # the event that started first wins where events overlap
    ordered = sorted(range(len(events)), key=lambda i: (events[i].started_at or pd.Timestamp.max.tz_localize("UTC"),
                                                        i))
    for i in ordered:
        ev = events[i]
        prev: Step | None = None
        between: list[Step] = []
        for cur in ev.steps:
            if not cur.known:
                between.append(cur)
                continue
            if prev is not None and cur.at > prev.at:
                a = prev.at.tz_convert("UTC").tz_localize(None).to_datetime64()
                b = cur.at.tz_convert("UTC").tz_localize(None).to_datetime64()
                inside = ~assigned & (t >= a) & (t < b)
                if inside.any():
                    label, span = _lag(ev.direction, between, prev, cur)
                    labels[inside], spans[inside] = label, span
                    assigned |= inside
            prev, between = cur, []
    phase_of = _phase_names(bad, sent, phases)
    total = len(bad)
    out = []
    for label in pd.unique(labels):
        mask = labels == label
        counts = pd.Series(phase_of[mask]).value_counts()
        out.append({"step": str(label), "span": str(spans[mask][0]), "requests": int(mask.sum()),
                    "share": round(float(mask.sum()) / total, 4),
                    "phases": {str(k): int(v) for k, v in counts.items()}})
    return sorted(out, key=lambda e: (-e["requests"], e["step"]))


def _lag(direction: str, unknown: list[Step], prev: Step, cur: Step) -> tuple[str, str]:
    """The lag a request sent between ``prev`` and ``cur`` waited in, and its span. Unknown steps
    between them cannot split the interval: their lags are named together with ``cur``'s."""
    label, span = STEP_LAGS.get((direction, cur.step), (f"waiting for {cur.step}", f"{prev.step} -> {cur.step}"))
    others = []
    for s in unknown:
        other = STEP_LAGS.get((direction, s.step), (f"waiting for {s.step}", ""))[0]
        if other != label and other not in others:
            others.append(other)
    if not others:
        return label, span
    names = [others[0]] + [o.removeprefix("waiting ") for o in others[1:] + [label]]
    return " or ".join(names) + f" ({', '.join(s.step for s in unknown)} unknown)", f"{prev.step} -> {cur.step}"


def _phase_names(bad: pd.DataFrame, sent: pd.Series, phases: Iterable[Any] | None) -> np.ndarray:
    spans = _phases(phases)
    if spans:
        names = np.full(len(bad), "outside the phases", dtype=object)
        for name, a, b in spans:
            inside = (sent >= a) & ((sent < b) if b is not None else True)
            names[inside.to_numpy(dtype=bool)] = name
        return names
    if "phase" in bad:
        return bad["phase"].fillna("unknown").astype(str).to_numpy(dtype=object)
    return np.full(len(bad), "unknown", dtype=object)


def bill_sentence(entry: dict[str, Any]) -> str:
    """One bill entry in words: ``412 requests (61% of all violations) were sent while the
    service waited for the cloud node (autoscaler decision -> node Ready)``."""
    n, pct = entry["requests"], round(100 * entry["share"])
    head = f"{n} request{'s' if n != 1 else ''} ({pct}% of all violations) {'were' if n != 1 else 'was'} sent"
    step = entry["step"]
    if step == NO_EVENT:
        return f"{head} while no scale event was in progress"
    if step.startswith("waiting "):
        what, span = step[len("waiting "):], entry.get("span") or ""
        if span and what.endswith(")"):  # "... (ask lag)" -> "... (ask lag: a -> b)"
            return f"{head} while the service waited {what[:-1]}: {span})"
        return f"{head} while the service waited {what}" + (f" ({span})" if span else "")
    return f"{head} with {step}"


__all__ = ["DOWN_STEPS", "NO_EVENT", "STEP_LAGS", "UP_STEPS", "ScaleEvent", "Step", "bill_sentence",
           "scale_events", "violation_bill"]
