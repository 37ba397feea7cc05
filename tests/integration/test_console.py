"""The console of `tidegate validate` on the test bed (issue 23), through the real CLI.

Without a terminal (CI, a pipe): the spike prints a progress line on stderr at least every 15 s
and the run ends with the summary table on stdout. On a terminal (a pseudo-terminal here, under
Prefect as `make demo` runs it): live bars are drawn instead of the lines, one for staging the
weights (bytes, MB/s) and one for the spike (phase, offered/achieved rate, errors, TTFT p95,
replicas and nodes per pool), and Prefect's log lines are printed above them, not through them.

Both runs are short (a spike of seconds) and use the bed's own ports (``cfg.ports``), so they
work on any test bed; each run's reports and Prefect home are its own (tmp_path).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
MAX_GAP_S = 15.0
PROGRESS = re.compile(r"tidegate: load: .*elapsed (\d+)/(\d+) s")
# what the gate checks here: the console is under test, not the short spike's latencies
ERRORS_ONLY = 'slo=[{rule: load.error_rate, op: "<=", threshold: 0.01}]'


def _bed_sets(cfg) -> list[str]:
    return ["--set", f"ingress.url=http://127.0.0.1:{cfg.ports.gateway}",
            "--set", f"storage.oss.endpoint=http://127.0.0.1:{cfg.ports.oss}",
            "--set", f"cluster.kubeconfig={cfg.kubeconfig}"]


def _load_sets(**seconds: float) -> list[str]:
    out = []
    for key, value in seconds.items():
        out += ["--set", f"load.{key}={value}"]
    return out


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "TIDEGATE_REPORTS_DIR": str(tmp_path / "reports"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    env.pop("TIDEGATE_CONSOLE", None)
    return env


def test_console_without_a_tty_prints_progress_every_15_s_and_the_summary(testbed, tmp_path):
    cmd = [sys.executable, "-m", "flows.cli", "validate", "--spec", str(LOCAL), "--no-prefect", *_bed_sets(testbed),
           *_load_sets(baseline_s=5, ramp_s=5, spike_s=20, hold_s=5, cooldown_s=15), "--set", ERRORS_ONLY]
    env = {**_env(tmp_path), "TERM": "dumb"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert proc.stdout is not None
    out = proc.stdout.read()  # stderr is the reader's alone (communicate() would take some of its lines)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = "\n".join(text for _, text in lines)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    progress = [(t, PROGRESS.search(text)) for t, text in lines if PROGRESS.search(text)]
    total_s = int(progress[0][1].group(2)) if progress else 0
    assert total_s >= 40 and len(progress) >= total_s // 10 - 1, err[-4000:]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(progress)]
    assert max(gaps) <= MAX_GAP_S, f"gaps between progress lines: {[round(g, 1) for g in gaps]}"
    # the stage's shape begins within a line's interval of the spike stage starting, and the last
    # line is at most one interval before the shape's end
    assert int(progress[-1][1].group(1)) >= total_s - MAX_GAP_S
    one = next(text for _, text in lines if PROGRESS.search(text))
    for field in ("offered", "rps completed", "failed", "TTFT p50", "p95", "replicas IDC", "nodes IDC"):
        assert field in one, one
    assert "\r" not in err and "\x1b[" not in err, "a terminal's bar or colours on a pipe"
    # the summary table at the end, on stdout
    assert re.search(r"^run \S+: PASS$", out, re.MULTILINE), out
    for label in ("requests", "error rate", "TTFT p50 / p95 (ms)", "HPA max replicas", "gate pass"):
        assert re.search(rf"^  {re.escape(label)}", out, re.MULTILINE), out
    assert out.rstrip().splitlines()[-1].startswith("tidegate: PASS run ")


def _run_in_pty(cmd: list[str], env: dict[str, str], timeout_s: float, cols: int = 140) -> tuple[int, str]:
    """``cmd`` with stdin, stdout and stderr on a pseudo-terminal of ``cols`` columns; (exit code,
    everything it wrote to the terminal)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=child, stdout=child, stderr=child, close_fds=True,
                            start_new_session=True)
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"{cmd} did not end in {timeout_s:.0f} s:\n{b''.join(chunks).decode(errors='replace')[-4000:]}")
        rc = proc.wait(timeout=60)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return rc, b"".join(chunks).decode("utf-8", errors="replace")


def test_console_on_a_tty_draws_live_bars_under_prefect(testbed, tmp_path):
    prefix = f"models/console-{uuid.uuid4().hex[:8]}"  # nothing staged there yet: the bar has bytes to show
    cmd = [sys.executable, "-m", "flows.cli", "validate", "--spec", str(LOCAL), *_bed_sets(testbed),
           "--stages", "stage,prepare,deploy,spike,teardown", "--set", f"storage.oss.prefix={prefix}",
           *_load_sets(baseline_s=3, ramp_s=0, spike_s=8, hold_s=0, cooldown_s=3)]
    env = {**_env(tmp_path), "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "50"}
    # staging 2.8 MB is quick: small parts make it last several refreshes of the bar
    env.update({"TIDEGATE_STAGING_PART_MIB": "5", "TIDEGATE_STAGING_THRESHOLD_MIB": "5"})
    rc, screen = _run_in_pty(cmd, env, timeout_s=300)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    # no gate selected: the run is inconclusive (exit 3), which is not what is tested here
    assert rc in (0, 3), f"exit {rc}:\n{plain[-4000:]}"
    assert "━" in plain, "no bar glyphs on the terminal"
    assert re.search(r"staging oss://\S+ .*100\.0% 2\.\d MB / 2\.\d MB", plain), plain[-4000:]
    assert re.search(r"load: (baseline|spike|cooldown) +━.* \d+/\d+ s", plain), plain[-4000:]
    assert re.search(r"offered \d+\.\d/s, achieved \d+\.\d/s, \d+ done, errors \d+", plain), plain[-4000:]
    assert re.search(r"TTFT p95 (\d+ ms|-) so far", plain) and "replicas IDC" in plain and "nodes IDC" in plain
    # the lines are not printed on a terminal: the bar shows it all
    assert "tidegate: load:" not in plain
    # Prefect's log lines are printed whole, each on its own line, never spliced into a bar's line
    finished = [ln for ln in plain.splitlines() if "Finished in state" in ln]
    assert any("Task run 'spike" in ln for ln in finished), plain[-4000:]
    for ln in finished:
        assert "━" not in ln and "replicas IDC" not in ln, ln
