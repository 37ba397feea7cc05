"""Issue 22, end to end below the cluster stages: two nightly-style runs of one spec (the spike
and gate stages of the real flow, Locust against the vLLM emulator, the observer on the test
bed's API server), the second against an emulator whose latency is raised by 30 %, both
published to an OSS-backed results store on the test bed; the statistical TTFT rule fails the
second run against the first and names the shift, and ``tidegate judge`` says the same from the
store alone."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import oss2
import pytest

from flows.validation import execute
from tasks.errors import GateFailed, RunInconclusive
from tasks.history import Store, judge
from tasks.spec import load_spec
from testbed.config import EmulatorModel
from tests.integration.test_load import HOST, ServedBed

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tidegate-results"
RULE = {"rule": "load.ttft_ms", "test": "mann_whitney", "allowed_increase": "10%", "confidence": 0.95}


@pytest.fixture
def store_url(testbed):
    from testbed.objectstore import load_keys, oss_endpoint

    key_id, secret = load_keys(testbed.state_dir)
    bucket = oss2.Bucket(oss2.Auth(key_id, secret), oss_endpoint(testbed.ports), BUCKET, enable_crc=False)
    try:
        bucket.get_bucket_info()
    except oss2.exceptions.NoSuchBucket:
        bucket.create_bucket()
    prefix = f"test-statistic-{uuid.uuid4().hex[:10]}"
    yield f"oss://{BUCKET}/{prefix}", oss_endpoint(testbed.ports)
    keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix=prefix + "/")]
    for i in range(0, len(keys), 500):
        bucket.batch_delete_objects(keys[i:i + 500])


def _nightly(served: ServedBed, store: tuple[str, str], run_id: str):
    url, endpoint = store
    spec = load_spec(ROOT / "examples" / "qwen-chat.local.yaml", [
        f"ingress.url={served.url}", f"ingress.host={HOST}", "name=nightly-statistic",
        "load.arrival=poisson", "load.baseline_rps=20", "load.spike_rps=20", "load.baseline_s=0",
        "load.spike_s=10", "load.hold_s=0", "load.cooldown_s=0", "load.ramp_s=0", "load.max_tokens=8",
        "load.seed=11", f"results.store={url}", f"results.endpoint={endpoint}"])
    spec = spec.model_copy(update={"slo": [type(spec.slo[0]).model_validate(RULE)]})
    try:
        execute(spec, ["spike", "gate"], run_id, use_prefect=False)
    except (GateFailed, RunInconclusive) as exc:
        return spec, exc
    return spec, None


def test_statistic_gate_fails_a_30_percent_slower_nightly_and_names_the_shift(kube, store_url, tmp_path, monkeypatch):
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    model = dict(load_delay_s=0, ttft_per_running_ms=0, itl_base_ms=5, itl_per_running_ms=0, max_num_seqs=256,
                 prefill_tokens_per_s=1e9, itl_per_1k_context_ms=0, gpu_memory_gib=1024)
    fast, slow = ServedBed(EmulatorModel(ttft_base_ms=60, **model), 1), ServedBed(EmulatorModel(ttft_base_ms=78, **model), 1)
    fast.start()
    slow.start()
    try:
        spec, first = _nightly(fast, store_url, "nightly-statistic-base-0001")
        # the first night has no baseline: the statistical rule cannot decide, never a pass
        assert isinstance(first, RunInconclusive) and "no baseline" in str(first), first
        _, second = _nightly(slow, store_url, "nightly-statistic-cand-0002")
    finally:
        fast.stop()
        slow.stop()
    store = Store.for_spec(spec, spec.results.store, endpoint=spec.results.endpoint)
    runs = [e.run_id for e in store.list("nightly-statistic")]
    assert set(runs) == {"nightly-statistic-base-0001", "nightly-statistic-cand-0002"}   # both in the OSS store
    # the live gate of the second night: no full-chain baseline either (spike+gate only), inconclusive
    assert isinstance(second, RunInconclusive)
    cand, base = store.get("nightly-statistic-cand-0002"), store.get("nightly-statistic-base-0001")
    j = judge(spec.slo, cand, [base], requests=store.requests)
    (res,) = j.results
    assert j.verdict == "fail" and j.exit_code == 1, res.detail
    assert "nightly-statistic-base-0001" in res.detail and "+" in res.detail and "%" in res.detail
    assert 75 <= res.value <= 95, res.value   # the candidate's median TTFT, ~78 ms + network
    report = json.loads((tmp_path / "reports" / "nightly-statistic-cand-0002" / "report.json").read_text())
    assert report["load"]["requests"] >= 150 and report["load"]["generator"]["behind"] == []


def test_statistic_repeat_runs_the_spike_three_times_with_intervals(kube, tmp_path, monkeypatch):
    """load.repeat: 3 short spikes in one run (the real spike and verify stages, the observer on the
    test bed): the report holds three repetitions, each with its own requests in repeat-<k>/, and a
    Student-t interval for each figure the repetitions have; the main figures are the first's."""
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    served = ServedBed(EmulatorModel(load_delay_s=0, ttft_base_ms=60, ttft_per_running_ms=0, itl_base_ms=5,
                                     itl_per_running_ms=0, max_num_seqs=256), 1)
    served.start()
    try:
        spec = load_spec(ROOT / "examples" / "qwen-chat.local.yaml", [
            f"ingress.url={served.url}", f"ingress.host={HOST}", "name=repeat-statistic", "load.repeat=3",
            "load.arrival=poisson", "load.baseline_rps=10", "load.spike_rps=10", "load.baseline_s=0",
            "load.spike_s=6", "load.hold_s=0", "load.cooldown_s=0", "load.ramp_s=0", "load.max_tokens=8",
            "load.seed=5", "results.publish=false"])
        try:
            execute(spec, ["spike", "verify", "gate"], "repeat-statistic-0001", use_prefect=False)
        except (GateFailed, RunInconclusive):
            pass   # no deployment here: no spill-over, the gate says so; the repetitions are what is tested
    finally:
        served.stop()
    out = tmp_path / "reports" / "repeat-statistic-0001"
    report = json.loads((out / "report.json").read_text())
    rep = report["repeats"]
    assert rep["n"] == 3 and [r["index"] for r in rep["runs"]] == [1, 2, 3]
    for k in (2, 3):
        assert (out / f"repeat-{k}" / "requests.csv").stat().st_size > 0
        assert (out / f"repeat-{k}" / "timeline.csv").exists()
    assert rep["runs"][0]["figures"]["load.ttft_p95_ms"] == report["load"]["ttft_p95_ms"]
    ttft = rep["intervals"]["load.ttft_p95_ms"]
    assert ttft["n"] == 3 and ttft["ci_low"] <= ttft["mean"] <= ttft["ci_high"], ttft
    assert 55 <= ttft["mean"] <= 200, ttft
    # no deployment, no cloud pod: no value, no interval, said so
    ready = rep["intervals"]["elasticity.time_to_first_cloud_pod_ready_s"]
    assert ready["n"] == 0 and ready["ci_low"] is None and "no value" in ready["note"]
    assert "repeated spikes (3" in (out / "report.html").read_text()
