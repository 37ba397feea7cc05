"""Issue 22, the results store on a local directory and the `history` / `judge` commands: publish,
list, show, fetch; atomic publication (a publisher killed with SIGKILL leaves nothing listed); a
corrupt entry skipped with a warning; baselines (full-chain passes of the same spec, newest N);
`judge` exit codes on hand-made reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main as cli_main
from tasks.errors import SpecError
from tasks.history import (
    RUNS,
    Store,
    StoreError,
    StoreWarning,
    default_store_url,
    judge,
)
from tasks.names import STAGE_NAMES
from tasks.spec import SloRule

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def make_report(root: Path, run_id: str, *, spec: str = "svc-a", verdict: str = "pass", started: str,
                stages: str | dict[str, str] = "passed", ttft: float | None = 300.0, extra: dict | None = None,
                files: dict[str, str] | None = None) -> Path:
    """A report directory as tasks/report.py writes one (report.json and a few tables)."""
    out = root / run_id
    out.mkdir(parents=True)
    stage_status = stages if isinstance(stages, dict) else {n: stages for n in STAGE_NAMES}
    doc = {"schema_version": "1.4.0", "verdict": verdict, "inconclusive_reasons": [], "run_id": run_id,
           "spec": spec, "profile": "local", "started_at": started, "finished_at": started,
           "stages": {n: {"status": s, "seconds": 1.0, "detail": ""} for n, s in stage_status.items()},
           "load": {"requests": 100, "failures": 0, "error_rate": 0.0, "ttft_p95_ms": ttft},
           "elasticity": {"cloud_pods_max": 1, "time_to_first_cloud_pod_ready_s": 41.0},
           "cost": {"currency": "CNY", "cloud_cost_run": 1.5}, "gate": [], **(extra or {})}
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    (out / "junit.xml").write_text("<testsuites/>\n")
    for name, text in (files or {"requests.csv": "t,ttft_ms\n0,300\n"}).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def reports(tmp_path) -> Path:
    return tmp_path / "reports"


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


def test_history_publish_list_show_fetch_on_a_local_store(reports, store_dir, tmp_path, capsys):
    store = Store.open(str(store_dir))
    assert store.list() == []  # a store that does not exist yet is empty, and is not created by reading
    assert not store_dir.exists()
    a1 = make_report(reports, "a-1", started="2026-12-01T01:00:00+00:00",
                     files={"requests.csv": "x\n1\n", "locust/stats.csv": "s\n"})
    make_report(reports, "a-2", started="2026-12-02T01:00:00+00:00", ttft=350.0)
    make_report(reports, "b-1", spec="svc-b", verdict="fail", started="2026-12-03T01:00:00+00:00")
    entry = store.publish(a1, image="registry/vllm:0.7", commit="abc123")
    assert (entry.run_id, entry.spec, entry.verdict, entry.full_chain_passed) == ("a-1", "svc-a", "pass", True)
    assert entry.figures["load.ttft_p95_ms"] == 300.0 and entry.figures["load.slo_attainment"] is None
    assert entry.figures["elasticity.time_to_first_cloud_pod_ready_s"] == 41.0
    assert entry.figures["cost.cloud_cost_run"] == 1.5 and entry.currency == "CNY"
    assert (entry.image, entry.commit) == ("registry/vllm:0.7", "abc123")
    code, out, _ = cli(capsys, "history", "publish", str(reports / "a-2"), "--store", str(store_dir))
    assert code == 0 and "published run a-2" in out
    store.publish(reports / "b-1")

    assert [e.run_id for e in store.list()] == ["b-1", "a-2", "a-1"]  # newest first
    assert [e.run_id for e in store.list("svc-a")] == ["a-2", "a-1"]
    assert store.entry("a-2").image is None and store.entry("a-2").commit is None  # recorded nowhere
    assert store.get("a-1") == json.loads((a1 / "report.json").read_text())
    assert set(store.files("a-1")) == {"report.json", "junit.xml", "requests.csv", "locust/stats.csv"}
    got = store.fetch("a-1", tmp_path / "fetched")
    assert (got / "locust" / "stats.csv").read_text() == "s\n"
    assert (got / "report.json").read_bytes() == (a1 / "report.json").read_bytes()
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.get("nope")

    code, out, err = cli(capsys, "history", "list", "--store", str(store_dir), "--json", "--spec", "svc-a")
    assert code == 0 and not err
    runs = json.loads(out)["runs"]
    assert [r["run_id"] for r in runs] == ["a-2", "a-1"] and runs[1]["commit"] == "abc123"
    assert runs[0]["figures"]["load.ttft_p95_ms"] == 350.0
    code, out, _ = cli(capsys, "history", "list", "--store", str(store_dir))
    assert code == 0 and out.splitlines()[1].startswith("b-1") and "registry/vllm:0.7" in out
    code, out, _ = cli(capsys, "history", "show", "a-1", "--store", str(store_dir), "--json")
    assert code == 0 and json.loads(out)["run_id"] == "a-1"
    code, out, _ = cli(capsys, "history", "show", "a-1", "--store", str(store_dir))
    assert code == 0 and "run a-1: PASS" in out and "locust/stats.csv" in out and "abc123" in out
    code, _, err = cli(capsys, "history", "show", "nope", "--store", str(store_dir))
    assert code == 2 and "no run 'nope'" in err

    # publishing a run again replaces it (a file it no longer has is gone)
    (a1 / "requests.csv").unlink()
    store.publish(a1)
    assert "requests.csv" not in store.files("a-1") and not (store_dir / RUNS / "a-1" / "requests.csv").exists()


def test_history_list_json_on_an_empty_or_new_store_exits_0(store_dir, capsys):
    code, out, err = cli(capsys, "history", "list", "--store", str(store_dir / "new"), "--json")
    assert (code, json.loads(out), err) == (0, {"runs": []}, "")
    code, out, _ = cli(capsys, "history", "list", "--store", f"file://{store_dir / 'new'}")
    assert code == 0 and "no runs" in out


def test_history_store_url_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("TIDEGATE_RESULTS", raising=False)
    monkeypatch.delenv("TIDEGATE_RESULTS_ENDPOINT", raising=False)
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "r"))
    assert default_store_url() == str(tmp_path / "r" / ".store")
    assert Store.open(None).url == str(tmp_path / "r" / ".store")
    monkeypatch.setenv("TIDEGATE_RESULTS", str(tmp_path / "elsewhere"))
    assert Store.open(None).url == str(tmp_path / "elsewhere")
    with pytest.raises(SpecError, match="no OSS endpoint"):
        Store.open("oss://bucket/prefix")
    with pytest.raises(SpecError, match="expected a directory"):
        Store.open("s3://bucket/prefix")


def _publisher(store_dir: Path, report_dir: Path, flag: Path, patch: str) -> subprocess.Popen:
    """A publisher in a subprocess that stops (sleeps) at ``patch`` after touching ``flag``."""
    code = (
        "import sys, time\nfrom pathlib import Path\nimport tasks.history as h\n"
        "flag = Path(sys.argv[3])\n"
        + {"copy": "orig = h._copy_file\n"
                   "def slow(src, dst):\n    orig(src, dst)\n    flag.touch()\n    time.sleep(120)\n"
                   "h._copy_file = slow\n",
           "marker": "def slow(self, run_id, data):\n    flag.touch()\n    time.sleep(120)\n"
                     "h._LocalBackend.put_marker = slow\n"}[patch]
        + "h.Store.open(sys.argv[1]).publish(sys.argv[2])\n")
    return subprocess.Popen([sys.executable, "-c", code, str(store_dir), str(report_dir), str(flag)], cwd=ROOT)


@pytest.mark.parametrize("where", ["copy", "marker"])
def test_history_publish_killed_mid_write_never_appears(reports, store_dir, tmp_path, where, recwarn):
    report = make_report(reports, "k-1", started="2026-12-01T01:00:00+00:00",
                         files={"requests.csv": "x\n" * 1000, "per_second.csv": "y\n"})
    flag = tmp_path / "flag"
    child = _publisher(store_dir, report, flag, where)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the publisher never reached the kill point"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    store = Store.open(str(store_dir))
    assert store.list() == []
    with pytest.raises(StoreError):
        store.get("k-1")
    if where == "copy":  # the half-written copy sits in .tmp/, never listed, never warned of
        assert list((store_dir / ".tmp").iterdir()) and not (store_dir / RUNS / "k-1").exists()
        assert store.warnings == []
    else:  # the files are in place but the marker is not: skipped, with a warning
        assert (store_dir / RUNS / "k-1" / "report.json").exists()
        assert any("no publication marker" in w for w in store.warnings)
    entry = store.publish(report)  # a later publish works, and clears the dead publisher's leftovers
    assert entry.run_id == "k-1" and [e.run_id for e in store.list()] == ["k-1"] and store.warnings == []
    assert not list((store_dir / ".tmp").iterdir())
    assert store.fetch("k-1", tmp_path / "back").joinpath("requests.csv").read_text() == "x\n" * 1000


def test_history_corrupt_entry_is_skipped_with_a_warning(reports, store_dir, capsys):
    store = Store.open(str(store_dir))
    for i in (1, 2, 3):
        store.publish(make_report(reports, f"c-{i}", started=f"2026-12-0{i}T01:00:00+00:00"))
    (store_dir / RUNS / "c-1" / "report.json").write_text("{not json")
    (store_dir / "index" / "c-2.json").write_text("")
    with pytest.warns(StoreWarning) as caught:
        entries = store.list()
    assert [e.run_id for e in entries] == ["c-3"]
    texts = " | ".join(str(w.message) for w in caught)
    assert "c-1: report.json is not JSON" in texts and "c-2: its marker is not JSON" in texts
    assert len(store.warnings) == 2
    with pytest.raises(StoreError, match="report.json is not JSON"):
        store.get("c-1")
    code, out, err = cli(capsys, "history", "list", "--store", str(store_dir), "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)["runs"]] == ["c-3"]
    assert err.count("tidegate: warning: ") == 2 and "c-1" in err


def test_history_baselines_are_the_newest_full_chain_passes_of_the_spec(reports, store_dir):
    store = Store.open(str(store_dir))
    partial = {n: "passed" for n in STAGE_NAMES} | {"stage": "skipped"}
    runs = [("p1", "svc-a", "pass", "passed"), ("p2", "svc-a", "pass", "passed"), ("f3", "svc-a", "fail", "passed"),
            ("q4", "svc-a", "pass", partial), ("p5", "svc-a", "pass", "passed"), ("o6", "svc-b", "pass", "passed"),
            ("w7", "svc-a", "warn", "passed"), ("p8", "svc-a", "pass", "passed")]
    for i, (run, spec, verdict, stages) in enumerate(runs, start=1):
        store.publish(make_report(reports, run, spec=spec, verdict=verdict, stages=stages,
                                  started=f"2026-12-0{i}T01:00:00+00:00"))
    assert [e.run_id for e in store.baselines("svc-a")] == ["p8", "p5", "p2", "p1"]
    assert [e.run_id for e in store.baselines("svc-a", n=2)] == ["p8", "p5"]
    assert [e.run_id for e in store.baselines("svc-a", n=5, exclude="p8")] == ["p5", "p2", "p1"]
    assert [e.run_id for e in store.baselines("svc-b")] == ["o6"]
    assert store.baselines("svc-c") == []


SPEC = """name: svc-a
storage: {kind: oss, oss: {endpoint: "http://127.0.0.1:1", bucket: tidegate-models}}
slo:
  - {rule: load.ttft_p95_ms, op: "<=", threshold: 500}
  - {rule: load.error_rate, op: "<=", threshold: 0.01}
"""


@pytest.fixture
def judged(reports, store_dir, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    rel = tmp_path / "spec-rel.yaml"
    rel.write_text(SPEC + '  - {rule: load.ttft_p95_ms, op: "<=", threshold: 20, relative: true}\n')
    store = Store.open(str(store_dir))
    for run, verdict, ttft, day in (("base-old", "pass", 200.0, 1), ("base-new", "pass", 250.0, 2),
                                    ("good", "fail", 280.0, 3), ("slow", "fail", 900.0, 4), ("blind", "fail", None, 5)):
        store.publish(make_report(reports, run, verdict=verdict, ttft=ttft, started=f"2026-12-0{day}T01:00:00+00:00"))
    return {"spec": str(spec), "rel": str(rel), "store": str(store_dir)}


def test_judge_exit_codes_pass_fail_inconclusive_and_bad_input(judged, capsys):
    base = ["--store", judged["store"], "--spec", judged["spec"]]
    # "good" was stored as a failure; re-judged by these rules, it passes (nothing is run or written)
    code, out, _ = cli(capsys, "judge", "--candidate", "good", *base)
    assert code == 0 and "PASS good" in out and "load.ttft_p95_ms" in out
    code, out, _ = cli(capsys, "judge", "--candidate", "slow", *base)
    assert code == 1 and "FAIL slow" in out
    code, out, _ = cli(capsys, "judge", "--candidate", "blind", *base)
    assert code == 3 and "no data for this metric" in out
    code, _, err = cli(capsys, "judge", "--candidate", "nope", *base)
    assert code == 2 and "no run 'nope'" in err
    code, _, err = cli(capsys, "judge", "--candidate", "good", "--store", judged["store"])
    assert code == 2 and "--spec FILE is required" in err
    code, _, err = cli(capsys, "judge", "--candidate", "good", "--baseline", "nope", *base)
    assert code == 2 and "no run 'nope'" in err


def test_judge_relative_rules_use_the_first_named_baseline_or_the_default_baselines(judged, capsys):
    base = ["--store", judged["store"], "--spec", judged["rel"], "--json"]
    code, out, _ = cli(capsys, "judge", "--candidate", "good", *base)  # default: base-new (newest full pass)
    doc = json.loads(out)
    assert code == 0 and doc["baseline"] == "base-new" and doc["baselines"] == ["base-new", "base-old"]
    assert doc["rules"][2]["detail"].startswith("+12.0%")
    code, out, _ = cli(capsys, "judge", "--candidate", "good", "--baseline", "base-old,base-new", *base)
    doc = json.loads(out)
    assert code == 1 and doc["baseline"] == "base-old" and doc["rules"][2]["status"] == "fail"  # +40%
    code, out, _ = cli(capsys, "judge", "--candidate", "base-old", *base)  # the candidate is never its own baseline
    assert json.loads(out)["baseline"] == "base-new"


def test_judge_keeps_lost_evidence_and_failed_stages_of_the_candidate():
    rules = [SloRule(rule="load.ttft_p95_ms", op="<=", threshold=500)]
    doc = {"run_id": "r", "spec": "s", "load": {"ttft_p95_ms": 100},
           "stages": {n: {"status": "passed"} for n in STAGE_NAMES},
           "gate": [{"rule": "load.ttft_p95_ms", "status": "inconclusive"}],
           "inconclusive_reasons": ["load.ttft_p95_ms: no data for this metric in the run",
                                    "the observer lost events it could not re-list: watch Events"]}
    j = judge(rules, doc, [])
    assert (j.verdict, j.exit_code) == ("inconclusive", 3)
    assert j.reasons == ["the observer lost events it could not re-list: watch Events"]
    doc["inconclusive_reasons"] = []
    assert judge(rules, doc, []).verdict == "pass"
    doc["stages"]["gate"] = {"status": "failed", "detail": "the old judgement"}  # the judgement being redone
    assert judge(rules, doc, []).verdict == "pass"
    doc["stages"]["spike"] = {"status": "error", "detail": "generator crashed"}
    j = judge(rules, doc, [])
    assert (j.verdict, j.exit_code) == ("fail", 1) and j.reasons == ["stage spike error: generator crashed"]
