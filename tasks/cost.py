"""cost: what absorbing the traffic cost, and what the alternatives would have cost.

``CostSpec`` is the spec's ``cost`` section (prices of the IDC and cloud pools, the cloud's
billing granularity and minimum charge, the currency); it lives in ``tasks.spec.cost`` and is
re-exported here. ``compute_cost`` turns the observer's
timeline into a ``CostReport`` whose ``block()`` is report.json's ``cost`` section;
``run_cost_stage`` is the glue the verify stage calls; ``cost_plot`` draws cost accumulated
over the run per pool.

What is measured (all clipped to the window ``[started_at, ended_at]``)
    node interval    a node from its ``NodeReady`` to its ``NodeDeleted`` (or the window's end)
    pod interval     a pod of the service from ``PodReady`` to ``PodNotReady`` / ``PodDeleted``
                     (or the window's end); a pod Ready again later opens a new interval
    node_seconds     per pool, the sum of its node intervals
    replica_seconds  per pool (of the node the pod ran on), the sum of the pod intervals

What it costs
    A pool's price is per GPU-hour (x ``gpus_per_node`` for a node-hour) or per node-hour
    (/ ``gpus_per_node`` for a GPU-hour).
    ``cloud_cost_run``     every cloud node billed on its own: its interval rounded *up* to the
                           billing granularity, at least the minimum charge, at the node-hour price
    ``compression_factor`` real seconds per run second (``tasks.tidal``; 1 for the spike shape).
                           The run window stands for ``real_span_s = factor x traffic_span_s`` of
                           real time, the traffic span being the load shape's duration (the window
                           when no load is given); per-day figures multiply by
                           ``day_scale = 86400 / real_span_s`` (1 for a replayed day). Nodes kept
                           after the load ended (the spill-back tail) count to the day they follow.
    (a) ``hybrid_cost_per_day`` = ``idc_cost_per_day`` + ``cloud_cost_per_day``:
        ``idc_cost_per_day``   the IDC pool is amortised, paid all day, busy or not: its mean
                               node count over the window x 24 h x node-hour price
        ``cloud_cost_per_day`` every cloud node interval x factor, billed as above, x day_scale
    (b) ``idc_for_peak_cost_per_day``: the peak of Ready replicas (all pools at once) x
        ``service.gpus`` x 24 h x the IDC GPU-hour price (GPU granularity, no rounding to nodes)
    (c) ``cloud_only_cost_per_day``: every replica on a cloud instance of its own: each pod
        interval x factor, billed, x ``service.gpus`` x the cloud GPU-hour price, x day_scale
    ``cloud_cost_per_day_idle_unscaled``: (a)'s cloud part with each cloud node's idle time (Ready
        without a Ready pod of the service: waiting for the first pod, the scale-down lag)
        counted at its measured length instead of x factor. Those delays run on the
        autoscaler's timers in real seconds; compression does not shrink them, so (a) scales
        them up with the traffic and overstates them by up to ``factor``. The truth for a real
        day lies between the two.

Efficiency
    ``gpu_utilisation``   per pool: replica-seconds x service.gpus over node-seconds x
                          gpus_per_node (busy GPU share of the pool's GPUs), at most 1
    ``scale_down_lag_s``  cloud node-seconds after the last cloud pod left (spare cloud capacity
                          kept after the peak), run seconds; all cloud node-seconds when no pod
                          ever ran on cloud; None while a cloud pod is still Ready at the end
    ``requests_per_gpu_hour``  successful requests of the load over the GPU-hours of the
                          service's Ready replicas (all pools)

Prices are optional: an unpriced pool leaves its cost figures None (a gate rule on them gets
``no_data``) and says so in ``notes``; the node- and replica-seconds are reported regardless.

This module imports nothing heavy at module level (pandas, matplotlib are imported where used).

Example::

    cost = compute_cost(timeline, spec, started_at=load.started_at, ended_at=observer_end,
                        compression_factor=240.0, load=load)
    cost.block()["hybrid_cost_per_day"]    # e.g. 183.19
    cost_plot(cost).savefig("cost.png")
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.errors import TidegateError
from tasks.report_model import CostBlock, definitions
from tasks.spec.cost import CostSpec, PoolPrice

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from tasks.spec import RolloutSpec

log = logging.getLogger(__name__)

GRANULARITY_S = {"second": 1, "minute": 60, "hour": 3600}
DAY_S = 86_400.0

# the definition of every figure of the cost block (the report model's field descriptions)
DEFINITIONS: dict[str, str] = {k.split(".", 1)[1]: v for k, v in definitions().items() if k.startswith("cost.")}


def billed_seconds(seconds: float, granularity: str, minimum_s: float = 0.0) -> float:
    """Seconds billed for one node that existed ``seconds``: rounded up to the granularity, at
    least ``minimum_s``; nothing for a node that never existed.

    >>> billed_seconds(300.5, "second", 60), billed_seconds(30, "second", 60)
    (301, 60)
    >>> billed_seconds(61, "minute"), billed_seconds(1, "hour")
    (120, 3600)
    """
    if seconds <= 0:
        return 0
    unit = GRANULARITY_S[granularity]
    units = math.ceil(seconds / unit - 1e-9)
    return max(units * unit, minimum_s)


# -- intervals from the timeline ----------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """One node Ready, or one pod Ready, within the window; seconds from the window's start."""

    kind: str            # "node" | "pod"
    key: str             # uid, or the object name when the row has no uid
    object: str
    pool: str
    node: str | None
    start_s: float
    end_s: float
    open_at_end: bool    # still Ready when the window ended

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


def _stamp(value: Any) -> pd.Timestamp:
    import pandas as pd

    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


_COLUMNS = ("time", "kind", "object", "reason", "pool", "node", "uid")


def _frame_of(timeline: Any) -> pd.DataFrame | None:
    import pandas as pd

    frame = timeline if isinstance(timeline, pd.DataFrame) else None
    for attr in ("df", "frame"):  # Timeline.df; .frame in older callers
        if frame is None and isinstance(getattr(timeline, attr, None), pd.DataFrame):
            frame = getattr(timeline, attr)
    if frame is None:
        return None
    frame = frame.copy()
    for col in _COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _intervals(frame: pd.DataFrame, kind: str, opens: set[str], closes: set[str],
               start: pd.Timestamp, end: pd.Timestamp, node_pools: dict[str, str]) -> list[Interval]:
    label = "Node" if kind == "node" else "Pod"
    rows = frame[(frame["kind"] == label) & frame["reason"].isin(opens | closes)]
    rows = rows.sort_values("time", kind="stable")
    live: dict[str, tuple[Any, str, str, str | None]] = {}
    out: list[Interval] = []
    window = (end - start).total_seconds()

    def close(key: str, at: Any) -> None:
        t0, obj, pool, node = live.pop(key)
        a = max(0.0, (t0 - start).total_seconds())
        b = min(window, (at - start).total_seconds())
        if b > a:
            out.append(Interval(kind, key, obj, pool, node, a, b, open_at_end=at >= end))

    for r in rows.itertuples(index=False):
        if r.time is None or r.time != r.time:  # NaT
            continue
        key = _text(r.uid) or _text(r.object) or ""
        node = _text(r.node) or (_text(r.object) if kind == "node" else None)
        if r.reason in opens and key not in live:
            pool = _text(r.pool) or node_pools.get(node or "") or "unknown"
            live[key] = (r.time, _text(r.object) or key, pool, node)
        elif r.reason in closes and key in live:
            close(key, r.time)
    for key in list(live):
        close(key, end)
    return sorted(out, key=lambda iv: (iv.start_s, iv.object))


def _node_pools(frame: pd.DataFrame) -> dict[str, str]:
    nodes = frame[(frame["kind"] == "Node")]
    out: dict[str, str] = {}
    for r in nodes.itertuples(index=False):
        name, pool = _text(r.node) or _text(r.object), _text(r.pool)
        if name and pool:
            out[name] = pool
    return out


def _union_overlap(spans: list[tuple[float, float]], a: float, b: float) -> float:
    """Length of ``[a, b]`` covered by the union of ``spans``."""
    clipped = sorted((max(a, s), min(b, e)) for s, e in spans if min(b, e) > max(a, s))
    total, cur_s, cur_e = 0.0, None, None
    for s, e in clipped:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _peak(intervals: list[Interval]) -> int:
    events = sorted([(iv.start_s, 1) for iv in intervals] + [(iv.end_s, -1) for iv in intervals],
                    key=lambda e: (e[0], e[1]))
    peak = cur = 0
    for _, delta in events:
        cur += delta
        peak = max(peak, cur)
    return peak


# -- the report ---------------------------------------------------------------------------------
@dataclass
class CostReport:
    """The cost of a run and its per-day estimates; ``block()`` is report.json's ``cost``."""

    status: str                                   # "ok" | "no data: <why>"
    currency: str
    idc_pool: str
    cloud_pool: str
    compression_factor: float | None
    billing_granularity: str
    minimum_charge_s: int
    prices: dict[str, PoolPrice] = field(default_factory=dict)
    started_at: Any = None
    window_s: float | None = None
    traffic_span_s: float | None = None
    real_span_s: float | None = None
    day_scale: float | None = None
    nodes: list[Interval] = field(default_factory=list)
    pods: list[Interval] = field(default_factory=list)
    node_seconds: dict[str, float] = field(default_factory=dict)
    replica_seconds: dict[str, float] = field(default_factory=dict)
    cloud_nodes: int = 0
    cloud_billed_s: float | None = None
    cloud_cost_run: float | None = None
    idc_cost_per_day: float | None = None
    cloud_cost_per_day: float | None = None
    hybrid_cost_per_day: float | None = None
    idc_for_peak_cost_per_day: float | None = None
    cloud_only_cost_per_day: float | None = None
    cloud_cost_per_day_idle_unscaled: float | None = None
    peak_replicas: int | None = None
    gpu_utilisation: dict[str, float | None] = field(default_factory=dict)
    cloud_idle_node_s: float | None = None
    scale_down_lag_s: float | None = None
    requests_served: int | None = None
    requests_per_gpu_hour: float | None = None
    gpus_time_averaged: dict[str, float] = field(default_factory=dict)
    idc_cost_run: float | None = None
    cost_run: float | None = None
    good_output_tokens: int | None = None
    slo_attainment: float | None = None
    cost_per_million_good_output_tokens: float | None = None
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def block(self) -> dict[str, Any]:
        """report.json's ``cost`` section (money rounded to 4 decimals, seconds to 3), checked
        against the report model's ``CostBlock``."""
        return CostBlock.model_validate(self._block()).model_dump(mode="json")

    def _block(self) -> dict[str, Any]:

        def money(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        def secs(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        util = self.gpu_utilisation
        return {
            "status": self.status,
            "currency": self.currency,
            "compression_factor": None if self.compression_factor is None else round(self.compression_factor, 6),
            "cloud_cost_run": money(self.cloud_cost_run),
            "cloud_cost_per_day": money(self.cloud_cost_per_day),
            "idc_cost_per_day": money(self.idc_cost_per_day),
            "hybrid_cost_per_day": money(self.hybrid_cost_per_day),
            "idc_for_peak_cost_per_day": money(self.idc_for_peak_cost_per_day),
            "cloud_only_cost_per_day": money(self.cloud_only_cost_per_day),
            "cloud_cost_per_day_idle_unscaled": money(self.cloud_cost_per_day_idle_unscaled),
            "node_seconds": {k: secs(v) for k, v in self.node_seconds.items()},
            "replica_seconds": {k: secs(v) for k, v in self.replica_seconds.items()},
            "cloud_node_seconds": secs(self.node_seconds.get(self.cloud_pool)) if self.window_s else None,
            "cloud_nodes": self.cloud_nodes,
            "cloud_billed_s": secs(self.cloud_billed_s),
            "peak_replicas": self.peak_replicas,
            "gpu_utilisation": dict(util),
            "idc_gpu_utilisation": util.get(self.idc_pool),
            "cloud_gpu_utilisation": util.get(self.cloud_pool),
            "cloud_idle_node_s": secs(self.cloud_idle_node_s),
            "scale_down_lag_s": secs(self.scale_down_lag_s),
            "requests_served": self.requests_served,
            "requests_per_gpu_hour": None if self.requests_per_gpu_hour is None
            else round(self.requests_per_gpu_hour, 2),
            "window_s": secs(self.window_s),
            "traffic_span_s": secs(self.traffic_span_s),
            "real_span_s": secs(self.real_span_s),
            "day_scale": None if self.day_scale is None else round(self.day_scale, 6),
            "billing_granularity": self.billing_granularity,
            "minimum_charge_s": self.minimum_charge_s,
            "prices": {pool: price.model_dump() for pool, price in self.prices.items()},
            "pools": {"idc": self.idc_pool, "cloud": self.cloud_pool},
            "notes": list(self.notes),
            "gpus_time_averaged": dict(self.gpus_time_averaged),
            "idc_cost_run": money(self.idc_cost_run),
            "cost_run": money(self.cost_run),
            "good_output_tokens": self.good_output_tokens,
            "slo_attainment": self.slo_attainment,
            "cost_per_million_good_output_tokens": money(self.cost_per_million_good_output_tokens),
            "basis": self._basis(),
        }

    def _basis(self) -> dict[str, str]:
        """Which figures were measured and which extrapolated, and from what."""
        run = f"measured over this run's {self.window_s:.0f} s" if self.window_s else "measured"
        out = {k: run for k in ("cloud_cost_run", "idc_cost_run", "cost_run", "gpus_time_averaged",
                                "cost_per_million_good_output_tokens", "slo_attainment")}
        if self.day_scale is not None and self.real_span_s:
            ext = (f"extrapolated x{self.day_scale:.3g} to 24 h from {self.real_span_s:.0f} s of real time "
                   f"(run seconds x compression factor {self.compression_factor or 1:g})")
            out.update({k: ext for k in ("cloud_cost_per_day", "idc_cost_per_day", "hybrid_cost_per_day",
                                         "idc_for_peak_cost_per_day", "cloud_only_cost_per_day",
                                         "cloud_cost_per_day_idle_unscaled")})
        return out

    def describe(self) -> str:
        """One line for the stage's detail."""
        if self.status != "ok":
            return f"cost: {self.status}"
        c = self.currency

        def m(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f} {c}"

        cloud_s = self.node_seconds.get(self.cloud_pool, 0.0)
        lag = "n/a" if self.scale_down_lag_s is None else f"{self.scale_down_lag_s:.0f}s"
        factor = "n/a" if self.compression_factor is None else f"{self.compression_factor:g}"
        return (f"cost: cloud {cloud_s:.0f} node-s, {m(self.cloud_cost_run)} this run; per day (x{factor}): "
                f"hybrid {m(self.hybrid_cost_per_day)}, IDC for peak {m(self.idc_for_peak_cost_per_day)}, "
                f"cloud only {m(self.cloud_only_cost_per_day)}; scale-down lag {lag}")

    def intervals_frame(self) -> pd.DataFrame:
        """The node and pod intervals as a table (``cost_intervals.csv``)."""
        import pandas as pd

        cols = ["kind", "pool", "object", "node", "start_s", "end_s", "seconds", "open_at_end"]
        rows = [{"kind": iv.kind, "pool": iv.pool, "object": iv.object, "node": iv.node,
                 "start_s": round(iv.start_s, 3), "end_s": round(iv.end_s, 3), "seconds": round(iv.seconds, 3),
                 "open_at_end": iv.open_at_end} for iv in self.nodes + self.pods]
        return pd.DataFrame(rows, columns=cols)


def _served(load: Any) -> int | None:
    if load is None:
        return None
    requests = getattr(load, "requests", None)
    if requests is not None and hasattr(requests, "columns") and "ok" in requests.columns:
        ok = requests["ok"].astype(bool)
        if "cancelled" in requests.columns:
            ok = ok & ~requests["cancelled"].astype(bool)
        return int(ok.sum())
    summary = getattr(load, "summary", None) or {}
    if summary.get("requests") is not None:
        return int(summary["requests"]) - int(summary.get("failures") or 0)
    return None


def _traffic_span(load: Any, window_s: float) -> float:
    shape = getattr(load, "shape", None)
    duration = getattr(shape, "duration_s", None)
    if isinstance(duration, (int, float)) and duration > 0:
        return float(duration)
    a, b = getattr(load, "started_at", None), getattr(load, "ended_at", None)
    if a is not None and b is not None:
        span = (_stamp(b) - _stamp(a)).total_seconds()
        if span > 0:
            return span
    return window_s


def _phases(load: Any, start: pd.Timestamp) -> list[tuple[str, float, float]]:
    out = []
    for p in getattr(load, "phases", None) or []:
        try:
            a, b = (_stamp(p.start) - start).total_seconds(), (_stamp(p.end) - start).total_seconds()
            out.append((str(p.name), a, b))
        except (AttributeError, TypeError, ValueError):
            continue
    return out


def compute_cost(timeline: Any, spec: RolloutSpec, *, started_at: Any, ended_at: Any,
                 compression_factor: float | None = 1.0, load: Any = None) -> CostReport:
    """The cost of the run in ``[started_at, ended_at]`` from ``timeline`` (a ``Timeline`` or its
    DataFrame), priced by ``spec.cost`` (module docstring for every figure).

    ``compression_factor`` None means unknown: per-day figures are then None. ``load`` (the
    spike stage's ``LoadResult``) gives the traffic span (its shape's duration), the phases for
    the plot and the requests served. Missing data gives ``status = "no data: ..."``, not an
    error.
    """
    cs: CostSpec = spec.cost
    idc_pool, cloud_pool = spec.cluster.idc_pool_id, spec.cluster.elastic_pool_id
    report = CostReport(
        status="ok", currency=cs.currency, idc_pool=idc_pool, cloud_pool=cloud_pool,
        compression_factor=compression_factor, billing_granularity=cs.billing_granularity,
        minimum_charge_s=cs.minimum_charge_s,
        prices={idc_pool: cs.idc, cloud_pool: cs.cloud})
    frame = _frame_of(timeline)
    if frame is None or not len(frame):
        report.status = "no data: no timeline (did the spike stage run with its observer?)"
        return report
    if started_at is None or ended_at is None:
        report.status = "no data: the run window is unknown (no load start or end)"
        return report
    start, end = _stamp(started_at), _stamp(ended_at)
    window = (end - start).total_seconds()
    if window <= 0:
        report.status = f"no data: empty run window ({start.isoformat()} to {end.isoformat()})"
        return report
    if compression_factor is not None and not (math.isfinite(compression_factor) and compression_factor > 0):
        raise TidegateError(f"cost: compression_factor must be > 0 (got {compression_factor!r})")

    report.started_at, report.window_s = start, window
    node_pools = _node_pools(frame)
    report.nodes = _intervals(frame, "node", {"NodeReady"}, {"NodeDeleted"}, start, end, node_pools)
    report.pods = _intervals(frame, "pod", {"PodReady"}, {"PodNotReady", "PodDeleted"}, start, end, node_pools)
    report.phases = _phases(load, start)
    for iv in report.nodes:
        report.node_seconds[iv.pool] = report.node_seconds.get(iv.pool, 0.0) + iv.seconds
    for iv in report.pods:
        report.replica_seconds[iv.pool] = report.replica_seconds.get(iv.pool, 0.0) + iv.seconds
    if not report.nodes:
        report.notes.append("no node was Ready in the window: node-seconds are 0")
    if any(iv.pool == "unknown" for iv in report.pods):
        report.notes.append("some pods ran on nodes of no known pool (pool 'unknown')")

    gpus = int(spec.service.gpus)
    factor = compression_factor
    traffic = _traffic_span(load, window) if load is not None else window
    report.traffic_span_s = traffic
    if factor is not None:
        report.real_span_s = factor * traffic
        report.day_scale = DAY_S / report.real_span_s
    else:
        report.notes.append("compression factor unknown: per-day figures left out")
    scale = report.day_scale

    cloud_nodes = [iv for iv in report.nodes if iv.pool == cloud_pool]
    cloud_pods = [iv for iv in report.pods if iv.pool == cloud_pool]
    report.cloud_nodes = len({iv.key for iv in cloud_nodes})
    report.peak_replicas = _peak(report.pods)
    gran, minimum = cs.billing_granularity, float(cs.minimum_charge_s)
    report.cloud_billed_s = float(sum(billed_seconds(iv.seconds, gran, minimum) for iv in cloud_nodes))

    # idle time per cloud node: its Ready time not covered by a Ready pod on it
    busy = {iv.key: _union_overlap([(p.start_s, p.end_s) for p in cloud_pods if p.node == iv.node],
                                   iv.start_s, iv.end_s) for iv in cloud_nodes}
    report.cloud_idle_node_s = sum(iv.seconds - busy[iv.key] for iv in cloud_nodes)

    # prices
    cloud_node_h, cloud_gpu_h = cs.cloud.node_hour(), cs.cloud.gpu_hour()
    idc_node_h, idc_gpu_h = cs.idc.node_hour(), cs.idc.gpu_hour()
    for name, pool, price in (("cost.idc", idc_pool, cs.idc), ("cost.cloud", cloud_pool, cs.cloud)):
        if not price.priced:
            report.notes.append(f"{name} has no price: cost figures of pool {pool} left out")
    if cloud_node_h is not None:
        report.cloud_cost_run = report.cloud_billed_s * cloud_node_h / 3600.0
        if factor is not None:
            day = sum(billed_seconds(iv.seconds * factor, gran, minimum) for iv in cloud_nodes)
            report.cloud_cost_per_day = day * cloud_node_h / 3600.0 * scale
            real = sum(billed_seconds(busy[iv.key] * factor + (iv.seconds - busy[iv.key]), gran, minimum)
                       for iv in cloud_nodes)
            report.cloud_cost_per_day_idle_unscaled = real * cloud_node_h / 3600.0 * scale
    if idc_node_h is not None:
        mean_nodes = report.node_seconds.get(idc_pool, 0.0) / window
        report.idc_cost_per_day = mean_nodes * 24.0 * idc_node_h
        if report.cloud_cost_per_day is not None:
            report.hybrid_cost_per_day = report.idc_cost_per_day + report.cloud_cost_per_day
    if idc_gpu_h is not None:
        report.idc_for_peak_cost_per_day = report.peak_replicas * gpus * 24.0 * idc_gpu_h
    if cloud_gpu_h is not None and factor is not None:
        day = sum(billed_seconds(iv.seconds * factor, gran, minimum) for iv in report.pods)
        report.cloud_only_cost_per_day = day * gpus * cloud_gpu_h / 3600.0 * scale

    # efficiency
    for pool, price in ((idc_pool, cs.idc), (cloud_pool, cs.cloud)):
        node_s = report.node_seconds.get(pool, 0.0)
        if node_s > 0 and gpus > 0:
            share = report.replica_seconds.get(pool, 0.0) * gpus / (node_s * price.gpus_per_node)
            report.gpu_utilisation[pool] = round(min(1.0, share), 4)
        else:
            report.gpu_utilisation[pool] = None
    if any(iv.open_at_end for iv in cloud_pods):
        report.scale_down_lag_s = None
        report.notes.append("a cloud pod was still Ready when the window ended: no scale-down lag")
    else:
        last = max((iv.end_s for iv in cloud_pods), default=None)
        report.scale_down_lag_s = sum(max(0.0, iv.end_s - max(iv.start_s, last)) for iv in cloud_nodes) \
            if last is not None else sum(iv.seconds for iv in cloud_nodes)
    report.requests_served = _served(load)
    gpu_hours = sum(report.replica_seconds.values()) * gpus / 3600.0
    if report.requests_served is not None and gpu_hours > 0:
        report.requests_per_gpu_hour = report.requests_served / gpu_hours
    # attainment against cost: the GPUs each pool held on average, what the run cost (IDC amortised
    # over the window, cloud as billed), and that per million output tokens of SLO-good requests
    report.gpus_time_averaged = {pool: round(sec * gpus / window, 3) for pool, sec in report.replica_seconds.items()}
    if idc_node_h is not None:
        report.idc_cost_run = report.node_seconds.get(idc_pool, 0.0) * idc_node_h / 3600.0
    if report.idc_cost_run is not None and report.cloud_cost_run is not None:
        report.cost_run = report.idc_cost_run + report.cloud_cost_run
    report.good_output_tokens, report.slo_attainment = _good_tokens(load, spec)
    if report.cost_run is not None and report.good_output_tokens:
        report.cost_per_million_good_output_tokens = report.cost_run / report.good_output_tokens * 1e6
    return report


def _good_tokens(load: Any, spec: RolloutSpec) -> tuple[int | None, float | None]:
    """Output tokens of SLO-good requests (``tasks.goodput``) and the run's attainment."""
    requests = getattr(load, "requests", None)
    if requests is None or not hasattr(requests, "columns") or "ok" not in requests.columns:
        return None, None
    import pandas as pd

    from tasks.goodput import good_mask, slo_limits

    reqs = requests[~requests["cancelled"].astype(bool)] if "cancelled" in requests.columns else requests
    if not len(reqs):
        return None, None
    good = good_mask(reqs, slo_limits(spec.load.slo))
    attainment = round(float(good.mean()), 4)
    if "output_tokens" not in reqs.columns:
        return None, attainment
    tokens = pd.to_numeric(reqs.loc[good, "output_tokens"], errors="coerce").fillna(0).sum()
    return int(tokens), attainment


# -- the plot -----------------------------------------------------------------------------------
def _accumulated(intervals: list[Interval], xs: list[float], per_s: float) -> list[float]:
    return [per_s * sum(max(0.0, min(x, iv.end_s) - iv.start_s) for iv in intervals) for x in xs]


def cost_plot(report: CostReport) -> Figure:
    """Cost accumulated over the run per pool (node time at the node-hour price, before billing
    rounding; GPU-hours when a pool is unpriced), with the load phases shaded. Drawn on the Agg
    canvas without pyplot, so it never touches the process's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    window = report.window_s or 0.0
    if report.status != "ok" or window <= 0:
        ax.text(0.5, 0.5, report.status, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    n = 400
    xs = [window * i / n for i in range(n + 1)]
    xs = sorted(set(xs) | {iv.start_s for iv in report.nodes} | {iv.end_s for iv in report.nodes})
    unit = report.currency
    pools = sorted({iv.pool for iv in report.nodes}, key=lambda p: (p != report.idc_pool, p != report.cloud_pool, p))
    for pool in pools:
        price = report.prices.get(pool)
        node_h = price.node_hour() if price else None
        if node_h is None:
            gpn = price.gpus_per_node if price else 1
            ys = _accumulated([iv for iv in report.nodes if iv.pool == pool], xs, gpn / 3600.0)
            label = f"{pool} (GPU-hours, unpriced)"
        else:
            ys = _accumulated([iv for iv in report.nodes if iv.pool == pool], xs, node_h / 3600.0)
            label = f"{pool} ({unit})"
        ax.plot(xs, ys, label=label)
    if report.cloud_cost_run is not None:
        ax.axhline(report.cloud_cost_run, color="tab:red", linestyle=":", alpha=0.7,
                   label=f"cloud billed ({report.billing_granularity}, min {report.minimum_charge_s}s): "
                         f"{report.cloud_cost_run:.2f} {unit}")
    for name, a, b in report.phases:
        ax.axvspan(a, b, alpha=0.15 if name == "spike" else 0.05, color="grey")
        ax.text(a, 0.98, name, fontsize=8, transform=ax.get_xaxis_transform(), va="top")
    factor = report.compression_factor
    sub = f"; 1 run second = {factor:g} real seconds" if factor and factor != 1 else ""
    ax.set_xlabel("seconds since load start" + sub)
    ax.set_ylabel(f"accumulated cost ({unit})")
    ax.set_title("Cost accumulated over the run per pool")
    ax.legend(fontsize=8, loc="upper left")
    return fig


# -- the flow's glue ----------------------------------------------------------------------------
def compression_factor_for(load_spec: Any) -> float:
    """The spec's compression factor (``tasks.tidal``; 1.0 for the spike shape)."""
    if getattr(load_spec, "shape", "spike") != "tidal":
        return 1.0
    from tasks.tidal import compression_factor

    return compression_factor(load_spec)


def _no_data(spec: Any, why: str) -> CostReport:
    cs = getattr(spec, "cost", None) or CostSpec()
    cluster = getattr(spec, "cluster", None)
    return CostReport(status=f"no data: {why}", currency=cs.currency,
                      idc_pool=getattr(cluster, "idc_pool_id", "idc"),
                      cloud_pool=getattr(cluster, "elastic_pool_id", "cloud"), compression_factor=None,
                      billing_granularity=cs.billing_granularity, minimum_charge_s=cs.minimum_charge_s)


def cost_of_run(spec: RolloutSpec, load: Any, timeline: Any, ended_at: Any = None) -> CostReport:
    """The run's cost from the spike step's timeline and load; never raises (a cost that cannot
    be computed is a ``no data: <why>`` report, so it never costs the run its report).

    ``ended_at`` is when observation stopped (else the load's or the timeline's end).
    """
    try:
        factor: float | None = compression_factor_for(spec.load)
    except TidegateError as exc:
        factor = None
        log.warning("cost: compression factor unknown: %s", exc)
    start = getattr(load, "started_at", None) or getattr(timeline, "started_at", None)
    end = ended_at or getattr(load, "ended_at", None) or getattr(timeline, "stopped_at", None)
    try:
        if load is None and timeline is None:
            report = _no_data(spec, "the spike stage recorded neither load nor timeline")
        else:
            report = compute_cost(timeline, spec, started_at=start, ended_at=end, compression_factor=factor,
                                  load=load)
    except Exception as exc:  # noqa: BLE001 - the cost block must never cost the run its report
        log.exception("cost: could not be computed")
        report = _no_data(spec, f"{type(exc).__name__}: {exc}")
    if factor is None and report.status == "ok":
        report.notes.append("the tidal curve could not be re-read for its compression factor")
    return report


__all__ = ["CostReport", "CostSpec", "DEFINITIONS", "Interval", "PoolPrice", "billed_seconds", "compute_cost",
           "compression_factor_for", "cost_of_run", "cost_plot"]
