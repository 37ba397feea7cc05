"""Issue 6: the observer and the verification on the test bed.

One spill-over scenario under an :class:`tasks.observe.Observer`: the local example's
ResourcePolicy, InferenceService and HPA in a fresh namespace; streamed chat load through the
gateway until the HPA has scaled out and a pod runs on an autoscaled elastic node; then no
load until the service is back on the IDC pool and the elastic pool is empty again. The
timeline must show it, and :func:`tasks.verify.verify` must judge it a spill-over and a
spill-back. Bounded: about 3 minutes on the default test bed.

``run_spill_scenario`` is also what recorded ``tests/unit/fixtures/spill_timeline.json``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tasks.kube import Kube
from tasks.observe import Observer, Timeline
from tasks.render import render_manifests
from tasks.spec import RolloutSpec, load_spec
from tasks.verify import verify

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "qwen-chat.local.yaml"
KINDS = {"PersistentVolume", "PersistentVolumeClaim", "ResourcePolicy", "InferenceService", "HorizontalPodAutoscaler"}

from tests.helpers import scratch_namespace
from tests.helpers import wait_for as _wait

pytestmark = pytest.mark.integration



@dataclass
class SpillRun:
    spec: RolloutSpec
    timeline: Timeline
    spike_started_at: pd.Timestamp
    cooldown_started_at: pd.Timestamp
    ended_at: pd.Timestamp


def _ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions") or [])


def _live_pods(kube: Kube, spec: RolloutSpec) -> list[dict]:
    sel = ",".join(f"{k}={v}" for k, v in spec.service.pod_selector.items())
    return [p for p in kube.list("v1", "Pod", spec.cluster.namespace, label_selector=sel)
            if not p["metadata"].get("deletionTimestamp")]


def _pool(kube: Kube, spec: RolloutSpec, node_name: str | None) -> str | None:
    node = kube.get("v1", "Node", node_name) if node_name else None
    return (node or {}).get("metadata", {}).get("labels", {}).get(spec.cluster.nodepool_label)


def _elastic_nodes(kube: Kube, spec: RolloutSpec) -> list[dict]:
    return kube.list("v1", "Node", label_selector=f"{spec.cluster.nodepool_label}={spec.cluster.elastic_pool_id}")


def spill_spec(ns: str, testbed) -> RolloutSpec:
    idc_gpus = testbed.idc.nodes * testbed.idc.gpus_per_node
    return load_spec(EXAMPLE, [
        f"cluster.namespace={ns}", f"cluster.kubeconfig={testbed.kubeconfig}",
        f"cluster.idc_pool_id={testbed.idc.nodepool_id}", f"cluster.elastic_pool_id={testbed.elastic.nodepool_id}",
        f"ingress.url=http://127.0.0.1:{testbed.ports.gateway}", f"ingress.host=qwen-chat-{ns}.example.com",
        "service.min_replicas=1", f"service.max_replicas={idc_gpus + 1}",
        "service.hpa_scale_down_stabilization_s=10"])


def run_spill_scenario(kube: Kube, spec: RolloutSpec, *, streams: int = 16, spike_timeout_s: float = 150,
                       cooldown_timeout_s: float = 150, log=print) -> SpillRun:
    """Deploy, observe, spike until a cloud pod is Ready, cool down until spilled back."""
    ns = spec.cluster.namespace
    for obj in render_manifests(spec, "obs-" + uuid.uuid4().hex[:6]):
        if obj["kind"] in KINDS:
            kube.apply(obj)
    _wait(lambda: _ready(kube.get("serving.kserve.io/v1beta1", "InferenceService", spec.service.name, ns) or {}),
          120, "InferenceService Ready")
    observer = Observer(kube, spec, run_id=f"it-{ns}").start()
    stop = threading.Event()
    gw, host = spec.ingress.url, spec.ingress.host

    def load() -> None:
        body = {"model": spec.model.served_name, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 200, "stream": True}
        with httpx.Client(timeout=60) as c:
            deadline = time.monotonic() + spike_timeout_s + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    with c.stream("POST", f"{gw}/v1/chat/completions", json=body, headers={"Host": host}) as r:
                        for _ in r.iter_bytes():
                            if stop.is_set():
                                break
                except httpx.HTTPError:
                    time.sleep(0.2)

    time.sleep(3)  # a quiet baseline before the spike
    threads = [threading.Thread(target=load, daemon=True) for _ in range(streams)]
    spike_started_at = pd.Timestamp.now(tz="UTC")
    log(f"spike: {streams} streams from {spike_started_at}")
    for t in threads:
        t.start()
    try:
        def cloud_pod_ready():
            return [p for p in _live_pods(kube, spec) if _ready(p)
                    and _pool(kube, spec, p["spec"].get("nodeName")) == spec.cluster.elastic_pool_id]
        _wait(cloud_pod_ready, spike_timeout_s, "a Ready predictor pod on the elastic pool", interval=2)
        time.sleep(5)  # hold
    finally:
        cooldown_started_at = pd.Timestamp.now(tz="UTC")
        log(f"cool-down from {cooldown_started_at}")
        stop.set()
        for t in threads:
            t.join(timeout=10)
    try:
        def spilled_back():
            pods = _live_pods(kube, spec)
            on_idc = all(_pool(kube, spec, p["spec"].get("nodeName")) == spec.cluster.idc_pool_id for p in pods)
            return len(pods) == spec.service.min_replicas and on_idc and not _elastic_nodes(kube, spec)
        _wait(spilled_back, cooldown_timeout_s, "pods back on IDC and the elastic pool empty", interval=2)
        time.sleep(2)  # let the last events arrive
    finally:
        ended_at = pd.Timestamp.now(tz="UTC")
        timeline = observer.stop()
    log(f"ended {ended_at}; {len(timeline)} timeline rows")
    return SpillRun(spec, timeline, spike_started_at, cooldown_started_at, ended_at)


def save_fixture(run: SpillRun, path: Path) -> Path:
    """Write the run as a unit-test fixture (tests/unit/fixtures/spill_timeline.json):
    ``TIDEGATE_RECORD_TIMELINE=<path> pytest tests/integration/test_observe.py``."""
    tmp = run.timeline.to_json(path.with_suffix(".tmp"))
    doc = json.loads(tmp.read_text())
    tmp.unlink()
    out = {"recorded": "tests/integration/test_observe.py::run_spill_scenario on the local test bed",
           "marks": {"spike_started_at": run.spike_started_at.isoformat(),
                     "cooldown_started_at": run.cooldown_started_at.isoformat(),
                     "ended_at": run.ended_at.isoformat()},
           "namespace": run.spec.cluster.namespace, **doc}
    path.write_text(json.dumps(out, indent=1))
    return path


@pytest.fixture
def ns(kube):
    yield from scratch_namespace(kube, "obs")


@pytest.mark.timeout(420)
def test_observer_records_spill_over_and_back_and_verify_judges_it(kube, testbed, ns, tmp_path):
    spec = spill_spec(ns, testbed)
    run = run_spill_scenario(kube, spec)
    tl, df = run.timeline, run.timeline.df
    run.timeline.to_csv(tmp_path / "timeline.csv")
    if os.environ.get("TIDEGATE_RECORD_TIMELINE"):
        save_fixture(run, Path(os.environ["TIDEGATE_RECORD_TIMELINE"]))

    assert not tl.gaps, tl.gaps
    assert df["time"].dt.tz is not None
    # the timeline holds each kind of thing the brief names, with apiserver times
    reasons = set(df["reason"])
    assert {"HPAReplicas", "PodCreated", "PodScheduled", "PodReady", "PodDeleted",
            "NodeCreated", "NodeReady", "NodeDeleted", "AutoscalerStatus"} <= reasons
    assert {"SuccessfulRescale", "FailedScheduling", "TriggeredScaleUp"} <= reasons
    assert reasons & {"ScaleDown", "ScaleDownEmpty"}
    # the same event occurrence is never recorded twice
    events = df[df["kind"] == "Event"]
    assert not events.duplicated(["uid", "count"]).any()
    # cloud rows carry the elastic pool id
    cloud_ready = df[(df["reason"] == "PodReady") & (df["pool"] == spec.cluster.elastic_pool_id)]
    assert len(cloud_ready) >= 1
    ppp = tl.pods_per_pool()
    assert ppp[ppp["pool"] == spec.cluster.elastic_pool_id]["pods"].max() >= 1
    # watch lag: apiserver time -> timeline, for events stamped with sub-second precision or
    # stamped at the whole second (then up to 1 s earlier than the truth)
    live = events[events["time"] >= tl.started_at]
    lag = (live["observed_at"] - live["time"]).dt.total_seconds()
    assert lag.quantile(0.95) < 3.0, lag.describe()

    el = verify(tl, spec, spike_started_at=run.spike_started_at, cooldown_started_at=run.cooldown_started_at,
                ended_at=run.ended_at)
    block = el.block()
    print(block)
    for f in el.findings:
        print(("OK  " if f.ok else "NOT ") + f.name + ": " + f.detail, *f.evidence, sep="\n    ")
    assert block["cloud_pods_max"] >= 1
    assert block["hpa_max_replicas"] >= 2
    assert block["scale_up_events"] >= 1
    assert block["scale_in_back_to_idc"] is True
    assert block["time_to_hpa_rescale_s"] is not None and block["time_to_hpa_rescale_s"] >= 0
    assert block["time_to_hpa_rescale_s"] <= block["time_to_first_cloud_pod_ready_s"]
    assert all(f.ok for f in el.findings), [f for f in el.findings if not f.ok]
