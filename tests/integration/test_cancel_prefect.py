"""SIGTERM to ``tidegate validate`` while its flow runs on Prefect's temporary API server, with
stand-in stages (no cluster, no test bed; Prefect's temporary server is started for real).

Under Prefect the flow engine installs its own SIGTERM bridge for the length of the flow run; it
raised ``TerminationSignal`` in the middle of the stage and, after the flow crashed, sent the
process SIGTERM again from its exit path. The stand-in spike stage has a generator process of
its own and receives a second SIGTERM inside the cleanup that stops it (the case where an
exception raised by the handler left the generator running). Expected: exit 2 with
"tidegate: terminated (SIGTERM)", no traceback, the spike ``error`` "interrupted", teardown
``passed``, verdict ``fail``, and no process left (the generator, Prefect's server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]

DRIVER = r"""
import dataclasses, os, signal, subprocess, sys, time
from pathlib import Path

import flows.validation as validation
import tasks.stages as stages
from flows.cli import main
from tasks import cancel

out = Path(sys.argv[1])


def spike(_ctx):
    generator = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (out / "generator.pid").write_text(str(generator.pid))
    try:
        (out / "in_spike").write_text("")
        while True:
            cancel.sleep(0.1)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM inside the cleanup
        time.sleep(0.05)
        generator.kill()
        generator.wait()
        (out / "cleanup_done").write_text("")


def teardown(_ctx):
    (out / "teardown_done").write_text("")
    return "deleted 0 objects"


fakes = {"spike": spike, "teardown": teardown}
validation.BY_NAME = {name: dataclasses.replace(s, run=fakes.get(name, lambda _ctx: "ok"))
                      for name, s in stages.BY_NAME.items()}
sys.exit(main(["validate", "--spec", str(Path("examples/qwen-chat.local.yaml")),
               "--stages", "deploy,spike,verify,teardown"]))
"""


def _with_env(needle: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle.encode() in (proc / "environ").read_bytes():
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
            except OSError:
                continue
    return [c for c in found if c]


def test_sigterm_under_prefect_tears_down_and_leaves_no_process(tmp_path):
    home = tmp_path / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(home), "TIDEGATE_REPORTS_DIR": str(tmp_path / "reports"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    with open(tmp_path / "stderr", "wb") as err:
        cli = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 180
            while not (tmp_path / "in_spike").exists():
                assert cli.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
                assert time.monotonic() < deadline, "the stand-in spike did not start"
                time.sleep(0.1)
            cli.send_signal(signal.SIGTERM)
            rc = cli.wait(120)
        finally:
            if cli.poll() is None:
                cli.kill()
    stderr = (tmp_path / "stderr").read_text()
    generator = int((tmp_path / "generator.pid").read_text())
    time.sleep(2)
    assert rc == 2 and "tidegate: terminated (SIGTERM)" in stderr.splitlines(), stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert (tmp_path / "cleanup_done").exists() and (tmp_path / "teardown_done").exists()
    rid = next(ln.split()[2] for ln in stderr.splitlines() if ln.startswith("tidegate: run "))
    report = json.loads((tmp_path / "reports" / rid / "report.json").read_text())
    st = {name: (rec["status"], rec["detail"]) for name, rec in report["stages"].items()}
    assert st["spike"] == ("error", "interrupted (Terminated SIGTERM)") and st["teardown"][0] == "passed"
    assert st["verify"][0] == "not_run" and report["verdict"] == "fail"
    assert not Path(f"/proc/{generator}/cmdline").exists() or not Path(f"/proc/{generator}/cmdline").read_bytes()
    assert _with_env(f"PREFECT_HOME={home}") == []
