"""Issue 4 end to end on the test bed: the CLI runs prepare -> deploy -> smoke -> teardown under
Prefect, exits 0, leaves nothing labelled with its run id, and does it again (idempotent).
Bad environments end with exit 2 (could not run) or 1 (diagnosed failure) and leave nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.cluster import leftovers

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"


def _tidegate(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


def _report(reports: Path) -> dict:
    return json.loads((reports / "latest" / "report.json").read_text())


def _gateway_set(testbed) -> list[str]:
    return ["--set", f"ingress.url=http://127.0.0.1:{testbed.ports.gateway}"]


SMOKE_RULES = 'slo=[{rule: smoke.ok, op: "==", threshold: true}, {rule: smoke.ttft_ms, op: "<=", threshold: 5000}]'


def test_e2e_prepare_deploy_smoke_teardown_twice(testbed, kube, tmp_path):
    """Twice on the same bed: without the gate the run cannot decide (exit 3, inconclusive, never a
    pass); with the gate judging the smoke checks it passes (exit 0)."""
    reports = tmp_path / "reports"
    for attempt, extra, (code, verdict) in ((1, [], (3, "inconclusive")),
                                            (2, ["--stages", "prepare,deploy,smoke,gate,teardown",
                                                 "--set", SMOKE_RULES], (0, "pass"))):
        r = _tidegate("validate", "--spec", str(LOCAL), "--stages", "prepare,deploy,smoke,teardown",
                      *_gateway_set(testbed), *extra, env={"TIDEGATE_REPORTS_DIR": str(reports)})
        assert r.returncode == code, f"attempt {attempt}: {r.stderr[-2000:]}"
        rep = _report(reports)
        assert rep["verdict"] == verdict
        if verdict == "inconclusive":
            assert rep["inconclusive_reasons"][0].startswith("the gate did not run"), rep["inconclusive_reasons"]
            said = [ln for ln in r.stderr.splitlines() if ln.startswith("tidegate: ") and "started" not in ln]
            assert said and said[-1].startswith("tidegate: inconclusive: the gate did not run"), said
        assert [rep["stages"][s]["status"] for s in ("prepare", "deploy", "smoke", "teardown")] == ["passed"] * 4
        assert leftovers(kube, rep["run_id"], ["default"]) == []
        junit = (reports / "latest" / "junit.xml").read_text()
        assert 'name="smoke"' in junit and "<failure" not in junit


def test_e2e_missing_credentials_exit_2_and_nothing_created(testbed, kube, tmp_path):
    """Profile ack (no test-bed keys filled in): credentials named by the spec are missing."""
    reports = tmp_path / "reports"
    r = _tidegate("validate", "--spec", str(LOCAL), "--stages", "prepare,deploy,teardown", "--no-prefect",
                  "--set", "profile=ack", "--set", f"cluster.kubeconfig={testbed.kubeconfig}",
                  "--set", "storage.oss.credentials.access_key_id_env=TIDEGATE_TEST_NO_SUCH_KEY",
                  "--set", "storage.oss.credentials.access_key_secret_env=TIDEGATE_TEST_NO_SUCH_SECRET",
                  *_gateway_set(testbed), env={"TIDEGATE_REPORTS_DIR": str(reports)})
    assert r.returncode == 2, r.stderr[-1500:]
    assert "TIDEGATE_TEST_NO_SUCH_KEY" in r.stderr
    rep = _report(reports)
    assert leftovers(kube, rep["run_id"], ["default"]) == []


def test_e2e_image_that_cannot_start_is_diagnosed_and_torn_down(testbed, kube, tmp_path):
    reports = tmp_path / "reports"
    r = _tidegate("validate", "--spec", str(LOCAL), "--stages", "prepare,deploy,smoke,teardown", "--no-prefect",
                  "--set", "service.image=registry.invalid/vllm:does-not-exist",
                  "--set", "service.readiness_timeout_s=20", *_gateway_set(testbed),
                  env={"TIDEGATE_REPORTS_DIR": str(reports)})
    assert r.returncode == 1, r.stderr[-1500:]
    assert "ImagePullBackOff" in r.stderr
    rep = _report(reports)
    assert rep["stages"]["deploy"]["status"] == "failed"
    assert rep["stages"]["teardown"]["status"] == "passed"
    assert leftovers(kube, rep["run_id"], ["default"]) == []


def test_e2e_unschedulable_request_names_the_scheduler_message(testbed, kube, tmp_path):
    reports = tmp_path / "reports"
    r = _tidegate("validate", "--spec", str(LOCAL), "--stages", "prepare,deploy,teardown", "--no-prefect",
                  "--set", "service.gpus=64", "--set", "service.readiness_timeout_s=20", *_gateway_set(testbed),
                  env={"TIDEGATE_REPORTS_DIR": str(reports)})
    assert r.returncode == 1, r.stderr[-1500:]
    assert "Pending" in r.stderr and "nvidia.com/gpu" in r.stderr
    assert leftovers(kube, _report(reports)["run_id"], ["default"]) == []


def test_e2e_smoke_against_a_dead_gateway_fails_and_tears_down(testbed, kube, tmp_path):
    reports = tmp_path / "reports"
    r = _tidegate("validate", "--spec", str(LOCAL), "--stages", "prepare,deploy,smoke,teardown", "--no-prefect",
                  "--set", "ingress.url=http://127.0.0.1:9", env={"TIDEGATE_REPORTS_DIR": str(reports)})
    assert r.returncode == 1, r.stderr[-1500:]
    assert "smoke" in r.stderr and "127.0.0.1:9" in r.stderr
    rep = _report(reports)
    assert rep["stages"]["smoke"]["status"] == "failed"
    assert leftovers(kube, rep["run_id"], ["default"]) == []
