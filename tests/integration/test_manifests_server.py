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
