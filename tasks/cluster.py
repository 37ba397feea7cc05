"""prepare_cluster and teardown: what the run needs from the cluster, and cleaning up after it.

``preflight`` is read-only: API reachable, namespace, the KServe CRD (and ResourcePolicy's)
serving the versions rendered, the metrics API serving the scale metric, nodes of the IDC pool
and the elastic pool (or the elastic group known to the cluster-autoscaler's status
ConfigMap), the model PV/PVC free or tidegate's, a user-managed OSS Secret present, GPU
capacity. ``prepare`` then applies
the run's placement policy, PV/PVC and RBAC (everything labelled with the run id).
``teardown`` deletes exactly what carries the run's label, namespaced and cluster-scoped,
and waits until it is gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tasks.errors import ClusterError
from tasks.kube import Kube, condition_true
from tasks.names import (
    AUTOSCALER_NAMESPACE,
    AUTOSCALER_STATUS,
    KSERVE_CRD,
    MANAGED_BY,
    RESOURCEPOLICY_CRD,
    RUN_LABEL,
)
from tasks.observe import parse_autoscaler_status

CA_STATUS = (AUTOSCALER_NAMESPACE, AUTOSCALER_STATUS)

# kinds a run may create, in deletion order (dependents first)
RUN_KINDS_NAMESPACED = [
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("scheduling.alibabacloud.com/v1alpha1", "ResourcePolicy"),
    ("apps/v1", "Deployment"),
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
    gpus = sum(int((n.get("status") or {}).get("allocatable", {}).get("nvidia.com/gpu", "0")) for n in ready)
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


def _not_ours(kube: Kube, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
    """An object of that name exists and tidegate does not manage it (a list by name: the
    pipeline's identity may list PVs and PVCs, not get them)."""
    items = kube.list(api_version, kind, namespace, field_selector=f"metadata.name={name}")
    return any((o["metadata"].get("labels") or {}).get(MANAGED_BY) != "tidegate" for o in items)


def _check_storage(kube: Kube, spec) -> None:
    st, ns = spec.storage, spec.cluster.namespace
    pv = st.pv_name  # filled by the spec (<pvc_name>-<namespace>) when not given
    if _not_ours(kube, "v1", "PersistentVolume", pv, None):
        raise ClusterError(f"storage.pv_name: PersistentVolume {pv!r} exists and is not managed by tidegate",
                           hint="choose another storage.pv_name; tidegate never takes over a volume it did not create")
    if _not_ours(kube, "v1", "PersistentVolumeClaim", st.pvc_name, ns):
        raise ClusterError(f"storage.pvc_name: PersistentVolumeClaim {ns}/{st.pvc_name} exists and is not managed "
                           f"by tidegate", hint="choose another storage.pvc_name or namespace")
    if st.kind == "oss" and not st.oss.credentials.create_secret:
        name = st.oss.credentials.secret_name
        if kube.get("v1", "Secret", name, ns) is None:
            raise ClusterError(f"storage.oss.credentials.secret_name: Secret {ns}/{name} does not exist",
                               hint="create it (keys akId, akSecret) or set create_secret: true")


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
    if spec.service.gpus and idc.gpus_allocatable < spec.service.gpus:
        report.warnings.append(f"the IDC pool has {idc.gpus_allocatable} GPUs, less than one replica needs "
                               f"({spec.service.gpus}); every replica will spill to the elastic pool")
    return report


def apply_all(kube: Kube, objects: list[dict]) -> list[str]:
    applied = []
    for obj in objects:
        kube.apply(obj)
        meta = obj["metadata"]
        applied.append(f"{obj['kind']}/{meta.get('namespace') + '/' if meta.get('namespace') else ''}{meta['name']}")
    return applied


def _controlled(obj: dict) -> bool:
    return any(ref.get("controller") for ref in obj["metadata"].get("ownerReferences") or [])


def _parse_known(known: Iterable[str]) -> list[tuple[str, str | None, str]]:
    out = []
    for item in known:
        parts = item.split("/")
        out.append((parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], None, parts[-1]))
    return out


def _namespaced_kinds(namespaces: list[str], named: list[tuple[str, str | None, str]]
                      ) -> list[tuple[str, list[tuple[str, str]]]]:
    """(namespace, kinds) to look through: every run kind in the run's namespaces; in other
    namespaces that ``known`` names (the autoscaler-status Role in kube-system, the node-events
    Role in default), only the kinds named there."""
    out = [(ns, RUN_KINDS_NAMESPACED) for ns in namespaces]
    others: dict[str, set[str]] = {}
    for kind, ns, _ in named:
        if ns and ns not in namespaces:
            others.setdefault(ns, set()).add(kind)
    for ns in sorted(others):
        out.append((ns, [k for k in RUN_KINDS_NAMESPACED if k[1] in others[ns]]))
    return out


class _Access:
    """What this identity may do, asked once per question with a SelfSubjectAccessReview, so that a
    least-privilege identity skips what it may not do instead of collecting 403s."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self._answers: dict[tuple, bool] = {}

    def may(self, verb: str, api_version: str, kind: str, namespace: str | None = None,
            name: str | None = None) -> bool:
        group = api_version.rpartition("/")[0]
        key = (verb, group, kind, namespace, name)
        if key not in self._answers:
            try:
                plural = self.kube.resource(api_version, kind).name
                self._answers[key] = self.kube.can_i(verb, plural, group=group, namespace=namespace, name=name)
            except ClusterError:
                self._answers[key] = True  # cannot tell: try, and let the request itself answer
        return self._answers[key]


def _run_objects(kube: Kube, access: _Access, api_version: str, kind: str, namespace: str | None, run_id: str,
                 known: list[tuple[str, str | None, str]]) -> list[dict]:
    """The objects of ``kind`` labelled with ``run_id``; for an identity that may not list the
    kind (the pipeline's ServiceAccount may not list Secrets), those named in ``known`` that it
    may read and that carry the label."""
    if access.may("list", api_version, kind, namespace):
        return kube.list(api_version, kind, namespace, label_selector=f"{RUN_LABEL}={run_id}")
    out = []
    for k_kind, k_ns, k_name in known:
        if k_kind != kind or k_ns != namespace or not access.may("get", api_version, kind, namespace, k_name):
            continue
        obj = kube.get(api_version, kind, k_name, namespace)
        if obj and (obj["metadata"].get("labels") or {}).get(RUN_LABEL) == run_id:
            out.append(obj)
    return out


def leftovers(kube: Kube, run_id: str, namespaces: list[str], *, known: Iterable[str] = (),
              access: _Access | None = None) -> list[str]:
    """Everything still labelled with ``run_id`` (names as Kind/ns/name) that this identity can
    see (see ``teardown`` for ``known``)."""
    named = _parse_known(known)
    access = access or _Access(kube)
    found = []
    for ns, kinds in _namespaced_kinds(namespaces, named):
        for api_version, kind in kinds:
            if not kube.has_api(api_version, kind):
                continue
            for o in _run_objects(kube, access, api_version, kind, ns, run_id, named):
                found.append(f"{kind}/{ns}/{o['metadata']['name']}")
    for api_version, kind in RUN_KINDS_CLUSTER:
        for o in _run_objects(kube, access, api_version, kind, None, run_id, named):
            if kind == "Namespace" and o.get("status", {}).get("phase") == "Terminating":
                continue
            found.append(f"{kind}/{o['metadata']['name']}")
    return found


def run_object_names(spec, run_id: str) -> list[str]:
    """What a run of ``spec`` applies, named as ``apply_all`` names them (``Kind/ns/name`` or
    ``Kind/name``), the OSS Secret included: ``teardown``'s ``known``."""
    from tasks.render import render_manifests

    objs = render_manifests(spec, run_id)
    names = [f"{o['kind']}/{o['metadata']['namespace']}/{o['metadata']['name']}" if o["metadata"].get("namespace")
             else f"{o['kind']}/{o['metadata']['name']}" for o in objs]
    st = spec.storage
    if st.kind == "oss" and st.oss.credentials.create_secret:
        names.append(f"Secret/{spec.cluster.namespace}/{st.oss.credentials.secret_name}")
    return names


def teardown(kube: Kube, run_id: str, namespaces: list[str], *, timeout_s: float = 120,
             known: Iterable[str] = ()) -> list[str]:
    """Delete what the run labelled; wait until it is gone (or raise, naming what is left).

    Least privilege: an identity that may not list a kind looks up the objects named in
    ``known`` (``run_object_names``) instead and deletes them only if they carry the run's label;
    an object it may not delete but that a controller owns (KServe's predictor Deployment and
    its pods) is left to the garbage collector, which removes it with its owner; the wait below
    covers both. What it may do is asked first (SelfSubjectAccessReview), not tried.
    """
    known = list(known)
    named = _parse_known(known)
    access = _Access(kube)
    deleted = []
    for ns, kinds in _namespaced_kinds(namespaces, named):
        # the run's own namespaces may be gone already; the others (kube-system, default) are
        # not, and the pipeline's identity may not read them as objects
        if ns in namespaces and kube.get("v1", "Namespace", ns) is None:
            continue
        for api_version, kind in kinds:
            if not kube.has_api(api_version, kind):
                continue
            for o in _run_objects(kube, access, api_version, kind, ns, run_id, named):
                name = o["metadata"]["name"]
                if _controlled(o) and not access.may("delete", api_version, kind, ns, name):
                    continue
                if kube.delete(api_version, kind, name, ns, propagation="Foreground"):
                    deleted.append(f"{kind}/{ns}/{name}")
    for api_version, kind in RUN_KINDS_CLUSTER:
        for o in _run_objects(kube, access, api_version, kind, None, run_id, named):
            if kube.delete(api_version, kind, o["metadata"]["name"]):
                deleted.append(f"{kind}/{o['metadata']['name']}")
    deadline = time.monotonic() + timeout_s
    left = leftovers(kube, run_id, namespaces, known=known, access=access)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftovers(kube, run_id, namespaces, known=known, access=access)
    if left:
        raise ClusterError(f"teardown of run {run_id}: still present after {timeout_s:.0f}s: {', '.join(left[:5])}")
    return deleted
