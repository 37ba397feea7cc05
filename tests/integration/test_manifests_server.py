"""Issue 4: every rendered manifest passes server-side validation on the test bed
(`kubectl apply --dry-run=server` semantics: real CRD schemas, nothing stored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.render import render_admin, render_manifests, render_rbac
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
    objs = render_admin(spec) + render_manifests(spec, "dryrun-0001")
    kinds = {o["kind"] for o in objs}
    assert {"InferenceService", "PersistentVolumeClaim", "PersistentVolume", "ServiceAccount"} <= kinds
    for obj in objs:
        if obj["kind"] == "Namespace":
            continue  # namespaced dry-runs need the namespace to exist; it is checked on its own
        if obj["metadata"].get("namespace") == "dryrun-ns":
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": "default"}}
        out = kube.apply(obj, dry_run=True)
        assert out["metadata"]["name"] == obj["metadata"]["name"]
    for ns in (o for o in objs if o["kind"] == "Namespace"):
        kube.apply(ns, dry_run=True)
    assert kube.get("v1", "Namespace", "dryrun-ns") is None, "a dry run must not store anything"


def _sa_may(kube, user: str, verb: str, resource: str, namespace: str) -> bool:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts"],
                       "resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace}}}
    return bool(kube.create(review).get("status", {}).get("allowed"))


def test_rbac_in_another_namespace_reads_node_events(kube):
    """The pipeline's identity in a namespace other than ``default`` may watch the node events
    recorded in ``default`` (and the autoscaler's in kube-system), nothing more there."""
    import uuid

    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    spec = load_spec(ROOT / "examples" / "qwen-chat.local.yaml", [f"cluster.namespace={ns}", "storage.provision=false"])
    objs = render_rbac(spec)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        for obj in objs:
            kube.apply(obj)
        user = f"system:serviceaccount:{ns}:{spec.cluster.service_account}"
        assert _sa_may(kube, user, "watch", "events", "default")
        assert _sa_may(kube, user, "list", "events", "kube-system")
        assert not _sa_may(kube, user, "list", "pods", "default")
        assert not _sa_may(kube, user, "watch", "events", "kube-public")
        assert _sa_may(kube, user, "get", "persistentvolumeclaims", ns) is False  # only by name: llm-model
        assert not _sa_may(kube, user, "create", "secrets", ns)   # only the opt-in provisioner Role may
    finally:
        for obj in reversed(objs):
            meta = obj["metadata"]
            kube.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        kube.delete("v1", "Namespace", ns)
