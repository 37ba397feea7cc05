"""Issue 19 on the test bed: the seed's image (the ACK example's vLLM 0.4.1 tag and command)
deployed on the twin passes tidegate's smoke and a short spike.

The daemon starts each predictor pod's emulator from the pod's image tag and command, so the
replicas answer like vLLM 0.4.1: no ``stream_options`` (0.4.1 drops unknown fields silently,
testbed/vllm_surface.py), usage on the stream's finish chunk. The run passes only if smoke and
load detect the version and take usage from the finish chunk or the chunk count. Kept short
(< 3 min): a 30 s spike, no verify.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
ACK = ROOT / "examples" / "qwen-chat.ack.yaml"
SHORT = ["--set", "load.baseline_s=5", "--set", "load.spike_s=30", "--set", "load.ramp_s=10",
         "--set", "load.hold_s=5", "--set", "load.cooldown_s=5", "--set", "load.spike_rps=6",
         "--set", "load.max_tokens=32"]
GATE = ('slo=[{rule: smoke.ok, op: "==", threshold: true}, '
        '{rule: load.error_rate, op: "<=", threshold: 0}]')


def test_seed_image_passes_smoke_and_a_short_spike(testbed, tmp_path: Path) -> None:
    ack = yaml.safe_load(ACK.read_text())["service"]
    assert ack["image"].endswith(":0.4.1"), ack["image"]
    reports = tmp_path / "reports"
    env = dict(os.environ, TIDEGATE_REPORTS_DIR=str(reports))
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", "--spec", str(LOCAL), "--no-prefect",
         "--stages", "prepare,deploy,smoke,spike,gate,teardown",
         "--set", f"ingress.url=http://127.0.0.1:{testbed.ports.gateway}",
         "--set", f"storage.oss.endpoint=http://127.0.0.1:{testbed.ports.oss}",
         "--set", f"cluster.kubeconfig={testbed.kubeconfig}",
         "--set", f"service.image={ack['image']}", "--set", f"service.command={json.dumps(ack['command'])}",
         "--set", GATE, *SHORT],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    report_file = reports / "latest" / "report.json"
    assert report_file.exists(), r.stderr[-3000:]
    rep = json.loads(report_file.read_text())
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-3000:]}\n{json.dumps(rep.get('gate'), indent=1)}"
    smoke = rep["smoke"]
    assert smoke["ok"] and smoke["checks_failed"] == 0
    details = " | ".join(c["detail"] for c in smoke["checks"])
    assert "vLLM 0.4.1" in details and "usage from the stream's chunks" in details, details
    load = rep["load"]
    assert load["requests"] > 30 and load["error_rate"] == 0 and load["failures"] == 0
