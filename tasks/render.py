"""Kubernetes objects of one run, rendered from the RolloutSpec.

The skeletons are YAML files under ``manifests/`` (one per kind, commented with where each
value comes from); this module loads them with ``yaml.safe_load`` and fills values in Python —
it never builds YAML text by hand. The InferenceService and HPA reproduce what
``arena serve kserve`` renders for the same flags (``../shared/reference/ack-kserve-arena.md``
§2.2), so the test bed exercises exactly what users deploy.

Invariants:

- :func:`render_manifests` returns objects in apply order: Namespace (if the run creates it),
  RBAC, PV, PVC, ResourcePolicy (placement ``resourcepolicy`` only), InferenceService, HPA
  (custom scale metric only). Teardown deletes in reverse.
- Every object carries ``tidegate.dev/run-id: <run_id>`` and
  ``app.kubernetes.io/managed-by: tidegate``.
- No secret value is ever rendered by these two functions; the OSS CSI Secret is built by
  :func:`render_oss_secret` only at apply time, from resolved credentials.

Example::

    objs = render_manifests(spec, run_id="r-20250101-0200")
    print(render_plan(spec, run_id="plan"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from tasks.errors import SpecError
from tasks.names import (
    ADMIN_LABEL,
    AUTOSCALER_STATUS,
    CUSTOM_METRICS_APISERVICE,
    KSERVE_CRD,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    NODE_EVENTS_NAMESPACE,
    RESOURCEPOLICY_CRD,
    RUN_LABEL,
)
from tasks.spec import RolloutSpec, _label_value

MANIFESTS_DIR = Path(__file__).resolve().parent.parent / "manifests"
# KServe probes this port and targets it from the Service when no containerPort is declared
KSERVE_DEFAULT_PORT = 8080

Obj = dict[str, Any]


@lru_cache(maxsize=None)
def _skeleton_text(name: str) -> str:
    return (MANIFESTS_DIR / name).read_text(encoding="utf-8")


def _skeletons(name: str) -> list[Obj]:
    """Fresh copies of the objects in ``manifests/<name>``."""
    return [doc for doc in yaml.safe_load_all(_skeleton_text(name)) if doc]


def _skeleton(name: str) -> Obj:
    (doc,) = _skeletons(name)
    return doc


def run_labels(run_id: str) -> dict[str, str]:
    """The labels every object of the run carries (teardown and cleanup select on them)."""
    try:
        _label_value(run_id)
    except ValueError as exc:
        raise SpecError(f"run id {run_id!r}: {exc}") from None
    if not run_id:
        raise SpecError("run id must not be empty")
    return {RUN_LABEL: run_id, MANAGED_BY: MANAGED_BY_VALUE}


def _meta(obj: Obj, name: str, namespace: str | None, run_id: str) -> Obj:
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), **run_labels(run_id)}
    return obj


def _helm_scalar(value: str) -> Any:
    """A quantity as Helm writes an unquoted value: ``4`` is a YAML int, ``12Gi`` a string."""
    parsed = yaml.safe_load(value)
    return parsed if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else value


# -- the objects -----------------------------------------------------------------------------
def render_namespace(spec: RolloutSpec, run_id: str) -> Obj:
    return _meta(_skeleton("namespace.yaml"), spec.cluster.namespace, None, run_id)




def _role_names(spec: RolloutSpec) -> tuple[str, str, str]:
    sa, ns = spec.cluster.service_account, spec.cluster.namespace
    return f"{sa}-{ns}", f"{sa}-{ns}-autoscaler-status", f"{sa}-{ns}-node-events"


def _keep_rule(rule: Obj, spec: RolloutSpec, provisioner: bool) -> bool:
    group, resource = rule["apiGroups"][0], rule["resources"][0]
    oss = spec.storage.kind == "oss"
    if resource == "resourcepolicies":
        return spec.cluster.placement == "resourcepolicy"
    if resource == "secrets":
        return oss and (not provisioner or spec.storage.oss.credentials.create_secret)
    if group == "custom.metrics.k8s.io":
        return spec.service.custom_metric
    if group == "metrics.k8s.io":
        return not spec.service.custom_metric
    if resource == "jobs":
        return spec.load.generators.in_cluster
    return True


def _admin_meta(obj: Obj, name: str, namespace: str | None) -> Obj:
    """Metadata of the administrator's objects: managed by tidegate, of no run (no run deletes them)."""
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY: MANAGED_BY_VALUE, ADMIN_LABEL: "admin"}
    return obj


def _fill_names(rule: Obj, spec: RolloutSpec) -> None:
    st, c = spec.storage, spec.cluster
    resource = rule["resources"][0]
    if "resourceNames" in rule:
        names = {"secrets": st.oss.credentials.secret_name, "persistentvolumeclaims": st.pvc_name,
                 "persistentvolumes": st.pv_name, "namespaces": c.namespace}
        if resource in names:
            rule["resourceNames"] = [names[resource]]
    if rule["apiGroups"][0] == "custom.metrics.k8s.io":
        rule["resources"] = [f"pods/{spec.service.scale_metric}"]
    elif resource == "customresourcedefinitions" and c.placement != "resourcepolicy":
        rule["resourceNames"] = [KSERVE_CRD]


def render_rbac(spec: RolloutSpec, run_id: str | None = None) -> list[Obj]:
    """The pipeline's identity, the administrator's part: ServiceAccount, Role/RoleBinding
    (namespace, kube-system, and default for node events when the namespace is another one),
    ClusterRole/Binding, and with ``storage.provision`` the provisioner Role and ClusterRole. No run
    applies or deletes these (``run_id`` is accepted for callers that name one and ignored)."""
    c = spec.cluster
    sa, ns = c.service_account, c.namespace
    cluster_role, status_role, node_events_role = _role_names(spec)
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": ns}
    docs = _skeletons("rbac.yaml")
    main, provisioner = docs[:-4], docs[-4:]
    if [d["kind"] for d in provisioner] != ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]:
        raise AssertionError("manifests/rbac.yaml must end with the provisioner Role, RoleBinding, ClusterRole "
                             "and ClusterRoleBinding")  # pragma: no cover - a broken skeleton
    out: list[Obj] = []
    for obj in main + (provisioner if spec.storage.provision else []):
        kind, meta_ns = obj["kind"], obj["metadata"].get("namespace")
        is_provisioner = any(obj is d for d in provisioner)
        if kind == "ServiceAccount":
            _admin_meta(obj, sa, ns)
        elif is_provisioner:
            _admin_meta(obj, f"{cluster_role}-provisioner", None if kind.startswith("Cluster") else ns)
        elif kind in ("Role", "RoleBinding") and meta_ns == "kube-system":
            _admin_meta(obj, status_role, "kube-system")
        elif kind in ("Role", "RoleBinding") and meta_ns == NODE_EVENTS_NAMESPACE:
            if ns == NODE_EVENTS_NAMESPACE:
                continue
            _admin_meta(obj, node_events_role, NODE_EVENTS_NAMESPACE)
        elif kind in ("Role", "RoleBinding"):
            _admin_meta(obj, sa, ns)
        else:
            _admin_meta(obj, cluster_role, None)
        if kind.endswith("Binding"):
            obj["roleRef"]["name"] = obj["metadata"]["name"]
            obj["subjects"] = [dict(subject)]
        if "rules" in obj:
            rules = [r for r in obj["rules"] if _keep_rule(r, spec, is_provisioner)]
            for rule in rules:
                _fill_names(rule, spec)
            obj["rules"] = rules
        out.append(obj)
    return out


def _volume_meta(obj: Obj, name: str, namespace: str | None, spec: RolloutSpec, run_id: str | None) -> Obj:
    """The PV and PVC are the run's with ``storage.provision`` (``run_id`` given), else the administrator's."""
    if spec.storage.provision and run_id is not None:
        return _meta(obj, name, namespace, run_id)
    return _admin_meta(obj, name, namespace)


def render_pv(spec: RolloutSpec, run_id: str | None = None) -> Obj:
    st = spec.storage
    pv_name = st.pv_name
    if st.kind == "oss":
        obj = _skeleton("pv-oss.yaml")
        csi = obj["spec"]["csi"]
        csi["nodePublishSecretRef"] = {"name": st.oss.credentials.secret_name,
                                       "namespace": spec.cluster.namespace}
        csi["volumeAttributes"] = {"bucket": st.oss.bucket, "url": st.oss.mount_endpoint,
                                   "path": "/" + st.oss.prefix, "otherOpts": st.oss.other_opts}
    else:
        obj = _skeleton("pv-nas.yaml")
        obj["spec"]["mountOptions"] = list(st.nas.mount_options)
        obj["spec"]["csi"]["volumeAttributes"] = {"server": st.nas.server, "path": st.nas.path,
                                                  "vers": st.nas.vers}
    _volume_meta(obj, pv_name, None, spec, run_id)
    obj["metadata"]["labels"]["alicloud-pvname"] = pv_name
    obj["spec"]["capacity"] = {"storage": st.capacity}
    obj["spec"]["csi"]["volumeHandle"] = pv_name
    return obj


def render_pvc(spec: RolloutSpec, run_id: str | None = None) -> Obj:
    st = spec.storage
    obj = _volume_meta(_skeleton("pvc.yaml"), st.pvc_name, spec.cluster.namespace, spec, run_id)
    obj["spec"]["accessModes"] = ["ReadOnlyMany"] if st.kind == "oss" else ["ReadWriteMany"]
    obj["spec"]["volumeName"] = st.pv_name
    obj["spec"]["resources"]["requests"]["storage"] = st.capacity
    return obj


def render_resourcepolicy(spec: RolloutSpec, run_id: str) -> Obj:
    c, rp = spec.cluster, spec.cluster.resource_policy
    obj = _meta(_skeleton("resourcepolicy.yaml"), spec.service.name, c.namespace, run_id)
    body = obj["spec"]
    body["selector"] = dict(spec.service.pod_selector)
    idc, elastic = body["units"]
    idc["nodeSelector"] = {c.nodepool_label: c.idc_pool_id}
    if rp.idc_max_pods is not None:
        idc["max"] = rp.idc_max_pods
    elastic["nodeSelector"] = {c.nodepool_label: c.elastic_pool_id}
    if rp.elastic_unit == "elastic":
        elastic["resource"] = "elastic"
        elastic.pop("podLabels", None)
    body["whenTryNextUnits"] = {"policy": rp.when_try_next_units}
    if rp.try_next_timeout_s is not None:
        body["whenTryNextUnits"]["timeout"] = f"{rp.try_next_timeout_s}s"
    return obj


def _node_affinity(spec: RolloutSpec) -> Obj:
    c = spec.cluster

    def term(weight: int, pool: str) -> Obj:
        return {"weight": weight, "preference": {"matchExpressions": [
            {"key": c.nodepool_label, "operator": "In", "values": [pool]}]}}

    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        term(100, c.idc_pool_id), term(10, c.elastic_pool_id)]}}


def render_inferenceservice(spec: RolloutSpec, run_id: str) -> Obj:
    """The InferenceService as `arena serve kserve` renders it (see manifests/inferenceservice.yaml)."""
    svc, st = spec.service, spec.storage
    obj = _skeleton("inferenceservice.yaml")
    meta = obj["metadata"]
    annotations = {**svc.annotations, **meta["annotations"]}
    if not svc.custom_metric:
        annotations.pop("serving.kserve.io/autoscalerClass")
    meta["annotations"] = annotations
    meta["labels"].update(release=svc.name, servingName=svc.name)
    meta["labels"].update(svc.labels)
    _meta(obj, svc.name, spec.cluster.namespace, run_id)

    predictor = obj["spec"]["predictor"]
    (container,) = predictor["containers"]
    container["image"] = svc.image
    container["imagePullPolicy"] = svc.image_pull_policy
    container["command"][2] = svc.command
    if svc.port != KSERVE_DEFAULT_PORT:
        container["ports"] = [{"containerPort": svc.port, "protocol": "TCP"}]
    for kind in ("requests", "limits"):
        res = container["resources"][kind]
        res["cpu"] = _helm_scalar(svc.cpu)
        res["memory"] = _helm_scalar(svc.memory)
        if svc.gpus > 0:
            res["nvidia.com/gpu"] = svc.gpus
        else:
            del res["nvidia.com/gpu"]
    if svc.gpus == 0:
        # arena hides the node's GPUs from a container that requested none
        container["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]
    container["volumeMounts"] = [{"name": st.pvc_name, "mountPath": st.mount_path}]
    predictor["volumes"] = [{"name": st.pvc_name, "persistentVolumeClaim": {"claimName": st.pvc_name}}]
    if not svc.custom_metric:
        # KServe-native metric: arena hands scaling to KServe instead of rendering an HPA
        predictor.update(minReplicas=svc.min_replicas, maxReplicas=svc.max_replicas,
                         scaleTarget=svc.scale_target, scaleMetric=svc.scale_metric)
    if spec.cluster.placement == "affinity":
        predictor["affinity"] = _node_affinity(spec)
    return obj


def render_hpa(spec: RolloutSpec, run_id: str) -> Obj:
    """The HPA as `arena serve kserve` renders it for a custom metric (see manifests/hpa.yaml)."""
    svc = spec.service
    obj = _meta(_skeleton("hpa.yaml"), svc.hpa_name, spec.cluster.namespace, run_id)
    body = obj["spec"]
    body["scaleTargetRef"]["name"] = svc.predictor_name
    body["minReplicas"] = svc.min_replicas
    body["maxReplicas"] = svc.max_replicas
    (metric,) = body["metrics"]
    metric["pods"]["metric"]["name"] = svc.scale_metric
    metric["pods"]["target"]["averageValue"] = svc.scale_target
    if svc.hpa_scale_down_stabilization_s is not None:
        body["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": svc.hpa_scale_down_stabilization_s}}
    return obj


def render_manifests(spec: RolloutSpec, run_id: str) -> list[Obj]:
    """Every object the run creates, in creation order, each labelled with the run id (the OSS
    Secret of ``storage.provision`` excepted: ``render_oss_secret`` at apply time). The
    administrator's part (``render_admin``) is not among them."""
    run_labels(run_id)
    objs: list[Obj] = []
    if spec.cluster.create_namespace:
        objs.append(render_namespace(spec, run_id))
    if spec.storage.provision:
        objs.append(render_pv(spec, run_id))
        objs.append(render_pvc(spec, run_id))
    if spec.cluster.placement == "resourcepolicy":
        objs.append(render_resourcepolicy(spec, run_id))
    objs.append(render_inferenceservice(spec, run_id))
    if spec.service.custom_metric:
        objs.append(render_hpa(spec, run_id))
    return objs


LOAD_WORKER_LABEL = "tidegate.dev/load-worker"
LOCAL_EXEC_LABEL = "tidegate.dev/local-exec"  # the test bed's pod runner runs such pods as local processes
CONFIG_AT_RUN_TIME = "(the runner's JSON config, written when the spike starts)"


def load_job_name(spec: RolloutSpec, run_id: str, index: int) -> str:
    """``<service>-load-<8 hex of the run id>-w<index>``: unique per run, within 63 characters."""
    import hashlib

    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{spec.service.name[:40].rstrip('-')}-load-{digest}-w{index}"


def render_load_jobs(spec: RolloutSpec, run_id: str, *, config: dict[str, Any] | None = None,
                     collector_url: str = "http://COLLECTOR:PORT", token: str = "(per run)",
                     active_deadline_s: int = 3600) -> list[Obj]:
    """The in-cluster load workers of ``load.generators`` (one Job each, worker ``i`` on
    ``pools[(i - 1) % len(pools)]`` by nodeSelector), labelled with the run; ``config`` is the
    runner's config (None: a placeholder, for the plan). The test bed's pods also carry
    ``tidegate.dev/local-exec: "true"`` (profile local: its pod runner runs them)."""
    gen, c = spec.load.generators, spec.cluster
    pool_ids = {"idc": c.idc_pool_id, "elastic": c.elastic_pool_id}
    jobs = []
    for i in range(1, gen.workers + 1):
        pool = gen.pools[(i - 1) % len(gen.pools)]
        job = _meta(_skeleton("load-worker-job.yaml"), load_job_name(spec, run_id, i), c.namespace, run_id)
        labels = {**job["metadata"]["labels"], LOAD_WORKER_LABEL: str(i)}
        job["metadata"]["labels"] = labels
        pod_labels = dict(labels)
        if spec.profile == "local":
            pod_labels[LOCAL_EXEC_LABEL] = "true"
        job["spec"]["activeDeadlineSeconds"] = int(active_deadline_s)
        tpl = job["spec"]["template"]
        tpl["metadata"]["labels"] = pod_labels
        tpl["spec"]["nodeSelector"] = {c.nodepool_label: pool_ids[pool]}
        container = tpl["spec"]["containers"][0]
        container["image"] = gen.image
        values = {"TIDEGATE_WORKER_INDEX": str(i), "TIDEGATE_CLIENT_POOL": pool,
                  "TIDEGATE_COLLECTOR_URL": collector_url, "TIDEGATE_COLLECTOR_TOKEN": token,
                  "TIDEGATE_LOAD_CONFIG": json.dumps(config, separators=(",", ":")) if config is not None
                  else CONFIG_AT_RUN_TIME}
        for item in container["env"]:
            if item["name"] in values:
                item["value"] = values[item["name"]]
        res = {"cpu": _helm_scalar(gen.resources.cpu), "memory": _helm_scalar(gen.resources.memory)}
        container["resources"] = {"requests": dict(res), "limits": dict(res)}
        jobs.append(job)
    return jobs


SYSTEM_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


def render_admin(spec: RolloutSpec) -> list[Obj]:
    """What an administrator applies once, before any run (``tidegate plan --admin``): the
    namespace (unless it is a system one), the pipeline's ServiceAccount and RBAC, and unless
    ``storage.provision`` the model PV and PVC. The OSS Secret holds keys: it is never rendered,
    ``render_plan`` prints the command that creates it."""
    objs: list[Obj] = []
    if spec.cluster.namespace not in SYSTEM_NAMESPACES:
        objs.append(_admin_meta(_skeleton("namespace.yaml"), spec.cluster.namespace, None))
    objs += render_rbac(spec)
    if not spec.storage.provision:
        objs += [render_pv(spec), render_pvc(spec)]
    return objs


def render_oss_secret(spec: RolloutSpec, run_id: str, access_key_id: SecretStr,
                      access_key_secret: SecretStr) -> Obj:
    """The OSS CSI driver's Secret, built at apply time from resolved credentials.

    Never part of :func:`render_manifests` or :func:`render_plan`. The returned dict holds the
    key in clear text: apply it and drop it; never log or report it.
    """
    if spec.storage.kind != "oss":
        raise SpecError("render_oss_secret: storage.kind is not 'oss'")
    obj: Obj = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "stringData": {"akId": access_key_id.get_secret_value(),
                               "akSecret": access_key_secret.get_secret_value()}}
    return _meta(obj, spec.storage.oss.credentials.secret_name, spec.cluster.namespace, run_id)


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreflightCheck:
    """One read-only check prepare_cluster makes before it applies anything."""

    name: str
    what: str
    request: str
    expect: str


def preflight_checks(spec: RolloutSpec) -> list[PreflightCheck]:
    """The read-only checks of a run, in order (prepare_cluster stops at the first failure)."""
    c, svc = spec.cluster, spec.service
    where = ("in-cluster ServiceAccount" if c.in_cluster else
             f"kubeconfig {c.kubeconfig or '$KUBECONFIG or ~/.kube/config'}, "
             f"context {c.context or '(current)'}")
    checks = [
        PreflightCheck("api-reachable", f"the API server answers ({where})", "GET /version",
                       "200 with a Kubernetes version"),
        PreflightCheck("namespace", f"namespace {c.namespace} exists",
                       f"GET /api/v1/namespaces/{c.namespace}",
                       "200" + (" (or 404: the run creates it)" if c.create_namespace else "")),
        PreflightCheck("kserve-crd", "KServe is installed",
                       f"GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{KSERVE_CRD}",
                       "200, version v1beta1 served; and KServe's defaultDeploymentMode (ConfigMap "
                       "kserve/inferenceservice-config, key deploy) RawDeployment/Standard unless "
                       "service.annotations sets serving.kserve.io/deploymentMode"),
    ]
    if c.placement == "resourcepolicy":
        checks.append(PreflightCheck(
            "resourcepolicy-crd", "ACK's ResourcePolicy is available",
            f"GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{RESOURCEPOLICY_CRD}",
            "200, version v1alpha1 served"))
    if svc.custom_metric:
        checks.append(PreflightCheck(
            "scale-metric", f"the custom metrics API serves {svc.scale_metric}",
            "GET /apis/custom.metrics.k8s.io/v1beta2 (then v1beta1): discovery, served by the adapter "
            f"behind the APIService {CUSTOM_METRICS_APISERVICE}",
            f"lists pods/{svc.scale_metric}"))
    else:
        checks.append(PreflightCheck("resource-metrics-api", f"metrics.k8s.io serves {svc.scale_metric}",
                                     "GET /apis/metrics.k8s.io/v1beta1: discovery", "lists pods"))
    checks += [
        PreflightCheck("idc-pool", f"IDC pool {c.idc_pool_id} has Ready GPU nodes",
                       f"GET /api/v1/nodes?labelSelector={c.nodepool_label}={c.idc_pool_id}",
                       ">= 1 Ready node"),
        PreflightCheck("elastic-pool", f"elastic pool {c.elastic_pool_id} can add nodes",
                       f"GET /api/v1/nodes?labelSelector={c.nodepool_label}={c.elastic_pool_id}; "
                       f"GET /api/v1/namespaces/kube-system/configmaps/{AUTOSCALER_STATUS}",
                       "nodes of the pool exist, or the autoscaler status names its node group"),
    ]
    st = spec.storage
    if st.provision:
        checks.append(PreflightCheck(
            "ownership", "every object the run creates is free (or the run's own, or named with --adopt)",
            "GET each of them by name (PV, PVC, OSS Secret, ResourcePolicy, InferenceService, HPA)",
            "404: an object that exists and was not created by this run stops the run, nothing applied"))
    else:
        checks += [
            PreflightCheck("model-pvc", f"PVC {c.namespace}/{st.pvc_name} exists (the administrator's part)",
                           f"GET /api/v1/namespaces/{c.namespace}/persistentvolumeclaims/{st.pvc_name}",
                           "200 (create it with `tidegate plan --admin`)"),
            PreflightCheck("ownership", "every object the run creates is free (or the run's own, or named with "
                           "--adopt)", "GET each of them by name (ResourcePolicy, InferenceService, HPA)",
                           "404: an object that exists and was not created by this run stops the run, nothing "
                           "applied"),
        ]
    if st.kind == "oss":
        cred = st.oss.credentials
        source = (f"Prefect Secret block {cred.secret_block}" if cred.secret_block else
                  f"${cred.access_key_id_env} and ${cred.access_key_secret_env}")
        creates = st.provision and cred.create_secret
        checks.append(PreflightCheck(
            "oss-credentials", f"OSS credentials for the CSI Secret {cred.secret_name}",
            f"read {source} (after the checks above, before anything is applied)" if creates else
            f"GET /api/v1/namespaces/{spec.cluster.namespace}/secrets/{cred.secret_name}",
            "present (the value is never printed)"))
    checks.append(PreflightCheck(
        "gpu-capacity", "GPUs for the replicas",
        "sum of nvidia.com/gpu allocatable of the IDC pool's Ready nodes (from the node list above)",
        f"a warning, not a failure, when below one replica's {svc.gpus}; IDC >= min_replicas x gpus = "
        f"{svc.min_replicas * svc.gpus} keeps the baseline on IDC, spill-over to the elastic pool is expected "
        f"beyond that, up to max_replicas x gpus = {svc.max_replicas * svc.gpus}"))
    return checks


def _describe(obj: Obj) -> str:
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"


def _secret_command(spec: RolloutSpec) -> list[str]:
    cred, ns = spec.storage.oss.credentials, spec.cluster.namespace
    return [f"# The OSS CSI Secret holds keys, so it is not rendered here; create it with",
            f"#   kubectl -n {ns} create secret generic {cred.secret_name} \\",
            f"#     --from-literal=akId=\"${cred.access_key_id_env}\" --from-literal=akSecret=\"${cred.access_key_secret_env}\"",
            f"#   kubectl -n {ns} label secret {cred.secret_name} {MANAGED_BY}={MANAGED_BY_VALUE} {ADMIN_LABEL}=admin"]


def _documents(objs: list[Obj]) -> str:
    text = ""
    for i, obj in enumerate(objs, 1):
        text += f"---\n# {i}/{len(objs)} {_describe(obj)}\n"
        text += yaml.safe_dump(obj, sort_keys=False, width=100)
    return text


def render_admin_plan(spec: RolloutSpec) -> str:
    """The administrator's part as multi-document YAML for ``kubectl apply -f -`` (and the command
    that creates the OSS Secret, as a comment)."""
    objs = render_admin(spec)
    st = spec.storage
    lines = [
        f"# tidegate plan --admin: spec {spec.name} (profile {spec.profile})",
        "# The administrator's part, applied once with an admin identity before any run:",
        "#   tidegate plan --admin --offline --spec SPEC | kubectl apply -f -",
        "# Runs never change or delete these objects. They make the pipeline's ServiceAccount",
        f"# {spec.cluster.namespace}/{spec.cluster.service_account} and the least privilege it runs with"
        + ("" if st.provision else ", and the model's PV and PVC") + ".",
    ]
    if st.kind == "oss" and not (st.provision and st.oss.credentials.create_secret):
        lines += _secret_command(spec)
    lines += ["#", f"# objects ({len(objs)}):"] + [f"#  {i:2d}. {_describe(o)}" for i, o in enumerate(objs, 1)]
    return "\n".join(lines) + "\n" + _documents(objs)


def render_plan(spec: RolloutSpec, run_id: str) -> str:
    """Everything a run would do, touching nothing: the preflight checks as a commented header,
    then every object the run creates as multi-document YAML in creation order (valid for
    ``kubectl apply --dry-run``). The administrator's part is ``render_admin_plan``."""
    objs = render_manifests(spec, run_id)
    lines = [
        f"# tidegate plan: spec {spec.name} (profile {spec.profile}), run id {run_id}",
        "# Nothing has been applied. First the read-only preflight checks, then every object the",
        "# run would create, in order (teardown deletes exactly those, in reverse, by uid).",
        "# Prerequisite, applied once by an administrator: `tidegate plan --admin` (the pipeline's",
        "# ServiceAccount and RBAC" + ("" if spec.storage.provision else ", the model's PV and PVC")
        + (", the OSS Secret" if spec.storage.kind == "oss" and not (spec.storage.provision and
                                                                      spec.storage.oss.credentials.create_secret)
           else "") + ").",
        "#",
        "# preflight (read-only; a failed check stops the run with exit 2 before anything is applied):",
    ]
    for i, check in enumerate(preflight_checks(spec), 1):
        lines += [f"#  {i:2d}. {check.name}: {check.what}",
                  f"#      request: {check.request}",
                  f"#      expect:  {check.expect}"]
    lines += ["#", f"# objects ({len(objs)}):"]
    lines += [f"#  {i:2d}. {_describe(o)}" for i, o in enumerate(objs, 1)]
    if spec.storage.kind == "oss" and spec.storage.provision and spec.storage.oss.credentials.create_secret:
        cred = spec.storage.oss.credentials
        lines.append(f"#  + Secret {spec.cluster.namespace}/{cred.secret_name} (akId, akSecret), "
                     f"created at apply time from the credentials; values never shown")
    jobs = render_load_jobs(spec, run_id) if spec.load.generators.in_cluster else []
    if jobs:
        gen = spec.load.generators
        lines += ["#", f"# the spike stage's in-cluster load generators: {len(jobs)} jobs (batch/v1), one Locust worker",
                  f"# each on pools {', '.join(gen.pools)} (round-robin), image {gen.image}; deleted when the load",
                  "# is done (teardown deletes any left, by uid):"]
        lines += [f"#  {i:2d}. {_describe(o)}" for i, o in enumerate(jobs, len(objs) + 1)]
    return "\n".join(lines) + "\n" + _documents(objs + jobs)


__all__ = [
    "PreflightCheck", "preflight_checks", "render_admin", "render_admin_plan", "render_hpa", "render_inferenceservice",
    "render_manifests", "render_namespace", "render_oss_secret", "render_plan", "render_pv",
    "render_pvc", "render_rbac", "render_resourcepolicy", "run_labels", "render_load_jobs", "load_job_name",
]
