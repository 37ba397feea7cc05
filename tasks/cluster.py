"""prepare_cluster's checks: what the run needs from the cluster before it creates anything.

``preflight`` is read-only: API reachable, namespace, the KServe CRD (and ResourcePolicy's)
serving the versions rendered, the metrics API serving the scale metric, nodes of the IDC pool
and the elastic pool (or the elastic group known to the cluster-autoscaler's status
ConfigMap), the administrator's PVC and OSS Secret present (unless the run provisions them),
GPU capacity. ``prepare`` then creates
the run's objects through ``tasks.ownership`` (created, recorded in the run's ledger,
deleted by uid at teardown). ``leftovers`` lists what carries a run's label (for an admin).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tasks.errors import ClusterError
from tasks.kube import Kube, condition_true
from tasks.names import (
    AUTOSCALER_NAMESPACE,
    AUTOSCALER_STATUS,
    GPU_RESOURCE,
    KSERVE_CRD,
    RESOURCEPOLICY_CRD,
    RUN_LABEL,
)
from tasks.observe import parse_autoscaler_status

CA_STATUS = (AUTOSCALER_NAMESPACE, AUTOSCALER_STATUS)

# kinds that may carry a run's label (a run's objects and what controllers made of them)
RUN_KINDS_NAMESPACED = [
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("scheduling.alibabacloud.com/v1alpha1", "ResourcePolicy"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),             # the in-cluster load workers (load.generators.in_cluster)
    ("v1", "Service"),
    ("v1", "Pod"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("v1", "ServiceAccount"),
]
RUN_KINDS_CLUSTER = [
    ("v1", "PersistentVolume"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("v1", "Namespace"),
]


@dataclass
class PoolInfo:
    pool_id: str
    nodes: int
    ready_nodes: int
    gpus_allocatable: int
    autoscaler_group_known: bool = False


@dataclass
class ClusterReport:
    """What prepare_cluster found and did."""

    server: str
    server_version: str
    namespace: str
    kserve_crd: bool
    custom_metric_served: bool
    idc: PoolInfo
    elastic: PoolInfo
    applied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _pool(kube: Kube, label: str, pool_id: str) -> PoolInfo:
    nodes = kube.list("v1", "Node", label_selector=f"{label}={pool_id}")
    ready = [n for n in nodes if condition_true(n, "Ready")]
    gpus = sum(int((n.get("status") or {}).get("allocatable", {}).get(GPU_RESOURCE, "0")) for n in ready)
    return PoolInfo(pool_id, len(nodes), len(ready), gpus)


def autoscaler_groups(kube: Kube) -> list[str]:
    """The node groups the cluster-autoscaler's status ConfigMap lists ([] when unreadable)."""
    try:
        cm = kube.get("v1", "ConfigMap", CA_STATUS[1], CA_STATUS[0])
    except ClusterError:
        return []
    _, groups = parse_autoscaler_status(((cm or {}).get("data") or {}).get("status", ""))
    return [g.name for g in groups]


def custom_metric_served(kube: Kube, namespace: str, metric: str) -> bool:
    """True when the custom.metrics.k8s.io API advertises ``pods/<metric>`` in its discovery,
    as metrics adapters do for every metric they can serve."""
    return _discovery_lists(kube, "custom.metrics.k8s.io", ("v1beta2", "v1beta1"), f"pods/{metric}")


def _discovery_lists(kube: Kube, group: str, versions: tuple[str, ...], resource: str) -> bool:
    for version in versions:
        try:
            doc = kube.raw_get(f"/apis/{group}/{version}", timeout_s=5)
        except ClusterError:
            continue
        if any(r.get("name") == resource for r in doc.get("resources") or []):
            return True
    return False


def _crd_serves(kube: Kube, name: str, version: str) -> bool | None:
    """None: the CRD is missing; else whether it serves ``version``."""
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
    if crd is None:
        return None
    return any(v.get("name") == version and v.get("served") for v in crd.get("spec", {}).get("versions") or [])


def _check_storage(kube: Kube, spec) -> None:
    """Without ``storage.provision`` the PVC (and for OSS the CSI Secret) are the administrator's:
    they must exist. With it, the run creates them (``tasks.ownership`` checks that the names are free)."""
    st, ns = spec.storage, spec.cluster.namespace
    admin = "`tidegate plan --admin` prints them for an administrator to apply"
    if not st.provision and kube.get("v1", "PersistentVolumeClaim", st.pvc_name, ns) is None:
        raise ClusterError(f"storage.pvc_name: PersistentVolumeClaim {ns}/{st.pvc_name} does not exist",
                           hint=f"the model's PV and PVC are created once by an administrator ({admin}), or set "
                                "storage.provision: true to let each run create them")
    if st.kind == "oss" and not (st.provision and st.oss.credentials.create_secret):
        name = st.oss.credentials.secret_name
        if kube.get("v1", "Secret", name, ns) is None:
            raise ClusterError(f"storage.oss.credentials.secret_name: Secret {ns}/{name} does not exist",
                               hint=f"create it (keys akId, akSecret; {admin}), or set storage.provision: true "
                                    "with credentials.create_secret: true")


KSERVE_CONFIG = ("kserve", "inferenceservice-config")  # KServe's namespace and ConfigMap
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
_RAW_MODES = ("RawDeployment", "Standard")  # KServe >= 0.16 calls RawDeployment "Standard"


def kserve_default_mode(kube: Kube) -> tuple[str | None, str | None]:
    """(KServe's ``defaultDeploymentMode``, why it is unknown): from the ``deploy`` key of its
    ``inferenceservice-config`` ConfigMap; (None, reason) when it cannot be read."""
    ns, name = KSERVE_CONFIG
    try:
        # a least-privilege account may not read KServe's namespace: ask first (a SelfSubjectAccessReview)
        # rather than make a request the API server would answer 403
        if not kube.can_i("get", "configmaps", namespace=ns, name=name):
            return None, (f"ConfigMap {ns}/{name} unreadable (the run's account may not get it; grant get on it "
                          "to have preflight check KServe's mode)")
        cm = kube.get("v1", "ConfigMap", name, ns)
    except ClusterError as exc:
        return None, f"ConfigMap {ns}/{name} unreadable ({exc})"
    if cm is None:
        return None, f"no ConfigMap {ns}/{name}"
    try:
        deploy = json.loads((cm.get("data") or {}).get("deploy") or "{}")
    except ValueError:
        return None, f"ConfigMap {ns}/{name}: its deploy key is not JSON"
    return deploy.get("defaultDeploymentMode") or "Serverless", None  # KServe's built-in default


def _check_deployment_mode(kube: Kube, spec, report: ClusterReport) -> None:
    """The run needs RawDeployment (Standard): the HPA targets the predictor's Deployment. A
    Serverless (Knative) default breaks it unless the InferenceService sets the mode itself."""
    forced = spec.service.annotations.get(DEPLOYMENT_MODE)
    if forced in _RAW_MODES:
        return
    mode, unknown = kserve_default_mode(kube)
    if mode is None:
        if unknown and "unreadable" in unknown:
            report.warnings.append(f"KServe's default deployment mode is unknown: {unknown}; the run needs "
                                   "RawDeployment")
        return
    if mode not in _RAW_MODES:
        raise ClusterError(
            f"KServe's default deployment mode is {mode} (ConfigMap {'/'.join(KSERVE_CONFIG)}, key deploy), "
            "but the run deploys in RawDeployment: no predictor Deployment for the HPA would exist",
            hint=f"set service.annotations.{DEPLOYMENT_MODE}=RawDeployment, or defaultDeploymentMode: "
                 "RawDeployment in KServe's config")


def preflight(kube: Kube, spec) -> ClusterReport:
    """Read-only checks (``tasks.render.preflight_checks`` lists them for ``tidegate plan``).
    Raises ClusterError with a one-line reason on a hard failure, before anything is applied."""
    version = kube.ping()
    ns = spec.cluster.namespace
    ns_obj = kube.get("v1", "Namespace", ns)
    if ns_obj is None and not spec.cluster.create_namespace:
        raise ClusterError(f"cluster.namespace: namespace {ns!r} does not exist on {kube.server}",
                           hint="create it or set cluster.create_namespace: true")
    kserve = _crd_serves(kube, KSERVE_CRD, "v1beta1")
    if kserve is None:
        raise ClusterError(f"KServe is not installed on {kube.server}: CRD {KSERVE_CRD} is missing",
                           hint="install KServe (ack-kserve on ACK) or start the test bed")
    if not kserve:
        raise ClusterError(f"KServe on {kube.server} does not serve serving.kserve.io/v1beta1 InferenceServices",
                           hint="upgrade KServe to a release that serves v1beta1")
    if spec.cluster.placement == "resourcepolicy" and not _crd_serves(kube, RESOURCEPOLICY_CRD, "v1alpha1"):
        raise ClusterError(f"cluster.placement: resourcepolicy, but {kube.server} does not serve "
                           f"{RESOURCEPOLICY_CRD} v1alpha1", hint="use an ACK cluster, or set cluster.placement: affinity")
    metric = spec.service.scale_metric
    if spec.service.custom_metric:
        served = custom_metric_served(kube, ns, metric)
        if not served:
            raise ClusterError(f"service.scale_metric: the custom metrics API does not serve {metric!r} for pods "
                               f"in namespace {ns!r}",
                               hint="install the metrics adapter (ack-alibaba-cloud-metrics-adapter)")
    else:
        served = _discovery_lists(kube, "metrics.k8s.io", ("v1beta1",), "pods")
        if not served:
            raise ClusterError(f"service.scale_metric: {metric!r} needs the resource metrics API (metrics.k8s.io), "
                               f"which {kube.server} does not serve", hint="install metrics-server")
    label = spec.cluster.nodepool_label
    idc = _pool(kube, label, spec.cluster.idc_pool_id)
    elastic = _pool(kube, label, spec.cluster.elastic_pool_id)
    groups = autoscaler_groups(kube)
    elastic.autoscaler_group_known = spec.cluster.elastic_group in groups
    report = ClusterReport(kube.server, version, ns, True, served, idc, elastic)
    if idc.ready_nodes == 0:
        raise ClusterError(f"cluster.idc_pool_id: no Ready node has {label}={spec.cluster.idc_pool_id}",
                           hint="check the IDC node pool id")
    if elastic.nodes == 0 and not elastic.autoscaler_group_known:
        known = f"its node groups: {', '.join(groups)}" if groups else "it reports no node group"
        raise ClusterError(f"cluster.elastic_pool_id: no node has {label}={spec.cluster.elastic_pool_id} "
                           f"and the cluster-autoscaler has no node group {spec.cluster.elastic_group!r} ({known})",
                           hint="check the elastic node pool id, cluster.autoscaler_group, and that the autoscaler runs")
    if not elastic.autoscaler_group_known:
        report.warnings.append(f"the cluster-autoscaler's status does not list node group {spec.cluster.elastic_group!r}: "
                               "scale-ups of the elastic pool cannot be attributed (set cluster.autoscaler_group)")
    _check_storage(kube, spec)
    _check_deployment_mode(kube, spec, report)
    if spec.service.gpus and idc.gpus_allocatable < spec.service.gpus:
        report.warnings.append(f"the IDC pool has {idc.gpus_allocatable} GPUs, less than one replica needs "
                               f"({spec.service.gpus}); every replica will spill to the elastic pool")
    return report


def leftovers(kube: Kube, run_id: str, namespaces: list[str]) -> list[str]:
    """Everything labelled with ``run_id`` (``Kind/ns/name`` or ``Kind/name``) in ``namespaces`` and
    cluster-wide: a check for an identity that may list these kinds (an administrator, a test).
    Teardown does not use it: it deletes the run's ledger (``tasks.ownership``)."""
    found = []
    for ns in namespaces:
        for api_version, kind in RUN_KINDS_NAMESPACED:
            if kube.has_api(api_version, kind):
                found += [f"{kind}/{ns}/{o['metadata']['name']}"
                          for o in kube.list(api_version, kind, ns, label_selector=f"{RUN_LABEL}={run_id}")]
    for api_version, kind in RUN_KINDS_CLUSTER:
        for o in kube.list(api_version, kind, label_selector=f"{RUN_LABEL}={run_id}"):
            if kind == "Namespace" and o.get("status", {}).get("phase") == "Terminating":
                continue
            found.append(f"{kind}/{o['metadata']['name']}")
    return found
