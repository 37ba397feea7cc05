"""Manifest rendering: arena's InferenceService and HPA field by field, labels, order, placement,
volumes, RBAC and the plan."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from tasks.errors import SpecError
from tasks.names import RUN_LABEL
from tasks.render import (
    MANIFESTS_DIR,
    preflight_checks,
    render_hpa,
    render_inferenceservice,
    render_admin,
    render_admin_plan,
    render_manifests,
    render_oss_secret,
    render_plan,
    render_pv,
    render_pvc,
    render_rbac,
    render_resourcepolicy,
)
from tasks.spec import SEED_COMMAND, SEED_IMAGE, RolloutSpec, load_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ACK = ROOT / "examples" / "qwen-chat.ack.yaml"
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
RUN = "r-20250101-020000-abc"
TIDEGATE_LABELS = {RUN_LABEL: RUN, "app.kubernetes.io/managed-by": "tidegate"}
ADMIN_LABELS = {"app.kubernetes.io/managed-by": "tidegate", "tidegate.dev/part": "admin"}
# the ACK example under the seed's own names (the example itself validates under names of its own)
SEED_NAMES = ("service.name=qwen-chat", "cluster.namespace=default", "ingress.host=qwen-chat-default.example.com")

# ../shared/reference/ack-kserve-arena.md §2.2: what `arena serve kserve` renders for the seed's
# command (--name=qwen-chat --gpus=1 --cpu=4 --memory=12Gi --min-replicas=1 --max-replicas=3
# --scale-metric=DCGM_CUSTOM_PROCESS_SM_UTIL --scale-target=50 --data=llm-model:/mnt/models/Qwen),
# copied as written there; only <registry>/<user>/<uid> and the command are placeholders.
ARENA_RENDER = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: qwen-chat
  annotations:
    arena.kubeflow.org/username: "<user>"
    serving.kserve.io/autoscalerClass: external
  labels:
    heritage: "Helm"
    release: "qwen-chat"
    chart: kserve-0.1.0
    app: kserve
    servingType: "kserve"
    servingName: "qwen-chat"
    arena.kubeflow.org/uid: "<uid>"
spec:
  predictor:
    containers:
      - name: kserve-container
        image: "<image>"
        imagePullPolicy: "IfNotPresent"
        command:
        - "sh"
        - "-c"
        - "<command>"
        ports:
        resources:
          requests: {cpu: 4, memory: 12Gi, nvidia.com/gpu: 1}
          limits:   {cpu: 4, memory: 12Gi, nvidia.com/gpu: 1}
        volumeMounts:
          - name: "llm-model"
            mountPath: "/mnt/models/Qwen"
    volumes:
      - name: "llm-model"
        persistentVolumeClaim:
          claimName: "llm-model"
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: qwen-chat-hpa
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: qwen-chat-predictor}
  minReplicas: 1
  maxReplicas: 3
  metrics:
    - type: Pods
      pods:
        metric: {name: DCGM_CUSTOM_PROCESS_SM_UTIL}
        target:
          type: Utilization
          averageValue: 50
"""


def arena_objects() -> tuple[dict[str, Any], dict[str, Any]]:
    """Arena's render with the seed's values, normalised for what tidegate decides differently:
    username is the fixed "tidegate"; the per-user uid label is not emitted; `ports:` (null,
    pruned by the API server) is omitted."""
    isvc, hpa = yaml.safe_load_all(ARENA_RENDER)
    isvc["metadata"]["annotations"]["arena.kubeflow.org/username"] = "tidegate"
    del isvc["metadata"]["labels"]["arena.kubeflow.org/uid"]
    container = isvc["spec"]["predictor"]["containers"][0]
    container["image"] = SEED_IMAGE
    container["command"][2] = SEED_COMMAND
    assert container.pop("ports") is None
    return isvc, hpa


def tidegate_only(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop what tidegate adds on purpose: its two labels and metadata.namespace."""
    import copy

    out = copy.deepcopy(obj)
    meta = out["metadata"]
    for key in TIDEGATE_LABELS:
        assert meta["labels"].pop(key) == TIDEGATE_LABELS[key]
    if not meta["labels"]:
        del meta["labels"]
    meta.pop("namespace")
    return out


def diff(want: Any, got: Any, path: str = "") -> list[str]:
    """Every path where the two differ, in value or in type (4 is not "4")."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(want) | set(got), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in got:
                out.append(f"{where}: missing (want {want[key]!r})")
            elif key not in want:
                out.append(f"{where}: unexpected {got[key]!r}")
            else:
                out += diff(want[key], got[key], where)
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: {len(got)} items, want {len(want)}"]
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in diff(w, g, f"{path}[{i}]")]
    if type(want) is not type(got) or want != got:
        return [f"{path}: got {got!r}, want {want!r}"]
    return []


@pytest.fixture(scope="module")
def ack() -> RolloutSpec:
    return load_spec(ACK, list(SEED_NAMES))


@pytest.fixture(scope="module")
def local() -> RolloutSpec:
    return load_spec(LOCAL)


def variant(path: Path, *overrides: str) -> RolloutSpec:
    return load_spec(path, [*(SEED_NAMES if path == ACK else ()), *overrides])


# -- arena's render, field by field ------------------------------------------------------------
def test_inferenceservice_is_arenas(ack: RolloutSpec):
    want, _ = arena_objects()
    got = tidegate_only(render_inferenceservice(ack, RUN))
    assert diff(want, got) == []


def test_hpa_is_arenas(ack: RolloutSpec):
    _, want = arena_objects()
    got = tidegate_only(render_hpa(ack, RUN))
    assert diff(want, got) == []


def test_the_diff_helper_sees_type_and_value_changes():
    assert diff({"a": {"cpu": 4}}, {"a": {"cpu": "4"}}) == ["a.cpu: got '4', want 4"]
    assert diff({"a": [1]}, {"a": [1], "b": 2}) == ["b: unexpected 2"]


def test_local_example_renders_arenas_objects_plus_stabilization(local: RolloutSpec):
    want_isvc, want_hpa = arena_objects()
    want_isvc["spec"]["predictor"]["containers"][0]["image"] = "vllm/vllm-openai:v0.6.3"
    want_hpa["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 15}}
    assert diff(want_isvc, tidegate_only(render_inferenceservice(local, RUN))) == []
    assert diff(want_hpa, tidegate_only(render_hpa(local, RUN))) == []


def test_behavior_only_when_the_spec_sets_it(ack: RolloutSpec):
    assert "behavior" not in render_hpa(ack, RUN)["spec"]
    hpa = render_hpa(variant(ACK, "service.hpa_scale_down_stabilization_s=0"), RUN)
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 0}}


def test_spec_values_reach_the_objects():
    spec = variant(ACK, "service.name=llama", "cluster.namespace=staging", "service.gpus=2",
                   "service.cpu=500m", "service.memory=64Gi", "service.min_replicas=2",
                   "service.max_replicas=8", "service.scale_target=70",
                   "service.image_pull_policy=Always", "storage.pvc_name=weights",
                   "storage.mount_path=/models", "service.command=python3 -m vllm.entrypoints."
                   "openai.api_server --port 8080 --served-model-name qwen --model /models/q")
    isvc, hpa = render_inferenceservice(spec, RUN), render_hpa(spec, RUN)
    assert isvc["metadata"]["name"] == "llama" and isvc["metadata"]["namespace"] == "staging"
    assert isvc["metadata"]["labels"]["servingName"] == isvc["metadata"]["labels"]["release"] == "llama"
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "64Gi", "nvidia.com/gpu": 2}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["imagePullPolicy"] == "Always"
    assert container["volumeMounts"] == [{"name": "weights", "mountPath": "/models"}]
    assert isvc["spec"]["predictor"]["volumes"] == [
        {"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}}]
    assert hpa["metadata"] == {"name": "llama-hpa", "namespace": "staging", "labels": TIDEGATE_LABELS}
    assert hpa["spec"]["scaleTargetRef"]["name"] == "llama-predictor"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"][0]["pods"]["target"] == {"type": "Utilization", "averageValue": 70}


def test_zero_gpus_like_arena():
    # a GPU metric needs a GPU (the spec refuses gpus: 0 with one): scale on CPU here
    isvc = render_inferenceservice(variant(ACK, "service.gpus=0", "service.scale_metric=cpu"), RUN)
    container = isvc["spec"]["predictor"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert container["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]


def test_non_default_port_is_declared():
    spec = variant(ACK, "service.port=8000", "service.command=python3 -m vllm.entrypoints.openai."
                                             "api_server --port 8000 --served-model-name qwen")
    container = render_inferenceservice(spec, RUN)["spec"]["predictor"]["containers"][0]
    assert container["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]


def test_native_metric_goes_to_kserve_like_arena():
    spec = variant(ACK, "service.scale_metric=cpu", "service.scale_target=80")
    objs = render_manifests(spec, RUN)
    assert "HorizontalPodAutoscaler" not in [o["kind"] for o in objs]
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    assert "serving.kserve.io/autoscalerClass" not in isvc["metadata"]["annotations"]
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 80)


def test_extra_labels_and_annotations():
    spec = variant(ACK, "service.labels={team: llm}",
                   "service.annotations={serving.kserve.io/deploymentMode: RawDeployment}")
    meta = render_inferenceservice(spec, RUN)["metadata"]
    assert meta["labels"]["team"] == "llm"
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "external"


# -- every object, in order ----------------------------------------------------------------------
def test_apply_order_and_run_label(ack: RolloutSpec):
    objs = render_manifests(ack, RUN)
    assert [o["kind"] for o in objs] == ["ResourcePolicy", "InferenceService", "HorizontalPodAutoscaler"]
    provisioned = render_manifests(variant(ACK, "storage.provision=true"), RUN)
    assert [o["kind"] for o in provisioned] == ["PersistentVolume", "PersistentVolumeClaim", "ResourcePolicy",
                                                "InferenceService", "HorizontalPodAutoscaler"]
    for obj in provisioned:
        labels = obj["metadata"]["labels"]
        assert labels[RUN_LABEL] == RUN, obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "tidegate", obj["kind"]


def test_the_administrators_part_is_of_no_run(ack: RolloutSpec):
    objs = render_admin(ack)
    assert [o["kind"] for o in objs] == [
        "ServiceAccount", "Role", "RoleBinding", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
        "PersistentVolume", "PersistentVolumeClaim"]
    for obj in objs:
        assert RUN_LABEL not in obj["metadata"]["labels"], obj["kind"]   # no run ever deletes them
        assert obj["metadata"]["labels"]["tidegate.dev/part"] == "admin"
    own_ns = render_admin(variant(ACK, "cluster.namespace=tg"))
    assert own_ns[0]["kind"] == "Namespace" and own_ns[0]["metadata"]["name"] == "tg"
    provisioned = [o["kind"] for o in render_admin(variant(ACK, "storage.provision=true"))]
    assert "PersistentVolume" not in provisioned
    assert provisioned[-4:] == ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]  # the provisioner


def test_admin_plan_never_holds_the_key(ack: RolloutSpec, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "canary-id-77a3")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "canary-secret-77a4")
    text = render_admin_plan(ack)
    assert "canary" not in text
    assert "create secret generic tidegate-oss-credentials" in text and '"$OSS_ACCESS_KEY_SECRET"' in text
    assert [d for d in yaml.safe_load_all(text) if d is not None] == render_admin(ack)


def test_namespace_first_when_the_run_creates_it():
    spec = variant(ACK, "cluster.create_namespace=true", "cluster.namespace=tg")
    objs = render_manifests(spec, RUN)
    assert objs[0] == {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "tg", "labels": TIDEGATE_LABELS}}
    assert {o["metadata"]["namespace"] for o in objs[1:]} == {"tg"}
    # kube-system: the autoscaler's status; default: events of the nodes
    assert {o["metadata"].get("namespace") for o in render_rbac(spec) if o["kind"] == "Role"} == {
        "tg", "kube-system", "default"}


def test_every_placeholder_is_filled(ack: RolloutSpec):
    def nulls(node: Any, path: str = "") -> list[str]:
        if isinstance(node, dict):
            return [n for k, v in node.items() for n in nulls(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [n for i, v in enumerate(node) for n in nulls(v, f"{path}[{i}]")]
        return [path] if node is None else []

    for spec in (ack, variant(ACK, "storage.kind=nas", "storage.nas.server=nas.example.com",
                              "cluster.placement=affinity", "service.scale_metric=memory")):
        for obj in render_manifests(spec, RUN):
            assert nulls(obj) == [], obj["kind"]


def test_rendering_does_not_share_state(ack: RolloutSpec):
    first = render_manifests(ack, RUN)
    first[-2]["metadata"]["labels"]["poison"] = "x"
    assert render_manifests(ack, RUN) == render_manifests(ack, RUN)
    assert "poison" not in render_manifests(ack, RUN)[-2]["metadata"]["labels"]


@pytest.mark.parametrize("run_id", ["", "has space", "x" * 64, "-leading"])
def test_bad_run_id(ack: RolloutSpec, run_id: str):
    with pytest.raises(SpecError, match="run id"):
        render_manifests(ack, run_id)


# -- placement -------------------------------------------------------------------------------------
def test_resourcepolicy_as_documented(ack: RolloutSpec):
    rp = render_resourcepolicy(ack, RUN)
    assert rp["apiVersion"] == "scheduling.alibabacloud.com/v1alpha1"
    assert rp["metadata"] == {"name": "qwen-chat", "namespace": "default", "labels": TIDEGATE_LABELS}
    assert rp["spec"] == {
        "selector": {"app": "isvc.qwen-chat-predictor"},
        "strategy": "prefer",
        "units": [
            {"resource": "ecs", "nodeSelector": {"alibabacloud.com/nodepool-id": "np-idc-gpu-v100-edge"}},
            {"resource": "ecs",
             "nodeSelector": {"alibabacloud.com/nodepool-id": "np-cloud-gpu-v100-elastic"},
             "podLabels": {"k8s.aliyun.com/resource-policy-wait-for-ecs-scaling": "true"}},
        ],
        "whenTryNextUnits": {"policy": "LackResourceOrExceedMax"},
    }


def test_resourcepolicy_options():
    spec = variant(ACK, "cluster.resource_policy.elastic_unit=elastic",
                   "cluster.resource_policy.idc_max_pods=2",
                   "cluster.resource_policy.when_try_next_units=TimeoutOrExceedMax",
                   "cluster.resource_policy.try_next_timeout_s=90")
    body = render_resourcepolicy(spec, RUN)["spec"]
    idc, elastic = body["units"]
    assert idc["max"] == 2
    assert elastic == {"resource": "elastic",
                       "nodeSelector": {"alibabacloud.com/nodepool-id": "np-cloud-gpu-v100-elastic"}}
    assert body["whenTryNextUnits"] == {"policy": "TimeoutOrExceedMax", "timeout": "90s"}


def test_resourcepolicy_matches_the_test_beds_crd(ack: RolloutSpec):
    crd_file = ROOT / "testbed" / "crds" / "resourcepolicies.scheduling.alibabacloud.com.yaml"
    if not crd_file.exists():
        pytest.skip("the test bed's ResourcePolicy CRD is not there")
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.safe_load(crd_file.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for spec in (ack, variant(ACK, "cluster.resource_policy.elastic_unit=elastic",
                              "cluster.resource_policy.idc_max_pods=2")):
        jsonschema.validate(render_resourcepolicy(spec, RUN), schema)


def _kserve_crd() -> dict[str, Any] | None:
    """KServe's own CRD, if the test bed has fetched it (its Go module or the test bed's copy)."""
    candidates = [*ROOT.glob("testbed/crds/serving.kserve.io_inferenceservices.yaml"),
                  *sorted(Path.home().glob(".cache/tidegate/crds/kserve-*/serving.kserve.io_inferenceservices.yaml"))]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is megabytes of YAML
    return yaml.load(candidates[-1].read_text(), Loader=loader) if candidates else None


def _unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would prune silently (not in the structural schema)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(obj, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                out += _unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += _unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None:
                out.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, value in enumerate(obj):
            out += _unknown_fields(value, schema["items"], f"{path}[{i}]")
    return out


def test_inferenceservice_matches_kserves_crd(ack: RolloutSpec):
    crd = _kserve_crd()
    if crd is None:
        pytest.skip("KServe's CRD has not been fetched by the test bed")
    jsonschema = pytest.importorskip("jsonschema")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = version["schema"]["openAPIV3Schema"]
    predictor = jsonschema.Draft7Validator(schema["properties"]["spec"]["properties"]["predictor"])
    for spec in (ack, variant(ACK, "cluster.placement=affinity", "service.scale_metric=cpu",
                              "service.gpus=0")):
        isvc = render_inferenceservice(spec, RUN)
        assert [e.message for e in predictor.iter_errors(isvc["spec"]["predictor"])] == []
        assert _unknown_fields(isvc, schema) == []


def test_affinity_placement_renders_no_resourcepolicy():
    spec = variant(ACK, "cluster.placement=affinity")
    objs = render_manifests(spec, RUN)
    assert "ResourcePolicy" not in [o["kind"] for o in objs]
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    prefs = isvc["spec"]["predictor"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert prefs == [
        {"weight": 100, "preference": {"matchExpressions": [
            {"key": "alibabacloud.com/nodepool-id", "operator": "In", "values": ["np-idc-gpu-v100-edge"]}]}},
        {"weight": 10, "preference": {"matchExpressions": [
            {"key": "alibabacloud.com/nodepool-id", "operator": "In",
             "values": ["np-cloud-gpu-v100-elastic"]}]}},
    ]
    role = next(o for o in render_rbac(spec) if o["kind"] == "Role")
    assert not [r for r in role["rules"] if "resourcepolicies" in r["resources"]]


@pytest.mark.parametrize("placement", ["resourcepolicy", "affinity"])
def test_no_role_grants_patch(placement: str):
    """A run creates its objects and deletes them; it never changes one (nor a pod)."""
    for provision in ("false", "true"):
        spec = variant(ACK, f"cluster.placement={placement}", f"storage.provision={provision}")
        for role in (o for o in render_rbac(spec) if o["kind"] in ("Role", "ClusterRole")):
            assert not [r for r in role["rules"] if {"patch", "update"} & set(r["verbs"])], role["metadata"]
    assert "affinity" not in render_inferenceservice(variant(ACK), RUN)["spec"]["predictor"]


# -- volumes -----------------------------------------------------------------------------------------
def test_oss_pv_and_pvc(ack: RolloutSpec):
    pv, pvc = render_pv(ack), render_pvc(ack)
    assert pv["metadata"] == {"name": "llm-model-default",
                              "labels": {**ADMIN_LABELS, "alicloud-pvname": "llm-model-default"}}
    assert pv["spec"] == {
        "capacity": {"storage": "30Gi"},
        "accessModes": ["ReadOnlyMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "csi": {
            "driver": "ossplugin.csi.alibabacloud.com",
            "volumeHandle": "llm-model-default",
            "nodePublishSecretRef": {"name": "tidegate-oss-credentials", "namespace": "default"},
            "volumeAttributes": {"bucket": "my-llm-models",
                                 "url": "oss-cn-shanghai-internal.aliyuncs.com",   # volume_endpoint
                                 "path": "/models/Qwen-7B-Chat-Int8",
                                 "otherOpts": "-o umask=022 -o max_stat_cache_size=0 -o allow_other"},
        },
    }
    assert pvc["metadata"] == {"name": "llm-model", "namespace": "default", "labels": ADMIN_LABELS}
    assert pvc["spec"] == {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                           "volumeName": "llm-model-default",
                           "resources": {"requests": {"storage": "30Gi"}}}
    provisioned = variant(ACK, "storage.provision=true")
    assert render_pvc(provisioned, RUN)["metadata"]["labels"] == TIDEGATE_LABELS


def test_the_volume_mounts_from_the_volume_endpoint():
    assert variant(ACK).storage.oss.endpoint == "oss-cn-shanghai.aliyuncs.com"   # staging: public
    one = variant(ACK, "storage.oss.volume_endpoint=null")
    assert render_pv(one)["spec"]["csi"]["volumeAttributes"]["url"] == "oss-cn-shanghai.aliyuncs.com"


def test_nas_pv():
    spec = variant(ACK, "storage.kind=nas", "storage.nas.server=0a1b-xyz.cn-shanghai.nas.aliyuncs.com",
                   "storage.nas.path=/k8s/models", "storage.pv_name=llm-model-nas")
    pv, pvc = render_pv(spec), render_pvc(spec)
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["mountOptions"] == ["nolock", "tcp", "noresvport"]
    assert pv["spec"]["csi"] == {"driver": "nasplugin.csi.alibabacloud.com", "volumeHandle": "llm-model-nas",
                                 "volumeAttributes": {"server": "0a1b-xyz.cn-shanghai.nas.aliyuncs.com",
                                                      "path": "/k8s/models", "vers": "3"}}
    assert pvc["spec"]["volumeName"] == "llm-model-nas"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    role = next(o for o in render_rbac(spec) if o["kind"] == "Role")
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]


def test_secret_is_rendered_only_on_request(ack: RolloutSpec, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "canary-id-77a1")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "canary-secret-77a2")
    plan = render_plan(variant(ACK, "storage.provision=true"), RUN)
    assert "canary" not in plan and "created at apply time from the credentials" in plan
    assert "Secret" not in [o["kind"] for o in render_manifests(ack, RUN)]
    key_id, secret = ack.storage.oss.credentials.resolve()
    obj = render_oss_secret(ack, RUN, key_id, secret)
    assert obj["metadata"] == {"name": "tidegate-oss-credentials", "namespace": "default",
                               "labels": TIDEGATE_LABELS}
    assert obj["stringData"] == {"akId": "canary-id-77a1", "akSecret": "canary-secret-77a2"}
    with pytest.raises(SpecError):
        render_oss_secret(variant(ACK, "storage.kind=nas", "storage.nas.server=nas.example.com"),
                          RUN, SecretStr("a"), SecretStr("b"))


# -- RBAC ----------------------------------------------------------------------------------------------
ALLOWED = {  # (group, resource) -> the most the pipeline may do; no patch: a run never changes an object
    ("serving.kserve.io", "inferenceservices"): {"get", "list", "watch", "create", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "delete"},
    ("scheduling.alibabacloud.com", "resourcepolicies"): {"get", "create", "delete"},
    ("", "persistentvolumeclaims"): {"get", "create", "delete"},
    ("", "persistentvolumes"): {"get", "create", "delete"},
    ("", "secrets"): {"create", "get", "delete"},
    ("apps", "deployments"): {"get"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"list", "watch"},
    ("custom.metrics.k8s.io", "pods/DCGM_CUSTOM_PROCESS_SM_UTIL"): {"get"},
    ("metrics.k8s.io", "pods"): {"get", "list"},
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "nodes"): {"list", "watch"},
    ("", "namespaces"): {"get"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get"},
}
NAMED_ONLY = {"secrets", "persistentvolumes", "persistentvolumeclaims", "namespaces",
              "customresourcedefinitions", "configmaps"}   # any verb but create: by resourceNames


@pytest.mark.parametrize("provision", ["false", "true"])
def test_rbac_is_least_privilege(provision: str):
    spec = variant(ACK, f"storage.provision={provision}")
    roles = [o for o in render_rbac(spec) if o["kind"] in ("Role", "ClusterRole")]
    for role in roles:
        provisioner = role["metadata"]["name"].endswith("-provisioner")
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert set(rule["verbs"]) <= ALLOWED[(group, resource)], (group, resource)
                    if resource in NAMED_ONLY and set(rule["verbs"]) != {"create"}:
                        assert rule.get("resourceNames"), (role["metadata"]["name"], rule)
                    if "create" in rule["verbs"] and resource in ("secrets", "persistentvolumes",
                                                                  "persistentvolumeclaims"):
                        assert provisioner, (role["metadata"]["name"], rule)   # only with storage.provision
            if rule["resources"] == ["configmaps"]:
                assert role["metadata"]["namespace"] == "kube-system"
                assert rule["resourceNames"] == ["cluster-autoscaler-status"]
    cluster_role = next(o for o in roles if o["kind"] == "ClusterRole")
    namespaces = next(r for r in cluster_role["rules"] if r["resources"] == ["namespaces"])
    assert namespaces["resourceNames"] == ["default"]
    assert any(r["metadata"]["name"].endswith("-provisioner") for r in roles) == (provision == "true")


def test_rbac_bindings_point_at_the_service_account():
    objs = render_rbac(variant(ACK, "cluster.namespace=ml", "cluster.service_account=tg-ci", "storage.provision=true"))
    sa = next(o for o in objs if o["kind"] == "ServiceAccount")
    assert sa["metadata"]["name"] == "tg-ci" and sa["metadata"]["namespace"] == "ml"
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs
             if o["kind"] in ("Role", "ClusterRole")}
    assert roles == {("Role", "ml", "tg-ci"), ("Role", "kube-system", "tg-ci-ml-autoscaler-status"),
                     ("Role", "default", "tg-ci-ml-node-events"), ("ClusterRole", None, "tg-ci-ml"),
                     ("Role", "ml", "tg-ci-ml-provisioner"), ("ClusterRole", None, "tg-ci-ml-provisioner")}
    for binding in (o for o in objs if o["kind"].endswith("Binding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tg-ci", "namespace": "ml"}]
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["roleRef"]["kind"] == binding["kind"].removesuffix("Binding")


def test_the_secret_is_only_read_by_default(ack: RolloutSpec):
    role = next(o for o in render_rbac(ack) if o["kind"] == "Role")
    secrets = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"],
                        "resourceNames": ["tidegate-oss-credentials"], "verbs": ["get"]}]
    no_create = variant(ACK, "storage.provision=true", "storage.oss.credentials.create_secret=false")
    prov = next(o for o in render_rbac(no_create) if o["kind"] == "Role" and o["metadata"]["name"].endswith("-provisioner"))
    assert not [r for r in prov["rules"] if r["resources"] == ["secrets"]]


def test_every_rbac_rule_is_explained():
    lines = (MANIFESTS_DIR / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- apiGroups:"):
            assert lines[i - 1].lstrip().startswith("#"), f"rbac.yaml:{i + 1} has no comment saying why"


# -- templates and the plan ---------------------------------------------------------------------------
def test_templates_are_plain_yaml():
    names = sorted(p.name for p in MANIFESTS_DIR.glob("*.yaml"))
    assert names == ["hpa.yaml", "inferenceservice.yaml", "load-worker-job.yaml", "namespace.yaml", "pv-nas.yaml",
                     "pv-oss.yaml", "pvc.yaml", "rbac.yaml", "resourcepolicy.yaml"]
    for name in names:
        docs = [d for d in yaml.safe_load_all((MANIFESTS_DIR / name).read_text()) if d]
        assert docs and all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs), name


def test_plan_is_the_manifests_plus_preflight(ack: RolloutSpec):
    plan = render_plan(ack, RUN)
    assert "ResourcePolicy" in plan and "DCGM_CUSTOM_PROCESS_SM_UTIL" in plan
    docs = [d for d in yaml.safe_load_all(plan) if d is not None]
    assert docs == render_manifests(ack, RUN)
    assert "tidegate plan --admin" in plan
    header = plan.split("\n---\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines())
    for needle in ("inferenceservices.serving.kserve.io", "v1beta1.custom.metrics.k8s.io",
                   "lists pods/DCGM_CUSTOM_PROCESS_SM_UTIL", "np-idc-gpu-v100-edge", "np-cloud-gpu-v100-elastic",
                   "cluster-autoscaler-status", "nvidia.com/gpu", "GET /version"):
        assert needle in header, needle


def test_preflight_follows_the_spec():
    names = [c.name for c in preflight_checks(variant(ACK, "cluster.placement=affinity",
                                                      "service.scale_metric=cpu"))]
    assert "resourcepolicy-crd" not in names and "scale-metric" not in names
    assert "resource-metrics-api" in names
    assert names[0] == "api-reachable"
    assert names[-1] == "gpu-capacity"   # a warning only: after every check that can stop the run


def test_plan_of_the_local_example(local: RolloutSpec):
    plan = render_plan(local, "plan")
    assert re.search(r"stabilizationWindowSeconds: 15", plan)
    assert "TIDEGATE_OSS_ACCESS_KEY_ID" in plan


def test_node_events_role_only_when_the_namespace_is_not_default():
    in_default = render_rbac(variant(ACK, "cluster.namespace=default"))
    assert not [o for o in in_default if o["kind"] in ("Role", "RoleBinding")
                and o["metadata"]["name"].endswith("-node-events")]
    elsewhere = render_rbac(variant(ACK, "cluster.namespace=ml"))
    role = next(o for o in elsewhere if o["kind"] == "Role" and o["metadata"]["namespace"] == "default")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]}]
    assert role["metadata"]["labels"] == ADMIN_LABELS
