"""``tidegate report open RUN`` and ``tidegate report compare RUN RUN`` (issue 23): both read recorded
runs (report.json and CSVs, as ``tests.unit.test_dashboard.synthetic_run`` writes them); a run that
cannot be read exits 2 with one line naming it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tasks.report import change_pct, compare_html, compare_runs, open_run, read_run
from tests.unit.test_dashboard import HAND_EVENTS, synthetic_run

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Run A as synthetic_run writes it; run B a copy, slower and dearer, with scale events, failed."""
    a = synthetic_run(tmp_path / "a")
    b = synthetic_run(tmp_path / "b")
    doc = json.loads((b / "report.json").read_text())
    doc["run_id"], doc["verdict"] = "synthetic-run-b", "fail"
    doc["load"]["ttft_p95_ms"] = doc["load"]["ttft_p95_ms"] * 1.3
    doc["load"]["slo_attainment"] = 0.8
    doc["gate"][0].update(status="fail", value=2000.0)
    doc["elasticity"]["scale_events"] = HAND_EVENTS
    doc["cost"]["cost_run"] = 0.5
    (b / "report.json").write_text(json.dumps(doc))
    doc_a = json.loads((a / "report.json").read_text())
    doc_a["cost"]["cost_run"] = 0.4
    (a / "report.json").write_text(json.dumps(doc_a))
    target = tmp_path / "b" / "synthetic-run-b"
    b.rename(target)
    return a, target


def test_change_pct():
    assert change_pct(100, 130) == 30.0 and change_pct(0.4, 0.5) == 25.0 and change_pct(-2, -1) == 50.0
    assert change_pct(0, 5) is None and change_pct(None, 5) is None and change_pct(1, None) is None
    assert change_pct(True, 2) is None


def test_compare_runs_puts_key_figures_side_by_side_with_the_change(tmp_path):
    a, b = two_runs(tmp_path)
    cmp = compare_runs(read_run(a), read_run(b))
    assert [r["verdict"] for r in cmp["runs"]] == ["pass", "fail"]
    assert [r["run_id"] for r in cmp["runs"]] == ["synthetic-run", "synthetic-run-b"]
    assert cmp["runs"][1]["gate"][0]["status"] == "fail"
    fig = {f["key"]: f for f in cmp["figures"]}
    assert {"load.requests", "load.error_rate", "load.ttft_p50_ms", "load.ttft_p95_ms", "load.e2e_p95_ms",
            "load.slo_attainment", "load.request_goodput_rps", "elasticity.hpa_max_replicas",
            "elasticity.cloud_pods_max", "elasticity.time_to_first_cloud_pod_ready_s",
            "elasticity.scale_up_total_s", "cost.cost_run", "cost.cost_per_million_good_output_tokens",
            "cost.hybrid_cost_per_day"} == set(fig)
    assert fig["load.ttft_p95_ms"]["change_pct"] == pytest.approx(30.0, abs=0.1)
    assert fig["load.slo_attainment"]["change_pct"] == pytest.approx(-11.1, abs=0.1)
    assert fig["cost.cost_run"]["change_pct"] == 25.0
    assert fig["load.requests"]["change_pct"] == 0.0
    # derived: the longest scale-up's total; A has no scale event
    assert fig["elasticity.scale_up_total_s"]["first"] is None and fig["elasticity.scale_up_total_s"]["second"] == 25.0
    assert fig["elasticity.scale_up_total_s"]["change_pct"] is None


def test_compare_page_is_self_contained_with_verdicts_figures_and_both_dashboards(tmp_path):
    a, b = two_runs(tmp_path)
    doc = compare_html(read_run(a), read_run(b))
    assert "synthetic-run vs synthetic-run-b" in doc
    assert "<td class='pass'><b>PASS</b></td><td class='fail'><b>FAIL</b></td>" in doc
    row = re.search(r"<tr><td>TTFT p95 \(ms\).*?</tr>", doc).group(0)
    assert "+30.0%" in row
    assert "<tr><td>cost of the run" in doc and "+25.0%" in doc
    dash = doc.split("id='dashboards'", 1)[1]
    assert dash.count("data:image/png;base64,") == 2
    assert "http://" not in doc.replace("http://www.w3.org", "") and "https://" not in doc


def test_report_open_renders_again_into_the_run_directory(tmp_path, capsys, monkeypatch):
    a, _ = two_runs(tmp_path)
    (a / "report.html").write_text("stale")
    page = open_run(a)
    assert page == a / "report.html" and "id='dashboard'" in page.read_text()
    (a / "report.html").write_text("stale")
    opened = []
    import webbrowser

    monkeypatch.setattr(webbrowser, "open", lambda uri: opened.append(uri) or True)
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "a"))
    assert main(["report", "open", "synthetic-run", "--browser"]) == 0  # a run id under the reports dir
    assert capsys.readouterr().out.strip() == str(tmp_path / "a" / "synthetic-run" / "report.html")
    assert "data:image/png;base64," in page.read_text()
    assert opened == [page.resolve().as_uri()]


def test_report_compare_cli_writes_the_page_and_prints_json(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    assert main(["report", "compare", str(a), str(b)]) == 0
    default = b / "compare-synthetic-run-vs-synthetic-run-b.html"
    assert capsys.readouterr().out.strip() == str(default) and default.is_file()
    out = tmp_path / "cmp.html"
    assert main(["report", "compare", str(a), str(b), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and "id='figures'" in out.read_text()
    assert main(["report", "compare", str(a), str(b), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in doc["runs"]] == ["pass", "fail"]
    assert {f["key"]: f["change_pct"] for f in doc["figures"]}["cost.cost_run"] == 25.0


def test_report_cli_exit_2_naming_the_run_that_cannot_be_read(tmp_path):
    a, _ = two_runs(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "report.json").write_text("{not json")
    invalid = tmp_path / "invalid"
    invalid.mkdir()
    (invalid / "report.json").write_text(json.dumps({"run_id": 3}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", "report", *args], check=False,
                              capture_output=True, text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, "TIDEGATE_REPORTS_DIR": str(tmp_path)})

    for args, named in ((("compare", str(a), str(tmp_path / "nope")), str(tmp_path / "nope")),
                        (("compare", str(broken), str(a)), str(broken)),
                        (("compare", str(a), str(invalid)), str(invalid)),
                        (("open", "no-such-run"), "no-such-run")):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr, done.stderr
    done = cli("compare", str(a))
    assert done.returncode == 2 and "takes 2 runs" in done.stderr
    done = cli("open", str(a), "--check", "x")
    assert done.returncode == 2 and "--check goes with `report schema`" in done.stderr
