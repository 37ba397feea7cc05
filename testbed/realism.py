"""Realism profiles of the test bed: how long each link of the scale-up/scale-down chain takes.

On the twin a GPU node is Ready about 2 s after the autoscaler asks and a model loads in 2 s;
on ACK the same chain takes minutes. A profile names one timing per link, each with its unit
and its source, and the test bed applies them where the link lives:

=============================  =================================================================
KWOK stages (cluster.py)       ``node_ready_s`` (+ ``node_ready_jitter_s``) before an elastic node
                               turns Ready; ``gpu_allocatable_s`` more before its
                               ``nvidia.com/gpu`` is allocatable (the device plugin)
the daemon's kubelet           ``image_pull_s`` (Pulling -> Pulled) before the container starts,
                               once per node and image (the node's image cache);
                               ``weight_load_s + engine_start_s`` before ``/health`` answers
the daemon's metric feed       ``metric_lag_s``: the adapter is served the per-pod figures as
                               they were that long ago (DCGM -> exporter -> Prometheus -> adapter)
kube-controller-manager        ``hpa_sync_period_s``, ``hpa_downscale_stabilization_s``
cluster-autoscaler             ``ca_scan_interval_s``, ``ca_new_pod_scale_up_delay_s``,
                               ``ca_scale_down_unneeded_s``, ``ca_scale_down_delay_after_add_s``,
                               ``ca_max_node_provision_s``
=============================  =================================================================

Profiles: ``fast`` (today's timings; CI's default: it adds no delay anywhere and passes the
flags the test bed always passed) and ``ack-gpu`` (published ACK / vLLM / Kubernetes figures;
docs/realism.md holds the same table). Any figure can be overridden with what a user measured on
their cluster: ``tidegate testbed up --profile ack-gpu --set realism.node_ready_s=90``; the
figures a user set are listed in ``overridden`` and their source becomes "set by the user".

``image_pull_s`` and ``weight_load_s`` are derived (image size / registry bandwidth, model size /
storage bandwidth of ``weight_storage``) unless set. The HPA/CA figures of ``fast`` are the test
bed's own settings (``hpa_sync_period_s``, ``autoscaler.*``), filled by ``TestbedConfig``.

The resolved table (``document()``) is what the test bed writes to ``<state_dir>/realism.json``
and what ``tidegate testbed status --json`` shows: the run reads it there (the product never
imports this package) to record the profile and project a ``fast`` run onto ``ack-gpu``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROFILES = ("fast", "ack-gpu")
ProfileName = Literal["fast", "ack-gpu"]
REALISM_FILE = "realism.json"
USER = "set by the user (--set realism.<name>=...)"

# -- sources ------------------------------------------------------------------------------------
_K8S_HPA = ("Kubernetes docs, Horizontal Pod Autoscaling: --horizontal-pod-autoscaler-sync-period default 15 s; "
            "--horizontal-pod-autoscaler-downscale-stabilization default 5 m "
            "(https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/)")
_CA_FAQ = ("kubernetes/autoscaler cluster-autoscaler FAQ, 'What are the parameters to CA?' "
           "(https://github.com/kubernetes/autoscaler/blob/master/cluster-autoscaler/FAQ.md)")
_CA_GPU = ("cluster-autoscaler core/static_autoscaler.go: unschedulablePodWithGpuTimeBuffer = 30 s (hard-coded; "
           "the twin runs the same autoscaler, so both profiles have it); autoscaler issue #9126")
_ACK_SCALE = ("Alibaba Cloud ACK docs 'Manually scale node pools' (scale-out: Auto Scaling creates ECS, cloud-init "
              "initialises and registers the node, https://www.alibabacloud.com/help/en/ack/ack-managed-and-ack-"
              "dedicated/user-guide/scale-up-and-down-node-pools); kubernetes/autoscaler #3464 (4-6 min from GPU "
              "node creation to pod running)")
_CA_GPU_UNREADY = ("kubernetes/autoscaler PR #461 / #3464: a GPU node counts as unready until nvidia.com/gpu is "
                   "allocatable (the NVIDIA device plugin registers it after the node is Ready); estimate")
_IMAGE = ("Docker Hub vllm/vllm-openai: several GB compressed per tag (reference/realism-figures.md: a cold-node "
          "pull of 2-5 min is a placeholder to replace with a measurement)")
_REGISTRY = ("estimate: ACR over the VPC to a cold ECS node; measure with `crictl pull` on a new node and set "
             "realism.registry_MBps or realism.image_pull_s")
_MODEL = ("Qwen-7B GPTQ ~5 GB, as the example spec serves (reference/realism-figures.md); Qwen3-32B bf16 is "
          "61 GiB (llm-d-autoscaling proposal gpu-free-overprovisioning.md)")
_OSSFS = ("estimate for ossfs 1.x single-stream sequential read (Alibaba Cloud OSS docs 'ossfs 2.0': 2.0 reads "
          "large files sequentially 3-8.5x faster than 1.0; 'ossfs 1.91.2 direct read': default mode is bounded "
          "by local disk, https://www.alibabacloud.com/help/en/oss/developer-reference/ossfs-2-0); measure it")
_NAS = ("estimate for one NFS client of General-purpose NAS (Alibaba Cloud NAS 'Limits': per file-system read "
        "ceiling 3-20 GB/s, https://help.aliyun.com/en/nas/product-overview/limits; one client reads far less); "
        "measure it")
_ENGINE = ("llm-d/llm-d-autoscaling docs/proposals/gpu-free-overprovisioning.md (https://github.com/llm-d/llm-d-"
           "autoscaling/blob/main/docs/proposals/gpu-free-overprovisioning.md): Qwen3-32B on one H100 reaches /health "
           "in 90.65 s with vLLM defaults, ~37 s tuned (CUDA-graph capture 11.4 s; includes a ~6 s GPFS weight read, "
           "excludes pod start); order of magnitude for a smaller model")
_METRIC = ("NVIDIA dcgm-exporter docs ('Configure Prometheus for DCGM Exporter': scrape_interval 30 s) + Prometheus "
           "scrape 15-30 s + prometheus-adapter query: 15-60 s end to end; 30 s taken")
_IDC_IMAGE = ("assumption: a gated release runs on the IDC pool that serves the model today, whose nodes hold the "
              "vLLM image (imagePullPolicy IfNotPresent); only new cloud nodes pull. Set realism.idc_image=pull for "
              "a fresh IDC pool")
_TWIN = "the twin's own timing (tidegate's fast profile: no delay added)"


class Figure(BaseModel):
    """One timing of a profile: its value, unit, what it is and where the number comes from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The realism setting (``--set realism.<name>=...``).")
    value: float | str | None = Field(description="The value the test bed applies.")
    unit: str = Field(description="s, GB, MB/s or '' for a choice.")
    what: str = Field(description="The link of the chain it times.")
    source: str = Field(description="Where the figure comes from (URL / citation), or 'set by the user'.")


# name -> (unit, what, applied by)
FIGURES: dict[str, tuple[str, str]] = {
    "node_ready_s": ("s", "elastic GPU node: created -> Ready (ECS create, cloud-init, join) [kwok node stage]"),
    "node_ready_jitter_s": ("s", "extra delay drawn uniformly from [0, this] per node [kwok jitter]"),
    "gpu_allocatable_s": ("s", "node Ready -> nvidia.com/gpu allocatable (device plugin) [kwok stage]"),
    "image_size_gb": ("GB", "vLLM image size a new node pulls"),
    "registry_MBps": ("MB/s", "registry -> node pull bandwidth"),
    "image_pull_s": ("s", "image pull, once per node: image_size_gb * 1024 / registry_MBps unless set [kubelet]"),
    "idc_image": ("", "the IDC pool's nodes: cached (they already hold the image) or pull (cold, like cloud nodes) "
                      "[kubelet]"),
    "model_size_gb": ("GB", "model weights the server reads at start"),
    "weight_storage": ("", "where the weights are read from: ossfs or nas"),
    "ossfs_read_MBps": ("MB/s", "ossfs read bandwidth of one node"),
    "nas_read_MBps": ("MB/s", "NAS (NFS) read bandwidth of one node"),
    "weight_load_s": ("s", "weight read: model_size_gb * 1024 / the storage's MB/s unless set [kubelet]"),
    "engine_start_s": ("s", "vLLM engine start after the weights (compile, CUDA graphs, KV cache) [kubelet]"),
    "metric_lag_s": ("s", "age of the per-pod GPU metric the HPA reads (DCGM -> Prometheus -> adapter) [daemon]"),
    "hpa_sync_period_s": ("s", "kube-controller-manager --horizontal-pod-autoscaler-sync-period"),
    "hpa_downscale_stabilization_s": ("s", "--horizontal-pod-autoscaler-downscale-stabilization (an HPA's "
                                           "behavior.scaleDown overrides it)"),
    "ca_scan_interval_s": ("s", "cluster-autoscaler --scan-interval"),
    "ca_gpu_pod_buffer_s": ("s", "autoscaler waits this long after a GPU pod's creation before acting (hard-coded; "
                                 "informational, not applied)"),
    "ca_new_pod_scale_up_delay_s": ("s", "cluster-autoscaler --new-pod-scale-up-delay"),
    "ca_scale_down_unneeded_s": ("s", "cluster-autoscaler --scale-down-unneeded-time"),
    "ca_scale_down_delay_after_add_s": ("s", "cluster-autoscaler --scale-down-delay-after-add"),
    "ca_max_node_provision_s": ("s", "cluster-autoscaler --max-node-provision-time"),
}

# profile -> name -> (value, source); None = the test bed's own setting (filled by TestbedConfig)
_TABLE: dict[str, dict[str, tuple[Any, str]]] = {
    "fast": {
        "node_ready_s": (0.0, _TWIN), "node_ready_jitter_s": (0.0, _TWIN), "gpu_allocatable_s": (0.0, _TWIN),
        "image_size_gb": (0.0, _TWIN), "registry_MBps": (1000.0, _TWIN), "image_pull_s": (None, _TWIN),
        "idc_image": ("pull", _TWIN + "; no pull time anyway"),
        "model_size_gb": (0.0, _TWIN), "weight_storage": ("ossfs", _TWIN), "ossfs_read_MBps": (1000.0, _TWIN),
        "nas_read_MBps": (1000.0, _TWIN), "weight_load_s": (None, _TWIN),
        "engine_start_s": (0.0, "the emulator's emulator.load_delay_s (2 s) is the whole model load"),
        "metric_lag_s": (0.0, _TWIN),
        "hpa_sync_period_s": (None, "the test bed's hpa_sync_period_s"),
        "hpa_downscale_stabilization_s": (300.0, "kube-controller-manager default (the example spec's HPA sets "
                                                 "behavior.scaleDown to 15 s)"),
        "ca_scan_interval_s": (None, "the test bed's autoscaler.scan_interval_s"),
        "ca_gpu_pod_buffer_s": (30.0, _CA_GPU),
        "ca_new_pod_scale_up_delay_s": (0.0, _CA_FAQ + " (default 0 s)"),
        "ca_scale_down_unneeded_s": (None, "the test bed's autoscaler.scale_down_unneeded_s"),
        "ca_scale_down_delay_after_add_s": (None, "the test bed's autoscaler.scale_down_delay_after_add_s"),
        "ca_max_node_provision_s": (120.0, "the test bed's --max-node-provision-time=2m"),
    },
    "ack-gpu": {
        "node_ready_s": (180.0, _ACK_SCALE), "node_ready_jitter_s": (60.0, _ACK_SCALE),
        "gpu_allocatable_s": (30.0, _CA_GPU_UNREADY),
        "image_size_gb": (8.0, _IMAGE), "registry_MBps": (60.0, _REGISTRY), "image_pull_s": (None, _IMAGE),
        "idc_image": ("cached", _IDC_IMAGE),
        "model_size_gb": (5.0, _MODEL), "weight_storage": ("ossfs", "the example spec stages to OSS (ossfs PV)"),
        "ossfs_read_MBps": (100.0, _OSSFS), "nas_read_MBps": (300.0, _NAS), "weight_load_s": (None, _MODEL),
        "engine_start_s": (90.0, _ENGINE), "metric_lag_s": (30.0, _METRIC),
        "hpa_sync_period_s": (15.0, _K8S_HPA), "hpa_downscale_stabilization_s": (300.0, _K8S_HPA),
        "ca_scan_interval_s": (10.0, _CA_FAQ + " (--scan-interval default 10 s)"),
        "ca_gpu_pod_buffer_s": (30.0, _CA_GPU),
        "ca_new_pod_scale_up_delay_s": (0.0, _CA_FAQ + " (default 0 s)"),
        "ca_scale_down_unneeded_s": (600.0, _CA_FAQ + " (default 10 min)"),
        "ca_scale_down_delay_after_add_s": (600.0, _CA_FAQ + " (default 10 min)"),
        "ca_max_node_provision_s": (900.0, _CA_FAQ + " (default 15 min)"),
    },
}


def profile_figure(profile: str, name: str) -> tuple[Any, str]:
    """(value, source) of one figure of a profile as published (before overrides and derivations)."""
    return _TABLE[profile][name]


class Realism(BaseModel):
    """The realism settings of one test bed: a profile and its figures, each overridable.

    A figure left empty takes the profile's value; ``overridden`` lists the ones a user set.

    >>> r = Realism(profile="ack-gpu", node_ready_s=90)
    >>> r.node_ready_s, r.overridden, r.image_pull_s
    (90.0, ['node_ready_s'], 136.5)
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    profile: ProfileName = Field("fast", description="fast (today's timings, CI) or ack-gpu (published figures).")
    overridden: list[str] = Field(default_factory=list, description="Figures set by the user, not the profile.")
    node_ready_s: float = Field(None, ge=0, le=3600, description=FIGURES["node_ready_s"][1])
    node_ready_jitter_s: float = Field(None, ge=0, le=3600, description=FIGURES["node_ready_jitter_s"][1])
    gpu_allocatable_s: float = Field(None, ge=0, le=3600, description=FIGURES["gpu_allocatable_s"][1])
    image_size_gb: float = Field(None, ge=0, le=200, description=FIGURES["image_size_gb"][1])
    registry_MBps: float = Field(None, gt=0, le=100000, description=FIGURES["registry_MBps"][1])
    image_pull_s: float = Field(None, ge=0, le=7200, description=FIGURES["image_pull_s"][1])
    idc_image: Literal["cached", "pull"] = Field(None, description=FIGURES["idc_image"][1])
    model_size_gb: float = Field(None, ge=0, le=4000, description=FIGURES["model_size_gb"][1])
    weight_storage: Literal["ossfs", "nas"] = Field(None, description=FIGURES["weight_storage"][1])
    ossfs_read_MBps: float = Field(None, gt=0, le=100000, description=FIGURES["ossfs_read_MBps"][1])
    nas_read_MBps: float = Field(None, gt=0, le=100000, description=FIGURES["nas_read_MBps"][1])
    weight_load_s: float = Field(None, ge=0, le=7200, description=FIGURES["weight_load_s"][1])
    engine_start_s: float = Field(None, ge=0, le=3600, description=FIGURES["engine_start_s"][1])
    metric_lag_s: float = Field(None, ge=0, le=600, description=FIGURES["metric_lag_s"][1])
    hpa_sync_period_s: float | None = Field(None, ge=1, le=600, description=FIGURES["hpa_sync_period_s"][1])
    hpa_downscale_stabilization_s: float = Field(None, ge=0, le=3600,
                                                 description=FIGURES["hpa_downscale_stabilization_s"][1])
    ca_scan_interval_s: float | None = Field(None, ge=1, le=600, description=FIGURES["ca_scan_interval_s"][1])
    ca_gpu_pod_buffer_s: float = Field(None, ge=0, le=600, description=FIGURES["ca_gpu_pod_buffer_s"][1])
    ca_new_pod_scale_up_delay_s: float = Field(None, ge=0, le=3600,
                                               description=FIGURES["ca_new_pod_scale_up_delay_s"][1])
    ca_scale_down_unneeded_s: float | None = Field(None, ge=0, le=7200,
                                                   description=FIGURES["ca_scale_down_unneeded_s"][1])
    ca_scale_down_delay_after_add_s: float | None = Field(
        None, ge=0, le=7200, description=FIGURES["ca_scale_down_delay_after_add_s"][1])
    ca_max_node_provision_s: float = Field(None, ge=10, le=7200, description=FIGURES["ca_max_node_provision_s"][1])

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        profile = data.get("profile") or "fast"
        if profile not in _TABLE:
            return data  # the Literal reports it, listing the profiles
        if "overridden" not in data:  # a saved config.json carries its own list
            data["overridden"] = sorted(k for k, v in data.items() if k in FIGURES and v is not None)
        derived = {"image_pull_s", "weight_load_s"}
        for name in FIGURES:
            if data.get(name) is None and name not in derived:
                data[name] = _TABLE[profile][name][0]
        size, bw = float(data["image_size_gb"]), float(data["registry_MBps"])
        if data.get("image_pull_s") is None:
            data["image_pull_s"] = round(size * 1024 / bw, 1)
        if data.get("weight_load_s") is None:
            mbps = float(data["ossfs_read_MBps"] if data["weight_storage"] == "ossfs" else data["nas_read_MBps"])
            data["weight_load_s"] = round(float(data["model_size_gb"]) * 1024 / mbps, 1)
        node_s = float(data["node_ready_s"]) + float(data["node_ready_jitter_s"]) + float(data["gpu_allocatable_s"])
        if "ca_max_node_provision_s" not in data["overridden"] and float(data["ca_max_node_provision_s"]) < node_s + 60:
            # the autoscaler would give up on (and delete) every node the profile makes slow
            data["ca_max_node_provision_s"] = node_s + 120
        return data

    def fill_testbed(self, *, hpa_sync_period_s: float, scan_interval_s: float, scale_down_unneeded_s: float,
                     scale_down_delay_after_add_s: float) -> "Realism":
        """The figures the profile leaves to the test bed's own settings (``fast``), filled from them."""
        own = {"hpa_sync_period_s": hpa_sync_period_s, "ca_scan_interval_s": scan_interval_s,
               "ca_scale_down_unneeded_s": scale_down_unneeded_s,
               "ca_scale_down_delay_after_add_s": scale_down_delay_after_add_s}
        update = {k: float(v) for k, v in own.items() if getattr(self, k) is None}
        return self.model_copy(update=update) if update else self

    @property
    def model_load_s(self) -> float | None:
        """Seconds from container start to ``/health`` 200 (weights + engine); None: the emulator's own
        ``load_delay_s`` (the ``fast`` profile's 2 s)."""
        total = self.weight_load_s + self.engine_start_s
        return total if total > 0 else None

    @property
    def node_delays(self) -> bool:
        """Whether KWOK's node stages need changing (``fast``: no, its stages are left as they were)."""
        return bool(self.node_ready_s or self.node_ready_jitter_s or self.gpu_allocatable_s)

    def source(self, name: str) -> str:
        if name in self.overridden:
            return USER
        if name in ("image_pull_s", "weight_load_s"):
            return _TABLE[self.profile][name][1] + " (derived)"
        return _TABLE[self.profile][name][1]

    def figures(self) -> list[Figure]:
        return [Figure(name=n, value=getattr(self, n), unit=unit, what=what, source=self.source(n))
                for n, (unit, what) in FIGURES.items()]

    def document(self, *, reference: "Realism | None" = None) -> dict[str, Any]:
        """What ``<state_dir>/realism.json`` holds: this profile's figures and, for projections, the
        ``ack-gpu`` figures (``reference``, default: the profile as published)."""
        ref = reference or Realism(profile="ack-gpu")
        return {"profile": self.profile, "overridden": list(self.overridden),
                "figures": [f.model_dump() for f in self.figures()],
                "reference": {"profile": ref.profile, "figures": [f.model_dump() for f in ref.figures()]}}


def table_markdown(profile: str = "ack-gpu") -> str:
    """docs/realism.md's table: every figure of ``fast`` and ``profile`` with its unit and source."""
    fast, other = Realism(profile="fast"), Realism(profile=profile)
    rows = ["| figure | unit | fast | " + profile + " | what | source |", "|---|---|---|---|---|---|"]
    for n, (unit, what) in FIGURES.items():
        fv = getattr(fast, n)
        rows.append(f"| `{n}` | {unit} | {'test bed setting' if fv is None else fv} | {getattr(other, n)} | "
                    f"{what} | {other.source(n)} |")
    return "\n".join(rows)


__all__ = ["FIGURES", "Figure", "PROFILES", "REALISM_FILE", "Realism", "profile_figure", "table_markdown"]
