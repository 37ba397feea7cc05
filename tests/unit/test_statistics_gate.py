"""Statistical gate rules (issue 22): a run's per-request samples against the baseline runs'
(Mann-Whitney U + Hodges-Lehmann shift beyond an allowed increase), a per-run figure against
the baseline runs' distribution, and the same judgement redone on stored runs (`tidegate judge`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.gate import Baselines, evaluate, verdict
from tasks.spec import SloRule

pytestmark = pytest.mark.unit
MW = SloRule(rule="load.ttft_ms", test="mann_whitney", allowed_increase="10%", op="<=")


def _requests(seed: int, scale: float = 1.0, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ttft = rng.lognormal(np.log(200.0), 0.3, n) * scale
    return pd.DataFrame({"ok": [True] * n, "ttft_ms": ttft, "e2e_ms": ttft * 5, "itl_mean_ms": 20.0,
                         "tpot_ms": 22.0})


def _report(run: str, ttfcp: float | None = 42.0) -> dict:
    return {"run_id": run, "spec": "s", "elasticity": {"time_to_first_cloud_pod_ready_s": ttfcp}}


def _baselines(candidate: pd.DataFrame, n: int = 3) -> Baselines:
    return Baselines(candidate_requests=candidate,
                     runs=[(_report(f"base-{i}", 40.0 + i), _requests(100 + i)) for i in range(n)])


def test_statistic_rule_fails_a_shifted_ttft_and_names_the_shift():
    (res,) = evaluate([MW], _report("cand"), history=_baselines(_requests(7, scale=1.3)))
    assert res.status == "fail", res.detail
    assert res.threshold == "+10% vs baseline" and 240 < res.value < 280
    assert "base-0" in res.detail and "%" in res.detail
    assert verdict([res]) == "fail"
    assert res.report_block().threshold == "+10% vs baseline"   # what report.json's gate block holds


def test_statistic_rule_passes_the_same_distribution():
    (res,) = evaluate([MW], _report("cand"), history=_baselines(_requests(8)))
    assert res.status == "pass", res.detail


def test_statistic_rule_without_baseline_is_inconclusive_or_fails_when_critical():
    no_runs = Baselines(candidate_requests=_requests(9), runs=[])
    (res,) = evaluate([MW], _report("cand"), history=no_runs)
    assert res.status == "inconclusive" and "no baseline" in res.detail
    critical = SloRule(rule="load.ttft_ms", test="mann_whitney", allowed_increase=10, critical=True)
    (res,) = evaluate([critical], _report("cand"), history=no_runs)
    assert res.status == "fail"
    (res,) = evaluate([MW], _report("cand"), history=None)   # the gate could not reach a store
    assert res.status == "inconclusive"


def test_statistic_rule_with_too_few_samples_is_inconclusive():
    (res,) = evaluate([MW], _report("cand"), history=_baselines(_requests(10, n=5)))
    assert res.status == "inconclusive", res.detail


def test_statistic_per_run_figure_against_the_baselines_distribution():
    rule = SloRule(rule="elasticity.time_to_first_cloud_pod_ready_s", test="baseline_distribution",
                   allowed_increase=20, op="<=")
    (res,) = evaluate([rule], _report("cand", 63.0), history=_baselines(_requests(1)))
    assert res.status == "fail" and res.value == 63.0, res.detail
    (res,) = evaluate([rule], _report("cand", 43.0), history=_baselines(_requests(1)))
    assert res.status == "pass", res.detail
    (res,) = evaluate([rule], _report("cand", 63.0), history=_baselines(_requests(1), n=2))
    assert res.status == "inconclusive", res.detail   # fewer than 3 baseline runs


def test_statistic_rules_are_checked_in_the_spec():
    with pytest.raises(ValueError, match="per-request sample"):
        SloRule(rule="load.ttft_ms")
    with pytest.raises(ValueError, match="is required with test mann_whitney"):
        SloRule(rule="load.ttft_ms", test="mann_whitney")
    with pytest.raises(ValueError, match="direction"):
        SloRule(rule="load.ttft_ms", test="mann_whitney", allowed_increase=10, op="==", threshold=1)


def test_judge_redoes_a_statistical_rule_on_stored_runs(tmp_path):
    from tasks.history import Store, judge

    store = Store.open(str(tmp_path / "store"))
    stages = {n: {"status": "passed"} for n in ("stage", "prepare", "deploy", "smoke", "spike", "verify", "gate",
                                                  "teardown")}
    for i, scale in enumerate((1.0, 1.0, 1.0, 1.3)):
        run = f"s-2026120{i}-000000-abc{i}"
        d = tmp_path / run
        d.mkdir()
        (d / "report.json").write_text(json.dumps({
            "run_id": run, "spec": "s", "profile": "local", "verdict": "pass", "stages": stages,
            "started_at": f"2026-12-0{i + 1}T00:00:00+00:00", "finished_at": f"2026-12-0{i + 1}T00:10:00+00:00"}))
        _requests(200 + i, scale=scale).to_csv(d / "requests.csv", index=False)
        store.publish(d)
    cand = store.get("s-20261203-000000-abc3")
    bases = [store.get(e.run_id) for e in store.baselines("s", exclude=cand["run_id"])]
    assert len(bases) == 3
    j = judge([MW], cand, bases, requests=store.requests)
    assert j.verdict == "fail" and j.exit_code == 1
    assert "s-20261200-000000-abc0" in j.results[0].detail


def _series(values: list[float]) -> list[dict]:
    return [_report(f"s-{i}", v) for i, v in enumerate(values)]


def test_change_point_at_this_run_warns_and_a_rule_can_fail_it():
    from tasks.gate import change_point_warnings

    rng = np.random.default_rng(3)
    earlier = _series(list(41 + rng.normal(0, 1.5, 20)))
    cand = {**_report("cand", 63.0), "image": "vllm:0.7"}
    hist = Baselines(series=earlier)
    (warn,) = change_point_warnings([], cand, hist)
    assert warn.status == "warn" and warn.rule == "change_point:elasticity.time_to_first_cloud_pod_ready_s"
    assert "regressed from 40.8 to 63 " in warn.detail and "at run cand (image vllm:0.7)" in warn.detail
    rule = SloRule(rule="elasticity.time_to_first_cloud_pod_ready_s", test="change_point", op="<=")
    (res,) = evaluate([rule], cand, history=hist)
    assert res.status == "fail"
    assert change_point_warnings([rule], cand, hist) == []   # the rule decides, no second warning


def test_change_point_needs_a_series_and_ignores_noise_and_improvements():
    from tasks.gate import change_point_warnings

    rng = np.random.default_rng(4)
    flat = _series(list(41 + rng.normal(0, 1.5, 20)))
    assert change_point_warnings([], _report("cand", 42.0), Baselines(series=flat)) == []
    assert change_point_warnings([], _report("cand", 20.0), Baselines(series=flat)) == []   # faster: no warning
    rule = SloRule(rule="elasticity.time_to_first_cloud_pod_ready_s", test="change_point", op="<=")
    (res,) = evaluate([rule], _report("cand", 63.0), history=Baselines(series=flat[:3]))
    assert res.status == "inconclusive" and "needs 5" in res.detail


def test_history_trends_are_drawn_in_the_report():
    from tasks.report import render_html
    from tasks.report_model import RunReport

    rep = RunReport(run_id="cand", spec="s", profile="local", started_at="2026-12-06T00:00:00+00:00")
    series = [{"run_id": f"s-{i}", "load": {"ttft_p95_ms": 150.0 + i},
               "elasticity": {"time_to_first_cloud_pod_ready_s": 40.0 + i % 3}} for i in range(8)]
    doc = render_html(rep, history=Baselines(series=series))
    assert "Trends: the key figures of this spec" in doc and doc.count("data:image/png;base64") == 1
    assert "Trends" not in render_html(rep, history=Baselines(series=series[:1]))   # too short to draw
