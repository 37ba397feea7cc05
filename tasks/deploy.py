"""deploy_service: apply the InferenceService and its HPA, wait until Ready, or say why not.

The wait watches the InferenceService (no sleep loop), in sessions of ``CANCEL_CHECK_S`` with a
``tasks.cancel`` checkpoint between them (SIGTERM stops the wait). On timeout the diagnosis names the
first cause it finds among the predictor pods, in the order a person would look: no pod at
all (the Deployment or the KServe controller), image pull failures, crash loops, Pending
with the scheduler's own message, Running but not Ready (model loading / probe failing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tasks import cancel
from tasks.errors import StageFailed
from tasks.kube import Kube, condition_true

ISVC_API = "serving.kserve.io/v1beta1"
CANCEL_CHECK_S = 5.0


@dataclass
class ServiceHandle:
    """Where the deployed model service is and how to reach it."""

    name: str
    namespace: str
    predictor: str
    hpa: str
    url: str
    host: str
    served_name: str
    ready_seconds: float
    replicas: int


def diagnose(kube: Kube, namespace: str, predictor: str) -> str:
    """One line: the most likely reason the predictor is not Ready."""
    dep = kube.get("apps/v1", "Deployment", predictor, namespace)
    if dep is None:
        return f"Deployment {namespace}/{predictor} was never created: is the KServe controller running?"
    pods = kube.list("v1", "Pod", namespace, label_selector=f"app=isvc.{predictor}")
    if not pods:
        conds = {c["type"]: c for c in (dep.get("status") or {}).get("conditions") or []}
        failure = conds.get("ReplicaFailure")
        if failure:
            return f"Deployment {predictor} cannot create pods: {failure.get('message')}"
        return f"Deployment {predictor} has no pods yet"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                return f"pod {pod['metadata']['name']}: image cannot be pulled ({reason}): {waiting.get('message', cs.get('image'))}"
            if reason == "CrashLoopBackOff" or cs.get("restartCount", 0) >= 3:
                return f"pod {pod['metadata']['name']}: container crash-looping ({cs.get('restartCount', 0)} restarts)"
    events = kube.list("v1", "Event", namespace)
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") == "Pending" and not pod["spec"].get("nodeName"):
            msgs = [e.get("message", "") for e in events
                    if e.get("reason") == "FailedScheduling"
                    and (e.get("involvedObject") or {}).get("name") == pod["metadata"]["name"]]
            cond = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
            msg = (msgs[-1] if msgs else cond.get("message")) or "not scheduled yet"
            return f"pod {pod['metadata']['name']} Pending: {msg}"
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and not condition_true(pod):
            return (f"pod {pod['metadata']['name']} Running but not Ready: the model is still loading or the "
                    "readiness probe fails")
    return f"predictor {predictor}: pods exist but the InferenceService is not Ready"


def deploy(kube: Kube, objects: list[dict], spec, *, create: Callable[[list[dict]], list[str]],
           timeout_s: float | None = None) -> ServiceHandle:
    """Create ``objects`` (the rendered InferenceService and HPA) with ``create`` (the run's
    ``tasks.ownership.create_owned``) and wait for Ready."""
    timeout_s = timeout_s or spec.service.readiness_timeout_s
    ns = spec.cluster.namespace
    name = spec.service.name
    create(objects)
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        cancel.check()
        session_s = min(CANCEL_CHECK_S, deadline - time.monotonic())
        if session_s <= 0:
            raise StageFailed(f"deploy: InferenceService {ns}/{name} not Ready after {timeout_s:.0f}s: "
                              f"{diagnose(kube, ns, spec.service.predictor_name)}")
        try:
            kube.wait_for(ISVC_API, "InferenceService", name, ns, condition_true, timeout_s=session_s)
            break
        except TimeoutError:
            continue
    dep = kube.get("apps/v1", "Deployment", spec.service.predictor_name, ns) or {}
    hpa_name = next((o["metadata"]["name"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"), "")
    return ServiceHandle(
        name=name, namespace=ns, predictor=spec.service.predictor_name, hpa=hpa_name,
        url=spec.ingress.url, host=spec.ingress.host, served_name=spec.model.served_name,
        ready_seconds=round(time.monotonic() - started, 2),
        replicas=int((dep.get("status") or {}).get("readyReplicas") or 0),
    )
