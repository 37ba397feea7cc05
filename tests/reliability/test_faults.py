"""Faults during a run, on the suite's private test bed, each with its expected outcome asserted:
the apiserver restarted mid-spike, replicas failing mid-spike, the gateway unreachable at smoke,
the autoscaler stopped before the spike, the CLI terminated (SIGTERM) and killed (SIGKILL)
mid-run, and staging killed mid-upload."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from testbed import cluster
from tests.reliability.helpers import (
    LOCAL_SPEC,
    SHORT_LOAD,
    Cli,
    kill_pids,
    processes_matching,
    run_cli,
    stderr_lines,
    validate_args,
)

pytestmark = pytest.mark.reliability
FULL = "prepare,deploy,smoke,spike,verify,gate,teardown"
PREDICTOR_SELECTOR = "app=isvc.qwen-chat-predictor"


def _utc() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_status(rep: dict) -> dict[str, str]:
    return {name: st["status"] for name, st in rep["stages"].items()}


def _short(text: str, n: int = 160) -> str:
    return " ".join(text.split())[:n]


# -- the kube-apiserver restarted in the middle of the spike -------------------------------------
def test_apiserver_restart_mid_spike(clean_bed, tmp_path, case):
    bed = clean_bed
    case.describe("kube-apiserver restarted mid-spike (flow under Prefect)",
                  "watches resume: no duplicate timeline entries, no event lost, HPA/pod Ready rows after the "
                  "restart; the run completes (exit 0/1, report, teardown)")
    cli = Cli(bed, validate_args(bed, "--set", "load.baseline_s=5", "--set", "load.spike_s=60", "--set",
                                 "load.hold_s=15", "--set", "load.cooldown_s=45", "--set", "load.arrival=closed",
                                 stages=FULL, prefect=True),
              tmp_path / "reports")
    rid = cli.run_id()
    cli.wait_for_spike()
    time.sleep(5)  # the baseline: restart as the spike ramps up
    down_at = _utc()
    outage_s = cluster.restart_component(bed.cfg, "kube-apiserver")
    up_at = _utc()
    rc = cli.wait(900)
    case.seconds = cli.seconds
    rep = cli.report()
    stages = _stage_status(rep)
    timeline = pd.read_csv(cli.reports / rid / "timeline.csv", parse_dates=["time", "observed_at"])
    after = timeline[timeline["time"] > up_at]
    ready_after = after[after["reason"] == "PodReady"]
    hpa_after = after[after["reason"].isin(["SuccessfulRescale", "HPAReplicas"])]
    events = timeline[timeline["kind"] == "Event"]
    dup_events = events[events.duplicated(["uid", "count"], keep=False)]
    dup_rows = timeline[timeline.duplicated(["kind", "object", "reason", "time", "count", "message"], keep=False)]
    lost = _events_missing_from_timeline(bed, rep, timeline, rid)
    e = rep.get("elasticity", {})
    gaps = [g for f in rep.get("findings") or [] if f["name"] == "observer_complete" for g in f["evidence"]]
    said = [ln for ln in stderr_lines(cli.stderr) if ln.startswith("tidegate: ") and "started" not in ln]
    why = f" ({_short(said[-1], 120)})" if said and rc else ""
    case.observe(f"apiserver down {outage_s:.0f}s ({down_at:%H:%M:%S}-{up_at:%H:%M:%S}); exit {rc}, verdict "
                 f"{rep['verdict']}{why}; {len(timeline)} timeline rows, {len(dup_events)} duplicate event rows, "
                 f"{len(dup_rows)} duplicate rows, {len(lost)} apiserver events missing; after the restart: "
                 f"{len(hpa_after)} HPA rows, {len(ready_after)} PodReady rows; cloud pods max "
                 f"{e.get('cloud_pods_max')}; observer gaps: {gaps or 'none'}; teardown "
                 f"{stages['teardown']}")
    # events the observer could not re-list make the run inconclusive (exit 3), never a pass
    assert rc in (0, 1) or (rc == 3 and gaps and rep["verdict"] == "inconclusive"), cli.stderr[-2000:]
    assert stages["spike"] == "passed" and stages["verify"] == "passed" and stages["teardown"] == "passed", stages
    assert dup_events.empty, dup_events[["reason", "object", "uid", "count"]].to_string()
    assert dup_rows.empty, dup_rows[["kind", "object", "reason", "time"]].to_string()
    assert not lost, f"events the apiserver has but the timeline lacks: {lost[:5]}"
    assert len(ready_after) >= 1 and len(hpa_after) >= 1
    assert bed.leftovers(rid) == []


def _events_missing_from_timeline(bed, rep: dict, timeline: pd.DataFrame, rid: str) -> list[str]:
    """Events about the service's HPA and pods, from the spike's start until shortly before the
    observer stopped, that the apiserver still holds but the timeline lacks (uid, or its latest
    occurrence)."""
    from tasks.observe import _ts

    spike = next(p for p in rep["phases"] if p["name"] == "spike")
    start = pd.Timestamp(spike["start"]).tz_convert("UTC").floor("s")
    stop = timeline["observed_at"].max() - pd.Timedelta(seconds=3)
    seen = timeline[timeline["kind"] == "Event"].groupby("uid")["count"].max().to_dict()
    missing = []
    for ev in bed.admin().list("v1", "Event", "default"):
        inv = ev.get("involvedObject") or {}
        if not (inv.get("name") == "qwen-chat-hpa" or str(inv.get("name", "")).startswith("qwen-chat-predictor-")):
            continue
        series = ev.get("series") or {}
        when = _ts(series.get("lastObservedTime") or ev.get("lastTimestamp") or ev.get("eventTime"))
        if when is None or not (start <= when <= stop):
            continue
        uid = ev["metadata"]["uid"]
        count = int(series.get("count") or ev.get("count") or 1)
        if uid not in seen:
            missing.append(f"{ev.get('reason')} {inv.get('name')} {when:%H:%M:%S}")
        elif seen[uid] < count:
            missing.append(f"{ev.get('reason')} {inv.get('name')} occurrence {count} (timeline has {seen[uid]})")
    return missing


# -- a replica answering 5xx / closing streams for part of the spike -----------------------------
def _fault(bed, pod: str, **fault) -> int:
    body = json.dumps({"namespace": "default", "pod": pod, **fault}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{bed.cfg.ports.daemon}/v1/faults", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _serving_pods(bed) -> list[str]:
    pods = bed.admin().list("v1", "Pod", "default", label_selector=PREDICTOR_SELECTOR)
    return [p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def test_replica_5xx_and_cut_streams_mid_spike(clean_bed, tmp_path, case):
    bed = clean_bed
    case.describe("replicas answer HTTP 500 / cut streams after 3 tokens for ~25 s of the spike",
                  "counted as failures in the load data; above load.max_error_rate the spike stage fails on its "
                  "own evidence (exit 1), else the gate judges load.error_rate (exit 0/1 per that rule); never 2; "
                  "report written; teardown")
    cli = Cli(bed, validate_args(bed, *SHORT_LOAD, stages=FULL), tmp_path / "reports")
    rid = cli.run_id()
    cli.wait_for_spike()
    time.sleep(6)
    injected = []
    try:
        for pod in _serving_pods(bed):
            if _fault(bed, pod, error_rate=0.5, status=500) == 200:
                injected.append(f"{pod}: 50% HTTP 500")
        time.sleep(12)
        for pod in _serving_pods(bed):
            if _fault(bed, pod, close_stream_after_tokens=3) == 200:
                injected.append(f"{pod}: streams cut after 3 tokens")
        time.sleep(12)
    finally:
        for pod in _serving_pods(bed):
            _fault(bed, pod)  # all defaults: no fault
    rc = cli.wait(900)
    case.seconds = cli.seconds
    rep = cli.report()
    load = rep["load"]
    rule = next((g for g in rep["gate"] if g["rule"] == "load.error_rate"), None)
    requests = pd.read_csv(cli.reports / rid / "requests.csv")
    errors = requests["error"].fillna("").astype(str)
    http500 = int(errors.str.contains("500").sum())
    cut = int(errors.str.contains("truncated stream").sum())
    gate_failed = any(g["status"] == "fail" for g in rep["gate"])
    last = stderr_lines(cli.stderr)[-1] if cli.stderr.strip() else ""
    case.observe(f"injected on {len(injected)} replica(s); exit {rc}; load: {load['requests']} requests, "
                 f"{load['failures']} failures (HTTP 500: {http500}, cut streams: {cut}), error_rate "
                 f"{load['error_rate']}; gate load.error_rate={rule and rule['status']} (threshold "
                 f"{rule and rule['threshold']}); verdict {rep['verdict']}; teardown "
                 f"{rep['stages']['teardown']['status']}")
    assert injected, "no replica to inject faults into"
    assert rc in (0, 1), cli.stderr[-2000:]
    assert "Traceback" not in cli.stderr
    assert load["failures"] > 0 and http500 > 0 and cut > 0
    if load["error_rate"] > 0.5:  # load.max_error_rate (default 0.5): the spike stage fails, the gate never runs
        assert rep["stages"]["spike"]["status"] == "failed" and rc == 1 and rule is None
        assert "more than load.max_error_rate" in last and "HTTP 500" in last, last
    else:
        assert rule is not None and rule["value"] == load["error_rate"]
        assert rule["status"] == ("fail" if load["error_rate"] > rule["threshold"] else "pass")
        assert rc == (1 if gate_failed else 0)
        if rc == 1:
            assert "load.error_rate" in last, last
    assert rep["stages"]["teardown"]["status"] == "passed"
    assert bed.leftovers(rid) == []


# -- the gateway unreachable during smoke -------------------------------------------------------
def test_gateway_unreachable_at_smoke(clean_bed, tmp_path, case):
    bed = clean_bed
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    case.describe("gateway unreachable during smoke (ingress.url answers nothing)",
                  "exit 1; smoke fails with a diagnosis naming the URL; teardown; nothing labelled with the run id "
                  "left")
    cli = run_cli(bed, validate_args(bed, "--set", f"ingress.url={url}", stages="prepare,deploy,smoke,teardown"),
                  tmp_path / "reports", timeout_s=600)
    case.seconds = cli.seconds
    rid = cli.run_id()
    rep = cli.report()
    stages = _stage_status(rep)
    last = stderr_lines(cli.stderr)[-1]
    left = bed.leftovers(rid)
    case.observe(f"exit {cli.rc}: {_short(last)}; stages {stages['deploy']}/{stages['smoke']}/{stages['teardown']}"
                 f" (deploy/smoke/teardown); left: {left or 'nothing'}")
    assert cli.rc == 1, cli.stderr[-1500:]
    assert last.startswith("tidegate: smoke") and url in last, last
    assert stages["smoke"] == "failed" and url in rep["stages"]["smoke"]["detail"]
    assert stages["deploy"] == "passed" and stages["teardown"] == "passed"
    assert left == []


# -- a component stopped after preflight, as the load generator starts --------------------------
def _run_with_component_stopped(bed, reports: Path, component: str, cooldown_s: int) -> tuple[Cli, int, float, float]:
    """A full run whose ``component`` is stopped once the spike's generator starts (after the
    preflight saw it healthy), and started again afterwards: (cli, exit code, seconds the stop
    took, seconds the restart took)."""
    cli = Cli(bed, validate_args(bed, "--set", "load.baseline_s=15", "--set", "load.spike_s=40", "--set",
                                 "load.hold_s=10", "--set", f"load.cooldown_s={cooldown_s}", "--set",
                                 "load.arrival=closed", stages=FULL), reports)
    try:
        cli.wait_for_spike()
        t0 = time.monotonic()
        assert cluster.stop_component(bed.cfg, component)
        stop_s = time.monotonic() - t0
        rc = cli.wait(900)
    finally:
        restarted = cluster.start_component(bed.cfg, component)
    return cli, rc, stop_s, restarted


def test_autoscaler_stopped_before_spike(clean_bed, tmp_path, case):
    bed = clean_bed
    case.describe("cluster-autoscaler stopped after preflight, before the spike (as the load generator starts)",
                  "exit 1; spill-over fails naming the missing scale-up (TriggeredScaleUp); teardown still runs")
    cli, rc, stop_s, restarted = _run_with_component_stopped(bed, tmp_path / "reports", "cluster-autoscaler", 30)
    rid = cli.run_id()
    case.seconds = cli.seconds
    rep = cli.report()
    stages = _stage_status(rep)
    finding = next((f for f in rep.get("findings") or [] if f["name"] == "autoscaler_scaled_up"), {})
    last = stderr_lines(cli.stderr)[-1]
    left = bed.leftovers(rid)
    case.observe(f"autoscaler stopped in {stop_s:.1f}s, 15 s before the spike; exit {rc}; {_short(last, 230)}; "
                 f"cloud pods max {rep['elasticity'].get('cloud_pods_max')}; teardown {stages['teardown']}; left: "
                 f"{left or 'nothing'} (autoscaler back in {restarted:.0f}s)")
    assert rc == 1, cli.stderr[-2000:]
    assert last.startswith("tidegate: gate failed") and "TriggeredScaleUp" in last, last
    assert finding.get("ok") is False and "TriggeredScaleUp" in finding.get("detail", "")
    assert rep["verdict"] == "fail" and rep["elasticity"]["cloud_pods_max"] == 0
    assert stages["teardown"] == "passed" and left == []


# -- the metric pipeline broken: the HPA is blind ------------------------------------------------
def test_metrics_adapter_stopped_before_spike_names_the_blind_hpa(clean_bed, tmp_path, case):
    bed = clean_bed
    case.describe("the custom-metrics adapter stopped after preflight, as the load generator starts",
                  "exit 1; the finding hpa_metric_available names the HPA that could not read its metric "
                  "(ScalingActive=False / FailedGetPodsMetric) and elasticity.hpa_metric_failures counts it; "
                  "the gate's failure line says why; teardown still runs")
    cli, rc, _, restarted = _run_with_component_stopped(bed, tmp_path / "reports", "metrics-adapter", 20)
    rid = cli.run_id()
    case.seconds = cli.seconds
    rep = cli.report()
    finding = next((f for f in rep.get("findings") or [] if f["name"] == "hpa_metric_available"), {})
    last = stderr_lines(cli.stderr)[-1]
    left = bed.leftovers(rid)
    case.observe(f"exit {rc}; hpa_metric_failures {rep['elasticity'].get('hpa_metric_failures')}; finding: "
                 f"{_short(finding.get('detail', 'none'), 200)}; {_short(last, 160)}; left: {left or 'nothing'} "
                 f"(adapter back in {restarted:.0f}s)")
    assert rc == 1, cli.stderr[-2000:]
    assert finding.get("ok") is False and "could not read DCGM_CUSTOM_PROCESS_SM_UTIL" in finding["detail"], finding
    assert rep["elasticity"]["hpa_metric_failures"] >= 1
    assert last.startswith("tidegate: gate failed") and "could not read" in last, last
    assert rep["verdict"] == "fail" and _stage_status(rep)["teardown"] == "passed" and left == []


def test_autoscaler_down_before_the_run_is_refused_at_preflight(clean_bed, tmp_path, case):
    bed = clean_bed
    case.describe("cluster-autoscaler down before the run starts",
                  "preflight refuses: exit 2 naming the autoscaler, nothing created")
    assert cluster.stop_component(bed.cfg, "cluster-autoscaler")
    try:
        cli = run_cli(bed, validate_args(bed, *SHORT_LOAD, stages=FULL), tmp_path / "reports", timeout_s=300)
    finally:
        cluster.start_component(bed.cfg, "cluster-autoscaler")
    case.seconds = cli.seconds
    rid = cli.run_id()
    last = stderr_lines(cli.stderr)[-1]
    left = bed.leftovers(rid)
    case.observe(f"exit {cli.rc}: {_short(last, 200)}; left: {left or 'nothing'}")
    assert cli.rc == 2 and "autoscaler" in last, cli.stderr[-1500:]
    assert cli.report()["stages"]["prepare"]["status"] == "error"
    assert left == []


# -- the run terminated (SIGTERM) and killed (SIGKILL) mid-spike ----------------------------------
def _signal_mid_spike(bed, tmp_path, sig: int) -> tuple[Cli, str]:
    """Start the full flow (Prefect), send ``sig`` 10 s into the load; the CLI and its run id."""
    cli = Cli(bed, validate_args(bed, *SHORT_LOAD, stages=FULL, prefect=True), tmp_path / "reports")
    rid = cli.run_id()
    cli.wait_for_spike()
    time.sleep(10)
    cli.signal(sig)
    return cli, rid


def test_sigterm_mid_spike_tears_down(clean_bed, tmp_path, case):
    """SIGTERM is how a run is cancelled in practice: a CI job cancelled or timed out, a pod
    evicted, and a Prefect UI cancel of a deployment run (the runner marks it Cancelling, then
    sends SIGTERM to the flow's process). A ``tidegate validate`` flow runs in the CLI's own
    process on Prefect's temporary API, where no runner watches for a Cancelling state, so the
    signal is what cancels it."""
    bed = clean_bed
    case.describe("flow cancelled: SIGTERM to `tidegate validate` (Prefect) mid-spike",
                  "the run tears down itself, writes its report, exits 2 ('terminated'); no process left "
                  "(load generator, Prefect temporary server)")
    cli, rid = _signal_mid_spike(bed, tmp_path, signal.SIGTERM)
    t0 = time.monotonic()
    rc = cli.wait(180)
    exit_s = time.monotonic() - t0
    case.seconds = cli.seconds
    rep = cli.report()
    stages = _stage_status(rep)
    left = bed.leftovers(rid)
    time.sleep(2)
    procs = processes_matching(f"PREFECT_HOME={bed.prefect_home}") + processes_matching(rid)
    said = [ln for ln in stderr_lines(cli.stderr) if ln.startswith("tidegate: ") and "started" not in ln]
    case.observe(f"exit {rc} {exit_s:.1f}s after SIGTERM ('{said[-1] if said else ''}'); spike "
                 f"{stages['spike']} ({rep['stages']['spike']['detail'][:60]}), teardown {stages['teardown']}, "
                 f"verdict {rep['verdict']}; left: "
                 f"{left or 'nothing'}; processes left: {len(procs)}")
    assert rc == 2 and "tidegate: terminated (SIGTERM)" in stderr_lines(cli.stderr), cli.stderr[-1500:]
    assert exit_s < 120
    assert stages["teardown"] == "passed" and stages["spike"] == "error" and rep["verdict"] == "fail"
    assert "interrupted" in rep["stages"]["spike"]["detail"]
    assert left == []
    assert procs == [], procs


def test_kill_9_mid_spike_then_cleanup(clean_bed, tmp_path, case):
    bed = clean_bed
    case.describe("`kill -9` of `tidegate validate` (Prefect) mid-spike, then `tidegate cleanup --run-id`",
                  "run id known from the CLI's first line; cleanup exit 0 and nothing labelled with the run id "
                  "remains; the load generator and Prefect's temporary server exit by themselves")
    cli, rid = _signal_mid_spike(bed, tmp_path, signal.SIGKILL)
    cli.wait(30)
    before = bed.leftovers(rid)
    deadline = time.monotonic() + 30
    while processes_matching(f"{rid}/locust") and time.monotonic() < deadline:
        time.sleep(0.5)
    generators = processes_matching(f"{rid}/locust")
    # Prefect's temporary API server outlives a SIGKILLed parent; tidegate's reaper stops it
    while processes_matching(f"PREFECT_HOME={bed.prefect_home}", "uvicorn") and time.monotonic() < deadline + 15:
        time.sleep(0.5)
    orphans = [pid for pid, cmd in processes_matching(f"PREFECT_HOME={bed.prefect_home}") if "uvicorn" in cmd]
    kill_pids(orphans)  # so that a failure below does not leave it running
    t0 = time.monotonic()
    clean = run_cli(bed, ["cleanup", "--run-id", rid, "--spec", str(LOCAL_SPEC), *bed.sets()],
                    tmp_path / "cleanup", env={"TIDEGATE_REPORTS_DIR": str(cli.reports)}, timeout_s=300)
    cleanup_s = time.monotonic() - t0
    left = bed.leftovers(rid)
    case.seconds = cli.seconds + round(cleanup_s, 1)
    case.observe(f"killed with {len(before)} objects of run {rid} on the cluster; cleanup exit {clean.rc} in "
                 f"{cleanup_s:.1f}s ({_short(clean.stdout.splitlines()[0] if clean.stdout else clean.stderr, 60)}); "
                 f"left: {left or 'nothing'}; load generator gone: {not generators}; Prefect temporary server "
                 f"left running: {len(orphans)}")
    assert len(before) > 0
    assert clean.rc == 0, clean.stderr[-1500:]
    assert left == []
    assert generators == [], generators
    assert orphans == [], "Prefect's temporary API server outlived the SIGKILLed CLI"


# -- staging interrupted, end to end -------------------------------------------------------------
def test_staging_killed_mid_upload_resumes(clean_bed, tmp_path, case):
    import random

    import oss2

    from tasks import staging as st

    bed = clean_bed
    case.describe("staging (`tidegate validate --stages stage`) killed with SIGKILL mid-upload, then re-run",
                  "no manifest after the kill; the re-run resumes the finished parts, verifies, and the object "
                  "equals the source")
    model = tmp_path / "model"
    model.mkdir()
    data = random.Random(8).randbytes(96 * 1024 * 1024)
    (model / "model.safetensors").write_bytes(data)
    (model / "config.json").write_text('{"hidden_size": 64}\n')
    prefix = f"reliability-staging-{uuid.uuid4().hex[:8]}"
    ckpt = tmp_path / "ck"
    args = validate_args(bed, "--set", f"model.source={model}", "--set", f"storage.oss.prefix={prefix}",
                         "--set", f"storage.checkpoint_dir={ckpt}", stages="stage")
    env = {"TIDEGATE_STAGING_WORKERS": "1", "TIDEGATE_STAGING_PART_MIB": "8"}
    first = Cli(bed, args, tmp_path / "first", env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.rc is None:
        journals = list((ckpt / "uploads").glob("*.jsonl")) if (ckpt / "uploads").exists() else []
        if journals and len(journals[0].read_text().splitlines()) >= 4:  # header + 3 parts
            break
        time.sleep(0.02)
    assert first.rc is None, f"staging ended before it could be killed: {first.stderr[-800:]}"
    first.signal(signal.SIGKILL)
    first.wait(30)
    bucket = oss2.Bucket(oss2.Auth(bed.oss_key_id, bed.oss_key_secret), f"http://127.0.0.1:{bed.cfg.ports.oss}",
                         "tidegate-models", enable_crc=False)
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object(f"{prefix}/{st.MANIFEST_NAME}")
    second = run_cli(bed, args, tmp_path / "second", env=env, timeout_s=600)
    try:
        staging = second.report()["staging"]
        head = bucket.head_object(f"{prefix}/model.safetensors")
        case.seconds = first.seconds + second.seconds
        case.observe(f"killed after >= 3 of 12 parts; re-run exit {second.rc}: resumed "
                     f"{staging.get('resumed_bytes', 0) / 2**20:.0f} MiB, uploaded "
                     f"{staging['uploaded_bytes'] / 2**20:.0f} "
                     f"MiB, verified {staging['verified']}; object size/CRC64 match: "
                     f"{(head.content_length, head.server_crc) == (len(data), st.crc64(data))}")
        assert second.rc == 3, second.stderr[-1500:]  # staging alone: nothing judged, inconclusive
        assert staging["verified"] is True and staging["resumed_bytes"] >= 3 * 8 * 2**20
        assert staging["uploaded_bytes"] < staging["bytes"]
        assert (head.content_length, head.server_crc) == (len(data), st.crc64(data))
        manifest = st.Manifest.from_bytes(bucket.get_object(f"{prefix}/{st.MANIFEST_NAME}").read())
        assert sorted(manifest.by_path()) == ["config.json", "model.safetensors"]
    finally:
        keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix=prefix + "/")]
        if keys:
            bucket.batch_delete_objects(keys)
        for upload in oss2.MultipartUploadIterator(bucket, prefix=prefix + "/"):
            bucket.abort_multipart_upload(upload.key, upload.upload_id)
