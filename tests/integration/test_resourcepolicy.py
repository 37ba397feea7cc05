"""Issue 20: ACK's ResourcePolicy enforced at scheduling time (the kube-scheduler's extender
served by the test-bed daemon), not written into the pods.

On the test bed (2 IDC nodes with one GPU each, an autoscaled elastic pool):

- the predictor pods carry no node affinity on the pool label, and land on IDC first;
- ``max`` of the IDC unit holds even while an IDC node has a free GPU; that pod then stays
  Pending because the cluster-autoscaler, which does not know the policy, finds it fits on
  the IDC node and scales nothing: verify reports it as ``placement_policy_vs_autoscaler``,
  citing the FailedScheduling events (ACK's warning about incorrect node-pool scaling);
- ``TimeoutOrExceedMax`` keeps the pod in the IDC unit for its timeout before it spills to
  the elastic pool (tolerance: the scheduler retries a waiting pod with its backoff, 1 s
  doubling to 10 s, so the pod binds between ``timeout`` and ``timeout`` + 10 s, plus 5 s
  for the retry's own path);
- scale-in removes the elastic unit's pod first (best effort as on ACK, through
  pod-deletion-cost; tolerated deviation: none once every pod's cost is written, which the
  test waits for).
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import pandas as pd
import pytest

from tasks.observe import Observer
from tasks.spec import load_spec
from tasks.verify import verify
from tests.helpers import scratch_namespace
from tests.helpers import wait_for as _wait
from tests.integration.test_dataplane import (
    EXAMPLE,
    _apply,
    _isvc_ready,
    _pods,
    _pool_of,
)

pytestmark = pytest.mark.integration

DEPLOYMENT = "qwen-chat-predictor"
COST = "controller.kubernetes.io/pod-deletion-cost"


@pytest.fixture
def ns(kube):
    yield from scratch_namespace(kube, "rp")


def _spec(ns: str, testbed, *sets: str):
    """The local example in the test's namespace, on this test bed, one replica to start."""
    return load_spec(EXAMPLE, [f"cluster.namespace={ns}", f"cluster.kubeconfig={testbed.kubeconfig}",
                               f"ingress.url=http://127.0.0.1:{testbed.ports.gateway}",
                               f"ingress.host=qwen-chat-{ns}.example.com", "service.min_replicas=1", *sets])


def _scheduled_at(pod: dict) -> datetime | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == "PodScheduled" and c["status"] == "True":
            return datetime.fromisoformat(c["lastTransitionTime"])
    return None


def _created_at(pod: dict) -> datetime:
    return datetime.fromisoformat(pod["metadata"]["creationTimestamp"])


def _no_pool_affinity(pods: list[dict]) -> None:
    for p in pods:
        assert "nodepool" not in json.dumps(p["spec"].get("affinity") or {}), p["metadata"]["name"]


def _scale(kube, ns: str, replicas: int) -> None:
    kube.patch("apps/v1", "Deployment", DEPLOYMENT, {"spec": {"replicas": replicas}}, namespace=ns)


def _elastic_nodes(kube, testbed) -> list[dict]:
    return kube.list("v1", "Node", label_selector=f"alibabacloud.com/nodepool-id={testbed.elastic.nodepool_id}")


def test_idc_max_holds_and_the_autoscaler_not_knowing_it_is_reported(kube, testbed, ns):
    spec = _spec(ns, testbed, "service.max_replicas=2", "cluster.resource_policy.idc_max_pods=1")
    assert not _elastic_nodes(kube, testbed), "the elastic pool must start empty"
    _apply(kube, spec, {"ResourcePolicy", "InferenceService"})
    _wait(lambda: _isvc_ready(kube, ns), 90, "InferenceService Ready")
    start = pd.Timestamp.now(tz="UTC")
    with Observer(kube, spec, run_id="it-rp") as obs:
        _scale(kube, ns, 2)
        refusal = _wait(lambda: [e for e in kube.list("v1", "Event", ns) if e.get("reason") == "FailedScheduling"
                                 and "reached max 1" in e.get("message", "")], 60,
                        "FailedScheduling naming the IDC unit's max")
        # three autoscaler loops (scan interval 5 s) with the pod Pending and an IDC GPU free
        time.sleep(3 * testbed.autoscaler.scan_interval_s + 2)
        pods = _pods(kube, ns)
        timeline = obs.stop()
    end = pd.Timestamp.now(tz="UTC")
    _no_pool_affinity(pods)
    bound = [p for p in pods if p["spec"].get("nodeName")]
    pending = [p for p in pods if not p["spec"].get("nodeName")]
    assert len(bound) == 1 and _pool_of(kube, bound[0]) == testbed.idc.nodepool_id
    assert len(pending) == 1, "max 1 on the IDC unit: the second pod must not take the free IDC GPU"
    assert not _elastic_nodes(kube, testbed), "the autoscaler scaled the elastic pool after all"
    events = kube.list("v1", "Event", ns)
    assert not [e for e in events if e.get("reason") == "TriggeredScaleUp"]
    print(f"refusal: {refusal[0]['message']}")

    el = verify(timeline, spec, spike_started_at=start, cooldown_started_at=end, ended_at=end)
    finding = el.finding("placement_policy_vs_autoscaler")
    assert finding is not None and not finding.ok, [f.name for f in el.findings]
    assert any("FailedScheduling" in line and "reached max 1" in line for line in finding.evidence)
    print(f"finding: {finding.detail}\n  " + "\n  ".join(finding.evidence))


def test_timeout_or_exceed_max_waits_then_spills_and_scales_in_from_the_last_unit(kube, testbed, ns):
    timeout_s = 45  # longer than the elastic node takes to come (~30 s): the wait is what holds the pod
    idc_gpus = testbed.idc.nodes * testbed.idc.gpus_per_node
    spec = _spec(ns, testbed, f"service.max_replicas={idc_gpus + 1}",
                 # a max above the IDC's GPUs: the unit lacks resources below its max, so the pod waits
                 f"cluster.resource_policy.idc_max_pods={idc_gpus + 1}",
                 "cluster.resource_policy.when_try_next_units=TimeoutOrExceedMax",
                 f"cluster.resource_policy.try_next_timeout_s={timeout_s}")
    _apply(kube, spec, {"ResourcePolicy", "InferenceService"})
    _wait(lambda: _isvc_ready(kube, ns), 90, "InferenceService Ready")
    _scale(kube, ns, idc_gpus + 1)

    def placed():
        ps = _pods(kube, ns)
        return len(ps) == idc_gpus + 1 and all(p["spec"].get("nodeName") for p in ps) and ps
    pods = _wait(placed, 120, f"{idc_gpus + 1} predictor pods bound", interval=1)
    _no_pool_affinity(pods)
    pools = {p["metadata"]["name"]: _pool_of(kube, p) for p in pods}
    assert sorted(pools.values()).count(testbed.idc.nodepool_id) == idc_gpus
    cloud = [p for p in pods if pools[p["metadata"]["name"]] == testbed.elastic.nodepool_id]
    assert len(cloud) == 1
    waited = (_scheduled_at(cloud[0]) - _created_at(cloud[0])).total_seconds()
    print(f"TimeoutOrExceedMax {timeout_s}s: the cloud pod was bound {waited:.1f}s after its creation")
    assert timeout_s - 1 <= waited <= timeout_s + 15, waited
    events = [e for e in kube.list("v1", "Event", ns) if e.get("reason") == "FailedScheduling"
              and e["involvedObject"]["name"] == cloud[0]["metadata"]["name"]]
    assert any("TimeoutOrExceedMax" in e.get("message", "") for e in events), [e.get("message") for e in events]

    # scale-in: the elastic unit's pod goes first (once every pod carries its deletion cost)
    def costed():
        ps = _pods(kube, ns)
        return all(COST in (p["metadata"].get("annotations") or {}) for p in ps) and ps
    pods = _wait(costed, 30, "pod-deletion-cost on every pod")
    costs = {p["metadata"]["name"]: int(p["metadata"]["annotations"][COST]) for p in pods}
    assert costs[cloud[0]["metadata"]["name"]] < min(v for k, v in costs.items() if k != cloud[0]["metadata"]["name"])
    _scale(kube, ns, idc_gpus)

    def scaled_in():
        ps = _pods(kube, ns)
        return len(ps) == idc_gpus and ps
    remaining = _wait(scaled_in, 60, "scale-in to IDC size")
    assert all(_pool_of(kube, p) == testbed.idc.nodepool_id for p in remaining), "the cloud pod was not removed first"
