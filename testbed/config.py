"""Settings of the test bed: where it keeps its state, which loopback ports it uses, the IDC
and elastic pools' sizes, the autoscaler's timings and the model-server emulator's latency
model.

Defaults suit a 2-core machine. Override them with a YAML file named by
``TIDEGATE_TESTBED_CONFIG`` or with ``tidegate testbed up --set idc.nodes=4``; the effective
settings are written to ``<state_dir>/config.json`` by ``up`` so that ``status`` and ``down``
see what ``up`` used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from testbed.errors import TestbedError
from testbed.realism import PROFILES, Realism


def default_state_dir() -> Path:
    """The local profile's directory (tasks/profile.py): ``up`` writes the kubeconfig there."""
    from tasks.profile import local_profile_dir

    return local_profile_dir()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Ports(_Strict):
    etcd_client: int = Field(22379, ge=1024, le=65535, description="etcd client port")
    etcd_peer: int = Field(22380, ge=1024, le=65535, description="etcd peer port")
    apiserver: int = Field(6443, ge=1024, le=65535, description="kube-apiserver secure port")
    controller_manager: int = Field(10257, ge=1024, le=65535, description="kube-controller-manager secure port")
    scheduler: int = Field(10259, ge=1024, le=65535, description="kube-scheduler secure port")
    kwok: int = Field(10247, ge=1024, le=65535, description="kwok's HTTP server (health, metrics)")
    autoscaler: int = Field(8085, ge=1024, le=65535, description="cluster-autoscaler metrics/health port")
    metrics_adapter: int = Field(6444, ge=1024, le=65535, description="custom.metrics.k8s.io adapter (HTTPS)")
    daemon: int = Field(18080, ge=1024, le=65535, description="test-bed daemon API (replica metrics, status)")
    webhook: int = Field(18443, ge=1024, le=65535, description="test-bed daemon's admission webhook (HTTPS)")
    gateway: int = Field(18000, ge=1024, le=65535, description="HTTP gateway routing by Host to replicas")
    oss: int = Field(18333, ge=1024, le=65535, description="OSS-dialect adapter in front of SeaweedFS")
    seaweed_s3: int = Field(17334, ge=1024, le=65535, description="SeaweedFS S3 port")
    seaweed_master: int = Field(17333, ge=1024, le=65535, description="SeaweedFS master port")
    seaweed_volume: int = Field(17081, ge=1024, le=65535, description="SeaweedFS volume port")
    seaweed_filer: int = Field(17888, ge=1024, le=65535, description="SeaweedFS filer port")
    kserve_probe: int = Field(19081, ge=1024, le=65535,
                              description="upstream KServe manager's health probe (kserve.controller=upstream)")
    kserve_webhook: int = Field(19443, ge=1024, le=65535,
                                description="upstream KServe manager's webhook server (kserve.controller=upstream)")
    replica_base: int = Field(20000, ge=1024, le=60000, description="first port handed to model-server emulators")

    @model_validator(mode="after")
    def _distinct(self) -> "Ports":
        return _check_ports(self)


def _check_ports(ports: "Ports") -> "Ports":
    """SeaweedFS also listens on each of its HTTP ports + 10000 (gRPC): no port may be taken twice."""
    taken: dict[int, str] = {}
    for name, port in ports.model_dump().items():
        extra = [port + 10000] if name.startswith("seaweed_") else []
        for p in [port, *extra]:
            if p in taken:
                raise ValueError(f"ports.{name}: port {p} is also used by ports.{taken[p]}")
            if p > 65535:
                raise ValueError(f"ports.{name}: {port} + 10000 (SeaweedFS gRPC) exceeds 65535")
            taken[p] = name
    return ports


class Pool(_Strict):
    nodepool_id: str = Field(description="value of the alibabacloud.com/nodepool-id label")
    edge_worker: bool = Field(description="value of alibabacloud.com/is-edge-worker")
    gpus_per_node: int = Field(1, ge=0, le=16, description="nvidia.com/gpu capacity per node")
    cpu: str = Field("8", description="CPU capacity per node")
    memory: str = Field("32Gi", description="memory capacity per node")
    gpu_product: str = Field("NVIDIA-A10", description="nvidia.com/gpu.product label")


class IdcPool(Pool):
    nodepool_id: str = "np-idc"
    edge_worker: bool = True
    nodes: int = Field(2, ge=0, le=5000, description="number of static IDC GPU nodes")


class ElasticPool(Pool):
    nodepool_id: str = "np-elastic"
    edge_worker: bool = False
    group: str = Field("np-elastic", description="the autoscaler's node group name")
    min_nodes: int = Field(0, ge=0, le=100, description="autoscaler min size of the elastic group")
    max_nodes: int = Field(3, ge=0, le=100, description="autoscaler max size of the elastic group")


class AutoscalerTimings(_Strict):
    scan_interval_s: int = Field(5, ge=1, le=60, description="--scan-interval")
    scale_down_unneeded_s: int = Field(20, ge=0, le=3600, description="--scale-down-unneeded-time")
    scale_down_delay_after_add_s: int = Field(20, ge=0, le=3600, description="--scale-down-delay-after-add")


class EmulatorModel(_Strict):
    """Latency and capacity model of the vLLM emulator (see testbed/emulator.py).

    The defaults are the ``fast`` profile: a lone short request sees TTFT ~60 ms and ITL 20 ms,
    as the test-bed demos have always assumed, but prefill, context and the KV cache now cost
    what they cost on the modelled GPU (A10 24 GiB) with the modelled model (Qwen-7B). The
    per-pod vLLM flags (``--max-model-len``, ``--gpu-memory-utilization``, ``--max-num-seqs``,
    ``--max-num-batched-tokens``, ``--enable-chunked-prefill``) come from the pod's command;
    the vLLM version from its image tag. docs/realism.md ("vLLM emulator calibration") cites the
    published figures the realistic values come from.
    """

    ttft_base_ms: float = Field(60.0, ge=0, description="time to first token of a lone short request "
                                "(scheduling, one forward pass, sampling), without prefill")
    ttft_per_running_ms: float = Field(8.0, ge=0, description="extra TTFT per sequence already running")
    prefill_tokens_per_s: float = Field(4000.0, gt=0, description="prefill throughput: a prompt of N tokens "
                                        "takes N / this seconds; prefills of concurrent arrivals queue")
    itl_base_ms: float = Field(20.0, ge=0.1, description="inter-token latency with one running sequence")
    itl_per_running_ms: float = Field(1.5, ge=0, description="extra ITL per additional running sequence")
    itl_per_1k_context_ms: float | None = Field(
        None, ge=0, description="extra ITL per 1,000 tokens held in the KV cache by the running sequences "
        "(None: the model table's KV bytes per token read at gpu_memory_bandwidth_gb_s)")
    max_num_seqs: int | None = Field(
        None, ge=1, le=4096, description="vLLM's --max-num-seqs when the pod's command does not set it "
        "(None: vLLM's default, 256); more sequences wait in a FIFO queue")
    sm_saturation_seqs: int = Field(16, ge=1, le=4096, description="running sequences at which "
                                    "DCGM_CUSTOM_PROCESS_SM_UTIL reaches 100")
    gpu_memory_gib: float = Field(24.0, gt=0, le=1024, description="GPU memory per replica (A10: 24 GiB)")
    gpu_memory_bandwidth_gb_s: float = Field(600.0, gt=0, description="GPU memory bandwidth (A10: 600 GB/s)")
    non_kv_reserve_gib: float = Field(1.5, ge=0, description="activations, CUDA graphs, allocator slack: "
                                      "GPU memory neither weights nor KV cache")
    model_size: str = Field("qwen-7b", description="the model-size table's entry for a pod whose --model "
                            "names no known model (testbed.emulator.MODEL_SIZES)")
    vllm_version: str | None = Field(None, description="vLLM version when the image tag names none "
                                     "(None: the newest modelled)")
    default_max_tokens: int = Field(64, ge=1, description="output tokens when a request sets no max_tokens")
    load_delay_s: float = Field(2.0, ge=0, description="model-load delay before /health answers 200")


class KServeSettings(_Strict):
    controller: Literal["emulated", "upstream"] = Field(
        "emulated", description="emulated: the test-bed daemon's RawDeployment reconciler (testbed/kserve.py); "
                                "upstream: the real KServe manager, built from its Go module (testbed/kserve_upstream.py)")


class TestbedConfig(_Strict):
    __test__ = False

    state_dir: Path = Field(default_factory=default_state_dir, description="pid files, logs, PKI, etcd data")
    ports: Ports = Field(default_factory=Ports)
    idc: IdcPool = Field(default_factory=IdcPool)
    elastic: ElasticPool = Field(default_factory=ElasticPool)
    autoscaler: AutoscalerTimings = Field(default_factory=AutoscalerTimings)
    emulator: EmulatorModel = Field(default_factory=EmulatorModel)
    kserve: KServeSettings = Field(default_factory=KServeSettings)
    hpa_sync_period_s: int = Field(5, ge=1, le=60, description="kube-controller-manager HPA sync period")
    realism: Realism = Field(default_factory=Realism, description="realism profile (testbed/realism.py): fast "
                             "or ack-gpu, each figure overridable, e.g. realism.node_ready_s=90")

    @property
    def profile(self) -> str:
        return self.realism.profile

    @property
    def timings(self) -> Realism:
        """The realism figures as applied: the ``fast`` profile's HPA/autoscaler figures are this
        test bed's own settings (``hpa_sync_period_s``, ``autoscaler.*``)."""
        a = self.autoscaler
        return self.realism.fill_testbed(hpa_sync_period_s=self.hpa_sync_period_s, scan_interval_s=a.scan_interval_s,
                                         scale_down_unneeded_s=a.scale_down_unneeded_s,
                                         scale_down_delay_after_add_s=a.scale_down_delay_after_add_s)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"


def _apply_set(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise TestbedError(f"--set {assignment!r}: expected key=value, e.g. idc.nodes=4")
    key, value = assignment.split("=", 1)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)


def load_config(overrides: list[str] | None = None, *, saved: bool = False,
                profile: str | None = None) -> TestbedConfig:
    """Defaults <- $TIDEGATE_TESTBED_CONFIG <- ``profile`` <- overrides; with ``saved``, what ``up``
    wrote. ``profile`` (``testbed up --profile``) is a setting on top of the file: the same as
    ``--set realism.profile=NAME``, and the figures of the file's ``realism`` block still apply."""
    data: dict = {}
    path = os.environ.get("TIDEGATE_TESTBED_CONFIG")
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise TestbedError(f"TIDEGATE_TESTBED_CONFIG={path}: {exc.strerror}") from exc
    if profile is not None:
        if profile not in PROFILES:
            raise TestbedError(f"--profile {profile!r}: the profiles are {', '.join(PROFILES)}")
        _apply_set(data, f"realism.profile={profile}")
    for assignment in overrides or []:
        _apply_set(data, assignment)
    try:
        cfg = TestbedConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise TestbedError(f"test bed setting {loc}: {err['msg']}") from exc
    if saved and not overrides and profile is None:
        saved_file = cfg.state_dir / "config.json"
        if saved_file.exists():
            return TestbedConfig.model_validate_json(saved_file.read_text())
    return cfg


def save_config(cfg: TestbedConfig) -> None:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    (cfg.state_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
