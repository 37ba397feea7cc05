"""The RolloutSpec: everything one validation run needs, as one strict pydantic model.

The same model is the YAML file (``examples/*.yaml``), the Prefect flow's parameter (the UI
form) and the CLI's input. Invariants:

- Unknown keys are rejected everywhere (``extra="forbid"``); every field has a description
  and a default (``None`` where no default can be right, e.g. the OSS bucket).
- Secrets are never values in the spec: only the *names* of environment variables or of a
  Prefect Secret block that hold them.
- Every error is a :class:`tasks.errors.SpecError` whose one-line message names the source and
  the field path: ``spec x.yaml: service.max_replicas: must be >= service.min_replicas ...``.
- Untrusted input is bounded before it is validated: file size, YAML aliases, nesting depth,
  number of nodes and string length (see the ``MAX_*`` constants).

Example::

    spec = load_spec("examples/qwen-chat.local.yaml", overrides=["service.gpus=2"])
    spec.service.predictor_name      # "qwen-chat-predictor"
    spec.ingress.host                # "qwen-chat-default.example.com"
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shlex
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.cost import CostSpec
from tasks.errors import CredentialsError, SpecError

MAX_FILE_BYTES = 1024 * 1024
MAX_STRING_CHARS = 4096
MAX_YAML_ALIASES = 32
MAX_NODES = 20_000
MAX_DEPTH = 24

STAGE_NAMES = ("stage", "prepare", "deploy", "smoke", "spike", "verify", "report", "gate", "teardown")
StageName = Literal["stage", "prepare", "deploy", "smoke", "spike", "verify", "report", "gate", "teardown"]

SEED_IMAGE = "kube-ai-registry.cn-shanghai.cr.aliyuncs.com/kube-ai/vllm:0.4.1"
SEED_COMMAND = (
    "python3 -m vllm.entrypoints.openai.api_server --port 8080 --trust-remote-code "
    "--served-model-name qwen --model /mnt/models/Qwen --gpu-memory-utilization 0.95 "
    "--quantization gptq --max-model-len=6144"
)
# arena's kserve chart treats these scale metrics as KServe-native (kserve.isCustomMetrics);
# anything else gets `autoscalerClass: external` and an HPA of its own.
NATIVE_SCALE_METRICS = ("cpu", "memory", "rps", "concurrency")
# report.json keys (ARCHITECTURE.md, "Report contract") that gate rules may name
REPORT_KEYS = {
    "load": {"requests", "failures", "error_rate", "rps", "ttft_p50_ms", "ttft_p95_ms",
             "itl_p95_ms", "e2e_p95_ms", "output_tokens_per_s"},
    "elasticity": {"hpa_max_replicas", "idc_pods_max", "cloud_pods_max", "scale_up_events",
                   "scale_down_events", "time_to_hpa_rescale_s", "time_to_cloud_node_s",
                   "time_to_first_cloud_pod_ready_s", "scale_in_back_to_idc"},
    "staging": {"bytes", "files", "uploaded_bytes", "skipped_files", "seconds", "MBps"},
}
OPEN_REPORT_SECTIONS = ("cost", "smoke", "stages")  # keys defined by their stages, not checked here

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
_METRIC_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$")
_RULE = re.compile(r"^[a-z_]+(\.[A-Za-z0-9_]+)+$")


# -- reusable field types -------------------------------------------------------------------
def _no_traversal(value: str) -> None:
    if "/" in value or ".." in value:
        raise ValueError(f"must not contain '/' or '..' (got {_show(value)})")


def _dns_label(value: str) -> str:
    _no_traversal(value)
    if len(value) > 63:
        raise ValueError(f"must be at most 63 characters (got {len(value)})")
    if not _DNS_LABEL.match(value):
        raise ValueError(f"must be a DNS-1123 label: lowercase letters, digits and '-', "
                         f"starting and ending alphanumeric (got {_show(value)})")
    return value


def _label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"must be a Kubernetes label value: at most 63 characters of "
                         f"[A-Za-z0-9-_.], alphanumeric at both ends (got {_show(value)})")
    return value


def _qualified_name(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"key prefix must be a DNS subdomain (got {_show(value)})")
    if not name or len(name) > 63 or not _LABEL_VALUE.match(name):
        raise ValueError(f"key must be [prefix/]name with a name of at most 63 characters of "
                         f"[A-Za-z0-9-_.] (got {_show(value)})")
    return value


def _safe_name(value: str) -> str:
    _no_traversal(value)
    if len(value) > 128 or not _SAFE_NAME.match(value):
        raise ValueError(f"must be at most 128 characters of [A-Za-z0-9._-] (got {_show(value)})")
    return value


def _number_to_str(value: Any) -> Any:
    # `cpu: 4` in YAML is an int; Kubernetes quantities are strings
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"must be a Kubernetes quantity such as 4, 500m, 12Gi (got {_show(value)})")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path (got {_show(value)})")
    if ".." in value.split("/") or ":" in value or "\x00" in value:
        raise ValueError(f"must not contain '..', ':' or NUL (got {_show(value)})")
    return value.rstrip("/") or "/"


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value) or len(value) > 128:
        raise ValueError("must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
QualifiedName = Annotated[str, AfterValidator(_qualified_name)]
SafeName = Annotated[str, AfterValidator(_safe_name)]
Quantity = Annotated[str, BeforeValidator(_number_to_str), AfterValidator(_quantity)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class _FieldError(ValueError):
    """A cross-field error raised by a model validator that belongs to one field of it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/@]*@")


def _show_url(value: str) -> str:
    """``_show`` for a URL with its ``user:password@`` masked: a refused value is echoed to logs."""
    return _show(_USERINFO.sub(r"\1***@", value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=MAX_STRING_CHARS)


# -- sections --------------------------------------------------------------------------------
class ModelSpec(_Strict):
    """Which model is served and where its weights come from."""

    name: SafeName = Field("Qwen-7B-Chat-Int8", title="Model name",
                           description="Human-readable name of the model, used in reports.")
    source: str = Field(
        "examples/models/tiny-qwen", title="Weights source",
        description="Where the weights are read from before staging: a local directory "
                    "(relative paths are relative to the working directory) or a URI "
                    "file://, oss://bucket/prefix, http(s)://.",
    )
    served_name: str = Field(
        "qwen", title="Served model name",
        description="The name the OpenAI-compatible API lists in /v1/models and expects in "
                    "requests; must equal --served-model-name in service.command.",
        min_length=1, max_length=256,
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not value or "\x00" in value:
            raise ValueError("must be a non-empty path or URI")
        scheme, sep, rest = value.partition("://")
        if sep:
            if scheme not in ("file", "oss", "http", "https"):
                raise ValueError(f"URI scheme must be file, oss, http or https (got {scheme!r})")
            if not rest:
                raise ValueError(f"URI has nothing after {scheme}:// ")
        return value


class OssCredentials(_Strict):
    """Where the OSS access key is found. Names only: the spec never holds a secret value."""

    access_key_id_env: EnvName = Field(
        "OSS_ACCESS_KEY_ID", title="AccessKey ID variable",
        description="Name of the environment variable that holds the OSS AccessKey ID.")
    access_key_secret_env: EnvName = Field(
        "OSS_ACCESS_KEY_SECRET", title="AccessKey secret variable",
        description="Name of the environment variable that holds the OSS AccessKey secret.")
    secret_block: SafeName | None = Field(
        None, title="Prefect Secret block",
        description="Name of a Prefect Secret block whose value is the JSON object "
                    '{"access_key_id": ..., "access_key_secret": ...}; when set it is used '
                    "instead of the environment variables.")
    secret_name: DnsLabel = Field(
        "tidegate-oss-credentials", title="Kubernetes Secret",
        description="Secret (keys akId, akSecret) that the OSS CSI driver reads through the "
                    "PV's nodePublishSecretRef.")
    create_secret: bool = Field(
        True, title="Create the Secret",
        description="Create the Secret from the resolved credentials when the run applies its "
                    "manifests (and delete it at teardown); if false it must already exist.")

    def resolve(self) -> tuple[SecretStr, SecretStr]:
        """(AccessKey ID, AccessKey secret) from the Prefect Secret block or the environment.

        Raises ``CredentialsError`` naming where it looked; never includes a value.
        """
        if self.secret_block:
            try:
                from prefect.blocks.system import Secret

                raw = Secret.load(self.secret_block).get()
            except Exception as exc:  # noqa: BLE001 - Prefect raises many kinds here
                raise CredentialsError(
                    f"OSS credentials: Prefect Secret block {self.secret_block!r} could not be "
                    f"loaded ({type(exc).__name__})") from exc
            try:
                value = json.loads(raw) if isinstance(raw, str) else raw
                key_id, secret = value["access_key_id"], value["access_key_secret"]
            except (ValueError, TypeError, KeyError) as exc:
                raise CredentialsError(
                    f"OSS credentials: Prefect Secret block {self.secret_block!r} must hold "
                    '{"access_key_id": ..., "access_key_secret": ...}') from exc
            return SecretStr(str(key_id)), SecretStr(str(secret))
        missing = [n for n in (self.access_key_id_env, self.access_key_secret_env) if not os.environ.get(n)]
        if missing:
            raise CredentialsError(
                f"OSS credentials: environment variable(s) {', '.join(missing)} not set",
                hint="set them, or name a Prefect Secret block in storage.oss.credentials.secret_block")
        return (SecretStr(os.environ[self.access_key_id_env]),
                SecretStr(os.environ[self.access_key_secret_env]))


class OssSpec(_Strict):
    """An Alibaba Cloud OSS bucket (or the test bed's OSS-dialect store)."""

    endpoint: str | None = Field(
        None, title="Endpoint",
        description="OSS endpoint, e.g. oss-cn-shanghai-internal.aliyuncs.com (the internal "
                    "endpoint when the cluster is in the same region) or http://127.0.0.1:18333 "
                    "for the test bed. Required when storage.kind is oss.")
    bucket: str | None = Field(
        None, title="Bucket",
        description="Bucket name (3-63 lowercase letters, digits, '-'). Required when "
                    "storage.kind is oss.")
    prefix: str = Field(
        "models/Qwen-7B-Chat-Int8", title="Prefix",
        description="Object key prefix the weights are staged under; mounted as the PV's path.")
    region: str | None = Field(
        None, title="Region", description="Region id such as cn-shanghai (optional; informational "
                                          "and for signature V4).")
    other_opts: str = Field(
        "-o umask=022 -o max_stat_cache_size=0 -o allow_other", title="ossfs options",
        description="volumeAttributes.otherOpts of the OSS CSI PV (ossfs mount options).")
    credentials: OssCredentials = Field(default_factory=OssCredentials, title="Credentials",
                                        description="Where the access key is found.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host = value
        scheme, sep, rest = value.partition("://")
        if sep:
            if scheme not in ("http", "https"):
                raise ValueError(f"scheme must be http or https (got {scheme!r})")
            host = rest
        host = host.rstrip("/")
        hostname, _, port = host.partition(":")
        if not _HOSTNAME.match(hostname) or (port and not port.isdigit()) or "/" in host:
            raise ValueError(f"must be a host[:port] or http(s)://host[:port] (got {_show_url(value)})")
        return value.rstrip("/")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET.match(value):
            raise ValueError(f"must be an OSS bucket name: 3-63 lowercase letters, digits and '-' "
                             f"(got {_show(value)})")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        key = value.rstrip("/")
        bad_segment = bool(key) and any(p in ("", ".", "..") for p in key.split("/"))
        if value.startswith("/") or bad_segment or "\x00" in value or "\\" in value:
            raise ValueError(f"must be a relative key prefix without '.', '..', empty segments "
                             f"or a leading '/' (got {_show(value)})")
        return key


class NasSpec(_Strict):
    """An Alibaba Cloud NAS file system (NFS)."""

    server: str | None = Field(
        None, title="Server",
        description="NAS mount target, e.g. 0a1b2c-xyz.cn-shanghai.nas.aliyuncs.com. Required "
                    "when storage.kind is nas.")
    path: AbsPath = Field("/", title="Path", description="Directory on the NAS file system the PV mounts.")
    vers: Literal["3", "4.0"] = Field("3", title="NFS version", description="NFS protocol version.")
    mount_options: list[str] = Field(
        default_factory=lambda: ["nolock", "tcp", "noresvport"], title="Mount options",
        description="PV mountOptions (ACK's convention for NAS).")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTNAME.match(value):
            raise ValueError(f"must be a host name (got {_show(value)})")
        return value


class StorageSpec(_Strict):
    """Where the weights are staged and how pods mount them (a static PV + PVC)."""

    kind: Literal["oss", "nas"] = Field("oss", title="Kind", description="Storage backend: oss or nas.")
    oss: OssSpec = Field(default_factory=OssSpec, title="OSS", description="Used when kind is oss.")
    nas: NasSpec = Field(default_factory=NasSpec, title="NAS", description="Used when kind is nas.")
    pvc_name: DnsLabel = Field(
        "llm-model", title="PVC name",
        description="PersistentVolumeClaim the predictor mounts (arena's --data <pvc>:<path>).")
    pv_name: DnsLabel | None = Field(
        None, title="PV name",
        description="PersistentVolume name (cluster-scoped); default <pvc_name>-<namespace> so "
                    "that runs in different namespaces do not collide.")
    mount_path: AbsPath = Field(
        "/mnt/models/Qwen", title="Mount path",
        description="Where the model is mounted in the container (vLLM's --model).")
    capacity: Quantity = Field("30Gi", title="Capacity",
                               description="Nominal size of the PV and the PVC's request.")
    checkpoint_dir: str = Field(
        ".tidegate/staging", title="Staging checkpoint directory",
        description="Local directory for staging's resume records and hash cache.")


class ResourcePolicyOptions(_Strict):
    """How the ACK ResourcePolicy orders the IDC and elastic units."""

    elastic_unit: Literal["ecs", "elastic"] = Field(
        "ecs", title="Elastic unit resource",
        description="ecs: an ecs unit on the elastic pool carrying the "
                    "k8s.aliyun.com/resource-policy-wait-for-ecs-scaling marker (ACK's "
                    "recommended form); elastic: the deprecated 'resource: elastic' unit.")
    when_try_next_units: Literal["LackResourceOrExceedMax", "ExceedMax", "TimeoutOrExceedMax",
                                 "LackResourceAndNoTerminating"] = Field(
        "LackResourceOrExceedMax", title="When to try the next unit",
        description="whenTryNextUnits.policy; the default moves to the elastic unit as soon as "
                    "the IDC unit lacks resources (or holds idc_max_pods).")
    try_next_timeout_s: int | None = Field(
        None, ge=1, le=3600, title="Wait before next unit (s)",
        description="whenTryNextUnits.timeout, only with TimeoutOrExceedMax (ACK's default is 15 min).")
    idc_max_pods: int | None = Field(
        None, ge=0, le=10_000, title="IDC unit max pods",
        description="'max' of the IDC unit; the elastic unit never gets one (ACK: setting max on "
                    "an elastic pool's unit can create invalid nodes).")

    @model_validator(mode="after")
    def _timeout(self) -> ResourcePolicyOptions:
        if self.try_next_timeout_s is not None and self.when_try_next_units != "TimeoutOrExceedMax":
            raise _FieldError("try_next_timeout_s", "only applies when when_try_next_units is "
                                                    "TimeoutOrExceedMax")
        return self


class ClusterSpec(_Strict):
    """The Kubernetes cluster (ACK Edge or the test bed) and its two GPU pools."""

    kubeconfig: str | None = Field(
        None, title="Kubeconfig",
        description="Path of the kubeconfig file; empty means $KUBECONFIG / ~/.kube/config "
                    "(for the local profile the CLI uses the test bed's).")
    context: str | None = Field(None, title="Context", max_length=253,
                                description="Kubeconfig context; empty means the current one.")
    in_cluster: bool = Field(False, title="In-cluster",
                             description="Use the pod's ServiceAccount instead of a kubeconfig.")
    namespace: DnsLabel = Field("default", title="Namespace",
                                description="Namespace of everything the run creates.")
    create_namespace: bool = Field(False, title="Create namespace",
                                   description="Create the namespace if the run should own it.")
    service_account: DnsLabel = Field(
        "tidegate", title="Pipeline ServiceAccount",
        description="ServiceAccount that manifests/rbac.yaml grants the pipeline's permissions to.")
    nodepool_label: QualifiedName = Field(
        "alibabacloud.com/nodepool-id", title="Node pool label",
        description="Node label whose value identifies a node pool.")
    idc_pool_id: LabelValue = Field("np-idc", title="IDC pool id",
                                    description="Node pool id of the on-premise (IDC) GPU pool.")
    elastic_pool_id: LabelValue = Field("np-elastic", title="Elastic pool id",
                                        description="Node pool id of the autoscaled cloud GPU pool.")
    placement: Literal["resourcepolicy", "affinity"] = Field(
        "resourcepolicy", title="Placement",
        description="resourcepolicy: ACK's ResourcePolicy (IDC unit, then elastic unit); "
                    "affinity: vanilla Kubernetes preferred node affinity (IDC weight 100, "
                    "elastic 10).")
    resource_policy: ResourcePolicyOptions = Field(
        default_factory=ResourcePolicyOptions, title="ResourcePolicy",
        description="Unit options when placement is resourcepolicy.")

    @model_validator(mode="after")
    def _cluster(self) -> ClusterSpec:
        if self.in_cluster and (self.kubeconfig or self.context):
            field = "kubeconfig" if self.kubeconfig else "context"
            raise _FieldError(field, "cannot be combined with in_cluster: true")
        if self.idc_pool_id == self.elastic_pool_id:
            raise _FieldError("elastic_pool_id", f"must differ from idc_pool_id ({self.idc_pool_id!r})")
        return self


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


class TidalSpec(_Strict):
    """A traffic curve replayed in compressed time (shape: tidal)."""

    csv_path: str | None = Field(
        None, title="Traffic CSV",
        description="CSV of timestamp and requests/s or users; empty uses the built-in diurnal profile.")
    compress_to_minutes: float = Field(30.0, gt=0, le=1440, title="Run length (min)",
                                       description="The curve is compressed into a run of this many minutes.")


class LoadSpec(_Strict):
    """The load shape: baseline, spike, hold at the spike, cool-down."""

    shape: Literal["spike", "tidal"] = Field("spike", title="Shape",
                                             description="spike: baseline -> spike -> hold -> cool-down; "
                                                         "tidal: replay load.tidal.")
    baseline_users: int = Field(5, ge=0, le=100_000, title="Baseline users",
                                description="Concurrent users before and after the spike.")
    spike_users: int = Field(30, ge=1, le=100_000, title="Spike users",
                             description="Concurrent users during the spike.")
    spawn_rate: float = Field(10.0, gt=0, le=10_000, title="Spawn rate (users/s)",
                              description="How fast users are added or removed.")
    baseline_s: int = Field(60, ge=0, le=86_400, title="Baseline (s)", description="Baseline duration.")
    spike_s: int = Field(300, ge=1, le=86_400, title="Spike (s)", description="Ramp and spike duration.")
    hold_s: int = Field(120, ge=0, le=86_400, title="Hold (s)",
                        description="Time the spike load is held after spike_s.")
    cooldown_s: int = Field(
        900, ge=0, le=86_400, title="Cool-down (s)",
        description="Baseline load after the spike while spill-back is watched; must cover the "
                    "HPA scale-down stabilization and the autoscaler's scale-down time.")
    max_tokens: int = Field(128, ge=1, le=32_768, title="Max tokens",
                            description="max_tokens of every chat request.")
    prompt: str = Field("Explain in three sentences why the tide rises and falls.", title="Prompt",
                        min_length=1, description="User message of every chat request.")
    stream: bool = Field(True, title="Stream", description="Send streamed chat requests (needed for TTFT).")
    workers: int = Field(0, ge=0, le=64, title="Worker processes",
                         description="Locust worker processes; 0 runs the generator in one process.")
    request_timeout_s: float = Field(120.0, gt=0, le=3600, title="Request timeout (s)",
                                     description="Per-request timeout; a timeout counts as an error.")
    tidal: TidalSpec | None = Field(None, title="Tidal", description="Used when shape is tidal.")

    @model_validator(mode="after")
    def _load(self) -> LoadSpec:
        if self.shape == "spike" and self.spike_users < self.baseline_users:
            raise _FieldError("spike_users", f"must be >= load.baseline_users "
                                             f"({self.baseline_users} > {self.spike_users})")
        return self


class SloRule(_Strict):
    """One gate rule: <rule> <op> <threshold>, e.g. load.error_rate <= 0.01."""

    rule: str = Field(
        "load.error_rate", title="Metric", max_length=128,
        description="Dotted report.json key, e.g. load.ttft_p95_ms, elasticity.cloud_pods_max, "
                    "elasticity.scale_in_back_to_idc.")
    op: Literal["<=", "<", ">=", ">", "=="] = Field("<=", title="Comparator",
                                                     description="How the value is compared.")
    threshold: bool | int | float = Field(
        0.01, title="Threshold",
        description="Number, or true/false for flags (with ==). With relative: a change in "
                    "percent against the last passing run (e.g. 20 = at most +20%).")
    relative: bool = Field(False, title="Relative",
                           description="Compare with the last passing run's value instead of absolutely.")
    severity: Literal["fail", "warn"] = Field("fail", title="Severity",
                                              description="What a violation makes the verdict.")
    no_data: Literal["fail", "warn", "pass"] = Field(
        "fail", title="If no data", description="Outcome when the run produced no value for the metric.")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_type(cls, value: Any) -> Any:
        if not isinstance(value, (bool, int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"must be a finite number or true/false (got {_show(value)})")
        return value

    @field_validator("rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        if not _RULE.match(value):
            raise ValueError(f"must be a dotted report key such as load.error_rate (got {_show(value)})")
        section, key = value.split(".", 1)
        if section in REPORT_KEYS:
            if key not in REPORT_KEYS[section]:
                raise ValueError(f"{value!r} is not a report key (known {section} keys: "
                                 f"{', '.join(sorted(REPORT_KEYS[section]))})")
        elif section not in OPEN_REPORT_SECTIONS:
            raise ValueError(f"section {section!r} unknown (allowed: "
                             f"{', '.join([*REPORT_KEYS, *OPEN_REPORT_SECTIONS])})")
        return value

    @model_validator(mode="after")
    def _op(self) -> SloRule:
        if isinstance(self.threshold, bool):
            if self.op != "==":
                raise _FieldError("op", f"must be == for a true/false threshold (got {self.op!r})")
            if self.relative:
                raise _FieldError("relative", "cannot apply to a true/false threshold")
        return self


def _default_slo() -> list[SloRule]:
    return [
        SloRule(rule="load.error_rate", op="<=", threshold=0.01),
        SloRule(rule="load.ttft_p95_ms", op="<=", threshold=2000.0),
        SloRule(rule="elasticity.cloud_pods_max", op=">=", threshold=1),
        SloRule(rule="elasticity.scale_in_back_to_idc", op="==", threshold=True),
        SloRule(rule="elasticity.time_to_first_cloud_pod_ready_s", op="<=", threshold=180.0,
                severity="warn"),
    ]


class TeardownSpec(_Strict):
    """What happens to the run's objects at the end."""

    policy: Literal["always", "on_success", "never"] = Field(
        "always", title="Policy",
        description="always: delete everything the run labelled, also on failure and cancellation; "
                    "on_success: keep it for debugging when the run failed; never: keep it.")
    timeout_s: int = Field(300, ge=1, le=3600, title="Timeout (s)",
                           description="How long teardown waits for the objects to be gone.")


class RolloutSpec(_Strict):
    """One validation run: the model, where it is staged, the cluster, the service, the load,
    the SLO gate and the teardown."""

    model_config = ConfigDict(extra="forbid", str_max_length=MAX_STRING_CHARS,
                              title="Rollout spec")

    name: DnsLabel = Field("qwen-chat", title="Spec name",
                           description="Name of this spec; reports and artifacts are grouped by it.")
    profile: Literal["local", "ack"] = Field(
        "local", title="Profile", description="local: the test bed on this machine; ack: a real cluster.")
    model: ModelSpec = Field(default_factory=ModelSpec, title="Model", description=ModelSpec.__doc__)
    storage: StorageSpec = Field(default_factory=StorageSpec, title="Storage",
                                 description=StorageSpec.__doc__)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, title="Cluster",
                                 description=ClusterSpec.__doc__)
    service: ServiceSpec = Field(default_factory=ServiceSpec, title="Service",
                                 description=ServiceSpec.__doc__)
    ingress: IngressSpec = Field(default_factory=IngressSpec, title="Ingress",
                                 description=IngressSpec.__doc__)
    load: LoadSpec = Field(default_factory=LoadSpec, title="Load", description=LoadSpec.__doc__)
    slo: list[SloRule] = Field(default_factory=_default_slo, max_length=100, title="SLO gate rules",
                               description="Rules the gate judges the run by.")
    cost: CostSpec = Field(default_factory=CostSpec, title="Cost", description=CostSpec.__doc__)
    teardown: TeardownSpec = Field(default_factory=TeardownSpec, title="Teardown",
                                   description=TeardownSpec.__doc__)
    stages: list[StageName] | None = Field(
        None, title="Stages",
        description=f"Stages to run by default ({', '.join(STAGE_NAMES)}); empty runs all; "
                    "--stages overrides it.")

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            dupes = sorted({s for s in value if value.count(s) > 1})
            if dupes:
                raise ValueError(f"lists {', '.join(dupes)} more than once")
        return value

    @model_validator(mode="after")
    def _whole(self) -> RolloutSpec:
        st = self.storage
        if st.kind == "oss":
            for field in ("bucket", "endpoint"):
                if not getattr(st.oss, field):
                    raise _FieldError(f"storage.oss.{field}", "required when storage.kind is 'oss'")
        else:
            if not st.nas.server:
                raise _FieldError("storage.nas.server", "required when storage.kind is 'nas'")
        if st.pv_name is None:
            pv = f"{st.pvc_name}-{self.cluster.namespace}"
            st.pv_name = pv if len(pv) <= 63 else st.pvc_name
        if self.ingress.host is None:
            self.ingress.host = f"{self.service.name}-{self.cluster.namespace}.example.com"
        argv = shlex.split(self.service.command)  # parseable: checked by ServiceSpec
        if any("vllm" in a for a in argv[:4]):
            served = _flag(argv, "--served-model-name")
            if served is not None and served != self.model.served_name:
                raise _FieldError("model.served_name", f"{self.model.served_name!r} differs from "
                                                       f"--served-model-name {served!r} in service.command")
            model_path = _flag(argv, "--model")
            if model_path and model_path.startswith("/"):
                mount = st.mount_path.rstrip("/") + "/"
                if not (model_path.rstrip("/") + "/").startswith(mount):
                    raise _FieldError("service.command", f"--model {model_path} is outside "
                                                         f"storage.mount_path {st.mount_path}")
        if self.load.shape == "tidal" and self.load.tidal is None:
            self.load.tidal = TidalSpec()
        return self

    def to_yaml(self) -> str:
        """The spec as YAML that ``load_spec`` reads back to an equal spec."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True),
                              sort_keys=False, allow_unicode=True, width=100)


# -- loading ---------------------------------------------------------------------------------
class _YamlLimit(Exception):
    pass


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that bounds aliases (alias bombs) and rejects duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise _YamlLimit(f"more than {MAX_YAML_ALIASES} YAML aliases (line {mark.line + 1}); "
                                 f"anchors/aliases are limited to refuse alias bombs")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise _YamlLimit(f"duplicate key {key_node.value!r} "
                                         f"(line {key_node.start_mark.line + 1})")
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> Any:
    loader = _GuardedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_error(source: str, exc: BaseException) -> SpecError:
    if isinstance(exc, _YamlLimit):
        return SpecError(f"spec {source}: {exc}")
    if isinstance(exc, RecursionError):
        return SpecError(f"spec {source}: YAML nested too deeply")
    mark = getattr(exc, "problem_mark", None)
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = ", ".join(p for p in parts if p) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return SpecError(f"spec {source}: invalid YAML{where}: {problem}")


def _short(path: str, limit: int = 80) -> str:
    return path if len(path) <= limit else path[: limit - 3] + "..."


def _check_tree(data: Any, source: str) -> None:
    """Bound the input before validating it: nodes (expanded aliases), depth, string length."""
    count = 0
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SpecError(f"spec {source}: more than {MAX_NODES} values (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise SpecError(f"spec {source}: {_short(path) or 'document'}: nested more than "
                            f"{MAX_DEPTH} levels")
        if isinstance(node, str):
            if len(node) > MAX_STRING_CHARS:
                raise SpecError(f"spec {source}: {_short(path) or 'document'}: string too long "
                                f"({len(node)} chars > {MAX_STRING_CHARS})")
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                    raise SpecError(f"spec {source}: {_short(path) or 'document'}: key too long "
                                    f"({len(key)} chars > {MAX_STRING_CHARS})")
                stack.append((value, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                stack.append((value, f"{path}[{i}]", depth + 1))


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _model_at(path: list[str | int]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = RolloutSpec
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
    return model


_UNION_TAGS = {"bool", "int", "float", "str", "list", "dict", "none", "[key]"}


def _clean_loc(loc: tuple[Any, ...]) -> list[str | int]:
    return [p for p in loc if isinstance(p, int)
            or (p not in _UNION_TAGS and not str(p).startswith("function-"))]


def _format_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe_error(err: Mapping[str, Any]) -> tuple[str, str]:
    loc = _clean_loc(tuple(err.get("loc", ())))
    ctx = err.get("ctx") or {}
    kind = err.get("type", "")
    cause = ctx.get("error")
    if isinstance(cause, _FieldError):
        loc = loc + [p for p in cause.field.split(".")]
    path = _format_path(loc)
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else "?"
        return path, f"unknown field (allowed: {allowed})"
    if kind == "missing":
        return path, "required field is missing"
    if kind == "string_too_long":
        size = len(err["input"]) if isinstance(err.get("input"), str) else "?"
        return path, f"too long ({size} chars > {ctx.get('max_length')})"
    msg = str(err.get("msg", "invalid"))
    if kind == "value_error":
        return path, msg.removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    if "credentials" in loc or kind == "string_too_short":
        return path, msg
    return path, f"{msg} (got {_show(err.get('input'))})"


def _spec_error(source: str, exc: ValidationError) -> SpecError:
    seen: list[tuple[str, str]] = []
    for err in exc.errors():
        item = _describe_error(err)
        if item not in seen:
            seen.append(item)
    path, message = seen[0]
    more = f" (+{len(seen) - 1} more)" if len(seen) > 1 else ""
    where = f"{path}: " if path else ""
    return SpecError(f"spec {source}: {where}{message}{more}")


def spec_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> RolloutSpec:
    """Validate a mapping (parsed YAML, a Prefect parameter) into a RolloutSpec.

    Raises ``SpecError`` with one line naming ``source`` and the first bad field.
    """
    if isinstance(data, RolloutSpec):
        return data
    if not isinstance(data, Mapping):
        raise SpecError(f"spec {source}: top level must be a mapping of sections "
                        f"(got {type(data).__name__})")
    _check_tree(data, source)
    try:
        return RolloutSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise _spec_error(source, exc) from None


def _split_key(key: str, item: str, source: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in key.split("."):
        if not raw:
            raise SpecError(f"spec {source}: --set {item[:80]!r}: empty path segment")
        parts.append(int(raw) if raw.isdigit() else raw)
    return parts


def _default_container(path: list[str | int]) -> Any:
    """What an absent section starts as before an override descends into it: the field's
    default list (so ``slo.0.threshold=...`` edits the default rules) or an empty mapping."""
    model = _model_at(path[:-1])
    field = model.model_fields.get(str(path[-1])) if model else None
    if field is not None:
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            return [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
    return {}


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "<dict>") -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to a copy of ``data``.

    List items are addressed by index (``slo.0.threshold=0.02``); missing sections are created.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"spec {source}: --set {item[:80]!r}: expected key.path=value")
        if len(raw) > MAX_STRING_CHARS:
            raise SpecError(f"spec {source}: --set {key}: value too long ({len(raw)} chars > "
                            f"{MAX_STRING_CHARS})")
        try:
            value = _parse_yaml(raw) if raw.strip() else None
        except (yaml.YAMLError, _YamlLimit, RecursionError) as exc:
            raise SpecError(f"spec {source}: --set {key}: value is not valid YAML "
                            f"({_yaml_error('', exc).args[0].split(': ', 1)[-1]})") from None
        parts = _split_key(key, item, source)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = _format_path(parts[: i + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise SpecError(f"spec {source}: --set {key}: {where}: no such list item "
                                    f"(the list has {len(node)})")
            elif isinstance(node, dict):
                part = str(part)
                if not last and not isinstance(node.get(part), (dict, list)):
                    if node.get(part) is not None:
                        raise SpecError(f"spec {source}: --set {key}: {where} is a value, not a section")
                    node[part] = _default_container(parts[: i + 1])
            else:
                raise SpecError(f"spec {source}: --set {key}: cannot descend into {where}")
            if last:
                node[part] = value
            else:
                node = node[part]
    return out


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> RolloutSpec:
    """Read a YAML spec file, apply ``--set key.path=value`` overrides, validate.

    Raises ``SpecError`` (one line naming the file and the field) for anything wrong: unreadable
    or oversized file, invalid YAML, alias bombs, duplicate keys, unknown or invalid fields.
    """
    source = str(path)
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"spec {source}: cannot read: {exc.strerror or exc}") from None
    if len(blob) > MAX_FILE_BYTES:
        raise SpecError(f"spec {source}: file too large (more than {MAX_FILE_BYTES} bytes)")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec {source}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = _parse_yaml(text)
    except (yaml.YAMLError, _YamlLimit, RecursionError) as exc:
        raise _yaml_error(source, exc) from None
    if data is None:
        raise SpecError(f"spec {source}: file is empty")
    if not isinstance(data, dict):
        raise SpecError(f"spec {source}: top level must be a mapping of sections "
                        f"(got {type(data).__name__})")
    _check_tree(data, source)
    return spec_from_dict(apply_overrides(data, overrides, source), source)


__all__ = [
    "ClusterSpec", "IngressSpec", "LoadSpec", "ModelSpec", "NasSpec", "OssCredentials", "OssSpec",
    "ResourcePolicyOptions", "RolloutSpec", "STAGE_NAMES", "ServiceSpec", "SloRule", "StorageSpec",
    "TeardownSpec", "TidalSpec", "apply_overrides", "load_spec", "spec_from_dict",
]
