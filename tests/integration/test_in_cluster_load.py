"""Issue 24 on the test bed: load generated inside the cluster, one Locust worker Job per pool,
the test bed's pod runner running them as local processes; and the pod runner itself (a pod
runs, exits with its code, is killed when deleted; an image it cannot run waits, never Running)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
GEN = ["--set", "load.generators.in_cluster=true", "--set", "load.generators.workers=2",
       "--set", "load.generators.pools=[idc,elastic]"]
SHORT = ["--set", "load.baseline_s=5", "--set", "load.spike_s=40", "--set", "load.hold_s=10",
         "--set", "load.cooldown_s=40"]


def _validate(testbed, reports: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TIDEGATE_REPORTS_DIR=str(reports))
    return subprocess.run([sys.executable, "-m", "flows.cli", "validate", "--spec", str(LOCAL),
                           "--set", f"ingress.url=http://127.0.0.1:{testbed.ports.gateway}",
                           "--set", f"storage.oss.endpoint=http://127.0.0.1:{testbed.ports.oss}",
                           "--set", f"cluster.kubeconfig={testbed.kubeconfig}", *extra],
                          check=False, cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)


def test_in_cluster_two_workers_one_per_pool_spike(testbed, kube, tmp_path):
    reports = tmp_path / "reports"
    r = _validate(testbed, reports, "--stages", "prepare,deploy,smoke,spike,verify,gate,teardown", *GEN, *SHORT)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    rep = json.loads((reports / "latest" / "report.json").read_text())
    gen = rep["load"]["generator"]
    workers = gen["workers"]
    assert [w["pool"] for w in workers] == ["idc", "elastic"], workers
    assert all(w["requests"] > 0 and w["exit_code"] == 0 and w["node"] for w in workers), workers
    assert workers[1]["node"].startswith("np-elastic") or "elastic" in workers[1]["node"]
    assert sum(w["requests"] for w in workers) == rep["load"]["requests"]
    assert gen["in_cluster"] is True and gen["clock_skew_ms"] is not None and gen["clock_skew_ms"] < 1000
    assert set(rep["load"]["by_client_pool"]) == {"idc", "elastic"}
    with open(reports / "latest" / "requests.csv", newline="") as fh:
        pools = Counter(row["client_pool"] for row in csv.DictReader(fh))
    assert pools["idc"] > 0 and pools["elastic"] > 0 and set(pools) == {"idc", "elastic"}
    # the run verifies as before: spill-over and back judged, the gate ran
    assert rep["elasticity"]["cloud_pods_max"] >= 1 and rep["gate"]
    # the worker Jobs were the run's (ledger) and are gone
    assert any(o["kind"] == "Job" for o in rep["objects"])
    left = kube.list("batch/v1", "Job", label_selector=f"tidegate.dev/run-id={rep['run_id']}")
    assert left == []


def _pod(name: str, image: str, command: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"tidegate.dev/local-exec": "true"}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "command": command,
                                     "env": [{"name": "WHO", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}


def _wait(kube, name: str, pred, timeout_s: float = 30) -> dict:
    until = time.monotonic() + timeout_s
    pod = None
    while time.monotonic() < until:
        pod = kube.get("v1", "Pod", name, "default")
        if pod is not None and pred(pod):
            return pod
        time.sleep(0.3)
    raise AssertionError(f"pod {name}: {json.dumps((pod or {}).get('status'), indent=1)}")


def test_in_cluster_pod_runner_runs_exits_kills_and_refuses_unknown_images(testbed, kube):
    names = ["tg-runner-exit", "tg-runner-sleep", "tg-runner-busybox"]
    for n in names:
        kube.delete("v1", "Pod", n, "default", grace_period_s=0)
    try:
        kube.create(_pod(names[0], "tidegate/tidegate:latest",
                         ["python", "-c", "import os, sys; print('hello from', os.environ['WHO']); sys.exit(3)"]))
        kube.create(_pod(names[1], "tidegate/tidegate:latest",
                         ["python", "-c", "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(120)"]))
        kube.create(_pod(names[2], "busybox:1.36", ["sh", "-c", "echo hi"]))
        done = _wait(kube, names[0], lambda p: p["status"].get("phase") == "Failed")
        term = done["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 3 and term["reason"] == "Error" and term["message"] == f"hello from {names[0]}"
        running = _wait(kube, names[1], lambda p: p["status"].get("phase") == "Running")
        assert running["status"]["containerStatuses"][0]["ready"] is True
        bad = _wait(kube, names[2], lambda p: (p["status"].get("containerStatuses") or [{}])[0]
                    .get("state", {}).get("waiting"))
        waiting = bad["status"]["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "ErrImagePull" and "busybox:1.36" in waiting["message"]
        time.sleep(2)  # kwok's stages must not turn it Running meanwhile
        assert kube.get("v1", "Pod", names[2], "default")["status"]["phase"] == "Pending"
        # deleting the pod kills its process
        pidfile = testbed.state_dir / "pods" / f"default_{names[1]}" / "pid"
        _wait(kube, names[1], lambda p: pidfile.exists())
        pid = int(pidfile.read_text())
        kube.delete("v1", "Pod", names[1], "default")
        until = time.monotonic() + 15
        while time.monotonic() < until and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), "the pod's process outlived its pod"
    finally:
        for n in names:
            kube.delete("v1", "Pod", n, "default", grace_period_s=0)
