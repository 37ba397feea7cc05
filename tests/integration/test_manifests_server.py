"""Issue 4: every rendered manifest passes server-side validation on the test bed
(`kubectl apply --dry-run=server` semantics: real CRD schemas, nothing stored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.render import render_manifests
from tasks.spec import load_spec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("example,sets", [
    ("qwen-chat.ack.yaml", []),
    ("qwen-chat.local.yaml", []),
    ("qwen-chat.local.yaml", ["cluster.placement=affinity", "storage.kind=nas", "storage.nas.server=nas.example.com"]),
])
def test_rendered_manifests_pass_server_side_dry_run(kube, example, sets):
    spec = load_spec(ROOT / "examples" / example, sets + ["cluster.create_namespace=true",
                                                          "cluster.namespace=dryrun-ns"])
    objs = render_manifests(spec, "dryrun-0001")
    kinds = {o["kind"] for o in objs}
    assert {"InferenceService", "PersistentVolumeClaim", "PersistentVolume", "ServiceAccount"} <= kinds
    for obj in objs:
        if obj["kind"] == "Namespace":
            continue  # namespaced dry-runs need the namespace to exist; it is checked on its own
        if obj["metadata"].get("namespace") == "dryrun-ns":
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": "default"}}
        out = kube.apply(obj, dry_run=True)
        assert out["metadata"]["name"] == obj["metadata"]["name"]
    ns = next(o for o in objs if o["kind"] == "Namespace")
    kube.apply(ns, dry_run=True)
    assert kube.get("v1", "Namespace", "dryrun-ns") is None, "a dry run must not store anything"


def _sa_may(kube, user: str, verb: str, resource: str, namespace: str) -> bool:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts"],
                       "resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace}}}
    return bool(kube.create(review).get("status", {}).get("allowed"))


def test_rbac_in_another_namespace_reads_node_events_and_teardown_removes_every_role(kube):
    """A run outside ``default`` may watch the node events recorded in ``default`` (and the
    autoscaler's in kube-system), nothing more there; teardown removes its Roles in both."""
    import uuid

    from tasks.cluster import leftovers, run_object_names, teardown

    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    run_id = f"rbac-{uuid.uuid4().hex[:8]}"
    spec = load_spec(ROOT / "examples" / "qwen-chat.local.yaml", [f"cluster.namespace={ns}"])
    objs = [o for o in render_manifests(spec, run_id)
            if o["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        for obj in objs:
            kube.apply(obj)
        user = f"system:serviceaccount:{ns}:{spec.cluster.service_account}"
        assert _sa_may(kube, user, "watch", "events", "default")
        assert _sa_may(kube, user, "list", "events", "kube-system")
        assert not _sa_may(kube, user, "list", "pods", "default")
        assert not _sa_may(kube, user, "watch", "events", "kube-public")
        known = run_object_names(spec, run_id)
        teardown(kube, run_id, [ns], timeout_s=30, known=known)
        assert leftovers(kube, run_id, [ns], known=known) == []
        for where in ("default", "kube-system"):
            assert [r["metadata"]["name"] for r in kube.list("rbac.authorization.k8s.io/v1", "Role", where)
                    if (r["metadata"].get("labels") or {}).get("tidegate.dev/run-id") == run_id] == []
    finally:
        kube.delete("v1", "Namespace", ns)
