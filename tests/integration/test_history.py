"""Issue 22, an OSS-backed results store on the test bed's object store (the real ``oss2`` SDK
through the OSS adapter): two runs of one spec are published, listed, shown and judged against
it; a publisher killed before its marker leaves nothing listed; a corrupt entry is skipped with a
warning. Every test works under its own ``test-history-<uuid>/`` prefix of the bucket
``tidegate-results`` (created when missing) and deletes it afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import oss2
import pytest

from flows.cli import main as cli_main
from tasks.history import Store, StoreWarning
from tasks.names import STAGE_NAMES

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tidegate-results"


@pytest.fixture(scope="module")
def bed(testbed):
    from testbed.objectstore import load_keys, oss_endpoint

    key_id, secret = load_keys(testbed.state_dir)
    endpoint = oss_endpoint(testbed.ports)
    bucket = oss2.Bucket(oss2.Auth(key_id, secret), endpoint, BUCKET, enable_crc=False)
    try:
        bucket.get_bucket_info()
    except oss2.exceptions.NoSuchBucket:
        bucket.create_bucket()
    return {"endpoint": endpoint, "keys": (key_id, secret), "bucket": bucket,
            "credentials_file": str(Path(testbed.state_dir) / "oss-credentials.json")}


@pytest.fixture
def prefix(bed):
    p = f"test-history-{uuid.uuid4().hex[:10]}"
    yield p
    keys = [o.key for o in oss2.ObjectIteratorV2(bed["bucket"], prefix=p + "/")]
    for i in range(0, len(keys), 500):
        bed["bucket"].batch_delete_objects(keys[i:i + 500])


def _report(root: Path, run_id: str, started: str, ttft: float) -> Path:
    out = root / run_id
    (out / "locust").mkdir(parents=True)
    doc = {"schema_version": "1.4.0", "verdict": "pass", "inconclusive_reasons": [], "run_id": run_id,
           "spec": "nightly-it", "profile": "local", "started_at": started, "finished_at": started,
           "stages": {n: {"status": "passed", "seconds": 1.0, "detail": ""} for n in STAGE_NAMES},
           "load": {"requests": 200, "failures": 0, "error_rate": 0.0, "ttft_p95_ms": ttft},
           "elasticity": {"cloud_pods_max": 1, "time_to_first_cloud_pod_ready_s": 41.0}, "gate": []}
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    (out / "requests.csv").write_text("t_s,ttft_ms\n" + "".join(f"{i},{ttft}\n" for i in range(2000)))
    (out / "junit.xml").write_text("<testsuites/>\n")
    (out / "locust" / "stats.csv").write_text("name\n")
    return out


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_oss_store_holds_two_runs_and_list_show_judge_work_against_it(bed, prefix, tmp_path, capsys, monkeypatch):
    url = f"oss://{BUCKET}/{prefix}"
    store = Store.open(url, endpoint=bed["endpoint"], credentials=bed["keys"])
    assert store.list() == []  # a new prefix is an empty store
    first = store.publish(_report(tmp_path, "nightly-it-1", "2026-12-05T01:00:00+00:00", 200.0), commit="c0ffee")
    store.publish(_report(tmp_path, "nightly-it-2", "2026-12-06T01:00:00+00:00", 260.0), image="vllm:0.7")
    assert first.full_chain_passed and first.commit == "c0ffee"
    entries = store.list("nightly-it")
    assert [e.run_id for e in entries] == ["nightly-it-2", "nightly-it-1"]
    assert entries[0].figures["load.ttft_p95_ms"] == 260.0 and entries[0].image == "vllm:0.7"
    assert [e.run_id for e in store.baselines("nightly-it", exclude="nightly-it-2")] == ["nightly-it-1"]
    keys = {o.key for o in oss2.ObjectIteratorV2(bed["bucket"], prefix=prefix + "/")}
    assert f"{prefix}/index/nightly-it-1.json" in keys and f"{prefix}/runs/nightly-it-1/locust/stats.csv" in keys
    back = store.fetch("nightly-it-1", tmp_path / "back")
    assert (back / "requests.csv").read_bytes() == (tmp_path / "nightly-it-1" / "requests.csv").read_bytes()

    # the CLI, with the key as staging finds it without a spec (the default variables)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", bed["keys"][0])
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", bed["keys"][1])
    where = ["--store", url, "--endpoint", bed["endpoint"]]
    code, out, err = _cli(capsys, "history", "list", "--json", *where)
    assert code == 0 and not err and [r["run_id"] for r in json.loads(out)["runs"]] == ["nightly-it-2", "nightly-it-1"]
    code, out, _ = _cli(capsys, "history", "show", "nightly-it-2", "--json", *where)
    assert code == 0 and json.loads(out)["load"]["ttft_p95_ms"] == 260.0
    code, out, _ = _cli(capsys, "history", "show", "nightly-it-2", *where)
    assert code == 0 and "run nightly-it-2: PASS" in out and "vllm:0.7" in out

    # judge: the spec names the store's endpoint and a credentials file (the environment's keys are gone)
    monkeypatch.delenv("OSS_ACCESS_KEY_ID")
    monkeypatch.delenv("OSS_ACCESS_KEY_SECRET")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""name: nightly-it
storage:
  kind: oss
  oss: {{endpoint: "{bed['endpoint']}", bucket: {BUCKET}, credentials: {{file: "{bed['credentials_file']}"}}}}
slo:
  - {{rule: load.ttft_p95_ms, op: "<=", threshold: 500}}
  - {{rule: load.ttft_p95_ms, op: "<=", threshold: 20, relative: true}}
""")
    code, out, _ = _cli(capsys, "judge", "--candidate", "nightly-it-2", "--spec", str(spec), "--store", url)
    assert code == 1 and "+30.0%" in out and "baseline nightly-it-1" in out  # the default baseline
    code, out, _ = _cli(capsys, "judge", "--candidate", "nightly-it-1", "--baseline", "nightly-it-2",
                        "--spec", str(spec), "--store", url, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["verdict"] == "pass" and doc["baseline"] == "nightly-it-2"
    code, _, err = _cli(capsys, "judge", "--candidate", "nightly-it-9", "--spec", str(spec), "--store", url)
    assert code == 2 and "no run 'nightly-it-9'" in err


def test_oss_publisher_killed_before_its_marker_leaves_nothing_listed(bed, prefix, tmp_path):
    url = f"oss://{BUCKET}/{prefix}"
    report = _report(tmp_path, "nightly-it-k", "2026-12-06T02:00:00+00:00", 210.0)
    flag = tmp_path / "flag"
    code = ("import sys, time\nfrom pathlib import Path\nimport tasks.history as h\n"
            "def stop(self, run_id, data):\n    Path(sys.argv[4]).touch()\n    time.sleep(120)\n"
            "h._OssBackend.put_marker = stop\n"
            "h.Store.open(sys.argv[1], endpoint=sys.argv[2], credentials=(sys.argv[5], sys.argv[6])).publish(sys.argv[3])\n")
    child = subprocess.Popen([sys.executable, "-c", code, url, bed["endpoint"], str(report), str(flag), *bed["keys"]],
                             cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the publisher never uploaded its files"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    keys = {o.key for o in oss2.ObjectIteratorV2(bed["bucket"], prefix=prefix + "/")}
    assert f"{prefix}/runs/nightly-it-k/report.json" in keys  # the files are there, the marker is not
    store = Store.open(url, endpoint=bed["endpoint"], credentials=bed["keys"])
    assert store.list() == [] and store.warnings == []
    store.publish(report)
    assert [e.run_id for e in store.list()] == ["nightly-it-k"]


def test_oss_corrupt_entry_is_skipped_with_a_warning(bed, prefix, tmp_path):
    url = f"oss://{BUCKET}/{prefix}"
    store = Store.open(url, endpoint=bed["endpoint"], credentials=bed["keys"])
    store.publish(_report(tmp_path, "nightly-it-a", "2026-12-06T03:00:00+00:00", 200.0))
    store.publish(_report(tmp_path, "nightly-it-b", "2026-12-06T04:00:00+00:00", 200.0))
    bed["bucket"].put_object(f"{prefix}/runs/nightly-it-a/report.json", b"{truncated")
    with pytest.warns(StoreWarning, match="nightly-it-a: report.json is not JSON"):
        assert [e.run_id for e in store.list()] == ["nightly-it-b"]
