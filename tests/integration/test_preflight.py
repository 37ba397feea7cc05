"""prepare_cluster's read-only preflight against the real API server: each check that the plan
lists stops the run with a one-line error naming the field, before anything is applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.cluster import preflight
from tasks.errors import ClusterError
from tasks.render import preflight_checks
from tasks.spec import load_spec
from tests.helpers import scratch_namespace

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "qwen-chat.local.yaml"


@pytest.fixture
def ns(kube):
    yield from scratch_namespace(kube, "pre")


def _spec(ns: str, *sets: str):
    return load_spec(EXAMPLE, [f"cluster.namespace={ns}", *sets])


def _refused(kube, spec) -> str:
    with pytest.raises(ClusterError) as info:
        preflight(kube, spec)
    return info.value.one_line()


def test_preflight_passes_on_the_test_bed_and_the_plan_names_its_checks(kube, ns):
    spec = _spec(ns)
    report = preflight(kube, spec)
    assert report.idc.ready_nodes >= 1 and report.custom_metric_served and report.kserve_crd
    names = [c.name for c in preflight_checks(spec)]
    assert names == ["api-reachable", "namespace", "kserve-crd", "resourcepolicy-crd", "scale-metric", "idc-pool",
                     "elastic-pool", "ownership", "oss-credentials", "gpu-capacity"]


def test_a_foreign_pv_of_the_same_name_is_never_taken_over(kube, ns):
    """With storage.provision the run creates the PV: one of that name it did not create stops it."""
    from tasks.ownership import Ledger, OwnershipError, check_free
    from tasks.render import render_manifests

    spec = _spec(ns)
    pv_name = spec.storage.pv_name
    kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
                 "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                          "hostPath": {"path": "/data/someone-else"}}})
    try:
        preflight(kube, spec)
        with pytest.raises(OwnershipError) as info:
            check_free(kube, render_manifests(spec, "pre-0001"), Ledger(None))
        assert info.value.one_line().startswith(f"PersistentVolume {pv_name}: exists and was not created by this "
                                                "run"), info.value.one_line()
        assert kube.get("v1", "PersistentVolume", pv_name)["spec"]["hostPath"]["path"] == "/data/someone-else"
    finally:
        kube.delete("v1", "PersistentVolume", pv_name)


def test_without_provision_the_administrators_pvc_must_exist(kube, ns):
    spec = _spec(ns, "storage.provision=false")
    message = _refused(kube, spec)
    assert message.startswith(f"storage.pvc_name: PersistentVolumeClaim {ns}/llm-model does not exist"), message
    assert "tidegate plan --admin" in message


def test_a_user_managed_oss_secret_must_exist(kube, ns):
    spec = _spec(ns, "storage.oss.credentials.create_secret=false",
                 "storage.oss.credentials.secret_name=team-oss-keys")
    message = _refused(kube, spec)
    assert message.startswith(f"storage.oss.credentials.secret_name: Secret {ns}/team-oss-keys does not exist")
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-oss-keys", "namespace": ns},
                "stringData": {"akId": "x", "akSecret": "y"}})
    preflight(kube, spec)


def test_a_resource_metric_needs_metrics_server(kube, ns):
    # the test bed serves custom metrics only (no metrics-server), as a cluster without it would
    message = _refused(kube, _spec(ns, "service.scale_metric=cpu", "service.scale_target=60",
                                   "service.hpa_scale_down_stabilization_s=null"))
    assert message.startswith("service.scale_metric: 'cpu' needs the resource metrics API (metrics.k8s.io)"), message


def test_preflight_reads_the_pools_by_the_specs_own_node_pool_label(kube, ns):
    """A cluster whose pools carry another label than ACK's: preflight finds them by
    cluster.nodepool_label (it used to hard-code alibabacloud.com/nodepool-id and said "no Ready
    node")."""
    label = "pools.example.com/id"
    spec = _spec(ns, f"cluster.nodepool_label={label}")
    message = _refused(kube, spec)  # no node carries the label yet: named with the spec's label
    assert message.startswith(f"cluster.idc_pool_id: no Ready node has {label}=np-idc"), message
    idc = [n["metadata"]["name"] for n in
           kube.list("v1", "Node", label_selector=f"alibabacloud.com/nodepool-id={spec.cluster.idc_pool_id}")]
    assert idc
    try:
        for name in idc:
            kube.patch("v1", "Node", name, {"metadata": {"labels": {label: spec.cluster.idc_pool_id}}})
        report = preflight(kube, spec)
        assert report.idc.ready_nodes == len(idc) and report.idc.pool_id == "np-idc"
    finally:
        for name in idc:
            kube.patch("v1", "Node", name, {"metadata": {"labels": {label: None}}})
