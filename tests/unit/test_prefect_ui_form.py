"""The Prefect side without a server: deployment declarations, the UI form (parameter schema),
the gate's state -> exit code mapping and JUnit, and the Kubernetes work pool's job template.

The real server is exercised in tests/integration/test_prefect_deployments.py.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from flows import gatecmd, hooks, outcomes, prefect_admin
from flows.deployments import (
    DEPLOYMENT_NAMES,
    FLOW_NAME,
    DeploymentSettings,
    build_deployments,
    release_spec,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "manifests" / "prefect-k8s-job-template.json"


@pytest.fixture(scope="module")
def deployments():
    return {d.name: d for d in build_deployments(DeploymentSettings())}


def _walk_properties(schema: dict):
    for name, model in schema.get("definitions", {}).items():
        for field, prop in model.get("properties", {}).items():
            yield f"{name}.{field}", prop


# -- declarations ---------------------------------------------------------------------------
def test_deployment_names_schedules_and_entrypoints(deployments):
    assert tuple(deployments) == DEPLOYMENT_NAMES
    assert all(d.flow_name == FLOW_NAME for d in deployments.values())
    nightly = deployments["nightly"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 2 * * *", "UTC")]
    assert nightly.schedules[0].active is True
    assert deployments["manual"].schedules == [] and deployments["release-gate"].schedules == []
    # module entrypoints: a worker imports the installed package, it never copies the project
    assert nightly.entrypoint == "flows.validation.elastic_rollout_validation"
    assert deployments["release-gate"].entrypoint == "flows.deployments.release_gate"
    assert all(d.enforce_parameter_schema for d in deployments.values())
    # a pull step enters the project directory: the worker copies nothing into a temp workspace
    assert {json.dumps(d.storage.to_pull_step()) for d in deployments.values()} == {json.dumps(
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}})}


def test_deployment_nightly_cron_and_timezone_from_config(monkeypatch):
    monkeypatch.setenv("TIDEGATE_NIGHTLY_CRON", "30 1 * * 1-5")
    monkeypatch.setenv("TIDEGATE_NIGHTLY_TIMEZONE", "Asia/Shanghai")
    monkeypatch.setenv("TIDEGATE_WORK_POOL", "gpu-lab")
    nightly = build_deployments()[0]
    assert (nightly.schedules[0].schedule.cron, nightly.schedules[0].schedule.timezone) == \
        ("30 1 * * 1-5", "Asia/Shanghai")
    assert nightly.work_pool_name == "gpu-lab"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("nightly_cron", "every night", "not a valid cron expression"),
    ("nightly_cron", "0 25 * * *", "not a valid cron expression"),
    ("nightly_timezone", "Mars/Olympus", "unknown IANA time zone"),
])
def test_deployment_settings_refuse_bad_schedule(field, value, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        DeploymentSettings(**{field: value})


def test_deployment_register_cli_refuses_bad_cron_with_one_line(capsys):
    from flows.cli import main

    assert main(["deployments", "register", "--cron", "61 * * * *"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nightly_cron" in err[0] and "cron" in err[0]


def test_deployment_nightly_defaults_are_the_nightly_spec(deployments):
    from tasks.spec import load_spec, spec_from_dict

    params = deployments["nightly"].parameters
    assert set(params) == {"spec"}
    spec = spec_from_dict(params["spec"])  # the default round-trips through the strict model
    assert spec == load_spec(ROOT / "examples" / "qwen-chat.local.yaml")
    assert deployments["manual"].parameters == params
    assert deployments["release-gate"].parameters == {"spec_path": "examples/qwen-chat.local.yaml"}


# -- the UI form ----------------------------------------------------------------------------
def test_ui_form_every_spec_field_has_title_and_description(deployments):
    schema = deployments["manual"]._parameter_openapi_schema.model_dump()
    assert schema["properties"]["spec"]["$ref"] == "#/definitions/RolloutSpec"
    assert schema["required"] == ["spec"]
    defs = schema["definitions"]

    def description(prop: dict) -> str | None:  # a nested section shows its model's docstring
        ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
        return prop.get("description") or (defs[ref.rsplit("/", 1)[-1]].get("description") if ref else None)

    missing = [path for path, prop in _walk_properties(schema) if not prop.get("title") or not description(prop)]
    assert missing == []
    assert all(d.get("description") for d in defs.values())


def test_ui_form_order_follows_the_data_flow(deployments):
    schema = deployments["manual"]._parameter_openapi_schema.model_dump()
    top = schema["properties"]
    assert [k for k, _ in sorted(top.items(), key=lambda kv: kv[1]["position"])] == ["spec", "stages", "run_id", "adopt"]
    spec_fields = list(schema["definitions"]["RolloutSpec"]["properties"])
    assert spec_fields[:9] == ["name", "profile", "model", "storage", "cluster", "service", "ingress",
                               "load", "slo"]
    svc = list(schema["definitions"]["ServiceSpec"]["properties"])
    assert svc.index("min_replicas") < svc.index("max_replicas") < svc.index("scale_metric")


def test_ui_form_holds_no_secret_values(deployments, monkeypatch):
    schema = deployments["manual"]._parameter_openapi_schema.model_dump()
    for path, prop in _walk_properties(schema):
        assert prop.get("format") != "password" and not prop.get("writeOnly"), path
    creds = schema["definitions"]["OssCredentials"]["properties"]
    assert set(creds) == {"access_key_id_env", "access_key_secret_env", "secret_block", "file", "secret_name",
                          "create_secret"}
    # with keys in the environment, the registered defaults still hold only their names
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_ID", "LTAI-unit-test-key-id")
    monkeypatch.setenv("TIDEGATE_OSS_ACCESS_KEY_SECRET", "unit-test-secret-value-123")
    fresh = build_deployments()
    blob = json.dumps([d.parameters for d in fresh]) + json.dumps(
        [d._parameter_openapi_schema.model_dump() for d in fresh])
    assert "LTAI-unit-test-key-id" not in blob and "unit-test-secret-value-123" not in blob
    assert "TIDEGATE_OSS_ACCESS_KEY_SECRET" in blob


def test_ui_form_release_gate_parameters(deployments):
    schema = deployments["release-gate"]._parameter_openapi_schema.model_dump()
    props = schema["properties"]
    order = [k for k, _ in sorted(props.items(), key=lambda kv: kv[1]["position"])]
    assert order == ["spec_path", "image", "model_source", "overrides", "stages", "run_id", "spec", "wait_for_cluster"]
    assert all(p.get("description") for p in props.values())
    stage_enum = props["stages"]["anyOf"][0]["items"]["enum"]
    assert {"prepare", "teardown", "gate"} <= set(stage_enum)
    assert schema.get("required", []) == []


def test_release_gate_spec_takes_image_model_and_overrides():
    spec = release_spec(str(ROOT / "examples" / "qwen-chat.local.yaml"), image="registry.example.com/vllm:0.7.0",
                        model_source="oss://models/qwen2", overrides=["service.max_replicas=5"])
    assert spec.service.image == "registry.example.com/vllm:0.7.0"
    assert spec.model.source == "oss://models/qwen2"
    assert spec.service.max_replicas == 5
    inline = release_spec("", image="registry.example.com/vllm:0.7.1", spec=spec)
    assert inline.service.image == "registry.example.com/vllm:0.7.1" and inline.model.source == "oss://models/qwen2"


def test_release_gate_bad_image_is_a_spec_error():
    from tasks.errors import SpecError

    with pytest.raises(SpecError, match="service.image"):
        release_spec(str(ROOT / "examples" / "qwen-chat.local.yaml"), image="not an image")


# -- the gate's mapping ---------------------------------------------------------------------
@pytest.mark.parametrize(("state", "message", "code", "outcome"), [
    ("COMPLETED", "", 0, "error"),
    ("FAILED", "Flow run encountered an exception: GateFailed: gate failed: load.error_rate", 1, "gate-failed"),
    ("FAILED", "Flow run encountered an exception: StageFailed: smoke models: unreachable", 1, "stage-failed"),
    ("FAILED", "Flow run encountered an exception: RunInconclusive: inconclusive: the gate did not run", 3,
     "inconclusive"),
    ("FAILED", "Flow run encountered an exception: ClusterError: cluster.kubeconfig: cannot load", 2, "error"),
    ("FAILED", "Flow run encountered an exception: SpecError: spec x: name: bad", 2, "error"),
    ("FAILED", "Flow run encountered an exception: KeyError: 'x'", 2, "error"),
    ("FAILED", "Validation of flow parameters failed with error: ...", 2, "error"),
    ("CRASHED", "Flow run infrastructure exited with non-zero status code -9.", 2, "crashed"),
    ("CANCELLED", "cancelled by user", 2, "cancelled"),
])
def test_deployment_gate_exit_code_for_state(state, message, code, outcome):
    assert outcomes.exit_code_for_state(state, message) == code
    if state != "COMPLETED":
        assert outcomes.outcome_for_state(state, message) == outcome


def test_deployment_gate_params_parse_json_or_string():
    assert gatecmd.parse_params(["image=repo/vllm:0.7", 'stages=["prepare","teardown"]', "n=3",
                                 "spec_path=examples/x.yaml"]) == {
        "image": "repo/vllm:0.7", "stages": ["prepare", "teardown"], "n": 3, "spec_path": "examples/x.yaml"}
    with pytest.raises(gatecmd.SpecError, match="expected name=value"):
        gatecmd.parse_params(["image"])


@pytest.mark.parametrize(("code", "tag"), [(0, None), (1, "failure"), (2, "error")])
def test_deployment_gate_junit_from_state(code, tag):
    result = gatecmd.GateResult(
        deployment=f"{FLOW_NAME}/release-gate", flow_run_id="1234", flow_run_name="brave-otter",
        state_type={0: "COMPLETED", 1: "FAILED", 2: "CRASHED"}[code], state_name="X",
        message='gate failed: <load.error_rate> & "ttft"', exit_code=code, seconds=12.5,
        run_id="gate-x", report_junit=None)
    doc = ET.fromstring(gatecmd.junit_from_result(result, "http://127.0.0.1:4200"))
    suite = doc.find("testsuite")
    assert suite.get("tests") == "1"
    assert suite.get("failures") == ("1" if code == 1 else "0")
    assert suite.get("errors") == ("1" if code == 2 else "0")
    case = suite.find("testcase")
    assert case.get("time") == "12.500"
    if tag:
        assert "<load.error_rate>" in case.find(tag).get("message")
    else:
        assert case.find("failure") is None and case.find("error") is None
    assert "http://127.0.0.1:4200/runs/flow-run/1234" in case.find("system-out").text


def test_prefect_commands_refuse_without_api_url(capsys, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["gate", "--deployment", "release-gate", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL is not set" in err and "prefect server start" in err


def test_prefect_blocks_create_refuses_missing_env_without_values(capsys, monkeypatch):
    from flows.cli import main

    monkeypatch.delenv("TG_UNIT_NO_SUCH_ID", raising=False)
    monkeypatch.setenv("TG_UNIT_SECRET", "do-not-print-this-123")
    assert main(["blocks", "create", "--access-key-id-env", "TG_UNIT_NO_SUCH_ID",
                 "--access-key-secret-env", "TG_UNIT_SECRET"]) == 2
    out = capsys.readouterr()
    assert "TG_UNIT_NO_SUCH_ID" in out.err and "do-not-print-this-123" not in out.err + out.out


def test_prefect_automation_file_is_valid():
    from prefect.events.schemas.automations import AutomationCore

    data = yaml.safe_load(prefect_admin.AUTOMATION_FILE.read_text())
    auto = AutomationCore.model_validate(data)
    assert auto.trigger.expect == {hooks.FAILED_EVENT}
    assert [a.type for a in auto.actions] == ["send-notification"]


# -- the Kubernetes work pool ---------------------------------------------------------------
@pytest.fixture(scope="module")
def job_template():
    return json.loads(TEMPLATE.read_text())


def test_prefect_k8s_job_template_extends_the_default(job_template):
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    assert set(default["variables"]["properties"]) <= set(job_template["variables"]["properties"])
    assert set(default["job_configuration"]) == set(job_template["job_configuration"])
    import jsonschema

    jsonschema.Draft7Validator.check_schema(job_template["variables"])
    defaults = {k: v["default"] for k, v in job_template["variables"]["properties"].items() if "default" in v}
    jsonschema.validate({**defaults, "image": "registry.example.com/tidegate:0.1.0"}, job_template["variables"])


def test_prefect_k8s_job_template_renders_with_tidegate_service_account(job_template):
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    values = {k: v["default"] for k, v in job_template["variables"]["properties"].items() if "default" in v}
    values["image"] = "registry.example.com/tidegate:0.1.0"
    rendered = apply_values(copy.deepcopy(job_template["job_configuration"]), values)
    config = KubernetesWorkerJobConfiguration.model_validate(rendered)
    pod = config.job_manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tidegate"
    assert pod["automountServiceAccountToken"] is True
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/tidegate:0.1.0"
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    # issue 24: no emptyDir for reports (they go to the results store), the Job runs one pod once
    assert "volumeMounts" not in container and "volumes" not in pod
    assert config.env["TIDEGATE_RESULTS"].startswith("oss://")
    job = config.job_manifest["spec"]
    assert (job["completions"], job["parallelism"]) == (1, 1) and "completions" not in pod
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in config.env)


def test_prefect_k8s_service_account_matches_rbac(job_template):
    """The pool's default ServiceAccount is the one manifests/rbac.yaml grants (via the spec)."""
    from tasks.render import render_rbac
    from tasks.spec import load_spec

    spec = load_spec(ROOT / "examples" / "qwen-chat.ack.yaml")
    sa = [o for o in render_rbac(spec, "r") if o["kind"] == "ServiceAccount"]
    assert [o["metadata"]["name"] for o in sa] == [job_template["variables"]["properties"]
                                                    ["service_account_name"]["default"]]
    bindings = [o for o in render_rbac(spec, "r") if o["kind"].endswith("Binding")]
    assert all(b["subjects"][0]["name"] == "tidegate" for b in bindings)


def test_prefect_docs_cover_operations():
    doc = (ROOT / "docs" / "operations.md").read_text()
    for needle in ("prefect server start", "tidegate deployments register", "tidegate worker",
                   "tidegate gate", "prefect-k8s-job-template.json", "tidegate blocks create",
                   "release-gate", "--watch"):
        assert needle in doc, needle

