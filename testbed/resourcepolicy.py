"""ACK's ResourcePolicy, enforced at scheduling time through a kube-scheduler extender.

On ACK a scheduler plugin fills a ResourcePolicy's ``units`` in order; the pod carries no node
affinity and the cluster-autoscaler does not know the policy. The test bed does the same
with upstream parts: the real kube-scheduler calls an *extender* (KubeSchedulerConfiguration
``extenders:``, ``filterVerb`` + ``prioritizeVerb``, served by the test-bed daemon over HTTP on
loopback) after its own filters, with the nodes where the pod fits. This module is the
extender's pure logic (:func:`decide`, :func:`scores`) and the bound-pod bookkeeping.

Emulated
- **Order** (``strategy: prefer``): of the nodes that passed the scheduler's own filters, only
  those of the first usable unit pass; the others fail with a reason that names the policy
  and the unit (``FailedScheduling`` carries it). Nodes in no unit never pass.
- **max** per unit: a unit whose pods (bound, plus those the extender has just sent there
  and that are not bound yet; Terminating pods only with ``ignoreTerminatingPod: false``)
  reach ``max`` is skipped.
- **whenTryNextUnits**:
  ``LackResourceOrExceedMax`` (default): a unit without a node that fits is skipped at once.
  ``TimeoutOrExceedMax``: when the unit lacks resources and either has a ``max`` not yet
  reached or (no ``max``) carries the wait-for-ecs-scaling pod label, the pod waits in it
  for ``timeout`` (default 15 min) counted from the pod's creation; meanwhile the extender
  answers with an error, so the scheduler retries the pod with its backoff (1 s doubling to
  10 s): the next unit is tried between ``timeout`` and ``timeout`` + 10 s after creation.
  ``ExceedMax``: the pod waits in a unit with a ``max`` not reached, without a timeout.
- **Scale-in in reverse order** (best effort, as ACK documents): the daemon writes
  ``controller.kubernetes.io/pod-deletion-cost`` on every bound pod, highest for the first
  unit, so the ReplicaSet controller deletes pods of the last unit first. A pod scaled in
  before its cost is written (within ~1 s of binding) may be removed out of order.
- **podLabels / podAnnotations** of the unit are written onto the pod once it is bound
  (except the ``k8s.aliyun.com/resource-policy-wait-for-ecs-scaling`` marker label).

Consequences reproduced because the autoscaler does not see the policy (ACK's warning that
ResourcePolicy with autoscaling "may trigger incorrect node pool scaling"): the autoscaler
simulates a Pending pod with the scheduler's own plugins only, so when a unit's ``max`` is
reached while its nodes have free GPUs, it finds the pod schedulable there and does not
scale the elastic pool: the pod stays Pending (``tasks.verify`` reports it).

Fail closed: the extender is registered with ``ignorable: false``; while the daemon is down
no pod is scheduled (``FailedScheduling`` with the connection error) rather than placed
against the policy. ACK's plugin lives inside the scheduler and cannot be down on its own.

Not emulated: ``strategy: required``, ``LackResourceAndNoTerminating`` (treated as
``LackResourceOrExceedMax``), ``maxResources``, ``preemptPolicy``, ``matchLabelKeys``
grouping, ``ignorePreviousPod``, ``eci``/``acs`` units without a nodeSelector (skipped),
``spotInstance``, ``scaleInWeight``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

GROUP = "scheduling.alibabacloud.com"
API_VERSION = f"{GROUP}/v1alpha1"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
WAIT_FOR_SCALING = "k8s.aliyun.com/resource-policy-wait-for-ecs-scaling"
UNIT_ANNOTATION = "tidegate.dev/resourcepolicy-unit"
DEFAULT_POLICY = "LackResourceOrExceedMax"
DEFAULT_TIMEOUT_S = 15 * 60.0
EXTENDER_PATH = "/scheduler"
MAX_SCORE = 10  # k8s.io/kube-scheduler/extender/v1 MaxExtenderPriority

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



_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(h|ms|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``metav1.Duration``): ``1m``, ``90s``, ``1h30m``, ``500ms``."""
    text = str(text).strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 1m, 1h30m)")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def when_try_next(policy: Obj) -> tuple[str, float]:
    """(``whenTryNextUnits.policy``, its timeout in seconds) with ACK's defaults."""
    opts = policy.get("spec", {}).get("whenTryNextUnits") or {}
    timeout = opts.get("timeout")
    return opts.get("policy") or DEFAULT_POLICY, parse_duration(timeout) if timeout else DEFAULT_TIMEOUT_S


def unit_label(policy: Obj, i: int) -> str:
    sel = (policy["spec"]["units"][i].get("nodeSelector") or {})
    return f"unit {i} ({','.join(f'{k}={v}' for k, v in sorted(sel.items()))})"


@dataclass
class Decision:
    """What the extender answers for one pod: the unit it may use now and its nodes, why the
    other nodes fail, or (``error``) that the pod waits and is retried later."""

    unit: int | None
    passing: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    retry_after_s: float | None = None


def decide(policy: Obj, candidates: list[tuple[str, dict[str, str]]], counts: dict[int, int],
           pod_age_s: float) -> Decision:
    """Filter ``candidates`` (node name, labels: the nodes that passed the scheduler's own
    filters) for a pod of ``policy``, given the pods per unit (``counts``) and the pod's age.
    See the module docstring for the rules."""
    name = policy["metadata"]["name"]
    units = policy["spec"].get("units") or []
    strategy, timeout = when_try_next(policy)
    unit_of = {n: unit_of_node(policy, labels) for n, labels in candidates}
    skipped: dict[int, str] = {}

    def why(u: int | None, chosen: int | None) -> str:
        if u is None:
            return f"ResourcePolicy {name}: node is in no unit"
        if u in skipped:
            return f"ResourcePolicy {name}: {unit_label(policy, u)} {skipped[u]}"
        return f"ResourcePolicy {name}: {unit_label(policy, u)} comes after {unit_label(policy, chosen or 0)}"

    for i, unit in enumerate(units):
        if not unit.get("nodeSelector"):
            continue  # eci/acs virtual-node units are not emulated
        cap = unit.get("max")
        count = counts.get(i, 0)
        if cap is not None and count >= cap:
            skipped[i] = f"reached max {cap} ({count} pods)"
            continue
        fits = sorted(n for n, u in unit_of.items() if u == i)
        if fits:
            return Decision(i, fits, {n: why(u, i) for n, u in unit_of.items() if u != i})
        below_max = cap is not None
        waits_for_scaling = cap is None and WAIT_FOR_SCALING in (unit.get("podLabels") or {})
        if strategy == "TimeoutOrExceedMax" and (below_max or waits_for_scaling):
            left = timeout - pod_age_s
            if left > 0:
                msg = (f"ResourcePolicy {name}: the pod waits in {unit_label(policy, i)} for {left:.0f}s more "
                       f"(whenTryNextUnits TimeoutOrExceedMax, timeout {timeout:.0f}s)")
                return Decision(None, [], {n: msg for n in unit_of}, error=msg, retry_after_s=left)
        if strategy == "ExceedMax" and below_max:
            msg = (f"ResourcePolicy {name}: the pod waits in {unit_label(policy, i)} until a node there fits "
                   f"(whenTryNextUnits ExceedMax, max {cap} not reached)")
            return Decision(None, [], {n: msg for n in unit_of})
        skipped[i] = "has no node that fits"
    return Decision(None, [], {n: why(u, None) for n, u in unit_of.items()})


def scores(policy: Obj | None, candidates: list[tuple[str, dict[str, str]]]) -> list[Obj]:
    """Extender priorities (0..10): earlier units score higher, nodes in no unit 0."""
    if policy is None:
        return [{"Host": n, "Score": 0} for n, _ in candidates]
    n_units = max(1, len(policy["spec"].get("units") or []))
    out = []
    for name, labels in candidates:
        u = unit_of_node(policy, labels)
        out.append({"Host": name, "Score": 0 if u is None else MAX_SCORE * (n_units - u) // n_units})
    return out


def extender_candidates(args: Obj) -> tuple[Obj, list[Obj], list[str] | None]:
    """(pod, node objects, node names) from an ``ExtenderArgs`` body (Go field names; the
    scheduler sends ``Nodes`` unless the extender is ``nodeCacheCapable``)."""
    lowered = {k.lower(): v for k, v in args.items()}
    pod = lowered.get("pod") or {}
    nodes = (lowered.get("nodes") or {}).get("items") or []
    names = lowered.get("nodenames")
    return pod, nodes, names


def filter_result(nodes: list[Obj], decision: Decision | None) -> Obj:
    """The ``ExtenderFilterResult`` for ``nodes`` (``None``: the pod has no policy, all pass).

    Rejections are ``FailedAndUnresolvableNodes``: preempting pods would not change the unit."""
    if decision is None:
        return {"Nodes": {"items": nodes}}
    if decision.error:
        return {"Error": decision.error}
    keep = set(decision.passing)
    return {"Nodes": {"items": [n for n in nodes if n["metadata"]["name"] in keep]},
            "FailedAndUnresolvableNodes": decision.failed}


def extender_config(url_prefix: str) -> Obj:
    """The ``extenders:`` entry of the kube-scheduler's KubeSchedulerConfiguration."""
    return {"urlPrefix": url_prefix, "filterVerb": "filter", "prioritizeVerb": "prioritize", "weight": 1,
            "enableHTTPS": False, "nodeCacheCapable": False, "httpTimeout": "5s",
            # fail closed: with the daemon down no pod is placed against the policy
            "ignorable": False}


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
