"""A run touches only what it created (issue 16), on the test bed's real API server: objects of
the run's names made by someone else stop it before anything is applied and survive it
byte-identical; ``--adopt`` takes one over on purpose; teardown deletes exactly the ledger, by
uid; a namespace the run did not create survives with what is in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.validation import execute
from tasks.errors import RunInconclusive
from tasks.ownership import Ledger, OwnershipError, delete_owned
from tasks.spec import load_spec
from tests.helpers import scratch_namespace

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "qwen-chat.local.yaml"
STAGES = ["prepare", "deploy", "teardown"]


@pytest.fixture
def ns(kube):
    yield from scratch_namespace(kube, "own")


@pytest.fixture
def reports(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path))
    return tmp_path


def _spec(ns: str, *sets: str):
    return load_spec(EXAMPLE, [f"cluster.namespace={ns}", f"ingress.host=qwen-chat-{ns}.example.com", *sets])


def _foreign(ns: str) -> list[dict]:
    mark = {"owner": "someone-else"}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "qwen-chat", "namespace": ns, "labels": mark},
         "data": {"note": "made by hand"}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
         "metadata": {"name": "qwen-chat-hpa", "namespace": ns, "labels": mark},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "qwen-chat-predictor"},
                  "minReplicas": 1, "maxReplicas": 2,
                  "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                      "type": "Utilization", "averageUtilization": 80}}}]}},
        {"apiVersion": "scheduling.alibabacloud.com/v1alpha1", "kind": "ResourcePolicy",
         "metadata": {"name": "qwen-chat", "namespace": ns, "labels": mark},
         "spec": {"selector": {"app": "someone-else"}, "strategy": "prefer",
                  "units": [{"resource": "ecs", "nodeSelector": {"alibabacloud.com/nodepool-id": "np-idc"}}]}},
    ]


def _snapshot(kube, objs: list[dict]) -> dict[str, str | None]:
    out = {}
    for o in objs:
        live = kube.get(o["apiVersion"], o["kind"], o["metadata"]["name"], o["metadata"]["namespace"])
        out[o["kind"]] = live["metadata"]["resourceVersion"] if live else None
    return out


def test_foreign_objects_of_the_runs_names_stop_it_and_survive(kube, ns, reports):
    foreign = _foreign(ns)
    for o in foreign:
        kube.create(o)
    before = _snapshot(kube, foreign)
    with pytest.raises(OwnershipError) as info:
        execute(_spec(ns), STAGES, "own-foreign-0001", use_prefect=False)
    message = info.value.one_line()
    assert info.value.exit_code == 2
    assert f"HorizontalPodAutoscaler {ns}/qwen-chat-hpa" in message and f"ResourcePolicy {ns}/qwen-chat" in message
    assert "nothing was applied" in message and "--adopt" in message
    assert _snapshot(kube, foreign) == before          # not one write: same resourceVersion
    report = json.loads((reports / "own-foreign-0001" / "report.json").read_text())
    assert report["objects"] == [] and report["stages"]["prepare"]["status"] == "error"  # exit 2, not a failed check
    # nothing of the run was created either (the PV and Secret come before them in creation order)
    assert kube.get("v1", "PersistentVolume", f"llm-model-{ns}") is None
    assert kube.get("v1", "Secret", "tidegate-oss-credentials", ns) is None


def test_adopt_takes_over_the_named_object_and_teardown_deletes_it(kube, ns, reports):
    hpa = _foreign(ns)[1]
    kube.create(hpa)
    spec = _spec(ns)
    with pytest.raises(RunInconclusive):   # prepare, deploy, teardown: nothing judged
        execute(spec, STAGES, "own-adopt-0001", use_prefect=False,
                adopt=["HorizontalPodAutoscaler/qwen-chat-hpa"])
    report = json.loads((reports / "own-adopt-0001" / "report.json").read_text())
    assert report["stages"]["teardown"]["status"] == "passed", report["stages"]
    adopted = [o for o in report["objects"] if o["adopted"]]
    assert [(o["kind"], o["name"]) for o in adopted] == [("HorizontalPodAutoscaler", "qwen-chat-hpa")]
    assert report["adopt"] == ["HorizontalPodAutoscaler/qwen-chat-hpa"]
    assert kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "qwen-chat-hpa", ns) is None


def test_an_existing_namespace_and_what_is_in_it_survive_teardown(kube, ns, reports):
    cm = _foreign(ns)[0]
    kube.create(cm)
    with pytest.raises(RunInconclusive):
        execute(_spec(ns, "cluster.create_namespace=true"), STAGES, "own-ns-0001", use_prefect=False)
    report = json.loads((reports / "own-ns-0001" / "report.json").read_text())
    assert "Namespace" not in [o["kind"] for o in report["objects"]]
    assert report["stages"]["teardown"]["status"] == "passed"
    assert kube.get("v1", "Namespace", ns)["status"]["phase"] == "Active"
    assert kube.get("v1", "ConfigMap", "qwen-chat", ns)["data"] == {"note": "made by hand"}
    assert kube.get("serving.kserve.io/v1beta1", "InferenceService", "qwen-chat", ns) is None


def test_teardown_deletes_by_uid_never_a_namesake(kube, ns, tmp_path):
    """An object the run created, deleted and recreated by someone else under the same name: the
    ledger's uid no longer matches, and teardown leaves the namesake alone."""
    ledger = Ledger.open(tmp_path)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "run-made", "namespace": ns}}
    ledger.add(kube.create(cm))
    assert json.loads((tmp_path / "objects.json").read_text())["objects"][0]["name"] == "run-made"
    kube.delete("v1", "ConfigMap", "run-made", ns)
    from tests.helpers import wait_for

    wait_for(lambda: kube.get("v1", "ConfigMap", "run-made", ns) is None, 30, "the ConfigMap gone", 0.2)
    namesake = kube.create({**cm, "data": {"who": "someone else"}})
    assert delete_owned(kube, Ledger.open(tmp_path), timeout_s=10) == []
    live = kube.get("v1", "ConfigMap", "run-made", ns)
    assert live["metadata"]["uid"] == namesake["metadata"]["uid"] and live["data"] == {"who": "someone else"}
