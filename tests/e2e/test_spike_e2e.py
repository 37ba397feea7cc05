"""Issue 6 end to end on the test bed: the full flow spills over to the elastic pool under the
spike and back afterwards, the report says so with figures, and the gate passes; with no
elastic capacity the gate fails (exit 1) and names the missing scale-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.cluster import leftovers
from testbed.cluster import reconfigure_autoscaler

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
SHORT = ["--set", "load.baseline_s=10", "--set", "load.spike_s=60", "--set", "load.hold_s=20",
         "--set", "load.cooldown_s=90"]


def _validate(testbed, reports: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TIDEGATE_REPORTS_DIR=str(reports))
    return subprocess.run([sys.executable, "-m", "flows.cli", "validate", "--spec", str(LOCAL),
                           "--set", f"ingress.url=http://127.0.0.1:{testbed.ports.gateway}", *extra],
                          cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)


def test_e2e_spike_spills_over_and_back(testbed, kube, tmp_path):
    reports = tmp_path / "reports"
    r = _validate(testbed, reports, "--stages", "prepare,deploy,smoke,spike,verify,gate,teardown", *SHORT)
    rep = json.loads((reports / "latest" / "report.json").read_text())
    assert r.returncode == 0, f"{r.stderr[-3000:]}\n{json.dumps(rep.get('elasticity'), indent=1)}"
    e, load = rep["elasticity"], rep["load"]
    assert rep["verdict"] in ("pass", "warn")
    assert e["hpa_max_replicas"] >= 2 and e["cloud_pods_max"] >= 1 and e["scale_up_events"] >= 1
    assert e["scale_in_back_to_idc"] is True
    assert e["time_to_first_cloud_pod_ready_s"] is not None and e["time_to_first_cloud_pod_ready_s"] > 0
    assert load["requests"] > 0 and load["error_rate"] <= 0.01
    assert all(g["status"] != "fail" for g in rep["gate"])
    for name in ("report.html", "junit.xml", "requests.csv", "per_second.csv", "timeline.csv"):
        assert (reports / "latest" / name).exists(), name
    assert "data:image/png;base64" in (reports / "latest" / "report.html").read_text()
    assert leftovers(kube, rep["run_id"], ["default"]) == []


def test_e2e_no_elastic_capacity_fails_the_gate(testbed, kube, tmp_path):
    cfg = testbed.model_copy(deep=True)
    cfg.elastic.max_nodes = 0
    reconfigure_autoscaler(cfg)
    try:
        reports = tmp_path / "reports"
        r = _validate(testbed, reports, "--stages", "prepare,deploy,spike,verify,gate,teardown",
                      "--set", "load.baseline_s=5", "--set", "load.spike_s=45", "--set", "load.hold_s=10",
                      "--set", "load.cooldown_s=20")
        assert r.returncode == 1, r.stderr[-3000:]
        assert "TriggeredScaleUp" in r.stderr or "scale-up" in r.stderr
        rep = json.loads((reports / "latest" / "report.json").read_text())
        assert rep["verdict"] == "fail"
        assert rep["elasticity"]["cloud_pods_max"] == 0
        assert any(g["rule"] == "elasticity.cloud_pods_max" and g["status"] == "fail" for g in rep["gate"])
        # the cause, not just the missing spill-over: pods waited while the pool was at its max (0)
        assert rep["elasticity"]["elastic_pool_at_max_while_pending"] is True
        capacity = next(f for f in rep["findings"] if f["name"] == "elastic_pool_capacity")
        assert not capacity["ok"] and "at its max of 0 node(s)" in capacity["detail"]
        assert leftovers(kube, rep["run_id"], ["default"]) == []
    finally:
        reconfigure_autoscaler(testbed)
