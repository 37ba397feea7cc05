"""The spike and verify stages of the flow: load and observation side by side, then the verdict
on elasticity.

``run_spike_stage`` starts the Observer (watches on HPA, Events, Pods, Nodes, the autoscaler's
status) before the first request, runs the Locust load shape (baseline -> spike -> hold ->
cool-down) in its own process, waits after the cool-down until the elastic pool is back at
its minimum (bounded by ``load.cooldown_s``), then stops the observer. ``run_verify_stage``
turns the timeline and the load data into the report's ``elasticity`` block; its findings
cite the events they rest on, and a missing step (no scale-up, no spill-back) is named in the
stage's detail so that the gate's failure says why. For ``load.shape: tidal`` the whole replay
counts as the spike (times from the load's start) and the elasticity block also says when, on
the replayed traffic day, the service spilled over and back (``tasks.tidal``).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from tasks.errors import StageFailed


def _elastic_nodes(kube, spec) -> int:
    return len(kube.list("v1", "Node", label_selector=f"{spec.cluster.nodepool_label}={spec.cluster.elastic_pool_id}"))


def _phase(result, name: str):
    return next((p for p in result.phases if p.name == name), None)


def run_spike_stage(ctx: Any) -> str:
    from tasks import report as reporting
    from tasks.load import run_load
    from tasks.observe import Observer

    kube = ctx.connect()
    spec = ctx.spec
    out_dir = reporting.reports_root() / ctx.run_id
    observer = Observer(kube, spec, run_id=ctx.run_id).start()
    ctx.results["observer"] = observer
    settle_s = 0.0
    try:
        result = run_load(spec, out_dir)
        ctx.results["spike"] = result
        # spill-back can trail the load by the autoscaler's scale-down timers: wait for the
        # elastic pool to return to its minimum, bounded by the cool-down
        t0 = time.monotonic()
        deadline = t0 + max(30.0, float(spec.load.cooldown_s))
        min_nodes = 0
        while time.monotonic() < deadline and _elastic_nodes(kube, spec) > min_nodes:
            time.sleep(2)
        settle_s = round(time.monotonic() - t0, 1)
    finally:
        timeline = observer.stop()
        ctx.results["timeline"] = timeline
        ctx.tables["timeline"] = timeline.df
    ctx.report.load = result.report_block()
    ctx.report.extra.setdefault("definitions", {}).update(result.definitions)
    ctx.report.extra["phases"] = [{"name": p.name, "start": p.start.isoformat(), "end": p.end.isoformat()}
                                  for p in result.phases]
    ctx.tables["requests"] = result.requests
    ctx.tables["per_second"] = result.per_second
    ctx.results["ended_at"] = pd.Timestamp.now(tz="UTC")
    if result.summary.get("requests", 0) == 0:
        raise StageFailed(f"spike: no request completed against {spec.ingress.url} (Host {spec.ingress.host})")
    return f"{result.describe()}; {len(timeline.df)} timeline entries; spill-back wait {settle_s}s"


def run_verify_stage(ctx: Any) -> str:
    from tasks.verify import verify

    result = ctx.results.get("spike")
    timeline = ctx.results.get("timeline")
    if result is None or timeline is None:
        raise StageFailed("verify needs the spike stage's load data and timeline: select spike with verify")
    clock = None
    if ctx.spec.load.shape == "tidal":
        # the whole replayed day is the spike: a spill-over in the morning ramp counts too
        from tasks.tidal import plan_tidal

        spike, clock = result.phases[0], plan_tidal(ctx.spec.load).traffic_time
    else:
        spike = _phase(result, "spike") or result.phases[0]
    cooldown = _phase(result, "cooldown") or result.phases[-1]
    elasticity = verify(timeline, ctx.spec, spike_started_at=spike.start, cooldown_started_at=cooldown.start,
                        ended_at=ctx.results.get("ended_at") or result.ended_at, load=result, traffic_clock=clock,
                        since="the load started" if clock else "the spike started")
    ctx.results["elasticity"] = elasticity
    ctx.report.elasticity = elasticity.block()
    ctx.report.extra["findings"] = elasticity.findings_block()
    from tasks.cost import run_cost_stage

    cost_line = run_cost_stage(ctx)
    failed = [f for f in elasticity.findings if not f.ok]
    e = ctx.report.elasticity
    head = (f"HPA max {e.get('hpa_max_replicas')}, cloud pods max {e.get('cloud_pods_max')}, "
            f"scale-ups {e.get('scale_up_events')}, scale-downs {e.get('scale_down_events')}, "
            f"first cloud pod Ready at +{e.get('time_to_first_cloud_pod_ready_s')}s, "
            f"back to IDC: {e.get('scale_in_back_to_idc')}")
    if e.get("spill_over_traffic_time"):
        head += (f"; on the traffic day: spilled over at {e['spill_over_traffic_time']} "
                 f"({e.get('first_cloud_pod_ready_phase')}), back at {e.get('spill_back_traffic_time') or 'never'}")
    head = f"{head}; cost: {cost_line}"
    if failed:
        return head + "; missing: " + "; ".join(f.detail for f in failed)
    return head
