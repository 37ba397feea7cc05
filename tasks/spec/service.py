"""The ``service`` and ``ingress`` sections: the inference service as arena renders it, and how
clients reach it."""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.spec.base import (
    _HOSTNAME,
    _IMAGE,
    _METRIC_NAME,
    DnsLabel,
    LabelValue,
    QualifiedName,
    Quantity,
    _FieldError,
    _show,
    _show_url,
    _Strict,
)

SEED_IMAGE = "kube-ai-registry.cn-shanghai.cr.aliyuncs.com/kube-ai/vllm:0.4.1"
SEED_COMMAND = (
    "python3 -m vllm.entrypoints.openai.api_server --port 8080 --trust-remote-code "
    "--served-model-name qwen --model /mnt/models/Qwen --gpu-memory-utilization 0.95 "
    "--quantization gptq --max-model-len=6144"
)
# arena's kserve chart treats these scale metrics as KServe-native (kserve.isCustomMetrics);
# anything else gets `autoscalerClass: external` and an HPA of its own.
NATIVE_SCALE_METRICS = ("cpu", "memory", "rps", "concurrency")


class ServiceSpec(_Strict):
    """The inference service, rendered as `arena serve kserve` would render it."""

    name: DnsLabel = Field(
        "qwen-chat", title="Service name", max_length=45,
        description="InferenceService name (arena --name); at most 45 characters so that "
                    "<name>-predictor stays a valid name.")
    image: str = Field(SEED_IMAGE, title="Image", max_length=512,
                       description="Container image of the model server.")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        "IfNotPresent", title="Image pull policy", description="arena's default is IfNotPresent.")
    command: str = Field(
        SEED_COMMAND, title="Command", min_length=1,
        description="Model server command, run as `sh -c <command>` exactly as arena does.")
    gpus: int = Field(1, ge=0, le=64, title="GPUs per replica",
                      description="nvidia.com/gpu requested (and limited) per replica.")
    cpu: Quantity = Field("4", title="CPU", description="CPU request and limit per replica.")
    memory: Quantity = Field("12Gi", title="Memory", description="Memory request and limit per replica.")
    min_replicas: int = Field(1, ge=1, le=1000, title="Min replicas", description="HPA minReplicas.")
    max_replicas: int = Field(3, ge=1, le=1000, title="Max replicas", description="HPA maxReplicas.")
    scale_metric: str = Field(
        "DCGM_CUSTOM_PROCESS_SM_UTIL", title="Scale metric", max_length=253,
        description="Per-pod metric the HPA scales on (custom.metrics.k8s.io); cpu, memory, "
                    "rps or concurrency make KServe build the HPA instead, as with arena.")
    scale_target: int = Field(50, title="Scale target",
                              description="Target per-pod average of the scale metric.")
    port: int = Field(
        8080, ge=1, le=65535, title="Port",
        description="Port the model server listens on (vLLM's --port). 8080 is what KServe probes "
                    "when no containerPort is declared, so arena's output declares none; any "
                    "other port is declared as containerPort (arena --port).")
    readiness_timeout_s: int = Field(900, ge=10, le=7200, title="Readiness timeout (s)",
                                     description="How long deploy waits for the service to be Ready.")
    hpa_scale_down_stabilization_s: int | None = Field(
        None, ge=0, le=3600, title="HPA scale-down stabilization (s)",
        description="behavior.scaleDown.stabilizationWindowSeconds; empty keeps the HPA default "
                    "(300 s) and arena's exact output.")
    annotations: dict[QualifiedName, str] = Field(
        default_factory=dict, title="Extra annotations",
        description="Added to the InferenceService (arena --annotation), e.g. "
                    "serving.kserve.io/deploymentMode: RawDeployment.")
    labels: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict, title="Extra labels",
        description="Added to the InferenceService and so to its pods (arena --label).")

    @property
    def predictor_name(self) -> str:
        """Name of the Deployment and Service that KServe creates: ``<name>-predictor``."""
        return f"{self.name}-predictor"

    @property
    def pod_selector(self) -> dict[str, str]:
        """Labels that select the predictor's pods (KServe RawDeployment)."""
        return {"app": f"isvc.{self.predictor_name}"}

    @property
    def hpa_name(self) -> str:
        """Name of the HPA arena renders: ``<name>-hpa``."""
        return f"{self.name}-hpa"

    @property
    def custom_metric(self) -> bool:
        """True when the scale metric is not KServe-native (arena: autoscalerClass external + own HPA)."""
        return self.scale_metric.lower() not in NATIVE_SCALE_METRICS

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not _IMAGE.match(value):
            raise ValueError(f"must be an image reference without spaces (got {_show(value)})")
        return value

    @field_validator("scale_metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if not _METRIC_NAME.match(value):
            raise ValueError(f"must be a metric name ([A-Za-z_:][A-Za-z0-9_:]*) (got {_show(value)})")
        return value

    @field_validator("labels", "annotations")
    @classmethod
    def _reserved(cls, value: dict[str, str], info: Any) -> dict[str, str]:
        reserved = {"heritage", "release", "chart", "app", "servingType", "servingName", "component",
                    "serving.kserve.io/inferenceservice", "app.kubernetes.io/managed-by",
                    "serving.kserve.io/autoscalerClass"}
        for key in value:
            if key in reserved or key.startswith("tidegate.dev/"):
                raise ValueError(f"{key!r} is set by arena, KServe or tidegate and cannot be overridden")
        return value

    @model_validator(mode="after")
    def _service(self) -> ServiceSpec:
        if self.min_replicas > self.max_replicas:
            raise _FieldError("max_replicas", f"must be >= service.min_replicas "
                                              f"({self.min_replicas} > {self.max_replicas})")
        if self.scale_target <= 0:
            raise _FieldError("scale_target", f"must be > 0 (got {self.scale_target})")
        if self.scale_metric.lower() in ("cpu", "memory") and self.scale_target > 100:
            raise _FieldError("scale_target", f"is a utilization percentage for {self.scale_metric} "
                                              f"and must be <= 100 (got {self.scale_target})")
        if self.gpus == 0 and self.scale_metric.upper().startswith(GPU_METRIC_PREFIXES):
            raise _FieldError("gpus", f"is 0, but service.scale_metric {self.scale_metric!r} is a GPU metric: "
                                      "a replica without a GPU never reports it and the HPA never scales")
        if not self.custom_metric and self.hpa_scale_down_stabilization_s is not None:
            raise _FieldError("hpa_scale_down_stabilization_s",
                              f"needs a custom scale_metric: with {self.scale_metric!r} KServe builds "
                              f"the HPA and arena renders none to carry it")
        try:
            argv = shlex.split(self.command)
        except ValueError as exc:
            raise _FieldError("command", f"cannot be parsed as a shell command ({exc})") from None
        if any("vllm" in a for a in argv[:4]):
            port = _flag(argv, "--port")
            if port is None:
                raise _FieldError("command", f"has no --port: vLLM would listen on 8000 while "
                                             f"KServe probes service.port {self.port}")
            if port != str(self.port):
                raise _FieldError("command", f"--port {port} differs from service.port {self.port}")
        return self


# metrics that only a replica holding a GPU reports (DCGM exporter)
GPU_METRIC_PREFIXES = ("DCGM_",)


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


class IngressSpec(_Strict):
    """How clients reach the service: the ingress (or test-bed gateway) URL and Host header."""

    url: str = Field(
        "http://127.0.0.1:18000", title="URL", max_length=2048,
        description="Base URL of the ingress: the ACK ingress address, or the test bed's gateway.")
    host: str | None = Field(
        None, title="Host header",
        description="Host header routed to the service; default <service.name>-<namespace>."
                    "example.com (KServe's domain template).")
    verify_tls: bool = Field(True, title="Verify TLS",
                             description="Verify the server certificate for https URLs.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        hostport = rest.split("/", 1)[0]
        hostname = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
        port_ok = ":" not in hostport or hostport.rsplit(":", 1)[1].isdigit()
        if scheme not in ("http", "https") or not sep or not _HOSTNAME.match(hostname) or not port_ok:
            raise ValueError(f"must be an http(s)://host[:port] URL (got {_show_url(value)})")
        return value.rstrip("/")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _HOSTNAME.match(value)):
            raise ValueError(f"must be a host name (got {_show(value)})")
        return value
