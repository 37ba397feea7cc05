"""RolloutSpec: loading, overrides, field-path errors, input bounds, the bad-spec corpus."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from tasks.errors import CredentialsError, SpecError
from tasks.spec import (
    MAX_FILE_BYTES,
    SEED_COMMAND,
    SEED_IMAGE,
    STAGE_NAMES,
    RolloutSpec,
    apply_overrides,
    load_spec,
    spec_from_dict,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ACK = ROOT / "examples" / "qwen-chat.ack.yaml"
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
BAD_SPECS = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))
BASE: dict[str, Any] = {"storage": {"oss": {"endpoint": "oss-cn-shanghai-internal.aliyuncs.com",
                                            "bucket": "tidegate-models"}}}


def refuse(overrides: list[str], data: dict[str, Any] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(apply_overrides(data or BASE, overrides, "x.yaml"), "x.yaml")
    return info.value.one_line()


# -- the examples ------------------------------------------------------------------------------
def test_ack_example_is_the_seed():
    spec = load_spec(ACK)
    svc = spec.service
    assert spec.profile == "ack"
    assert (svc.image, svc.command) == (SEED_IMAGE, SEED_COMMAND)
    # validated under names of its own, never the seed's production qwen-chat in default
    assert (svc.name, spec.cluster.namespace) == ("qwen-chat-validate", "tidegate-validation")
    assert (svc.gpus, svc.cpu, svc.memory) == (1, "4", "12Gi")
    assert (svc.min_replicas, svc.max_replicas, svc.scale_target) == (1, 3, 50)
    assert svc.scale_metric == "DCGM_CUSTOM_PROCESS_SM_UTIL"
    assert (spec.storage.pvc_name, spec.storage.mount_path) == ("llm-model", "/mnt/models/Qwen")
    # staging uploads from outside (public endpoint); the volume mounts on the nodes (internal)
    assert spec.storage.oss.endpoint == "oss-cn-shanghai.aliyuncs.com"
    assert spec.storage.oss.mount_endpoint == "oss-cn-shanghai-internal.aliyuncs.com"
    assert spec.storage.oss.prefix == "models/Qwen-7B-Chat-Int8"
    assert spec.cluster.placement == "resourcepolicy"
    assert spec.ingress.host == "qwen-chat-validate-tidegate-validation.example.com"
    assert svc.hpa_scale_down_stabilization_s is None


def test_local_example_is_the_test_bed():
    spec = load_spec(LOCAL)
    assert spec.profile == "local"
    assert spec.cluster.kubeconfig is None
    assert spec.storage.oss.endpoint == "http://127.0.0.1:18333"
    assert spec.storage.oss.bucket == "tidegate-models"
    creds = spec.storage.oss.credentials
    assert (creds.access_key_id_env, creds.access_key_secret_env) == (
        "TIDEGATE_OSS_ACCESS_KEY_ID", "TIDEGATE_OSS_ACCESS_KEY_SECRET")
    assert spec.model.source == "examples/models/tiny-qwen"
    assert spec.ingress.url == "http://127.0.0.1:18000"
    assert spec.ingress.host == "qwen-chat-default.example.com"
    assert spec.service.hpa_scale_down_stabilization_s == 15
    load = spec.load
    assert (load.baseline_users, load.spike_users) == (2, 24)
    assert (load.baseline_s, load.spike_s, load.hold_s, load.cooldown_s) == (20, 90, 30, 120)


@pytest.mark.parametrize("path", [ACK, LOCAL], ids=["ack", "local"])
def test_to_yaml_round_trips(path: Path, tmp_path: Path):
    spec = load_spec(path)
    out = tmp_path / "spec.yaml"
    out.write_text(spec.to_yaml())
    assert load_spec(out) == spec


def test_helpers():
    spec = spec_from_dict(BASE)
    assert spec.service.predictor_name == "qwen-chat-predictor"
    assert spec.service.pod_selector == {"app": "isvc.qwen-chat-predictor"}
    assert spec.service.hpa_name == "qwen-chat-hpa"
    assert spec.service.custom_metric
    assert spec.ingress.host == "qwen-chat-default.example.com"
    assert spec.storage.pv_name == "llm-model-default"


def test_host_default_follows_service_name_and_namespace():
    spec = spec_from_dict(apply_overrides(BASE, ["service.name=llama", "cluster.namespace=staging"]))
    assert spec.ingress.host == "llama-staging.example.com"
    assert spec.storage.pv_name == "llm-model-staging"
    explicit = spec_from_dict(apply_overrides(BASE, ["ingress.host=chat.corp.example"]))
    assert explicit.ingress.host == "chat.corp.example"


def _models(model: type[BaseModel], seen: set[type[BaseModel]] | None = None):
    from tasks.spec import _unwrap_model

    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    yield model
    for field in model.model_fields.values():
        inner = _unwrap_model(field.annotation)
        if inner is not None:
            yield from _models(inner, seen)


def test_every_model_is_strict_and_every_field_described():
    for model in _models(RolloutSpec):
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert field.title, f"{model.__name__}.{name} has no title"
            assert not field.is_required(), f"{model.__name__}.{name} has no default"


def test_prefect_form_schema():
    from prefect.utilities.callables import parameter_schema

    def flow(spec: RolloutSpec) -> None: ...

    schema = parameter_schema(flow)
    service = schema.definitions["ServiceSpec"]["properties"]
    assert service["max_replicas"]["description"]
    assert service["max_replicas"]["default"] == 3
    assert list(schema.definitions["RolloutSpec"]["properties"])[:4] == ["name", "profile", "model", "storage"]
    # the form holds no secret values: only where to find them
    creds = schema.definitions["OssCredentials"]["properties"]
    assert set(creds) == {"access_key_id_env", "access_key_secret_env", "secret_block", "file",
                          "secret_name", "create_secret"}


# -- field errors name the field path ----------------------------------------------------------
@pytest.mark.parametrize(("overrides", "expected"), [
    (["name=Bad"], "name: must be a DNS-1123 label"),
    (["profile=prod"], "profile: must be 'local' or 'ack'"),
    (["model.name=../weights"], "model.name: must not contain '/' or '..'"),
    (["model.source=ftp://host/x"], "model.source: URI scheme must be"),
    (["model.served_name="], "model.served_name: must be a valid string"),
    (["storage.kind=s3"], "storage.kind: must be 'oss' or 'nas'"),
    (["storage.oss.bucket=null"], "storage.oss.bucket: required when storage.kind is 'oss'"),
    (["storage.oss.endpoint=ftp://oss"], "storage.oss.endpoint: scheme must be http or https"),
    (["storage.oss.prefix=/abs"], "storage.oss.prefix: must be a relative key prefix"),
    (["storage.oss.credentials.access_key_id_env=1BAD"], "storage.oss.credentials.access_key_id_env:"),
    (["storage.oss.credentials.secret_name=Oss_Secret"], "storage.oss.credentials.secret_name:"),
    (["storage.kind=nas"], "storage.nas.server: required when storage.kind is 'nas'"),
    (["storage.kind=nas", "storage.nas.server=nas.example.com", "storage.nas.path=k8s"],
     "storage.nas.path: must be an absolute path"),
    (["storage.pvc_name=llm/model"], "storage.pvc_name: must not contain '/' or '..'"),
    (["storage.pv_name=a..b"], "storage.pv_name: must not contain '/' or '..'"),
    (["storage.mount_path=/mnt/../etc"], "storage.mount_path: must not contain '..'"),
    (["storage.capacity=lots"], "storage.capacity: must be a Kubernetes quantity"),
    (["cluster.namespace=Default"], "cluster.namespace: must be a DNS-1123 label"),
    (["cluster.namespace=" + "a" * 64], "cluster.namespace: must be at most 63 characters"),
    (["cluster.idc_pool_id=np idc"], "cluster.idc_pool_id: must be a Kubernetes label value"),
    (["cluster.elastic_pool_id=np-idc"], "cluster.elastic_pool_id: must differ from idc_pool_id"),
    (["cluster.placement=eci"], "cluster.placement: must be 'resourcepolicy' or 'affinity'"),
    (["cluster.nodepool_label=not a label"], "cluster.nodepool_label:"),
    (["cluster.resource_policy.elastic_unit=eci"], "cluster.resource_policy.elastic_unit:"),
    (["cluster.resource_policy.idc_max_pods=-1"], "cluster.resource_policy.idc_max_pods:"),
    (["cluster.in_cluster=true", "cluster.context=prod"], "cluster.context: cannot be combined"),
    (["service.name=qwen.chat"], "service.name: must be a DNS-1123 label"),
    (["service.image=has space:1"], "service.image: must be an image reference"),
    (["service.image_pull_policy=Sometimes"], "service.image_pull_policy:"),
    (["service.gpus=-1"], "service.gpus: must be greater than or equal to 0 (got -1)"),
    (["service.gpus=two"], "service.gpus: must be a valid integer"),
    (["service.cpu=4 cores"], "service.cpu: must be a Kubernetes quantity"),
    (["service.min_replicas=0"], "service.min_replicas: must be greater than or equal to 1"),
    (["service.max_replicas=0"], "service.max_replicas: must be greater than or equal to 1"),
    (["service.min_replicas=5", "service.max_replicas=1"],
     "service.max_replicas: must be >= service.min_replicas (5 > 1)"),
    (["service.scale_target=-5"], "service.scale_target: must be > 0 (got -5)"),
    (["service.scale_metric=sm-util"], "service.scale_metric: must be a metric name"),
    (["service.scale_metric=cpu", "service.hpa_scale_down_stabilization_s=15"],
     "service.hpa_scale_down_stabilization_s: needs a custom scale_metric"),
    (["service.port=70000"], "service.port: must be less than or equal to 65535"),
    (["service.port=9000"], "service.command: --port 8080 differs from service.port 9000"),
    (["service.command='python3 -m vllm.entrypoints.openai.api_server --port \"8080'"],
     "service.command: cannot be parsed as a shell command"),
    (["service.hpa_scale_down_stabilization_s=-1"], "service.hpa_scale_down_stabilization_s:"),
    (["service.annotations={a: 1}"], "service.annotations.a: must be a valid string"),
    (["service.labels={servingName: other}"], "service.labels: 'servingName' is set by arena"),
    (["service.labels={team: 'a b'}"], "service.labels.team: must be a Kubernetes label value"),
    (["ingress.url=http://"], "ingress.url: must be an http(s)://host[:port] URL"),
    (["ingress.host=bad_host!"], "ingress.host: must be a host name"),
    (["load.shape=wave"], "load.shape: must be 'spike' or 'tidal'"),
    (["load.spike_users=0"], "load.spike_users: must be greater than or equal to 1"),
    (["load.baseline_users=50", "load.spike_users=10"], "load.spike_users: must be >= load.baseline_users"),
    (["load.spawn_rate=0"], "load.spawn_rate: must be greater than 0"),
    (["load.workers=-1"], "load.workers: must be greater than or equal to 0"),
    (["load.tidal={compress_to_minutes: 0}"], "load.tidal.compress_to_minutes: must be greater than 0"),
    (["slo.0.op=~="], "slo[0].op: must be '<=', '<', '>=', '>' or '=='"),
    (["slo.0.threshold=[1]"], "slo[0].threshold: must be a finite number or true/false"),
    (["slo.0.threshold=.nan"], "slo[0].threshold: must be a finite number or true/false"),
    (["slo.0.rule=latency"], "slo[0].rule: must be a dotted report key"),
    (["slo.0.rule=weather.rain_mm"], "slo[0].rule: section 'weather' unknown"),
    (["slo.0.severity=page"], "slo[0].severity: must be 'fail' or 'warn'"),
    (["slo.3.relative=true"], "slo[3].relative: cannot apply to a true/false threshold"),
    (["teardown.policy=sometimes"], "teardown.policy: must be 'always', 'on_success' or 'never'"),
    (["teardown.timeout_s=0"], "teardown.timeout_s: must be greater than or equal to 1"),
    (["stages=[deploy, deploy]"], "stages: lists deploy more than once"),
    (["stages=[launch]"], "stages[0]: must be 'stage', 'prepare'"),
])
def test_field_errors_name_the_path(overrides: list[str], expected: str):
    message = refuse(overrides)
    assert message.startswith("spec x.yaml: "), message
    assert expected in message, message
    assert "\n" not in message


def test_unknown_key_is_named_with_the_allowed_ones():
    message = refuse([], {**BASE, "service": {"bogus_key": 1}})
    assert message.startswith("spec x.yaml: service.bogus_key: unknown field (allowed: name, image, ")
    assert "max_replicas" in message
    assert refuse([], {**BASE, "servce": {}}).startswith("spec x.yaml: servce: unknown field (allowed: name, ")


def test_unknown_key_error_does_not_echo_the_value():
    data = {"storage": {**BASE["storage"], "oss": {**BASE["storage"]["oss"],
                                                   "credentials": {"access_key_secret": "canary-9f2c"}}}}
    message = refuse([], data)
    assert "storage.oss.credentials.access_key_secret: unknown field" in message
    assert "canary-9f2c" not in message


def test_several_errors_name_the_first_and_count_the_rest():
    message = refuse(["service.gpus=-1", "service.cpu=x", "load.workers=-2"])
    assert message.startswith("spec x.yaml: service.gpus: ")
    assert message.endswith("(+2 more)")


def test_spec_error_is_a_value_error_with_exit_code_2():
    with pytest.raises(ValueError) as info:
        spec_from_dict({})
    assert isinstance(info.value, SpecError) and info.value.exit_code == 2
    assert "storage.oss.bucket" in str(info.value)


def test_non_mapping_input():
    with pytest.raises(SpecError, match=r"spec <dict>: top level must be a mapping"):
        spec_from_dict(["service"])  # type: ignore[arg-type]


def test_the_check_scripts_bad_spec(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("service:\n  min_replicas: 5\n  max_replicas: 1\n  bogus_key: 1\n")
    with pytest.raises(SpecError, match=rf"^spec {bad}: service\.bogus_key: unknown field"):
        load_spec(bad)


def test_min_greater_than_max_from_a_file(tmp_path: Path):
    bad = tmp_path / "x.yaml"
    bad.write_text("storage: {oss: {endpoint: oss.example.com, bucket: abc}}\n"
                   "service: {min_replicas: 5, max_replicas: 1}\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert str(info.value) == f"spec {bad}: service.max_replicas: must be >= service.min_replicas (5 > 1)"


# -- overrides ---------------------------------------------------------------------------------
def test_overrides_parse_yaml_scalars():
    spec = load_spec(LOCAL, ["service.gpus=2", "service.image=registry.example.com/vllm:0.5.0",
                             "load.spawn_rate=2.5", "ingress.verify_tls=false", "slo.1.threshold=1500",
                             "stages=[prepare, deploy, smoke, teardown]", "service.max_replicas=4"])
    assert spec.service.gpus == 2
    assert spec.service.image == "registry.example.com/vllm:0.5.0"
    assert spec.load.spawn_rate == 2.5
    assert spec.ingress.verify_tls is False
    assert spec.slo[1].threshold == 1500
    assert spec.stages == ["prepare", "deploy", "smoke", "teardown"]


def test_override_reaches_default_lists_and_new_sections():
    spec = spec_from_dict(apply_overrides(BASE, ["slo.0.threshold=0.05", "load.tidal.csv_path=t.csv"]))
    assert spec.slo[0].rule == "load.error_rate" and spec.slo[0].threshold == 0.05
    assert len(spec.slo) == 5
    assert spec.load.tidal is not None and spec.load.tidal.csv_path == "t.csv"


def test_overrides_do_not_mutate_their_input():
    data = {"service": {"gpus": 1}}
    apply_overrides(data, ["service.gpus=3"])
    assert data == {"service": {"gpus": 1}}


@pytest.mark.parametrize(("override", "expected"), [
    ("service.gpus", "--set 'service.gpus': expected key.path=value"),
    ("=3", "expected key.path=value"),
    ("service..gpus=1", "empty path segment"),
    ("slo.7.threshold=1", "slo[7]: no such list item (the list has 6)"),
    ("service.gpus.count=1", "service.gpus is a value, not a section"),
    ("service.gpus=[1", "--set service.gpus: value is not valid YAML"),
    ("service.image=" + "x" * 10_000, "--set service.image: value too long"),
])
def test_bad_overrides(override: str, expected: str):
    with pytest.raises(SpecError) as info:
        load_spec(LOCAL, [override] if override != "service.gpus.count=1" else ["service.gpus=1", override])
    assert expected in str(info.value)
    assert str(info.value).startswith(f"spec {LOCAL}: ")


def test_override_validation_error_names_the_file():
    with pytest.raises(SpecError, match=rf"^spec {LOCAL}: service\.gpus: must be greater than"):
        load_spec(LOCAL, ["service.gpus=-3"])


# -- bounded input -----------------------------------------------------------------------------
def test_ten_megabyte_string_refused_quickly():
    start = time.monotonic()
    with pytest.raises(SpecError, match=r"service\.image: string too long \(10485760 chars > 4096\)"):
        spec_from_dict({**BASE, "service": {"image": "x" * 10 * 1024 * 1024}})
    assert time.monotonic() - start < 1.0


def test_ten_megabyte_file_refused_quickly(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_text("service:\n  image: " + "x" * 10 * 1024 * 1024 + "\n")
    start = time.monotonic()
    with pytest.raises(SpecError, match=rf"file too large \(more than {MAX_FILE_BYTES} bytes\)"):
        load_spec(big)
    assert time.monotonic() - start < 1.0


def test_long_string_in_model_constructed_directly():
    # the Prefect UI path validates the model itself, without spec_from_dict's pre-check
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="string_too_long|at most 4096"):
        RolloutSpec.model_validate({**BASE, "load": {"prompt": "p" * 5000}})


def test_anchor_bomb_refused_quickly():
    start = time.monotonic()
    with pytest.raises(SpecError, match="YAML aliases"):
        load_spec(Path(__file__).parent / "bad_specs" / "alias_bomb.yaml")
    with pytest.raises(SpecError, match="alias bomb"):
        load_spec(Path(__file__).parent / "bad_specs" / "alias_bomb_few_aliases.yaml")
    assert time.monotonic() - start < 1.0


def test_bomb_built_in_python_refused_quickly():
    layer: Any = ["lol"] * 10
    for _ in range(9):
        layer = [layer] * 10
    start = time.monotonic()
    with pytest.raises(SpecError, match="alias bomb"):
        spec_from_dict({**BASE, "service": {"labels": {"x": layer}}})
    assert time.monotonic() - start < 1.0


def test_recursive_alias_refused(tmp_path: Path):
    rec = tmp_path / "rec.yaml"
    rec.write_text("service: &s {labels: *s}\n")
    with pytest.raises(SpecError, match="nested more than|alias"):
        load_spec(rec)


def test_deep_nesting_refused(tmp_path: Path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("service: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError, match="nested"):
        load_spec(deep)


def test_a_few_aliases_are_fine(tmp_path: Path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("storage: {oss: {endpoint: oss.example.com, bucket: abc}}\n"
                  "service: {labels: &l {team: llm}, annotations: *l}\n")
    assert load_spec(ok).service.annotations == {"team": "llm"}


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe\x00", "not UTF-8 text"),
    (b"a: 1\n---\nb: 2\n", "expected a single document"),
])
def test_unreadable_files(tmp_path: Path, content: bytes, expected: str):
    f = tmp_path / "s.yaml"
    f.write_bytes(content)
    with pytest.raises(SpecError, match=expected):
        load_spec(f)


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(SpecError, match=r"cannot read: No such file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"cannot read"):
        load_spec(tmp_path)


# -- the corpus --------------------------------------------------------------------------------
def _expectation(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("# expect:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.name} has no '# expect:' line")


def test_corpus_is_big_enough():
    assert len(BAD_SPECS) >= 15


@pytest.mark.parametrize("path", BAD_SPECS, ids=[p.stem for p in BAD_SPECS])
def test_bad_spec_corpus(path: Path):
    expected = _expectation(path)
    start = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = info.value.one_line()
    assert time.monotonic() - start < 1.0
    assert message.startswith(f"spec {path}: "), message
    assert expected in message, message
    assert message == str(info.value), "the message must already be one line"


# -- credentials -------------------------------------------------------------------------------
def test_credentials_from_environment(monkeypatch: pytest.MonkeyPatch):
    creds = load_spec(LOCAL).storage.oss.credentials
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_ID", "canary-id-1b7")
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_SECRET", "canary-secret-8c2")
    key_id, secret = creds.resolve()
    assert isinstance(secret, SecretStr)
    assert (key_id.get_secret_value(), secret.get_secret_value()) == ("canary-id-1b7", "canary-secret-8c2")
    assert "canary" not in repr((key_id, secret))


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch):
    creds = load_spec(LOCAL).storage.oss.credentials
    monkeypatch.delenv("TIDEGATE_OSS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_SECRET", "canary-secret-8c2")
    with pytest.raises(CredentialsError) as info:
        creds.resolve()
    assert "TIDEGATE_OSS_ACCESS_KEY_ID" in info.value.one_line()
    assert "canary" not in info.value.one_line()


def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEGATE_OSS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("TIDEGATE_OSS_ACCESS_KEY_SECRET", raising=False)


def _keys_file(path: Path, key_id: str = "file-id-3d9", secret: str = "canary-file-secret-5e1") -> Path:
    path.write_text(json.dumps({"access_key_id": key_id, "access_key_secret": secret}))
    return path


def test_credentials_environment_wins_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    creds = load_spec(LOCAL).storage.oss.credentials.model_copy(
        update={"file": str(_keys_file(tmp_path / "keys.json"))})
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_ID", "env-id-7a1")
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_SECRET", "env-secret-2f4")
    key_id, secret = creds.resolve(default_file=_keys_file(tmp_path / "default.json"))
    assert (key_id.get_secret_value(), secret.get_secret_value()) == ("env-id-7a1", "env-secret-2f4")


def test_credentials_from_file_when_environment_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _no_env_keys(monkeypatch)
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_ID", "env-id-only-half")  # both are needed
    before = dict(os.environ)
    keys = _keys_file(tmp_path / "keys.json")
    creds = load_spec(LOCAL, [f"storage.oss.credentials.file={keys}"]).storage.oss.credentials
    assert creds.file == str(keys)
    key_id, secret = creds.resolve(default_file=tmp_path / "absent.json")
    assert isinstance(secret, SecretStr)
    assert (key_id.get_secret_value(), secret.get_secret_value()) == ("file-id-3d9", "canary-file-secret-5e1")
    assert dict(os.environ) == before, "resolve must not write os.environ"


def test_credentials_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _no_env_keys(monkeypatch)
    creds = load_spec(LOCAL).storage.oss.credentials
    assert creds.file is None
    key_id, secret = creds.resolve(default_file=str(_keys_file(tmp_path / "testbed.json", "tb-id")))
    assert (key_id.get_secret_value(), secret.get_secret_value()) == ("tb-id", "canary-file-secret-5e1")
    # an explicit file takes the place of the default
    mine = creds.model_copy(update={"file": str(_keys_file(tmp_path / "mine.json", "my-id"))})
    assert mine.resolve(default_file=tmp_path / "testbed.json")[0].get_secret_value() == "my-id"


@pytest.mark.parametrize("content", [
    '{"access_key_id": "id-1", "access_key_secret": "canary-file-secret-5e1"',   # truncated JSON
    '{"access_key_id": "id-1", "secret": "canary-file-secret-5e1"}',             # wrong key
    '{"access_key_id": "", "access_key_secret": "canary-file-secret-5e1"}',      # empty id
    '["canary-file-secret-5e1"]',                                                # not an object
    "access_key_secret: canary-file-secret-5e1",                                 # not JSON
], ids=["truncated", "wrong-key", "empty-id", "list", "yaml"])
def test_bad_credentials_file_names_the_path_not_the_value(
        content: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _no_env_keys(monkeypatch)
    bad = tmp_path / "bad-keys.json"
    bad.write_text(content)
    creds = load_spec(LOCAL).storage.oss.credentials
    with pytest.raises(CredentialsError) as info:
        creds.resolve(default_file=bad)
    message = info.value.one_line()
    assert str(bad) in message and '{"access_key_id": ..., "access_key_secret": ...}' in message
    assert "canary" not in message
    assert info.value.__cause__ is None and "canary" not in repr(info.value.__context__)


def test_missing_credentials_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _no_env_keys(monkeypatch)
    creds = load_spec(LOCAL).storage.oss.credentials.model_copy(
        update={"file": str(tmp_path / "nowhere.json")})
    with pytest.raises(CredentialsError) as info:
        creds.resolve()
    message = info.value.one_line()
    assert "TIDEGATE_OSS_ACCESS_KEY_ID" in message and str(tmp_path / "nowhere.json") in message


@pytest.mark.parametrize(("value", "expected"), [
    ("", "storage.oss.credentials.file: must be a non-empty file path"),
    ("keys\x00.json", "storage.oss.credentials.file: must be a non-empty file path without NUL"),
    ("k" * 1025, "storage.oss.credentials.file: too long (1025 chars > 1024)"),
], ids=["empty", "nul", "long"])
def test_credentials_file_is_validated(value: str, expected: str):
    data = apply_overrides(BASE, [])
    data["storage"]["oss"]["credentials"] = {"file": value}
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, "x.yaml")
    assert expected in info.value.one_line()


def test_stage_names_are_the_literal():
    spec = spec_from_dict({**BASE, "stages": list(STAGE_NAMES)})
    assert spec.stages == list(STAGE_NAMES)


@pytest.mark.parametrize("field", ["storage.checkpoint_dir", "load.tidal.csv_path"])
@pytest.mark.parametrize("value", ["/etc/tidegate", "../../../../../../../../outside", "~/.ssh/known_hosts"])
def test_paths_of_a_spec_stay_inside_the_allowed_directories(field: str, value: str, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDEGATE_PATH_ROOTS", raising=False)
    with pytest.raises(SpecError) as info:
        spec_from_dict(apply_overrides(BASE, [f"{field}={value}"]), "x.yaml")
    assert info.value.one_line().startswith(f"spec x.yaml: {field}: ") and "outside the directories" in str(info.value)
    inside = spec_from_dict(apply_overrides(BASE, [f"{field}=sub/dir"]), "x.yaml")
    assert inside is not None
    monkeypatch.setenv("TIDEGATE_PATH_ROOTS", "/etc")   # a root the operator adds on purpose
    spec_from_dict(apply_overrides(BASE, [f"{field}=/etc/tidegate"]), "x.yaml")


def test_spec_path_of_the_release_gate_is_rooted_too(tmp_path, monkeypatch):
    from flows.release import release_spec

    monkeypatch.delenv("TIDEGATE_PATH_ROOTS", raising=False)
    with pytest.raises(SpecError, match=r"^spec_path: '/etc/passwd' resolves to"):
        release_spec("/etc/passwd")
