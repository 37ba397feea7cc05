"""ACK's ResourcePolicy behaviour, built from upstream Kubernetes mechanisms.

ACK's scheduler plugin fills a ResourcePolicy's ``units`` in order and scales in in reverse
order. The test bed reproduces the observable behaviour without a custom scheduler:

Emulated
- **Order** (``strategy: prefer``): a mutating admission webhook (served by the test-bed
  daemon on loopback) gives every new pod that the policy selects a *required* node affinity
  that ORs the nodeSelectors of the units it may use, and a *preferred* node affinity whose
  weight falls with the unit's position (100, 50, 25, ...). The real kube-scheduler thus
  places the pod on the earliest unit that has room.
- **Spill-over** (``whenTryNextUnits.policy: LackResourceOrExceedMax``, the default): when the
  earlier units lack the resources, the pod fits only the later unit; if that unit's nodes
  are an autoscaled pool, the pod stays Pending with ``FailedScheduling`` and the real
  cluster-autoscaler scales the pool up (its node template matches the required affinity).
- **max**: at admission, units whose count of (non-terminating, per
  ``ignoreTerminatingPod``) pods already reaches ``max`` are left out of the required
  affinity. Counting happens under a lock in the daemon and includes pods admitted but not
  yet bound, so a burst of creations does not overshoot.
- **Scale-in in reverse order**: the controller sets
  ``controller.kubernetes.io/pod-deletion-cost`` on every bound pod, highest for the first
  unit, so the ReplicaSet controller deletes pods of the last unit first (best effort, as
  ACK documents).
- **podLabels / podAnnotations** of the unit are written onto the pod once it is bound
  (except the ``k8s.aliyun.com/resource-policy-wait-for-ecs-scaling`` marker label).

Not emulated: ``strategy: required`` beyond the above, ``whenTryNextUnits`` timeouts
(``TimeoutOrExceedMax`` waits), ``ExceedMax`` waiting inside a unit, ``maxResources``,
``preemptPolicy``, ``matchLabelKeys`` grouping, ``ignorePreviousPod``, ``eci``/``acs``
virtual-node units and their tolerations, ``spotInstance``, ``scaleInWeight``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

GROUP = "scheduling.alibabacloud.com"
API_VERSION = f"{GROUP}/v1alpha1"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
WAIT_FOR_SCALING = "k8s.aliyun.com/resource-policy-wait-for-ecs-scaling"
UNIT_ANNOTATION = "tidegate.dev/resourcepolicy-unit"

Obj = dict[str, Any]


def _expr_matches(labels: dict[str, str], expr: Obj) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False


def selects(policy: Obj, pod: Obj) -> bool:
    if policy["metadata"].get("namespace") != pod["metadata"].get("namespace"):
        return False
    labels = pod["metadata"].get("labels") or {}
    spec = policy.get("spec", {})
    if any(labels.get(k) != v for k, v in (spec.get("selector") or {}).items()):
        return False
    return all(_expr_matches(labels, e) for e in spec.get("matchExpressions") or [])


def policy_for(pod: Obj, policies: list[Obj]) -> Obj | None:
    """The oldest policy selecting the pod (ACK rejects overlapping policies; we pick one)."""
    matching = [p for p in policies if selects(p, pod)]
    matching.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
    return matching[0] if matching else None


def unit_of_node(policy: Obj, node_labels: dict[str, str]) -> int | None:
    for i, unit in enumerate(policy["spec"].get("units") or []):
        sel = unit.get("nodeSelector") or {}
        if sel and all(node_labels.get(k) == v for k, v in sel.items()):
            return i
    return None


def allowed_units(policy: Obj, counts: dict[int, int]) -> list[int]:
    out = []
    for i, unit in enumerate(policy["spec"].get("units") or []):
        if not unit.get("nodeSelector"):
            continue  # eci/acs units without a node selector are not emulated
        cap = unit.get("max")
        if cap is not None and counts.get(i, 0) >= cap:
            continue
        out.append(i)
    return out


def affinity_for(policy: Obj, allowed: list[int]) -> Obj:
    units = policy["spec"]["units"]
    required = [{"matchExpressions": [{"key": k, "operator": "In", "values": [v]}
                                      for k, v in sorted(units[i]["nodeSelector"].items())]}
                for i in allowed]
    preferred = []
    for rank, i in enumerate(allowed):
        preferred.append({"weight": max(1, 100 >> rank), "preference": required[rank]})
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": required},
            "preferredDuringSchedulingIgnoredDuringExecution": preferred}


def admission_patch(pod: Obj, policy: Obj, counts: dict[int, int]) -> list[Obj]:
    """JSON patch for a new pod: node affinity for the allowed units, in order.

    Existing user affinity on the pod is kept: its required terms are ANDed into each of
    ours (Kubernetes ORs nodeSelectorTerms, ANDs expressions within a term).
    """
    allowed = allowed_units(policy, counts)
    if not allowed:
        # every unit is at max: require a label no node has, so the pod stays Pending with a
        # FailedScheduling message that says why (ACK keeps such pods Pending as well)
        allowed_aff = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "tidegate.dev/resourcepolicy-exhausted",
                                   "operator": "In", "values": [policy["metadata"]["name"]]}]}]}}
    else:
        allowed_aff = affinity_for(policy, allowed)
    spec = pod.get("spec", {})
    existing = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    user_terms = (existing.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms")
    if user_terms:
        merged = []
        for ours in allowed_aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]:
            for theirs in user_terms:
                merged.append({"matchExpressions": ours["matchExpressions"] + (theirs.get("matchExpressions") or [])})
        allowed_aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] = merged
    if existing.get("preferredDuringSchedulingIgnoredDuringExecution"):
        allowed_aff.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
        allowed_aff["preferredDuringSchedulingIgnoredDuringExecution"] += existing[
            "preferredDuringSchedulingIgnoredDuringExecution"]
    ops: list[Obj] = []
    if "affinity" not in spec:
        ops.append({"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": allowed_aff}})
    else:
        ops.append({"op": "add", "path": "/spec/affinity/nodeAffinity", "value": allowed_aff})
    annotations = pod["metadata"].get("annotations")
    value = f"{policy['metadata']['name']}"
    if annotations is None:
        ops.append({"op": "add", "path": "/metadata/annotations",
                    "value": {"tidegate.dev/resourcepolicy": value}})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations/tidegate.dev~1resourcepolicy", "value": value})
    return ops


def deletion_cost(policy: Obj, unit: int | None) -> int:
    """Higher for earlier units: the ReplicaSet controller deletes the lowest cost first."""
    n = len(policy["spec"].get("units") or [])
    if unit is None:
        return 0
    return (n - unit) * 1000


def bound_pod_patch(pod: Obj, policy: Obj, unit: int | None) -> Obj | None:
    """Merge patch for a bound pod: deletion cost, unit marker, the unit's podLabels/annotations."""
    meta = pod["metadata"]
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    want_ann = {DELETION_COST: str(deletion_cost(policy, unit)), UNIT_ANNOTATION: str(unit)}
    want_labels: dict[str, str] = {}
    if unit is not None:
        u = policy["spec"]["units"][unit]
        want_ann.update(u.get("podAnnotations") or {})
        want_labels = {k: v for k, v in (u.get("podLabels") or {}).items() if k != WAIT_FOR_SCALING}
    ann_diff = {k: v for k, v in want_ann.items() if annotations.get(k) != v}
    label_diff = {k: v for k, v in want_labels.items() if labels.get(k) != v}
    if not ann_diff and not label_diff:
        return None
    patch: Obj = {"metadata": {}}
    if ann_diff:
        patch["metadata"]["annotations"] = ann_diff
    if label_diff:
        patch["metadata"]["labels"] = label_diff
    return patch


def admission_response(uid: str, patch: list[Obj] | None, warning: str | None = None) -> Obj:
    resp: Obj = {"uid": uid, "allowed": True}
    if patch:
        resp["patchType"] = "JSONPatch"
        resp["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warning:
        resp["warnings"] = [warning]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


def webhook_configuration(url: str, ca_bundle_b64: str) -> Obj:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "tidegate-testbed-resourcepolicy"},
        "webhooks": [{
            "name": "resourcepolicy.scheduling.alibabacloud.com",
            "clientConfig": {"url": url, "caBundle": ca_bundle_b64},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                                        "values": ["kube-system", "kube-node-lease"]}]},
            "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "failurePolicy": "Ignore", "timeoutSeconds": 5, "reinvocationPolicy": "Never",
        }],
    }
