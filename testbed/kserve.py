"""What KServe's RawDeployment mode does, for the InferenceService fields tidegate uses.

The real ``InferenceService`` CRD (serving.kserve.io/v1beta1) comes from the KServe Go module
(see ``testbed.build.ensure_kserve_crd``); this module computes, from one InferenceService,
the objects KServe v0.13-v0.16 would create (``components/predictor.go``,
``reconcilers/raw/*``) and the status it would report:

- Deployment and Service ``<name>-predictor``, selector ``app=isvc.<name>-predictor``;
  pod labels: the ISVC's labels, then ``serving.kserve.io/inferenceservice=<name>``,
  ``component=predictor``, ``app=isvc.<name>-predictor`` (overwriting arena's ``app``);
  containers/volumes/affinity/tolerations/nodeSelector/serviceAccountName from the predictor;
  a TCP readiness probe on the first container port or 8080 when none is set; the Deployment's
  replicas are left to the HPA (1 at creation, never overwritten afterwards).
- Service port 80 -> the first container port, or 8080.
- An HPA ``<name>-predictor`` only when ``serving.kserve.io/autoscalerClass`` is ``hpa`` or
  unset (cpu/memory Resource metric, min/max from the predictor); with ``external`` none is
  created and an existing one is deleted, as ``arena serve kserve`` relies on.
- Status: ``PredictorReady`` from the Deployment's ``Available`` condition, ``IngressReady``
  True (no ingress objects here: the test bed's gateway routes by Host), ``Ready`` = both;
  ``url`` = ``http://<name>-<namespace>.example.com`` (KServe's default domain template).

Not emulated: Serverless/Knative mode, transformers/explainers, ServingRuntimes and
``model.modelFormat`` resolution (tidegate's predictor uses explicit containers, as arena
renders it), storage initializer, the defaulting/validating webhooks, ingress objects.
"""

from __future__ import annotations

import copy
from typing import Any

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
DOMAIN = "example.com"

Obj = dict[str, Any]

_POD_SPEC_FIELDS = ("volumes", "affinity", "tolerations", "nodeSelector", "serviceAccountName",
                    "imagePullSecrets", "securityContext", "priorityClassName", "schedulerName",
                    "terminationGracePeriodSeconds", "initContainers", "hostIPC", "runtimeClassName")


def predictor_name(isvc: Obj) -> str:
    return f"{isvc['metadata']['name']}-predictor"


def host_for(name: str, namespace: str) -> str:
    return f"{name}-{namespace}.{DOMAIN}"


def _owner(isvc: Obj) -> list[Obj]:
    meta = isvc["metadata"]
    return [{"apiVersion": API_VERSION, "kind": "InferenceService", "name": meta["name"], "uid": meta["uid"],
             "controller": True, "blockOwnerDeletion": True}]


def pod_labels(isvc: Obj) -> dict[str, str]:
    labels = dict(isvc["metadata"].get("labels") or {})
    labels.update({ISVC_LABEL: isvc["metadata"]["name"], "component": "predictor",
                   "app": f"isvc.{predictor_name(isvc)}"})
    return labels


def _containers(isvc: Obj) -> list[Obj]:
    predictor = isvc.get("spec", {}).get("predictor", {})
    containers = copy.deepcopy(predictor.get("containers") or [])
    if not containers and predictor.get("model"):
        raise ValueError("spec.predictor.model (ServingRuntime resolution) is not emulated by the test bed; "
                         "use spec.predictor.containers as `arena serve kserve` renders it")
    if not containers:
        raise ValueError("spec.predictor has no containers")
    first = containers[0]
    if not first.get("readinessProbe"):
        port = (first.get("ports") or [{}])[0].get("containerPort", 8080)
        first["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 10, "timeoutSeconds": 1,
                                   "failureThreshold": 3, "successThreshold": 1}
    return containers


def target_port(isvc: Obj) -> int:
    containers = isvc.get("spec", {}).get("predictor", {}).get("containers") or [{}]
    return (containers[0].get("ports") or [{}])[0].get("containerPort", 8080)


def deployment_for(isvc: Obj) -> Obj:
    meta = isvc["metadata"]
    predictor = isvc.get("spec", {}).get("predictor", {})
    labels = pod_labels(isvc)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith("kubectl.kubernetes.io/")}
    pod_spec: Obj = {"containers": _containers(isvc)}
    for f in _POD_SPEC_FIELDS:
        if f in predictor:
            pod_spec[f] = copy.deepcopy(predictor[f])
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": predictor_name(isvc), "namespace": meta["namespace"], "labels": labels,
                     "annotations": annotations, "ownerReferences": _owner(isvc)},
        "spec": {
            "selector": {"matchLabels": {"app": labels["app"]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def service_for(isvc: Obj) -> Obj:
    meta = isvc["metadata"]
    name = predictor_name(isvc)
    containers = isvc.get("spec", {}).get("predictor", {}).get("containers") or [{}]
    port_name = (containers[0].get("ports") or [{}])[0].get("name") or name
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": pod_labels(isvc),
                     "ownerReferences": _owner(isvc)},
        "spec": {"selector": {"app": f"isvc.{name}"},
                 "ports": [{"name": port_name, "port": 80, "targetPort": target_port(isvc),
                            "protocol": "TCP"}]},
    }


def wants_hpa(isvc: Obj) -> bool:
    cls = (isvc["metadata"].get("annotations") or {}).get(AUTOSCALER_CLASS, "hpa")
    return cls in ("hpa", "")


def hpa_for(isvc: Obj) -> Obj:
    meta = isvc["metadata"]
    predictor = isvc.get("spec", {}).get("predictor", {})
    min_r = max(int(predictor.get("minReplicas") or 1), 1)
    max_r = max(int(predictor.get("maxReplicas") or 0), min_r)
    metric = predictor.get("scaleMetric") or (meta.get("annotations") or {}).get("serving.kserve.io/metrics", "cpu")
    target = predictor.get("scaleTarget") or int(
        (meta.get("annotations") or {}).get("serving.kserve.io/targetUtilizationPercentage", 80))
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": predictor_name(isvc), "namespace": meta["namespace"], "labels": pod_labels(isvc),
                     "ownerReferences": _owner(isvc)},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": predictor_name(isvc)},
                 "minReplicas": min_r, "maxReplicas": max_r,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": metric if metric in ("cpu", "memory") else "cpu",
                     "target": {"type": "Utilization", "averageUtilization": int(target)}}}]},
    }


def _condition(ctype: str, status: bool, reason: str = "", message: str = "", now: str = "") -> Obj:
    cond = {"type": ctype, "status": "True" if status else "False", "lastTransitionTime": now}
    if not status:
        cond["reason"] = reason or "PredictorNotReady"
        if message:
            cond["message"] = message
    return cond


def status_for(isvc: Obj, deployment: Obj | None, now: str) -> Obj:
    """The InferenceService status KServe's raw reconciler would write."""
    meta = isvc["metadata"]
    available = None
    if deployment:
        for c in deployment.get("status", {}).get("conditions") or []:
            if c.get("type") == "Available":
                available = c
    ready = bool(available and available.get("status") == "True")
    message = (available or {}).get("message", "Deployment does not exist yet" if not deployment else "")
    status: Obj = {
        "observedGeneration": meta.get("generation", 1),
        "conditions": [
            _condition("IngressReady", True, now=now),
            _condition("PredictorReady", ready, (available or {}).get("reason", ""), message, now),
            _condition("Ready", ready, (available or {}).get("reason", ""), message, now),
        ],
        "url": f"http://{host_for(meta['name'], meta['namespace'])}",
        "address": {"url": f"http://{predictor_name(isvc)}.{meta['namespace']}.svc.cluster.local"},
        "modelStatus": {
            "transitionStatus": "UpToDate" if ready else "InProgress",
            "states": {"activeModelState": "Loaded" if ready else "Pending",
                       "targetModelState": "Loaded" if ready else "Loading"},
        },
    }
    if ready:
        status["components"] = {"predictor": {
            "url": f"http://{predictor_name(isvc)}-{meta['namespace']}.{DOMAIN}",
            "latestCreatedRevision": (deployment or {}).get("metadata", {}).get("annotations", {}).get(
                "deployment.kubernetes.io/revision", "1")}}
    return status


def served_model(container: Obj) -> tuple[str, str]:
    """(served model name, model root) from a vLLM command line, as vLLM would resolve them."""
    argv: list[str] = []
    for part in (container.get("command") or []) + (container.get("args") or []):
        argv += str(part).split()
    model = "facebook/opt-125m"  # vLLM's default --model
    served = None
    for i, tok in enumerate(argv):
        key, _, val = tok.partition("=")
        nxt = val or (argv[i + 1] if i + 1 < len(argv) else "")
        if key == "--model":
            model = nxt
        elif key == "--served-model-name":
            served = nxt
    return served or model, model
