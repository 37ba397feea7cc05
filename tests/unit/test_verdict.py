"""Fail closed: no evidence is never a pass. Each path that used to pass without evidence now
ends inconclusive (exit 3) or fail."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from flows.cli import main
from tasks.gate import RuleResult, evaluate, full_chain_passed, inconclusive_reasons, last_passing_report, verdict
from tasks.names import STAGE_NAMES
from tasks.spec import SloRule

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LOCAL = str(ROOT / "examples" / "qwen-chat.local.yaml")


def rule(**kw) -> SloRule:
    return SloRule(**{"rule": "load.ttft_p95_ms", "op": "<=", "threshold": 500, **kw})


def test_no_gate_no_rules_no_data_and_lost_events_are_inconclusive():
    ok = [RuleResult("load.error_rate", "pass", 0.0, 0.01, "<=")]
    assert verdict(ok) == "pass"
    assert verdict(ok, gate_ran=False) == "inconclusive"
    assert verdict([]) == "inconclusive"
    assert inconclusive_reasons([], gate_ran=True) == ["no gate rule was evaluated (the spec's slo is empty)"]
    assert verdict(ok, evidence_gaps=["the observer lost events"]) == "inconclusive"
    assert verdict(evaluate([rule()], {"load": {}})) == "inconclusive"
    # a failure decides: fail wins over inconclusive
    assert verdict(evaluate([rule()], {"load": {}}), failed=True) == "fail"
    assert verdict([*ok, RuleResult("x.y", "fail", 1, 0, "<=")], gate_ran=False) == "fail"


def test_no_data_takes_the_rules_outcome_and_never_passes():
    doc = {"load": {"ttft_p95_ms": None}}
    assert evaluate([rule()], doc)[0].status == "inconclusive"
    assert evaluate([rule(critical=True)], doc)[0].status == "fail"
    assert evaluate([rule(on_no_data="fail", severity="warn")], doc)[0].status == "warn"
    assert evaluate([rule(critical=True, on_no_data="inconclusive")], doc)[0].status == "inconclusive"


def test_a_relative_rule_without_a_comparable_baseline_is_inconclusive():
    doc = {"load": {"ttft_p95_ms": 300}}
    relative = rule(relative=True, threshold=20)
    (none,) = evaluate([relative], doc, baseline=None)
    assert none.status == "inconclusive" and "no baseline" in none.detail
    (zero,) = evaluate([relative], doc, baseline={"load": {"ttft_p95_ms": 0}})
    assert zero.status == "inconclusive"
    (ok,) = evaluate([relative], doc, baseline={"load": {"ttft_p95_ms": 280}})
    assert ok.status == "pass" and ok.detail.startswith("+7.1%")


def _report(root: Path, run: str, verdict_: str, stages: dict[str, str], finished: str) -> None:
    (root / run).mkdir(parents=True)
    (root / run / "report.json").write_text(json.dumps({
        "run_id": run, "spec": "s", "verdict": verdict_, "finished_at": finished,
        "stages": {n: {"status": s} for n, s in stages.items()}}))


def test_only_a_pass_of_the_full_chain_becomes_the_baseline(tmp_path):
    full = {n: "passed" for n in STAGE_NAMES}
    partial = {**full, "stage": "skipped"}
    _report(tmp_path, "old-full", "pass", full, "2026-12-01T00:00:00")
    _report(tmp_path, "newer-partial", "pass", partial, "2026-12-02T00:00:00")
    _report(tmp_path, "newest-warn", "warn", full, "2026-12-03T00:00:00")
    assert not full_chain_passed({"verdict": "pass", "stages": {n: {"status": s} for n, s in partial.items()}})
    assert last_passing_report(tmp_path, "s")["run_id"] == "old-full"


def test_validate_without_a_gate_or_with_nothing_to_judge_exits_3(tmp_path, monkeypatch, capsys):
    """No cluster needed: the gate alone judges an empty report (every figure missing), and a run
    without the gate judges nothing; both are inconclusive, never a pass."""
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    assert main(["validate", "--spec", LOCAL, "--stages", "gate", "--no-prefect"]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tidegate: inconclusive: load.error_rate: no data") and "report.html" in err
    latest = tmp_path / "reports" / "latest"
    rep = json.loads((latest / "report.json").read_text())
    assert rep["verdict"] == "inconclusive" and rep["stages"]["gate"]["status"] == "passed"
    assert all(g["status"] == "inconclusive" for g in rep["gate"])
    cases = ET.parse(latest / "junit.xml").getroot().iter("testcase")
    skipped = [c for c in cases if c.get("classname") == "tidegate.gate"]
    assert skipped and all("inconclusive: no data" in c.find("skipped").get("message") for c in skipped)

    assert main(["validate", "--spec", LOCAL, "--stages", "gate", "--no-prefect", "--set", "slo=[]"]) == 3
    assert "no gate rule was evaluated" in capsys.readouterr().err


def test_a_missing_model_source_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    rc = main(["validate", "--spec", LOCAL, "--stages", "stage", "--no-prefect",
               "--set", f"model.source={tmp_path / 'no-such-model'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "tidegate: model.source: " in err and "does not exist" in err
    assert "started" not in err and not (tmp_path / "reports").exists()


def test_plan_runs_the_preflight_unless_offline(tmp_path, capsys):
    assert main(["plan", "--spec", LOCAL, "--offline"]) == 0
    capsys.readouterr()
    assert main(["plan", "--spec", LOCAL, "--set", f"cluster.kubeconfig={tmp_path / 'absent'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tidegate: ") and "kubeconfig" in err[0]


@pytest.mark.parametrize("bad", ["../x", "a/b", "x\x00y", "A" * 300, "Upper", "-lead", "trail-", ""])
def test_a_run_id_that_is_not_a_dns_label_is_refused_before_anything_is_written(bad, tmp_path, monkeypatch):
    from flows.runid import check_run_id
    from flows.validation import execute
    from tasks.errors import SpecError
    from tasks.spec import load_spec

    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    with pytest.raises(SpecError, match="run_id: .* is not a valid run id"):
        check_run_id(bad)
    with pytest.raises(SpecError, match="run_id"):
        execute(load_spec(LOCAL), ["gate"], bad, use_prefect=False)
    assert not (tmp_path / "reports").exists() and not (tmp_path / "x").exists()
    assert main(["cleanup", f"--run-id={bad}", "--kubeconfig", str(tmp_path / "kc")]) == 2
