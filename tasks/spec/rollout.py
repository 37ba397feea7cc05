"""The whole spec: ``RolloutSpec`` (all sections and the checks across them), the teardown
section and the stage names."""

from __future__ import annotations

import shlex
from typing import Literal

import yaml
from pydantic import ConfigDict, Field, field_validator, model_validator

from tasks.names import SPEC_STAGE_NAMES
from tasks.spec.base import MAX_STRING_CHARS, DnsLabel, _FieldError, _Strict
from tasks.spec.cluster import ClusterSpec
from tasks.spec.cost import CostSpec
from tasks.spec.load import LoadSpec, TidalSpec
from tasks.spec.service import IngressSpec, ServiceSpec, _flag
from tasks.spec.slo import ScoreSpec, SloRule, _default_slo
from tasks.spec.storage import ModelSpec, StorageSpec

STAGE_NAMES = SPEC_STAGE_NAMES
StageName = Literal[SPEC_STAGE_NAMES]  # type: ignore[valid-type]


class TeardownSpec(_Strict):
    """What happens to the run's objects at the end."""

    policy: Literal["always", "on_success", "never"] = Field(
        "always", title="Policy",
        description="always: delete everything the run labelled, also on failure and cancellation; "
                    "on_success: keep it for debugging when the run failed; never: keep it.")
    timeout_s: int = Field(300, ge=1, le=3600, title="Timeout (s)",
                           description="How long teardown waits for the objects to be gone.")


class ResultsSpec(_Strict):
    """Where every run's report directory is kept for history and baselines (``tidegate history``)."""

    store: str | None = Field(
        None, title="Results store", max_length=1024,
        description="A directory, file:///path or oss://bucket/prefix (with storage.oss's credentials); "
                    "unset: $TIDEGATE_RESULTS, else <reports>/.store. Every run is published there after its "
                    "report is written.")
    endpoint: str | None = Field(None, title="OSS endpoint", max_length=1024,
                                 description="For an oss:// store; default storage.oss.endpoint.")
    publish: bool = Field(True, title="Publish runs", description="Publish every run to the store.")
    baseline_runs: int = Field(5, ge=1, le=100, title="Baseline runs",
                               description="Statistical gate rules compare with this many newest runs of the "
                                           "spec in the store that passed the full chain.")


class RolloutSpec(_Strict):
    """One validation run: the model, where it is staged, the cluster, the service, the load,
    the SLO gate and the teardown."""

    model_config = ConfigDict(extra="forbid", str_max_length=MAX_STRING_CHARS, strict=True,
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
    score: ScoreSpec | None = Field(None, title="Score bands", description=ScoreSpec.__doc__)
    cost: CostSpec = Field(default_factory=CostSpec, title="Cost", description=CostSpec.__doc__)
    teardown: TeardownSpec = Field(default_factory=TeardownSpec, title="Teardown",
                                   description=TeardownSpec.__doc__)
    results: ResultsSpec = Field(default_factory=ResultsSpec, title="Results", description=ResultsSpec.__doc__)
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
            model_len = _flag(argv, "--max-model-len")
            if model_len is not None and model_len.isdigit() and self.load.max_tokens > int(model_len):
                raise _FieldError("load.max_tokens", f"{self.load.max_tokens} is above --max-model-len={model_len} "
                                                     "of service.command: vLLM would refuse every request")
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
