"""The observer: what the cluster did while the spike ran, as one timeline.

``Observer(kube, spec, run_id=...)`` is started before the spike and stopped after the
cool-down. Between ``start()`` and ``stop()`` its threads *watch* (never poll), through
:meth:`tasks.kube.Kube.watch`, which resumes after dropped connections and ``410 Gone``:

- the HPA ``spec.service.hpa_name`` (status: current/desired replicas, the scale metric);
- core/v1 Events in the service namespace, the autoscaler's status-ConfigMap events in
  ``kube-system`` and node events in ``default`` (where events of cluster-scoped objects go);
- the ConfigMap ``kube-system/cluster-autoscaler-status`` (node-group health and scale-up /
  scale-down state, parsed from ``data.status``: the YAML format of cluster-autoscaler >= 1.30
  and the older text format);
- the service's Pods (``spec.service.pod_selector``) and all Nodes (pool = the node's
  ``spec.cluster.nodepool_label``).

``stop()`` returns a :class:`Timeline`: one pandas DataFrame, one row per thing that happened,
sorted by ``time``. Columns:

============== ===============================================================================
time           when it happened, tz-aware UTC, from the apiserver's objects: an event's
               ``series.lastObservedTime`` / ``lastTimestamp`` / ``eventTime``; a condition's
               ``lastTransitionTime`` (PodScheduled, Ready); ``creationTimestamp``; a deletion's
               request time (``deletionTimestamp - deletionGracePeriodSeconds``); the HPA's
               status update time (its ``managedFields``); the autoscaler's status ``time``.
               Only when an object carries none (a node deleted without grace) is it the time
               the watch saw it, and ``message`` then ends with ``(time observed)``.
observed_at    when this observer received it (UTC); ``observed_at - time`` is the watch lag
kind           HPA | Event | Pod | Node | Autoscaler
object         the object concerned, ``namespace/name`` (``name`` for Nodes); for an Event the
               object it is about (``involvedObject``)
object_kind    that object's kind: HorizontalPodAutoscaler, Pod, Node, ConfigMap, ReplicaSet, ...
reason         the event's reason (FailedScheduling, TriggeredScaleUp, SuccessfulRescale, ...),
               or a synthetic one: PodCreated, PodScheduled, PodReady, PodNotReady, PodDeleted,
               NodeCreated, NodeReady, NodeNotReady, NodeGPUAllocatable, NodeDeleted, HPAReplicas, HPAMetric,
               AutoscalerStatus
message        the event's message, or a one-line description of the change
count          Events: which occurrence of the event this row is (``count`` / ``series.count``;
               an event repeated within seconds is one object whose count grows, one row each)
replicas       HPA rows: current replicas; SuccessfulRescale events: the new size;
               Autoscaler rows: the node group's target size
desired_replicas  HPA rows: desired replicas
metric_value   HPA rows: current average of the scale metric (e.g. SM util 0-100)
pool           node-pool id of the node (Node rows) or of the node the pod runs on (Pod rows,
               pod events after the pod was scheduled)
node           the node concerned (Pod rows: the pod's node once scheduled)
source         reporting component of an event (``source.component`` or
               ``reportingComponent``); ``watch/<Kind>`` for synthetic rows
uid            uid of the event, or of the object of a synthetic row
============== ===============================================================================

Invariants: the same event occurrence (uid + count) is recorded once, also when a watch
resumes or re-lists; a state change of a Pod, Node or HPA is recorded once. Objects that
already exist when the observer starts contribute their history (creation, scheduling,
readiness) with their original times, so the state at any time in the run can be rebuilt
from the rows (:meth:`Timeline.pods_per_pool`, :meth:`Timeline.nodes_per_pool`); events
older than ``EVENT_HISTORY_S`` before the start (earlier runs') are left out. What could
not be watched (e.g. no permission to read kube-system events) is listed in
``Timeline.gaps``, never silently dropped. ``stop()`` freezes the rows after a short grace
for events in flight; nothing is recorded after it.

Example::

    obs = Observer(kube, spec, run_id="r1")
    obs.start()
    ...                                   # spike, hold, cool-down
    timeline = obs.stop()
    timeline.pods_per_pool()              # time, pool, pods (Ready)
    timeline.to_csv("reports/r1/timeline.csv")
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tasks.errors import ClusterError
from tasks.kube import Kube
from tasks.names import (
    AUTOSCALER_NAMESPACE,
    AUTOSCALER_STATUS,
    GPU_RESOURCE,
    NODE_EVENTS_NAMESPACE,
)
from tasks.spec import RolloutSpec

log = logging.getLogger(__name__)

KINDS = ("HPA", "Event", "Pod", "Node", "Autoscaler")
COLUMNS = ["time", "observed_at", "kind", "object", "object_kind", "reason", "message", "count", "replicas",
           "desired_replicas", "metric_value", "pool", "node", "source", "uid"]
_NUMERIC = ("count", "replicas", "desired_replicas", "metric_value")
# one Kube.watch session (it resumes from its own resourceVersion inside); a new session re-lists
WATCH_SESSION_S = 6 * 3600.0
# stop() waits this long for events already on the wire, then takes the snapshot
STOP_GRACE_S = 1.0
# events older than this before start() are left out (earlier runs' events live for an hour)
EVENT_HISTORY_S = 120.0
TIME_OBSERVED = " (time observed)"

Obj = dict[str, Any]


# -- timestamps --------------------------------------------------------------------------------
def _ts(value: Any) -> pd.Timestamp | None:
    """An apiserver timestamp (RFC 3339, Go's ``time.String()``) as tz-aware UTC, or None."""
    if value in (None, ""):
        return None
    if isinstance(value, pd.Timestamp):
        return value.tz_convert("UTC") if value.tzinfo else value.tz_localize("UTC")
    text = str(value)
    go = re.match(r"^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)? ([+-]\d{4}) \w+$", text)
    if go:  # "2026-11-28 21:25:01.727938036 +0000 UTC" (cluster-autoscaler status)
        frac = (go.group(3) or "")[:10]
        text = f"{go.group(1)}T{go.group(2)}{frac}{go.group(4)}"
    try:
        out = pd.Timestamp(text)
    except (ValueError, TypeError):
        return None
    return out.tz_convert("UTC") if out.tzinfo else out.tz_localize("UTC")


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def _condition(obj: Obj, ctype: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def _status_update_time(obj: Obj) -> pd.Timestamp | None:
    """When the apiserver last stored the object's status (managedFields), else any update."""
    fields = obj.get("metadata", {}).get("managedFields") or []
    status_times = [_ts(f.get("time")) for f in fields if f.get("subresource") == "status"]
    status_times = [t for t in status_times if t is not None]
    if status_times:
        return max(status_times)
    all_times = [t for t in (_ts(f.get("time")) for f in fields) if t is not None]
    return max(all_times) if all_times else None


def _deletion_requested(meta: Obj) -> pd.Timestamp | None:
    # deletionTimestamp is when the object *will* be gone: request time + grace period
    stamp = _ts(meta.get("deletionTimestamp"))
    if stamp is None:
        return None
    return stamp - pd.Timedelta(seconds=int(meta.get("deletionGracePeriodSeconds") or 0))


# -- the autoscaler's status text --------------------------------------------------------------
@dataclass(frozen=True)
class NodeGroupStatus:
    """One node group as the cluster-autoscaler's status ConfigMap describes it."""

    name: str
    health: str | None = None
    ready: int | None = None
    registered: int | None = None
    target: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    scale_up: str | None = None
    scale_down: str | None = None

    def describe(self) -> str:
        return (f"group {self.name}: health={self.health} ready={self.ready} registered={self.registered} "
                f"target={self.target} min={self.min_size} max={self.max_size} "
                f"scaleUp={self.scale_up} scaleDown={self.scale_down}")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_autoscaler_status(text: str) -> tuple[pd.Timestamp | None, list[NodeGroupStatus]]:
    """(status time, node groups) from ``data.status``; ([], None) parts when unreadable.

    cluster-autoscaler >= 1.30 writes YAML (``nodeGroups: [{name, health: {status,
    nodeCounts, cloudProviderTarget, minSize, maxSize}, scaleUp: {status}, ...}]``); older
    builds (ACK's add-on may be one) write ``Name:`` / ``Health: Healthy (ready=1 ...
    cloudProviderTarget=1 (minSize=0, maxSize=3))`` lines.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    if isinstance(doc, dict) and ("nodeGroups" in doc or "autoscalerStatus" in doc):
        groups = []
        for g in doc.get("nodeGroups") or []:
            health = g.get("health") or {}
            counts = (health.get("nodeCounts") or {}).get("registered") or {}
            # zero counts are omitted from the YAML (omitempty)
            zero = 0 if health else None
            groups.append(NodeGroupStatus(
                name=str(g.get("name")), health=health.get("status"), ready=_int(counts.get("ready", zero)),
                registered=_int(counts.get("total", zero)),
                target=_int(health.get("cloudProviderTarget", zero)),
                min_size=_int(health.get("minSize", zero)), max_size=_int(health.get("maxSize", zero)),
                scale_up=(g.get("scaleUp") or {}).get("status"),
                scale_down=(g.get("scaleDown") or {}).get("status")))
        return _ts(doc.get("time")), groups
    stamp = None
    head = re.search(r"status at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [+-]\d{4} \w+)", text or "")
    if head:
        stamp = _ts(head.group(1))
    groups = []
    _, _, rest = (text or "").partition("NodeGroups:")
    for block in re.split(r"\n\s*Name:\s*", "\n" + rest)[1:]:
        name = block.split()[0] if block.split() else "?"

        def grab(pattern: str, src: str = block) -> str | None:
            m = re.search(pattern, src)
            return m.group(1) if m else None

        health_line = grab(r"Health:\s*([^\n]*)") or ""
        groups.append(NodeGroupStatus(
            name=name, health=grab(r"^(\w+)", health_line), ready=_int(grab(r"ready=(\d+)", health_line)),
            registered=_int(grab(r"registered=(\d+)", health_line)),
            target=_int(grab(r"cloudProviderTarget=(\d+)", health_line)),
            min_size=_int(grab(r"minSize=(\d+)", health_line)), max_size=_int(grab(r"maxSize=(\d+)", health_line)),
            scale_up=grab(r"ScaleUp:\s*(\w+)"), scale_down=grab(r"ScaleDown:\s*(\w+)")))
    return stamp, groups


# -- the timeline ------------------------------------------------------------------------------
def _empty_frame() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    for c in ("time", "observed_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    for c in _NUMERIC:
        df[c] = df[c].astype("float64")
    return df


def _frame(rows: list[Obj]) -> pd.DataFrame:
    if not rows:
        return _empty_frame()
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("time", "observed_at"):
        df[c] = pd.to_datetime(df[c], utc=True, format="ISO8601")
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("kind", "object", "object_kind", "reason", "message", "pool", "node", "source", "uid"):
        df[c] = df[c].astype("object").where(df[c].notna(), None)
    return df.sort_values("time", kind="stable").reset_index(drop=True)


@dataclass
class Timeline:
    """What the cluster did during a run: ``df`` (see the module docstring for its columns),
    the observed interval, the node-pool ids it was judged against, and what could not be
    watched (``gaps``)."""

    df: pd.DataFrame
    started_at: pd.Timestamp | None = None
    stopped_at: pd.Timestamp | None = None
    idc_pool_id: str | None = None
    elastic_pool_id: str | None = None
    gaps: list[str] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: list[Obj], **meta: Any) -> Timeline:
        return cls(df=_frame(rows), **meta)

    def __len__(self) -> int:
        return len(self.df)

    # -- derived series ------------------------------------------------------------------------
    def _steps(self, kind: str, plus: set[str], minus: set[str], column: str) -> pd.DataFrame:
        rows = self.df[(self.df["kind"] == kind) & self.df["reason"].isin(plus | minus)]
        counts: dict[str, int] = {}
        live: set[str] = set()
        out = []
        for r in rows.itertuples(index=False):
            pool = r.pool if isinstance(r.pool, str) else "unknown"
            key = r.uid or r.object
            if r.reason in plus and key not in live:
                live.add(key)
                counts[pool] = counts.get(pool, 0) + 1
            elif r.reason in minus and key in live:
                live.discard(key)
                counts[pool] = counts.get(pool, 0) - 1
            else:
                continue
            out.append({"time": r.time, "pool": pool, column: counts[pool]})
        frame = pd.DataFrame(out, columns=["time", "pool", column])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        frame[column] = frame[column].astype("int64")
        return frame

    def pods_per_pool(self) -> pd.DataFrame:
        """Ready pods of the service per node pool over time: columns ``time, pool, pods``.

        One row per change (a step series): a pod counts from its ``PodReady`` until its
        ``PodNotReady`` or ``PodDeleted`` (deletion request). Pool ``unknown`` means the pod's
        node was never seen.
        """
        return self._steps("Pod", {"PodReady"}, {"PodNotReady", "PodDeleted"}, "pods")

    def nodes_per_pool(self) -> pd.DataFrame:
        """Existing nodes per node pool over time: columns ``time, pool, nodes`` (a step series
        from ``NodeCreated`` / ``NodeDeleted``)."""
        return self._steps("Node", {"NodeCreated"}, {"NodeDeleted"}, "nodes")

    @staticmethod
    def value_at(series: pd.DataFrame, pool: str, at: pd.Timestamp, column: str) -> int:
        """The step series' value for ``pool`` at time ``at`` (0 before its first step)."""
        rows = series[(series["pool"] == pool) & (series["time"] <= at)]
        return int(rows[column].iloc[-1]) if len(rows) else 0

    # -- files --------------------------------------------------------------------------------
    def to_csv(self, path: str | Path) -> Path:
        """Write the rows as CSV (times in ISO 8601 UTC); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.df.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
        return path

    @classmethod
    def read_csv(cls, path: str | Path, **meta: Any) -> Timeline:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in raw.to_dict("records")]
        return cls.from_rows(rows, **meta)

    def to_json(self, path: str | Path) -> Path:
        """Rows and metadata in one JSON file (what tests/unit/fixtures hold)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = json.loads(self.df.to_json(orient="records", date_format="iso", date_unit="us"))
        meta = {"started_at": _iso(self.started_at), "stopped_at": _iso(self.stopped_at),
                "idc_pool_id": self.idc_pool_id, "elastic_pool_id": self.elastic_pool_id, "gaps": self.gaps}
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return path

    @classmethod
    def read_json(cls, path: str | Path) -> Timeline:
        doc = json.loads(Path(path).read_text())
        meta = doc.get("meta", {})
        return cls.from_rows(doc.get("rows", []), started_at=_ts(meta.get("started_at")),
                             stopped_at=_ts(meta.get("stopped_at")), idc_pool_id=meta.get("idc_pool_id"),
                             elastic_pool_id=meta.get("elastic_pool_id"), gaps=list(meta.get("gaps") or []))


def _iso(stamp: pd.Timestamp | None) -> str | None:
    return stamp.isoformat() if stamp is not None else None


# -- the observer ------------------------------------------------------------------------------
@dataclass
class _WatchSpec:
    name: str
    api_version: str
    kind: str
    namespace: str | None
    handle: Callable[[str, Obj], None]
    label_selector: str | None = None
    field_selector: str | None = None


class Observer:
    """Watches the cluster beside the spike; ``stop()`` returns the :class:`Timeline`."""

    def __init__(self, kube: Kube, spec: RolloutSpec, *, run_id: str, session_s: float = WATCH_SESSION_S,
                 event_history_s: float = EVENT_HISTORY_S):
        self.kube = kube
        self.spec = spec
        self.run_id = run_id
        self.namespace = spec.cluster.namespace
        self._session_s = session_s
        self._event_history = pd.Timedelta(seconds=event_history_s)
        self._closed = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._rows: list[Obj] = []
        self._gaps: list[str] = []
        self._started_at: pd.Timestamp | None = None
        self._stopped_at: pd.Timestamp | None = None
        # per-watch state, written by one watch thread each (keys are uids where they are shared)
        self._event_keys: set[tuple[str, int]] = set()
        self._pods: dict[str, Obj] = {}
        self._nodes: dict[str, Obj] = {}
        self._node_pool: dict[str, str | None] = {}
        self._hpa_last: tuple | None = None
        self._hpa_metric_last: float | None = None
        self._hpa_conditions_last: dict[str, str | None] = {}
        self._groups_last: dict[str, NodeGroupStatus] = {}
        self._seen_rv: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def watches(self) -> list[_WatchSpec]:
        svc, ns = self.spec.service, self.namespace
        pod_selector = ",".join(f"{k}={v}" for k, v in sorted(svc.pod_selector.items()))
        out = [
            _WatchSpec("hpa", "autoscaling/v2", "HorizontalPodAutoscaler", ns, self._on_hpa,
                       field_selector=f"metadata.name={svc.hpa_name}"),
            _WatchSpec(f"events/{ns}", "v1", "Event", ns, self._on_event),
            _WatchSpec("autoscaler-status", "v1", "ConfigMap", AUTOSCALER_NAMESPACE, self._on_autoscaler_status,
                       field_selector=f"metadata.name={AUTOSCALER_STATUS}"),
            _WatchSpec("pods", "v1", "Pod", ns, self._on_pod, label_selector=pod_selector),
            _WatchSpec("nodes", "v1", "Node", None, self._on_node),
        ]
        if ns != AUTOSCALER_NAMESPACE:
            out.append(_WatchSpec(f"events/{AUTOSCALER_NAMESPACE}", "v1", "Event", AUTOSCALER_NAMESPACE,
                                  self._on_event, field_selector=f"involvedObject.name={AUTOSCALER_STATUS}"))
        if ns != NODE_EVENTS_NAMESPACE:
            out.append(_WatchSpec(f"events/{NODE_EVENTS_NAMESPACE}", "v1", "Event", NODE_EVENTS_NAMESPACE,
                                  self._on_event, field_selector="involvedObject.kind=Node"))
        return out

    def start(self) -> Observer:
        if self._threads:
            raise RuntimeError("Observer already started")
        self._started_at = _now()
        for w in self.watches():
            t = threading.Thread(target=self._run, args=(w,), name=f"observe-{w.name}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self, *, grace_s: float = STOP_GRACE_S, join_s: float = 0.5) -> Timeline:
        """Return the timeline of everything up to now and end the watches.

        Waits ``grace_s`` for events already on their way, then freezes the rows. A watch
        thread blocked in a quiet stream notices the stop at its next event or when the
        server closes the stream (at most 30 s later); it records nothing after the freeze.
        """
        stopped_at = self._stopped_at = _now()
        if grace_s > 0:
            _time.sleep(grace_s)
        with self._lock:
            self._closed = True
        self._stop.set()
        deadline = _time.monotonic() + join_s
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - _time.monotonic()))
        return self.timeline(stopped_at=stopped_at)

    def timeline(self, *, stopped_at: pd.Timestamp | None = None) -> Timeline:
        """A snapshot of what has been recorded so far (pools filled in from the nodes seen)."""
        with self._lock:
            rows = [dict(r) for r in self._rows]
            gaps = list(self._gaps)
        pools = dict(self._node_pool)
        for r in rows:
            if r.get("pool") is None and r.get("node"):
                r["pool"] = pools.get(r["node"])
        return Timeline.from_rows(rows, started_at=self._started_at, stopped_at=stopped_at or self._stopped_at,
                                  idc_pool_id=self.spec.cluster.idc_pool_id,
                                  elastic_pool_id=self.spec.cluster.elastic_pool_id, gaps=gaps)

    def __enter__(self) -> Observer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if not self._stop.is_set():
            self.stop()

    # -- the watch loop ------------------------------------------------------------------------
    def _run(self, w: _WatchSpec) -> None:
        # Kube.watch lists, then watches from the list's resourceVersion and resumes by itself;
        # resuming from an object's own resourceVersion instead would replay old history.
        backoff = 0.5
        while not self._stop.is_set():
            try:
                for etype, obj in self.kube.watch(
                        w.api_version, w.kind, w.namespace, label_selector=w.label_selector,
                        field_selector=w.field_selector, timeout_s=self._session_s, stop=self._stop,
                        send_initial=True):
                    if self._stop.is_set():
                        return
                    try:
                        w.handle(etype, obj)
                    except Exception:  # noqa: BLE001 - one odd object must not end the watch
                        log.exception("observer %s: cannot record %s %s", w.name, etype,
                                      obj.get("metadata", {}).get("name"))
                backoff = 0.5
            except ClusterError as exc:
                text = exc.one_line()
                fatal = any(s in text for s in (" 401 ", " 403 ", " 404 ", "is not served"))
                where = f"{w.kind} watch in {w.namespace or 'the cluster'}"
                if fatal:
                    self._gap(f"{where}: {text}")
                    return
                self._gap(f"{where}: {text}; resumed by re-listing (changes in between show only their end state)")
                self._stop.wait(backoff)  # the next session re-lists; recorded rows are deduplicated
                backoff = min(backoff * 2, 10)
            except Exception as exc:  # noqa: BLE001 - the watch thread must not die silently
                self._gap(f"{w.kind} watch in {w.namespace or 'the cluster'}: {type(exc).__name__}: {exc}; "
                          "resumed by re-listing")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10)

    def _stale(self, obj: Obj) -> bool:
        """True for an object state older than one already handled (a replay after a resume).

        resourceVersions are opaque by contract but etcd revisions in practice; when both are
        integers, an older or equal one is a state already seen.
        """
        meta = obj.get("metadata", {})
        key = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
        try:
            rv = int(meta.get("resourceVersion") or "")
        except ValueError:
            return False
        if rv <= self._seen_rv.get(key, -1):
            return True
        self._seen_rv[key] = rv
        return False

    def _gap(self, text: str) -> None:
        with self._lock:
            if text not in self._gaps:
                self._gaps.append(text)
        log.warning("observer: %s", text)

    def _add(self, *, time: pd.Timestamp | None, kind: str, obj: str, object_kind: str, reason: str,
             message: str = "", uid: str | None = None, source: str | None = None, node: str | None = None,
             pool: str | None = None, replicas: float | None = None, desired_replicas: float | None = None,
             metric_value: float | None = None, count: int | None = None) -> None:
        observed = _now()
        if time is None:
            time, message = observed, message + TIME_OBSERVED
        row = {"time": time, "observed_at": observed, "kind": kind, "object": obj, "object_kind": object_kind,
               "reason": reason, "message": message, "count": count, "replicas": replicas,
               "desired_replicas": desired_replicas,
               "metric_value": metric_value, "pool": pool, "node": node, "source": source, "uid": uid}
        with self._lock:
            if not self._closed:
                self._rows.append(row)

    # -- handlers (one thread each) ------------------------------------------------------------
    def _on_event(self, etype: str, ev: Obj) -> None:
        if etype == "DELETED":
            return  # events expire (TTL); their occurrence was already recorded
        meta = ev.get("metadata", {})
        series = ev.get("series") or {}
        count = int(series.get("count") or ev.get("count") or 1)
        key = (meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}", count)
        with self._lock:  # three event watches share the key set
            if key in self._event_keys:
                return
            self._event_keys.add(key)
        when = (_ts(series.get("lastObservedTime")) or _ts(ev.get("lastTimestamp")) or _ts(ev.get("eventTime"))
                or _ts(ev.get("firstTimestamp")) or _ts(meta.get("creationTimestamp")))
        if when is not None and self._started_at is not None and when < self._started_at - self._event_history:
            return
        inv = ev.get("involvedObject") or ev.get("regarding") or {}
        inv_kind = inv.get("kind") or ""
        obj = f"{inv['namespace']}/{inv.get('name')}" if inv.get("namespace") else str(inv.get("name"))
        node = inv.get("name") if inv_kind == "Node" else None
        if inv_kind == "Pod":
            pod = self._pods.get(inv.get("uid") or "") or {}
            # strictly after: both are often whole seconds, and an event of the same second
            # (TriggeredScaleUp, the last FailedScheduling) usually precedes the binding
            if pod.get("node") and pod.get("scheduled_at") is not None and when is not None \
                    and pod["scheduled_at"] < when:
                node = pod["node"]
        source = ((ev.get("source") or {}).get("component") or ev.get("reportingComponent")
                  or ev.get("reportingController") or None)
        message = " ".join(str(ev.get("message") or ev.get("note") or "").split())
        replicas = None
        if ev.get("reason") == "SuccessfulRescale":
            m = re.search(r"New size: (\d+)", message)
            replicas = float(m.group(1)) if m else None
        self._add(time=when, kind="Event", obj=obj, object_kind=inv_kind, reason=str(ev.get("reason") or ""),
                  message=message, uid=meta.get("uid"), source=source, node=node, replicas=replicas, count=count)

    def _on_hpa(self, etype: str, hpa: Obj) -> None:
        if etype != "DELETED" and self._stale(hpa):
            return
        meta = hpa.get("metadata", {})
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        if etype == "DELETED":
            self._add(time=_deletion_requested(meta), kind="HPA", obj=name, object_kind="HorizontalPodAutoscaler",
                      reason="HPADeleted", message="HPA deleted", uid=meta.get("uid"), source="watch/HPA")
            self._hpa_last = None
            return
        status = hpa.get("status") or {}
        current, desired = status.get("currentReplicas"), status.get("desiredReplicas")
        if current is None and not desired:
            return  # created, not yet synced by the HPA controller
        metric, target = self._hpa_metric(hpa)
        when = _status_update_time(hpa) or _ts(status.get("lastScaleTime"))
        self._hpa_conditions(hpa, name, when)
        if (current, desired) != self._hpa_last:
            self._hpa_last = (current, desired)
            self._hpa_metric_last = metric
            text = f"current {current}, desired {desired}"
            if metric is not None:
                text += f"; {self.spec.service.scale_metric} {metric:g} (target {target})"
            # the new desired size is stamped by lastScaleTime when the HPA just rescaled
            scaled = _ts(status.get("lastScaleTime"))
            if scaled is not None and when is not None and abs((when - scaled).total_seconds()) < 2:
                when = scaled
            self._add(time=when, kind="HPA", obj=name, object_kind="HorizontalPodAutoscaler", reason="HPAReplicas",
                      message=text, uid=meta.get("uid"), source="watch/HPA", replicas=current,
                      desired_replicas=desired, metric_value=metric)
        elif metric is not None and metric != self._hpa_metric_last:
            self._hpa_metric_last = metric
            self._add(time=when, kind="HPA", obj=name, object_kind="HorizontalPodAutoscaler", reason="HPAMetric",
                      message=f"{self.spec.service.scale_metric} {metric:g} (target {target})",
                      uid=meta.get("uid"), source="watch/HPA", replicas=current, desired_replicas=desired,
                      metric_value=metric)

    def _hpa_conditions(self, hpa: Obj, name: str, when: pd.Timestamp | None) -> None:
        """A row per change of the HPA's ScalingActive / AbleToScale conditions: ScalingActive
        False is the HPA that cannot read its metric (``<unknown>`` in kubectl)."""
        for c in (hpa.get("status") or {}).get("conditions") or []:
            ctype = c.get("type")
            if ctype not in ("ScalingActive", "AbleToScale"):
                continue
            key = c.get("status")  # a row per transition (its lastTransitionTime), not per reason change
            if self._hpa_conditions_last.get(ctype) == key:
                continue
            first = ctype not in self._hpa_conditions_last
            self._hpa_conditions_last[ctype] = key
            if first and c.get("status") == "True":
                continue  # the normal state, not a change worth a row
            self._add(time=_ts(c.get("lastTransitionTime")) or when, kind="HPA", obj=name,
                      object_kind="HorizontalPodAutoscaler", reason="HPACondition",
                      message=f"{ctype}={c.get('status')} ({c.get('reason')}): {c.get('message') or ''}".strip(),
                      uid=(hpa.get("metadata") or {}).get("uid"), source="watch/HPA")

    def _hpa_metric(self, hpa: Obj) -> tuple[float | None, Any]:
        target = None
        for m in (hpa.get("spec") or {}).get("metrics") or []:
            pods = m.get("pods") or {}
            if (pods.get("metric") or {}).get("name") == self.spec.service.scale_metric:
                t = pods.get("target") or {}
                target = _quantity(t.get("averageValue") or t.get("value"))
        for m in (hpa.get("status") or {}).get("currentMetrics") or []:
            pods = m.get("pods") or {}
            if (pods.get("metric") or {}).get("name") == self.spec.service.scale_metric:
                cur = pods.get("current") or {}
                value = _quantity(cur.get("averageValue") or cur.get("value"))
                return (round(value, 3) if value is not None else None), _fmt(target)
        return None, _fmt(target)

    def _on_pod(self, etype: str, pod: Obj) -> None:
        if etype != "DELETED" and self._stale(pod):
            return
        meta = pod.get("metadata", {})
        uid = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        st = self._pods.setdefault(uid, {"created": False, "scheduled_at": None, "node": None, "ready": False,
                                         "deleted": False})
        node = (pod.get("spec") or {}).get("nodeName") or st["node"]

        def add(when: pd.Timestamp | None, reason: str, message: str, with_node: bool = True) -> None:
            self._add(time=when, kind="Pod", obj=name, object_kind="Pod", reason=reason, message=message, uid=uid,
                      source="watch/Pod", node=node if with_node else None)

        if not st["created"]:
            st["created"] = True
            add(_ts(meta.get("creationTimestamp")), "PodCreated", "pod created", with_node=False)
        sched = _condition(pod, "PodScheduled")
        if node and st["scheduled_at"] is None and (sched is None or sched.get("status") == "True"):
            st["node"] = node
            st["scheduled_at"] = _ts((sched or {}).get("lastTransitionTime")) or _now()
            add(_ts((sched or {}).get("lastTransitionTime")), "PodScheduled", f"scheduled to {node}")
        ready = _condition(pod, "Ready")
        is_ready = bool(ready and ready.get("status") == "True") and etype != "DELETED"
        if is_ready and not st["ready"] and not st["deleted"]:
            st["ready"] = True
            add(_ts(ready.get("lastTransitionTime")), "PodReady", f"Ready on {node}")
        elif st["ready"] and not is_ready and not st["deleted"] and not meta.get("deletionTimestamp") \
                and etype != "DELETED":
            st["ready"] = False
            add(_ts((ready or {}).get("lastTransitionTime")), "PodNotReady",
                f"not Ready ({(ready or {}).get('reason') or 'no reason'})")
        if (meta.get("deletionTimestamp") or etype == "DELETED") and not st["deleted"]:
            st["deleted"] = True
            grace = meta.get("deletionGracePeriodSeconds")
            text = f"deletion requested (grace {grace}s)" if grace is not None else "deleted"
            add(_deletion_requested(meta), "PodDeleted", f"{text}; was on {node or 'no node'}")

    def _on_node(self, etype: str, node: Obj) -> None:
        if etype != "DELETED" and self._stale(node):
            return
        meta = node.get("metadata", {})
        name = meta.get("name")
        uid = meta.get("uid") or name
        pool = (meta.get("labels") or {}).get(self.spec.cluster.nodepool_label)
        self._node_pool[name] = pool
        st = self._nodes.setdefault(uid, {"created": False, "ready": False, "deleted": False})
        st["pool"] = pool

        def add(when: pd.Timestamp | None, reason: str, message: str) -> None:
            self._add(time=when, kind="Node", obj=name, object_kind="Node", reason=reason, message=message, uid=uid,
                      source="watch/Node", node=name, pool=pool)

        if not st["created"]:
            st["created"] = True
            add(_ts(meta.get("creationTimestamp")), "NodeCreated", f"node created in pool {pool}")
        ready = _condition(node, "Ready")
        is_ready = bool(ready and ready.get("status") == "True") and etype != "DELETED"
        if is_ready and not st["ready"]:
            st["ready"] = True
            add(_ts(ready.get("lastTransitionTime")), "NodeReady", "Ready")
        elif st["ready"] and not is_ready and etype != "DELETED" and not meta.get("deletionTimestamp"):
            st["ready"] = False
            add(_ts((ready or {}).get("lastTransitionTime")), "NodeNotReady",
                f"Ready={(ready or {}).get('status')} ({(ready or {}).get('reason') or 'no reason'})")
        # the device plugin's nvidia.com/gpu turning allocatable carries no timestamp: the time the
        # watch saw it (for a node that already had it when the watch started, the watch's start)
        gpus = int(_quantity(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)) or 0)
        if gpus > 0 and not st.get("gpu") and etype != "DELETED":
            st["gpu"] = True
            add(None, "NodeGPUAllocatable", f"{GPU_RESOURCE} allocatable: {gpus}")
        if (meta.get("deletionTimestamp") or etype == "DELETED") and not st["deleted"]:
            st["deleted"] = True
            add(_deletion_requested(meta), "NodeDeleted", "node deleted")

    def pools_now(self) -> dict[str, tuple[int, int]]:
        """Per node pool: (Ready pods of the service, Ready nodes), as the watches saw them last (a
        snapshot for the console; the figures of the report come from the timeline)."""
        out: dict[str, list[int]] = {}
        for st in list(self._pods.values()):
            if st.get("ready") and not st.get("deleted"):
                out.setdefault(str(self._node_pool.get(st.get("node")) or "?"), [0, 0])[0] += 1
        for st in list(self._nodes.values()):
            if st.get("ready") and not st.get("deleted"):
                out.setdefault(str(st.get("pool") or "?"), [0, 0])[1] += 1
        return {pool: (v[0], v[1]) for pool, v in out.items()}

    def describe_pools(self) -> str:
        """``replicas IDC 2 / cloud 1, nodes IDC 2 / cloud 1`` for the console."""
        c = self.spec.cluster
        now = self.pools_now()
        idc, cloud = now.get(c.idc_pool_id, (0, 0)), now.get(c.elastic_pool_id, (0, 0))
        return f"replicas IDC {idc[0]} / cloud {cloud[0]}, nodes IDC {idc[1]} / cloud {cloud[1]}"

    def _on_autoscaler_status(self, etype: str, cm: Obj) -> None:
        if etype == "DELETED":
            return
        meta = cm.get("metadata", {})
        stamp, groups = parse_autoscaler_status((cm.get("data") or {}).get("status") or "")
        when = stamp or _status_update_time(cm)
        for g in groups:
            if self._groups_last.get(g.name) == g:
                continue
            self._groups_last[g.name] = g
            c = self.spec.cluster
            pool = c.elastic_pool_id if g.name == c.elastic_group else (c.idc_pool_id if g.name == c.idc_pool_id
                                                                         else None)
            self._add(time=when, kind="Autoscaler", obj=f"{AUTOSCALER_NAMESPACE}/{AUTOSCALER_STATUS}",
                      object_kind="ConfigMap", reason="AutoscalerStatus", message=g.describe(),
                      uid=meta.get("uid"), source="cluster-autoscaler", pool=pool,
                      replicas=g.target)


def _quantity(value: Any) -> float | None:
    """A Kubernetes quantity such as ``79500m`` or ``80`` as a float."""
    if value in (None, ""):
        return None
    text = str(value)
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024.0, "Mi": 1024.0 ** 2, "Gi": 1024.0 ** 3}
    m = re.match(r"^([0-9.eE+-]+)([a-zA-Z]*)$", text)
    if not m:
        return None
    try:
        return float(m.group(1)) * scale.get(m.group(2), 1.0)
    except ValueError:
        return None


def _fmt(value: float | None) -> Any:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def event_line(row: Any) -> str:
    """A row as a finding cites it: ``Event FailedScheduling ns/pod 12:00:03: message``."""
    get = row.get if isinstance(row, dict) else (lambda k: getattr(row, k))
    stamp = get("time")
    clock = stamp.strftime("%H:%M:%S") if stamp is not None and not pd.isna(stamp) else "?"
    message = get("message") or ""
    return f"{get('kind')} {get('reason')} {get('object')} {clock}: {message}".rstrip(": ")


def rows_lines(rows: pd.DataFrame | Iterable[Any], limit: int = 6) -> list[str]:
    """Up to ``limit`` rows as citation lines, with a count of the rest."""
    items = list(rows.itertuples(index=False)) if isinstance(rows, pd.DataFrame) else list(rows)
    out = [event_line(r) for r in items[:limit]]
    if len(items) > limit:
        out.append(f"... and {len(items) - limit} more")
    return out
