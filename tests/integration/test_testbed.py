"""Issue 2: the real control plane, the KWOK IDC pool and the autoscaled elastic pool.

Each test runs against the real kube-apiserver, scheduler, controller-manager, kwok and
cluster-autoscaler started by the session fixture, and asserts on the events those
components emit.
"""

from __future__ import annotations

import time
import uuid

import pytest

from testbed.cluster import CA_GROUP_LABEL, NODEPOOL_LABEL, reconfigure_autoscaler
from tests.helpers import wait_for as _wait

pytestmark = pytest.mark.integration


def _deployment(name: str, ns: str, replicas: int, gpus: int = 1) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [{"name": "c", "image": "registry.invalid/none:0",
                                "resources": {"requests": {"nvidia.com/gpu": str(gpus), "cpu": "1"},
                                              "limits": {"nvidia.com/gpu": str(gpus), "cpu": "1"}}}],
                "terminationGracePeriodSeconds": 0}},
        },
    }


@pytest.fixture
def ns(kube):
    name = f"tb-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    # the default ServiceAccount must exist before pods are admitted
    deadline = time.monotonic() + 30
    while kube.get("v1", "ServiceAccount", "default", name) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    yield name
    kube.delete("v1", "Namespace", name)


def _events(kube, ns: str, reason: str, kind: str | None = None) -> list[dict]:
    evs = kube.list("v1", "Event", ns)
    return [e for e in evs if e.get("reason") == reason
            and (kind is None or e.get("involvedObject", {}).get("kind") == kind)]



def _elastic_nodes(kube, cfg) -> list[dict]:
    return kube.list("v1", "Node", label_selector=f"{NODEPOOL_LABEL}={cfg.elastic.nodepool_id}")


def _idc_gpus(cfg) -> int:
    return cfg.idc.nodes * cfg.idc.gpus_per_node


def test_testbed_status_reports_pools(testbed):
    from testbed import cluster

    st = cluster.status(testbed)
    assert st["ready"], st
    names = {c["name"] for c in st["components"]}
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            "cluster-autoscaler"} <= names
    assert all(c["pid"] for c in st["components"])
    idc = st["pools"][testbed.idc.nodepool_id]
    assert idc["ready"] == testbed.idc.nodes
    elastic = st["pools"][testbed.elastic.nodepool_id]
    assert (elastic["min"], elastic["max"]) == (testbed.elastic.min_nodes, testbed.elastic.max_nodes)


def test_testbed_idc_nodes_are_labelled_like_ack_edge(kube, testbed):
    nodes = kube.list("v1", "Node", label_selector=f"{NODEPOOL_LABEL}={testbed.idc.nodepool_id}")
    assert len(nodes) == testbed.idc.nodes
    for n in nodes:
        assert n["metadata"]["labels"]["alibabacloud.com/is-edge-worker"] == "true"
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == str(testbed.idc.gpus_per_node)
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])


def test_testbed_spill_over_to_elastic_pool_and_back(kube, testbed, ns):
    """1. more GPUs than IDC has -> FailedScheduling, TriggeredScaleUp, elastic node, pod Running on it.
    2. scale back -> the autoscaler removes the empty elastic node and the pool returns to 0."""
    replicas = _idc_gpus(testbed) + 1
    kube.apply(_deployment("gpu-burst", ns, replicas))

    failed = _wait(lambda: [e for e in _events(kube, ns, "FailedScheduling")
                            if "Insufficient nvidia.com/gpu" in e.get("message", "")],
                   60, "FailedScheduling with Insufficient nvidia.com/gpu")
    assert failed
    triggered = _wait(lambda: _events(kube, ns, "TriggeredScaleUp"), 90, "TriggeredScaleUp from the autoscaler")
    assert testbed.elastic.group in triggered[0]["message"]

    def cloud_pod_running():
        pods = kube.list("v1", "Pod", ns, label_selector="app=gpu-burst")
        elastic = {n["metadata"]["name"] for n in _elastic_nodes(kube, testbed)}
        return [p for p in pods if p["spec"].get("nodeName") in elastic and p["status"].get("phase") == "Running"]

    on_cloud = _wait(cloud_pod_running, 120, "a pod Running on an elastic node")
    node = kube.get("v1", "Node", on_cloud[0]["spec"]["nodeName"])
    assert node["metadata"]["labels"][NODEPOOL_LABEL] == testbed.elastic.nodepool_id
    assert node["metadata"]["labels"]["alibabacloud.com/is-edge-worker"] == "false"
    assert node["metadata"]["labels"][CA_GROUP_LABEL] == testbed.elastic.group

    # scale back into what the IDC pool holds; the elastic node becomes empty
    kube.patch("apps/v1", "Deployment", "gpu-burst", {"spec": {"replicas": 0}}, namespace=ns)
    _wait(lambda: not _elastic_nodes(kube, testbed), 240, "the elastic pool to return to 0 nodes", interval=2)
    scale_down = [e for e in kube.list("v1", "Event", "kube-system") + kube.list("v1", "Event", "default")
                  if e.get("reason") in ("ScaleDown", "ScaleDownEmpty")]
    assert scale_down, "no ScaleDown/ScaleDownEmpty event from the autoscaler"


def test_testbed_elastic_max_is_honoured(kube, testbed, ns):
    """3. with max 0 the pod stays Pending with NotTriggerScaleUp."""
    cfg = testbed.model_copy(deep=True)
    cfg.elastic.max_nodes = 0
    reconfigure_autoscaler(cfg)
    try:
        kube.apply(_deployment("gpu-capped", ns, _idc_gpus(testbed) + 1))
        not_triggered = _wait(lambda: _events(kube, ns, "NotTriggerScaleUp"), 90, "NotTriggerScaleUp")
        assert not _events(kube, ns, "TriggeredScaleUp")
        assert not _elastic_nodes(kube, testbed)
        pending = [p for p in kube.list("v1", "Pod", ns, label_selector="app=gpu-capped")
                   if p["status"].get("phase") == "Pending"]
        assert len(pending) == 1
        assert not_triggered[0]["involvedObject"]["kind"] == "Pod"
    finally:
        kube.patch("apps/v1", "Deployment", "gpu-capped", {"spec": {"replicas": 0}}, namespace=ns)
        reconfigure_autoscaler(testbed)
