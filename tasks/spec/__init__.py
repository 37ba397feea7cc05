"""The RolloutSpec: everything one validation run needs, as one strict pydantic model.

The same model is the YAML file (``examples/*.yaml``), the Prefect flow's parameter (the UI
form) and the CLI's input. Invariants:

- Unknown keys are rejected everywhere (``extra="forbid"``); every field has a description
  and a default (``None`` where no default can be right, e.g. the OSS bucket).
- Secrets are never values in the spec: only the *names* of environment variables or of a
  Prefect Secret block that hold them (or the path of a credentials file).
- Every error is a :class:`tasks.errors.SpecError` whose one-line message names the source and
  the field path: ``spec x.yaml: service.max_replicas: must be >= service.min_replicas ...``.
- Untrusted input is bounded before it is validated: file size, YAML aliases, nesting depth,
  number of nodes and string length (see the ``MAX_*`` constants).

The package is split by section; this module only re-exports:

    base      limits, regexes, validated string types, ``_Strict``, ``_FieldError``
    storage   ``model`` and ``storage`` (ModelSpec, OssCredentials, OssSpec, NasSpec, StorageSpec)
    cluster   ``cluster`` (ClusterSpec, ResourcePolicyOptions)
    service   ``service`` and ``ingress`` (ServiceSpec, IngressSpec), the seed image and command
    load      ``load`` (LoadSpec, TidalSpec)
    slo       ``slo`` (SloRule) and the report keys its rules may name
    cost      ``cost`` (CostSpec, PoolPrice); the computation is ``tasks.cost``
    rollout   RolloutSpec (the whole spec), TeardownSpec, the stage names
    loader    YAML loading, ``--set`` overrides, one-line errors: load_spec, spec_from_dict

Its modules import each other by module (``from tasks.spec.base import _Strict``), never
through this package, and nothing from ``tasks`` but ``tasks.errors``: ``tasks.spec`` is a leaf
that every stage module can import.

Example::

    spec = load_spec("examples/qwen-chat.local.yaml", overrides=["service.gpus=2"])
    spec.service.predictor_name      # "qwen-chat-predictor"
    spec.ingress.host                # "qwen-chat-default.example.com"
"""

from __future__ import annotations

from tasks.spec.base import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_STRING_CHARS,
    MAX_YAML_ALIASES,
    AbsPath,
    DnsLabel,
    EnvName,
    LabelValue,
    QualifiedName,
    Quantity,
    SafeName,
    _FieldError,
    _label_value,
    _show,
    _show_url,
    _Strict,
)
from tasks.spec.cluster import ClusterSpec, ResourcePolicyOptions
from tasks.spec.cost import MAX_PRICE, CostSpec, PoolPrice
from tasks.spec.load import LengthSpec, LoadSpec, RequestSlo, RequestsSpec, TidalSpec
from tasks.spec.loader import _unwrap_model, apply_overrides, load_spec, spec_from_dict
from tasks.spec.rollout import ResultsSpec, STAGE_NAMES, RolloutSpec, StageName, TeardownSpec
from tasks.spec.service import (
    NATIVE_SCALE_METRICS,
    SEED_COMMAND,
    SEED_IMAGE,
    IngressSpec,
    ServiceSpec,
)
from tasks.spec.slo import OPEN_REPORT_SECTIONS, REPORT_KEYS, ScoreSpec, SloRule
from tasks.spec.storage import (
    MAX_CREDENTIALS_FILE_BYTES,
    ModelSpec,
    NasSpec,
    OssCredentials,
    OssSpec,
    StorageSpec,
)

__all__ = [
    # the models
    "ClusterSpec", "CostSpec", "IngressSpec", "ResultsSpec", "LengthSpec", "LoadSpec", "RequestSlo", "RequestsSpec", "ModelSpec", "NasSpec", "OssCredentials",
    "OssSpec", "PoolPrice", "ResourcePolicyOptions", "RolloutSpec", "ScoreSpec", "ServiceSpec", "SloRule",
    "StorageSpec", "TeardownSpec", "TidalSpec",
    # loading
    "apply_overrides", "load_spec", "spec_from_dict",
    # constants and field types
    "AbsPath", "DnsLabel", "EnvName", "LabelValue", "MAX_CREDENTIALS_FILE_BYTES", "MAX_DEPTH",
    "MAX_FILE_BYTES", "MAX_NODES", "MAX_PRICE", "MAX_STRING_CHARS", "MAX_YAML_ALIASES",
    "NATIVE_SCALE_METRICS", "OPEN_REPORT_SECTIONS", "QualifiedName", "Quantity", "REPORT_KEYS",
    "SEED_COMMAND", "SEED_IMAGE", "STAGE_NAMES", "SafeName", "StageName",
    # private helpers that other modules and tests import from here
    "_FieldError", "_Strict", "_label_value", "_show", "_show_url", "_unwrap_model",
]
