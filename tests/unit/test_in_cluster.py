"""In-cluster load generation without a cluster: the spec, the worker Jobs and RBAC as rendered,
and the collector's exact merge of the workers' raw samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks import load as L
from tasks.errors import SpecError
from tasks.incluster import Collector, clock_skew, worker_rows, write_runner_dir
from tasks.render import LOCAL_EXEC_LABEL, render_admin, render_load_jobs, render_plan
from tasks.spec.loader import load_spec
from testbed.podrunner import local_argv, runnable_image

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
GEN = ["load.generators.in_cluster=true", "load.generators.workers=3", "load.generators.pools=[idc,elastic]"]


def test_in_cluster_spec_defaults_and_one_line_errors():
    spec = load_spec(LOCAL)
    assert spec.load.generators.in_cluster is False and spec.load.generators.pools == ["idc", "elastic"]
    spec = load_spec(LOCAL, GEN)
    assert spec.load.generators.workers == 3
    bad = {"load.generators.pools=[idc,cloud]": "load.generators.pools[1]",
           "load.generators.pools=[idc,idc]": "load.generators.pools: names a pool twice",
           "load.generators.workers=0": "load.generators.workers",
           "load.generators.resources.cpu=lots": "load.generators.resources.cpu",
           "load.generators.collector_url=ftp://x": "load.generators.collector_url",
           "load.generators.nope=1": "load.generators.nope: unknown field"}
    for override, field in bad.items():
        with pytest.raises(SpecError) as err:
            load_spec(LOCAL, [override])
        assert field in str(err.value) and "\n" not in str(err.value).strip(), str(err.value)
    with pytest.raises(SpecError, match="load.generators.in_cluster: needs open-loop"):
        load_spec(LOCAL, [*GEN, "load.arrival=closed"])
    with pytest.raises(SpecError, match="load.workers: must be 0"):
        load_spec(LOCAL, [*GEN, "load.workers=2"])


def test_in_cluster_jobs_one_per_pool_round_robin_with_run_labels():
    spec = load_spec(LOCAL, [*GEN, "load.generators.resources.cpu=2", "load.generators.image=reg.example/tidegate:1.2"])
    jobs = render_load_jobs(spec, "qwen-chat-local-20261206-000000-abcd", config={"version": 1},
                            collector_url="http://127.0.0.1:9", token="t")
    assert [j["kind"] for j in jobs] == ["Job"] * 3
    pools = [j["spec"]["template"]["spec"]["nodeSelector"]["alibabacloud.com/nodepool-id"] for j in jobs]
    assert pools == ["np-idc", "np-elastic", "np-idc"]
    for i, job in enumerate(jobs, 1):
        assert job["metadata"]["labels"]["tidegate.dev/run-id"] == "qwen-chat-local-20261206-000000-abcd"
        assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"].endswith(f"-w{i}")
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["completions"] == 1
        pod = job["spec"]["template"]
        assert pod["metadata"]["labels"][LOCAL_EXEC_LABEL] == "true"  # profile local: the pod runner's
        c = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["TIDEGATE_WORKER_INDEX"] == str(i) and json.loads(env["TIDEGATE_LOAD_CONFIG"]) == {"version": 1}
        assert env["TIDEGATE_CLIENT_POOL"] == ["idc", "elastic"][(i - 1) % 2]
        assert c["image"] == "reg.example/tidegate:1.2" and c["resources"]["limits"]["cpu"] == 2
    plan = render_plan(spec, "r1")
    assert "3 jobs (batch/v1)" in plan and "kind: Job" in plan


def test_in_cluster_rbac_grants_jobs_only_when_asked():
    def job_rules(spec):
        return [r for o in render_admin(spec) for r in o.get("rules") or [] if "jobs" in r["resources"]]

    assert job_rules(load_spec(LOCAL)) == []
    (rule,) = job_rules(load_spec(LOCAL, GEN))
    assert rule["apiGroups"] == ["batch"] and {"create", "delete", "get"} <= set(rule["verbs"])


def _rec(t: float, ttft: float, worker: int) -> str:
    return json.dumps({"start": t, "end": t + 1, "intended": t, "e2e_ms": 1000.0, "status": 200, "error": "",
                       "ttft_ms": ttft, "itl_ms": [10.0, 20.0], "chunks": 3, "output_tokens": 3,
                       "tokens_source": "usage", "done": True, "cancelled": False, "worker": worker})


def test_in_cluster_collector_merges_raw_samples_exactly_on_one_clock(tmp_path):
    col = Collector(2)
    try:
        t0 = 1_000_000.0
        for i, offset in ((1, 0.0), (2, 0.25)):
            col.receive("/v1/hello", i, {"pool": ["idc", "elastic"][i - 1], "node": f"n{i}", "pod": f"p{i}"}, t0)
            col.receive("/v1/clock", i, {"offset_s": offset, "rtt_s": 0.002}, t0)
        assert col.start_epoch == t0 + 3.0
        rng = np.random.default_rng(1)
        ttft = {1: rng.uniform(50, 100, 40), 2: rng.uniform(200, 900, 10)}
        for i in (1, 2):
            # worker 2's clock is 0.25 s behind tidegate's: its epochs are shifted onto tidegate's
            lines = [_rec(t0 + 3 + k * 0.5 - (0.25 if i == 2 else 0), float(v), i) for k, v in enumerate(ttft[i])]
            col.receive("/v1/samples", i, {"records": lines + ["{torn"], "users": ["[%f, 1]" % (t0 + 3)]}, t0)
            col.receive("/v1/done", i, {"rc": 0, "runner": {"sent": len(lines), "shape_ended_at": t0 + 33}}, t0)
        states = [col.workers[1], col.workers[2]]
        assert states[1].records[0]["start"] == pytest.approx(t0 + 3) and states[1].torn == 1
        write_runner_dir(tmp_path, states, t0 + 3)
        records, samples, info = L.read_runner_output(tmp_path)
        assert len(records) == 50 and info["started_at"] == t0 + 3 and len(info["worker_info"]) == 2
        for rec in records:
            rec["client_pool"] = {1: "idc", 2: "elastic"}[rec["worker"]]
        shape = L.shape_for(load_spec(LOCAL, GEN).load)
        res = L.compute_result(records, samples, shape, t0 + 3, t0 + 33)
        every = np.concatenate([ttft[1], ttft[2]])
        # the percentile of the merged samples, never an average of the workers' percentiles
        assert res.summary["ttft_p95_ms"] == pytest.approx(np.percentile(every, 95), abs=1e-3)
        assert res.summary["ttft_p95_ms"] != pytest.approx((np.percentile(ttft[1], 95) + np.percentile(ttft[2], 95)) / 2)
        by_pool = res.summary["by_client_pool"]
        assert by_pool["idc"]["requests"] == 40 and by_pool["elastic"]["requests"] == 10
        assert by_pool["elastic"]["ttft_p95_ms"] == pytest.approx(np.percentile(ttft[2], 95), abs=1e-3)
        assert set(res.requests["client_pool"]) == {"idc", "elastic"}
        rows = worker_rows(states, res.requests)
        assert [(r["pool"], r["requests"], r["share"]) for r in rows] == [("idc", 40, 0.8), ("elastic", 10, 0.2)]
        skew = clock_skew(states)
        assert skew["clock_skew_ms"] == 250.0 and skew["clock_uncertainty_ms"] == 1.0
    finally:
        col.close()


def test_in_cluster_collector_refuses_a_bad_token():
    import urllib.error
    import urllib.request

    col = Collector(1).start()
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{col.port}/v1/start", headers={"X-Tidegate-Token": "no",
                                                                                      "X-Tidegate-Worker": "1"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 403
    finally:
        col.close()


def test_in_cluster_pod_runner_knows_which_images_it_runs():
    assert runnable_image("tidegate/tidegate:latest") and runnable_image("registry.cn-hangzhou.aliyuncs.com/x/tidegate:1")
    assert runnable_image("prefecthq/prefect:3-latest") and runnable_image("tidegate")
    assert not runnable_image("busybox:1.36") and not runnable_image("vllm/vllm-openai:v0.6.3")
    argv = local_argv({"command": ["python", "-m", "x"], "args": ["--y"]})
    assert argv[1:] == ["-m", "x", "--y"] and "python" in Path(argv[0]).name
    with pytest.raises(ValueError, match="no command"):
        local_argv({"command": []})
