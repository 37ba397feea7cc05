"""The ResourcePolicy scheduler extender's logic (testbed/resourcepolicy.py): unit order, max,
whenTryNextUnits (LackResourceOrExceedMax, TimeoutOrExceedMax with its timeout, ExceedMax),
priorities, the ExtenderArgs / ExtenderFilterResult shapes, the scheduler configuration and
the bound-pod bookkeeping (deletion cost for reverse-order scale-in)."""

from __future__ import annotations

import json

import pytest
import yaml

from testbed import resourcepolicy as rp
from testbed.cluster import scheduler_config
from testbed.config import TestbedConfig

pytestmark = pytest.mark.unit

POOL = "alibabacloud.com/nodepool-id"
IDC = {POOL: "np-idc"}
CLOUD = {POOL: "np-elastic"}


def _policy(*, idc_max: int | None = None, when: str | None = None, timeout: str | None = None,
            wait_label: bool = True) -> dict:
    idc = {"resource": "ecs", "nodeSelector": dict(IDC)}
    if idc_max is not None:
        idc["max"] = idc_max
    cloud = {"resource": "ecs", "nodeSelector": dict(CLOUD)}
    if wait_label:
        cloud["podLabels"] = {rp.WAIT_FOR_SCALING: "true"}
    spec = {"selector": {"app": "isvc.qwen-chat-predictor"}, "strategy": "prefer", "units": [idc, cloud]}
    if when:
        spec["whenTryNextUnits"] = {"policy": when, **({"timeout": timeout} if timeout else {})}
    return {"apiVersion": rp.API_VERSION, "kind": "ResourcePolicy",
            "metadata": {"name": "qwen-chat", "namespace": "default"}, "spec": spec}


def _nodes(*pairs: tuple[str, dict]) -> list[tuple[str, dict]]:
    return list(pairs)


IDC0, IDC1, CLOUD0 = ("idc-gpu-0", IDC), ("idc-gpu-1", IDC), ("np-elastic-x", CLOUD)
OTHER = ("cpu-0", {POOL: "np-default"})


def test_the_first_unit_with_a_node_that_fits_wins():
    d = rp.decide(_policy(), _nodes(IDC0, IDC1, CLOUD0, OTHER), {}, 0.0)
    assert d.unit == 0 and d.passing == ["idc-gpu-0", "idc-gpu-1"] and d.error is None
    assert "unit 1 (alibabacloud.com/nodepool-id=np-elastic) comes after unit 0" in d.failed["np-elastic-x"]
    assert d.failed["cpu-0"] == "ResourcePolicy qwen-chat: node is in no unit"


def test_lack_resource_or_exceed_max_moves_on_at_once():
    # the IDC nodes are full: the scheduler's own filters left only the cloud node
    d = rp.decide(_policy(), _nodes(CLOUD0), {0: 2}, 0.0)
    assert d.unit == 1 and d.passing == ["np-elastic-x"] and not d.failed


def test_max_skips_a_unit_even_with_room_and_names_it():
    d = rp.decide(_policy(idc_max=1), _nodes(IDC1, CLOUD0), {0: 1}, 0.0)
    assert d.unit == 1 and d.passing == ["np-elastic-x"]
    assert d.failed["idc-gpu-1"] == ("ResourcePolicy qwen-chat: unit 0 (alibabacloud.com/nodepool-id=np-idc) "
                                     "reached max 1 (1 pods)")


def test_max_reached_and_no_node_in_the_next_unit_leaves_the_pod_pending():
    """The case the autoscaler gets wrong: an IDC GPU is free, the policy refuses it."""
    d = rp.decide(_policy(idc_max=1), _nodes(IDC1), {0: 1}, 0.0)
    assert d.unit is None and d.passing == [] and d.error is None
    assert "reached max 1" in d.failed["idc-gpu-1"]
    result = rp.filter_result([{"metadata": {"name": "idc-gpu-1"}}], d)
    assert result["Nodes"]["items"] == [] and "idc-gpu-1" in result["FailedAndUnresolvableNodes"]


def test_below_max_the_unit_is_used():
    d = rp.decide(_policy(idc_max=2), _nodes(IDC0, IDC1, CLOUD0), {0: 1}, 0.0)
    assert d.unit == 0


@pytest.mark.parametrize("age, waits", [(0.0, True), (44.0, True), (45.5, False), (600.0, False)])
def test_timeout_or_exceed_max_waits_for_its_timeout(age, waits):
    policy = _policy(idc_max=3, when="TimeoutOrExceedMax", timeout="45s")
    d = rp.decide(policy, _nodes(CLOUD0), {0: 2}, age)
    if waits:
        assert d.unit is None and d.error and "TimeoutOrExceedMax, timeout 45s" in d.error
        assert d.retry_after_s == pytest.approx(45 - age)
        assert rp.filter_result([{"metadata": {"name": "np-elastic-x"}}], d) == {"Error": d.error}
    else:
        assert d.unit == 1 and d.passing == ["np-elastic-x"] and d.error is None


def test_timeout_or_exceed_max_does_not_wait_once_max_is_reached():
    d = rp.decide(_policy(idc_max=2, when="TimeoutOrExceedMax", timeout="1m"), _nodes(CLOUD0), {0: 2}, 0.0)
    assert d.unit == 1


def test_timeout_or_exceed_max_without_max_waits_only_in_a_wait_for_scaling_unit():
    # IDC unit: no max, no wait-for-ecs-scaling label: move on at once
    d = rp.decide(_policy(when="TimeoutOrExceedMax", timeout="1m"), _nodes(CLOUD0), {0: 2}, 0.0)
    assert d.unit == 1
    # the cloud unit carries the label: with no node there the pod waits in it
    d = rp.decide(_policy(when="TimeoutOrExceedMax", timeout="1m"), _nodes(), {0: 2}, 10.0)
    assert d.error and "unit 1" in d.error and d.retry_after_s == pytest.approx(50.0)


def test_timeout_defaults_to_15_minutes():
    assert rp.when_try_next(_policy(when="TimeoutOrExceedMax")) == ("TimeoutOrExceedMax", 900.0)
    assert rp.when_try_next(_policy()) == ("LackResourceOrExceedMax", 900.0)


def test_exceed_max_waits_below_max_without_a_timeout():
    d = rp.decide(_policy(idc_max=3, when="ExceedMax"), _nodes(CLOUD0), {0: 2}, 3600.0)
    assert d.unit is None and d.error is None and "ExceedMax" in d.failed["np-elastic-x"]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("1m", 60), ("1h30m", 5400), ("500ms", 0.5), ("1.5m", 90)])
def test_go_durations(text, seconds):
    assert rp.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1 m", "5d", "m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        rp.parse_duration(text)


def test_priorities_favour_earlier_units():
    scores = {s["Host"]: s["Score"] for s in rp.scores(_policy(), _nodes(IDC0, CLOUD0, OTHER))}
    assert scores == {"idc-gpu-0": 10, "np-elastic-x": 5, "cpu-0": 0}
    assert rp.scores(None, _nodes(IDC0)) == [{"Host": "idc-gpu-0", "Score": 0}]


def test_extender_args_in_go_field_names():
    node = {"metadata": {"name": "idc-gpu-0", "labels": IDC}}
    pod, nodes, names = rp.extender_candidates({"Pod": {"metadata": {"name": "p"}}, "Nodes": {"items": [node]},
                                                "NodeNames": None})
    assert pod["metadata"]["name"] == "p" and nodes == [node] and names is None
    # a pod without a policy: every node passes
    assert rp.filter_result([node], None) == {"Nodes": {"items": [node]}}


def test_scheduler_configuration_calls_the_extender_and_fails_closed(tmp_path):
    cfg = TestbedConfig(state_dir=tmp_path)
    doc = scheduler_config(cfg)
    assert doc["kind"] == "KubeSchedulerConfiguration" and doc["leaderElection"] == {"leaderElect": False}
    (ext,) = doc["extenders"]
    assert ext["urlPrefix"] == f"http://127.0.0.1:{cfg.ports.daemon}/scheduler"
    assert ext["filterVerb"] == "filter" and ext["prioritizeVerb"] == "prioritize"
    assert ext["ignorable"] is False and ext["nodeCacheCapable"] is False
    yaml.safe_dump(doc)  # serialisable as the file the scheduler reads


def test_bound_pods_get_a_deletion_cost_falling_with_the_unit():
    policy = _policy()
    pod = {"metadata": {"name": "p", "labels": {"app": "isvc.qwen-chat-predictor"}}}
    idc = rp.bound_pod_patch(pod, policy, 0)
    cloud = rp.bound_pod_patch(pod, policy, 1)
    assert int(idc["metadata"]["annotations"][rp.DELETION_COST]) > int(cloud["metadata"]["annotations"][rp.DELETION_COST])
    # the wait-for-ecs-scaling marker is not written onto the pod
    assert rp.WAIT_FOR_SCALING not in json.dumps(cloud)


def test_selection_by_labels_and_namespace():
    policy = _policy()
    pod = {"metadata": {"namespace": "default", "labels": {"app": "isvc.qwen-chat-predictor"}}}
    assert rp.policy_for(pod, [policy]) is policy
    assert rp.policy_for({"metadata": {"namespace": "other", "labels": pod["metadata"]["labels"]}}, [policy]) is None
    assert rp.policy_for({"metadata": {"namespace": "default", "labels": {"app": "x"}}}, [policy]) is None


def test_verify_reports_the_policy_refusing_nodes_the_autoscaler_counts_on():
    from tests.unit.test_verify import MARKS, NS, _row, _timeline, _verify

    pod = f"{NS}/qwen-chat-predictor-546cc8969b-zzzzz"
    msg = ("0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 ResourcePolicy qwen-chat: unit 0 "
           "(alibabacloud.com/nodepool-id=np-idc) reached max 1 (1 pods).")
    at = MARKS["spike_started_at"][:19] + "Z"

    def add(rows):
        return rows + [_row(at, "Event", pod, "FailedScheduling", msg, uid="rp-refusal")]

    finding = _verify(_timeline(add)).finding("placement_policy_vs_autoscaler")
    assert finding is not None and not finding.ok
    assert "reached max 1" in finding.detail and "instant elasticity" in finding.detail
    assert any("FailedScheduling" in line and "zzzzz" in line for line in finding.evidence)
    # the recorded spill (FailedScheduling for lack of GPUs, then TriggeredScaleUp) is not this case
    assert _verify(_timeline()).finding("placement_policy_vs_autoscaler") is None


class _StubKube:
    def __init__(self, cm=None, error=None):
        self.cm, self.error, self.allowed = cm, error, True

    def can_i(self, verb, resource, *, group="", namespace=None, name=None):
        return self.allowed

    def get(self, api_version, kind, name, namespace=None):
        if self.error:
            raise self.error
        return self.cm


@pytest.mark.parametrize("deploy, annotations, outcome", [
    ('{"defaultDeploymentMode": "Serverless"}', {}, "error"),
    ('{"defaultDeploymentMode": "Knative"}', {}, "error"),
    ("{}", {}, "error"),  # KServe's built-in default is Serverless
    ('{"defaultDeploymentMode": "Serverless"}', {"serving.kserve.io/deploymentMode": "RawDeployment"}, "ok"),
    ('{"defaultDeploymentMode": "RawDeployment"}', {}, "ok"),
    ('{"defaultDeploymentMode": "Standard"}', {}, "ok"),
])
def test_preflight_names_a_serverless_kserve_default(deploy, annotations, outcome):
    from types import SimpleNamespace

    from tasks.cluster import _check_deployment_mode
    from tasks.errors import ClusterError

    spec = SimpleNamespace(service=SimpleNamespace(annotations=annotations))
    report = SimpleNamespace(warnings=[])
    kube = _StubKube({"data": {"deploy": deploy}})
    if outcome == "error":
        with pytest.raises(ClusterError, match="default deployment mode is .* RawDeployment"):
            _check_deployment_mode(kube, spec, report)
    else:
        _check_deployment_mode(kube, spec, report)
        assert report.warnings == []


def test_preflight_deployment_mode_unknown():
    from types import SimpleNamespace

    from tasks.cluster import _check_deployment_mode
    from tasks.errors import ClusterError

    spec = SimpleNamespace(service=SimpleNamespace(annotations={}))
    report = SimpleNamespace(warnings=[])
    _check_deployment_mode(_StubKube(None), spec, report)  # no KServe config (the emulated twin): silent
    assert report.warnings == []
    _check_deployment_mode(_StubKube(error=ClusterError("get ConfigMap kserve/inferenceservice-config: 403")),
                           spec, report)
    assert "unknown" in report.warnings[0]
    # an account that may not read it is told so, and no request is made that would be answered 403
    denied = _StubKube(error=AssertionError("the ConfigMap was requested without the right to read it"))
    denied.allowed = False
    report.warnings.clear()
    _check_deployment_mode(denied, spec, report)
    assert "may not get it" in report.warnings[0]


def test_status_components_say_upstream_or_emulated():
    from testbed.fidelity import components

    procs = [{"name": n, "ready": True, "pid": 10 + i, "version": "v", "log": f"/l/{n}"}
             for i, n in enumerate(["kube-scheduler", "testbed-daemon", "seaweedfs", "oss-adapter"])]
    by = {c["name"]: c for c in components(procs)}
    assert by["kube-scheduler"]["upstream"] and by["seaweedfs"]["upstream"]
    assert not by["testbed-daemon"]["upstream"] and not by["oss-adapter"]["upstream"]
    kserve = by["kserve-controller"]
    assert kserve["upstream"] is False and kserve["provided_by"] == "testbed-daemon" and kserve["pid"] == 11
    assert by["resourcepolicy"]["upstream"] is False and "extender" in by["resourcepolicy"]["emulates"]
    up = {c["name"]: c for c in components(procs, kserve_upstream=True)}["kserve-controller"]
    assert up["upstream"] is True and up["version"].startswith("v0.")
