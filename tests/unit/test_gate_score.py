"""Keptn's total score (issue 22): critical rules fail the gate alone; the others add up to a
score whose pass/warn bands decide; a scored rule without data never makes a pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import SpecError
from tasks.gate import SCORE_RULE, evaluate, failure_message, inconclusive_reasons, verdict
from tasks.history import judge
from tasks.spec import ScoreSpec, SloRule, load_spec

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
BANDS = ScoreSpec(pass_at=90, warn_at=75)
REPORT = {"load": {"error_rate": 0.0, "ttft_p95_ms": 900.0, "slo_attainment": 0.97},
          "elasticity": {"cloud_pods_max": 1, "scale_in_back_to_idc": True,
                         "time_to_first_cloud_pod_ready_s": 60.0}}


def rules(**over) -> list[SloRule]:
    base = [dict(rule="load.error_rate", op="<=", threshold=0.01, critical=True),
            dict(rule="load.ttft_p95_ms", op="<=", threshold=2000, weight=2),
            dict(rule="load.slo_attainment", op=">=", threshold=0.95, weight=2),
            dict(rule="elasticity.cloud_pods_max", op=">=", threshold=1, weight=3),
            dict(rule="elasticity.scale_in_back_to_idc", op="==", threshold=True, weight=2),
            dict(rule="elasticity.time_to_first_cloud_pod_ready_s", op="<=", threshold=180, weight=1)]
    for r in base:
        r.update(over.get(r["rule"], {}))
    return [SloRule(**r) for r in base]


def judged(report=REPORT, score=BANDS, **over):
    results = evaluate(rules(**over), report, score=score)
    return results, verdict(results), {r.rule: r for r in results}


def test_all_rules_pass_scores_100_and_passes():
    results, v, by = judged()
    assert v == "pass"
    assert by[SCORE_RULE].value == 100.0 and by[SCORE_RULE].status == "pass"
    assert not by["load.error_rate"].scored and by["load.error_rate"].critical
    assert all(by[r].scored for r in by if r not in ("load.error_rate", SCORE_RULE))


def test_one_light_rule_failing_lands_in_the_pass_band_and_the_run_passes():
    # time to first cloud pod (weight 1 of 10) fails: 90% >= 90, the run passes, the rule still says fail
    _, v, by = judged(report={**REPORT, "elasticity": {**REPORT["elasticity"], "time_to_first_cloud_pod_ready_s": 300}})
    assert by["elasticity.time_to_first_cloud_pod_ready_s"].status == "fail"
    assert by[SCORE_RULE].value == 90.0 and by[SCORE_RULE].status == "pass" and v == "pass"
    assert "time_to_first_cloud_pod_ready_s fail" in by[SCORE_RULE].detail


def test_warn_band_and_half_weight_for_a_warning():
    # attainment fails (2 of 10) -> 80%: warn band
    low = {**REPORT, "load": {**REPORT["load"], "slo_attainment": 0.5}}
    _, v, by = judged(report=low)
    assert by[SCORE_RULE].value == 80.0 and v == "warn"
    # the same rule with severity warn earns half its weight: 90% -> pass band
    _, v, by = judged(report=low, **{"load.slo_attainment": {"severity": "warn"}})
    assert by["load.slo_attainment"].status == "warn" and by[SCORE_RULE].value == 90.0 and v == "pass"


def test_score_below_warn_band_fails_and_says_why():
    bad = {**REPORT, "elasticity": {**REPORT["elasticity"], "cloud_pods_max": 0, "scale_in_back_to_idc": False}}
    results, v, by = judged(report=bad)
    assert by[SCORE_RULE].value == 50.0 and by[SCORE_RULE].status == "fail" and v == "fail"
    msg = failure_message(results, [])
    assert msg.startswith("gate failed: gate.score=50.0 (want >= 90") and "cloud_pods_max fail" in msg
    assert "elasticity.cloud_pods_max=0 (want" not in msg   # a scored rule does not fail alone


def test_a_critical_rule_fails_the_run_alone_whatever_the_score():
    _, v, by = judged(report={**REPORT, "load": {**REPORT["load"], "error_rate": 0.2}})
    assert by[SCORE_RULE].value == 100.0 and v == "fail"


def test_a_scored_rule_without_data_leaves_the_score_undecided_never_a_pass():
    nodata = {**REPORT, "load": {k: v for k, v in REPORT["load"].items() if k != "ttft_p95_ms"}}
    results, v, by = judged(report=nodata)
    assert by[SCORE_RULE].status == "inconclusive" and by[SCORE_RULE].value is None and v == "inconclusive"
    reasons = inconclusive_reasons(results, gate_ran=True)
    assert any(r.startswith("load.ttft_p95_ms: ") for r in reasons)
    assert not any(r.startswith(SCORE_RULE) for r in reasons)  # said once, by the rule itself


def test_without_a_score_every_rule_decides_alone():
    _, v, by = judged(score=None, report={**REPORT, "elasticity": {**REPORT["elasticity"],
                                                                   "time_to_first_cloud_pod_ready_s": 300}})
    assert SCORE_RULE not in by and v == "fail"


def test_judge_from_the_store_uses_the_same_score():
    slow = {**REPORT, "run_id": "c", "elasticity": {**REPORT["elasticity"], "time_to_first_cloud_pod_ready_s": 300}}
    j = judge(rules(), slow, [], score=BANDS)
    assert j.verdict == "pass" and any(r.rule == SCORE_RULE and r.value == 90.0 for r in j.results)
    assert judge(rules(), slow, []).verdict == "fail"


def test_score_bands_are_validated_naming_the_field():
    local = ROOT / "examples" / "qwen-chat.local.yaml"
    with pytest.raises(SpecError, match=r"score.warn_at: must be <= pass_at"):
        load_spec(local, ["score={pass_at: 70, warn_at: 80}"])
    assert load_spec(local, ["score={pass_at: 70, warn_at: 60}"]).score.pass_at == 70
    assert load_spec(local).score is None
    with pytest.raises(SpecError, match=r"slo\[0\]\.weight: must be greater than or equal to 1"):
        load_spec(local, ["slo=[{rule: load.error_rate, weight: 0}]"])


def test_junit_and_html_show_a_scored_failure_without_failing_the_ci_job():
    from tasks.report import _rule_line, junit_xml
    from tasks.report_model import RunReport

    results, v, _ = judged(report={**REPORT, "elasticity": {**REPORT["elasticity"], "time_to_first_cloud_pod_ready_s": 300}})
    report = RunReport(run_id="r", spec="s", profile="local", started_at="2026-12-06T00:00:00+00:00", verdict=v, gate=[r.report_block() for r in results])
    xml = junit_xml(report)
    assert 'failures="0"' in xml and "scored fail (weight 1)" in xml
    line = _rule_line(report.gate[-2])
    assert "<b>fail</b> elasticity.time_to_first_cloud_pod_ready_s" in line and "scored, weight 1" in line
