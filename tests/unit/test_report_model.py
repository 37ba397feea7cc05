"""The report contract as a model: the committed JSON Schema matches it, a report built from the
stages' own blocks validates against it, and gate rules can name exactly what it fills."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema.validators import validator_for
from pydantic import ValidationError

from tasks.gate import evaluate
from tasks.report_model import (
    CONTRACT_KEYS,
    SCHEMA_VERSION,
    RunReport,
    StageRecord,
    report_schema,
    report_schema_text,
    rule_keys,
)
from tasks.smoke import SmokeCheck, SmokeResult
from tasks.spec import SloRule
from tasks.staging import StagedModel
from tasks.verify import Elasticity, Finding

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "reports" / "schema" / "report.schema.json"


def full_report() -> RunReport:
    staged = StagedModel(bytes=10, files=2, uploaded_bytes=10, skipped_files=0, seconds=0.5, MBps=0.02,
                         uri="oss://b/p/", manifest_key="p/.tidegate-manifest.json", verified=True)
    smoke = SmokeResult(checks=[SmokeCheck("models", True, 0.01, "qwen"), SmokeCheck("chat", True, 0.2, "ok")],
                        ttft_ms=41.5)
    el = Elasticity(hpa_max_replicas=3, idc_pods_max=2, cloud_pods_max=1, scale_in_back_to_idc=True,
                    findings=[Finding("hpa_rescaled", True, "the HPA asked for 3", ["Event SuccessfulRescale"])])
    report = RunReport(run_id="r-1", spec="qwen-chat", profile="local", started_at="2026-12-06T00:00:00+00:00",
                       stages={"smoke": StageRecord(status="passed", seconds=1.0, detail="ok")},
                       staging=staged.report_block(), smoke=smoke.report_block(), elasticity=el.block(),
                       findings=el.findings_block())
    report.gate = [r.report_block() for r in evaluate([SloRule(rule="smoke.ttft_ms", op="<=", threshold=100)],
                                                      report.to_dict())]
    report.fill_definitions()
    return report


def test_the_committed_schema_is_the_models():
    """A change to the contract shows up in review: regenerate with `tidegate report schema`."""
    assert COMMITTED.read_text() == report_schema_text()


def test_a_report_from_the_stages_blocks_validates_against_the_schema():
    schema = report_schema()
    validator_for(schema).check_schema(schema)
    doc = json.loads(json.dumps(full_report().to_dict()))
    errors = list(validator_for(schema)(schema).iter_errors(doc))
    assert errors == []
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["load"] is None and doc["cost"] is None  # stages that did not run leave no figures
    assert "smoke.ttft_ms" in doc["definitions"] and "elasticity.cloud_pods_max" in doc["definitions"]
    assert "load.ttft_p95_ms" not in doc["definitions"]


def test_unknown_keys_are_refused_by_the_model():
    report = full_report()
    with pytest.raises(ValidationError):
        report.elasticity = {**report.elasticity.model_dump(), "cloud_pods_maximum": 1}
    with pytest.raises(ValidationError):
        RunReport(run_id="r", spec="s", profile="local", started_at="t", observe={})


def test_the_contract_keys_lead_each_block():
    assert CONTRACT_KEYS["load"][:2] == ("requests", "failures")
    assert list(full_report().to_dict()["elasticity"])[:len(CONTRACT_KEYS["elasticity"])] == \
        list(CONTRACT_KEYS["elasticity"])


def test_smoke_rules_are_fed_by_the_smoke_block():
    """A smoke.* rule was accepted by the spec but nothing fed it (always "no data")."""
    doc = full_report().to_dict()
    results = evaluate([SloRule(rule="smoke.ok", op="==", threshold=True),
                        SloRule(rule="smoke.ttft_ms", op="<=", threshold=40)], doc)
    assert [(r.status, r.value) for r in results] == [("pass", True), ("fail", 41.5)]


@pytest.mark.parametrize("section", sorted(rule_keys()))
def test_the_spec_accepts_exactly_the_rule_keys_of_the_model(section):
    for key in rule_keys()[section]:
        SloRule(rule=f"{section}.{key}", op="<=", threshold=1)
    with pytest.raises(ValidationError, match="is not a report key"):
        SloRule(rule=f"{section}.no_such_key", op="<=", threshold=1)
