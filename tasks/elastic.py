"""The spike and verify steps: load and observation side by side, then the verdict on
elasticity. Plain functions; ``tasks.stages`` wires them into the run.

``run_spike`` starts the Observer (watches on HPA, Events, Pods, Nodes, the autoscaler's
status) before the first request, runs the Locust load shape (baseline -> spike -> hold ->
cool-down) in its own process, waits after the cool-down until the elastic pool is back at
its minimum (bounded by ``load.cooldown_s``), then stops the observer. ``verify_spike`` turns
the timeline and the load data into ``Elasticity``; its findings cite the events they rest on,
and a missing step (no scale-up, no spill-back) is named so that the gate's failure says why.
For ``load.shape: tidal`` the whole replay counts as the spike (times from the load's start)
and the elasticity also says when, on the replayed traffic day, the service spilled over and
back (``tasks.tidal``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks import cancel
from tasks.incluster import InClusterTarget
from tasks.kube import Kube
from tasks.load import LoadResult, Phase, run_load
from tasks.observe import Observer, Timeline
from tasks.ownership import Ledger
from tasks.spec import RolloutSpec
from tasks.tidal import plan_tidal
from tasks.verify import Elasticity, verify


@dataclass
class SpikeRun:
    """What the spike step measured: the load, the cluster's timeline, when observation stopped."""

    load: LoadResult | None
    timeline: Timeline
    ended_at: pd.Timestamp
    settle_s: float


def _elastic_nodes(kube: Kube, spec: RolloutSpec) -> int:
    return len(kube.list("v1", "Node", label_selector=f"{spec.cluster.nodepool_label}={spec.cluster.elastic_pool_id}"))


def elastic_settled(kube: Kube, spec: RolloutSpec) -> bool:
    """The elastic pool has no node (what the spike's spill-back wait waits for)."""
    return _elastic_nodes(kube, spec) == 0


def _phase(result: LoadResult, name: str) -> Phase | None:
    return next((p for p in result.phases if p.name == name), None)


def run_spike(kube: Kube, spec: RolloutSpec, run_id: str, out_dir: Path,
              on_stopped=None, ledger: Ledger | None = None) -> SpikeRun:
    """Load the service while watching the cluster. ``on_stopped(load, timeline)`` is called once
    observation stopped, also when the load failed (so a failed run still reports its timeline)."""
    observer = Observer(kube, spec, run_id=run_id).start()
    settle_s = 0.0
    result: LoadResult | None = None
    try:
        # in-cluster workers are Jobs of the run (its ledger: teardown deletes what is left)
        cluster = InClusterTarget(kube, run_id, ledger if ledger is not None else Ledger.open(out_dir)) \
            if spec.load.generators.in_cluster else None
        result = run_load(spec, out_dir, progress_extra=observer.describe_pools, cluster=cluster)
        # spill-back can trail the load by the autoscaler's scale-down timers: wait for the
        # elastic pool to return to its minimum, bounded by the cool-down
        t0 = time.monotonic()
        deadline = t0 + max(30.0, float(spec.load.cooldown_s))
        while time.monotonic() < deadline and _elastic_nodes(kube, spec) > 0:
            cancel.sleep(2)
        settle_s = round(time.monotonic() - t0, 1)
    finally:
        timeline = observer.stop()
        if on_stopped is not None:
            on_stopped(result, timeline)
    return SpikeRun(load=result, timeline=timeline, ended_at=pd.Timestamp.now(tz="UTC"), settle_s=settle_s)


def verify_spike(spec: RolloutSpec, load: LoadResult, timeline: Timeline,
                 ended_at: pd.Timestamp | None) -> Elasticity:
    """Judge the spill-over and spill-back of one spike (or tidal) run."""
    clock = None
    if spec.load.shape == "tidal":
        # the whole replayed day is the spike: a spill-over in the morning ramp counts too
        spike, clock = load.phases[0], plan_tidal(spec.load).traffic_time
    else:
        spike = _phase(load, "spike") or load.phases[0]
    cooldown = _phase(load, "cooldown") or load.phases[-1]
    return verify(timeline, spec, spike_started_at=spike.start, cooldown_started_at=cooldown.start,
                  ended_at=ended_at or load.ended_at, load=load, traffic_clock=clock,
                  since="the load started" if clock else "the spike started")


def describe_elasticity(el: Elasticity) -> str:
    """One line for the verify stage's detail."""
    head = (f"HPA max {el.hpa_max_replicas}, cloud pods max {el.cloud_pods_max}, "
            f"scale-ups {el.scale_up_events}, scale-downs {el.scale_down_events}, "
            f"first cloud pod Ready at +{el.time_to_first_cloud_pod_ready_s}s, "
            f"back to IDC: {el.scale_in_back_to_idc}")
    if el.spill_over_traffic_time:
        head += (f"; on the traffic day: spilled over at {el.spill_over_traffic_time} "
                 f"({el.first_cloud_pod_ready_phase}), back at {el.spill_back_traffic_time or 'never'}")
    return head


__all__ = ["SpikeRun", "describe_elasticity", "elastic_settled", "run_spike", "verify_spike"]
