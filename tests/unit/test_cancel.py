"""SIGTERM during a run: recorded by the handler, raised at a checkpoint, never in the middle of
cleanup (tasks/cancel.py). The signal is sent by the code under test itself, at the point where
an exception raised by the handler did harm (inside the ``finally`` that kills the load
generator, inside a lock-holding section, inside teardown), so each case is deterministic."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import tasks.stages as stages_mod
from flows import validation
from tasks import cancel
from tasks import load as L
from tasks.spec import LoadSpec, load_spec

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"


@pytest.fixture(autouse=True)
def _clean_state():
    """Each test starts with no request and the CLI's handler installed; both are restored."""
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, cancel.handle)
    cancel.reset()
    yield
    cancel.reset()
    signal.signal(signal.SIGTERM, before)


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # the handler has run by now (it runs in this, the main, thread)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- the handler and its scope ----------------------------------------------------------------------
def test_outside_a_run_sigterm_raises_at_once():
    with pytest.raises(cancel.Terminated, match="SIGTERM"):
        _sigterm_self()
    assert cancel.requested() == "SIGTERM"


def test_in_a_run_sigterm_is_recorded_then_raised_at_the_next_checkpoint():
    lock = threading.Lock()
    with cancel.deferring():
        with lock:  # a lock-holding section runs to its end
            _sigterm_self()
            finished = True
        assert finished and not lock.locked()
        assert cancel.requested() == "SIGTERM"
        with pytest.raises(cancel.Terminated) as caught:
            cancel.check()
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.signum == signal.SIGTERM


def test_cancel_sleep_wakes_at_once():
    with cancel.deferring():
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        began = time.monotonic()
        with pytest.raises(cancel.Terminated):
            cancel.sleep(30)
        timer.join()
    assert time.monotonic() - began < 2


def test_deferring_replaces_prefects_bridge_and_puts_it_back():
    """Prefect's flow engine installs a handler that raises wherever the main thread is; a run's
    stages run over it with the deferring one, and it is back afterwards."""
    def bridge(signum, frame):  # the stand-in of prefect.utilities.engine._prefect_sigterm_handler
        raise RuntimeError("raised in the middle of the stage")

    signal.signal(signal.SIGTERM, bridge)
    with cancel.deferring():
        assert signal.getsignal(signal.SIGTERM) is cancel.handle
        _sigterm_self()
    assert signal.getsignal(signal.SIGTERM) is bridge
    assert cancel.requested() == "SIGTERM"


# -- the load generator: the signal lands in the finally that kills it --------------------------------
def test_sigterm_in_the_generators_cleanup_still_kills_every_process(monkeypatch, tmp_path):
    """The generator processes (a master and two workers) record their pids and the first sends the
    CLI SIGTERM; a second SIGTERM arrives just as run_load's ``finally`` starts to kill them. Every
    process is gone when run_load raises Terminated."""
    pids = tmp_path / "pids"
    pids.mkdir()
    script = ("import os, signal, sys, time; from pathlib import Path; "
              f"Path({str(pids)!r}, str(os.getpid())).write_text(''); "
              "time.sleep(0.5); "
              "sys.argv[sys.argv.index('--index') + 1] == '0' and os.kill(os.getppid(), signal.SIGTERM); "
              "time.sleep(600)")
    monkeypatch.setattr(L, "_runner_command",
                        lambda config, role, index: [sys.executable, "-c", script, "--index", str(index)])
    kill = L._kill
    cleanups = []

    def kill_after_a_second_signal(procs):
        cleanups.append(len(procs))
        _sigterm_self()  # a repeated SIGTERM, inside the cleanup
        kill(procs)

    monkeypatch.setattr(L, "_kill", kill_after_a_second_signal)
    load = LoadSpec(baseline_users=2, spike_users=10, spawn_rate=5, baseline_s=3, spike_s=60, hold_s=3,
                    cooldown_s=3, workers=2)
    began = time.monotonic()
    with cancel.deferring(), pytest.raises(cancel.Terminated):
        L.run_load(load, tmp_path / "out", base_url="http://127.0.0.1:9")
    assert time.monotonic() - began < 20
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) == 3 and cleanups == [3]
    assert [pid for pid in started if _alive(pid)] == []


# -- the run: the interrupted stage is recorded, teardown runs to its end, the report is written -------
def _fake_stages(monkeypatch, *, spike, teardown):
    def ok(_ctx):
        return "ok"

    fakes = {"spike": spike, "teardown": teardown}
    patched = {name: dataclasses.replace(s, run=fakes.get(name, ok)) for name, s in stages_mod.BY_NAME.items()}
    monkeypatch.setattr(validation, "BY_NAME", patched)


def test_a_run_interrupted_mid_spike_tears_down_and_reports(monkeypatch, tmp_path):
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    spec = load_spec(str(LOCAL), [])
    seen = []

    def spike(_ctx):
        lock = threading.Lock()
        try:
            with lock:
                _sigterm_self()  # lands in a lock-holding section: recorded only
                seen.append("critical section done")
            while True:
                cancel.sleep(0.05)  # the stage's checkpoint
        finally:
            seen.append("spike cleanup done")

    def teardown(_ctx):
        _sigterm_self()  # a second SIGTERM during teardown: teardown still runs to its end
        seen.append("teardown done")
        return "deleted 0 objects"

    _fake_stages(monkeypatch, spike=spike, teardown=teardown)
    with pytest.raises(cancel.Terminated):
        validation.execute(spec, ["deploy", "spike", "verify", "teardown"], "sigterm-unit-run", use_prefect=False)
    assert seen == ["critical section done", "spike cleanup done", "teardown done"]
    report = json.loads((tmp_path / "reports" / "sigterm-unit-run" / "report.json").read_text())
    st = {name: (rec["status"], rec["detail"]) for name, rec in report["stages"].items()}
    assert st["deploy"][0] == "passed" and st["teardown"] == ("passed", "deleted 0 objects")
    assert st["spike"] == ("error", "interrupted (Terminated SIGTERM)")
    assert st["verify"][0] == "not_run" and report["verdict"] == "fail"
    assert signal.getsignal(signal.SIGTERM) is cancel.handle  # the CLI's handler is back


def test_sigterm_between_stages_starts_no_further_stage(monkeypatch, tmp_path):
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    spec = load_spec(str(LOCAL), [])

    def spike(_ctx):
        _sigterm_self()  # after the stage's last checkpoint: it finishes, the next one does not start
        return "spiked"

    _fake_stages(monkeypatch, spike=spike, teardown=lambda _ctx: "deleted")
    with pytest.raises(cancel.Terminated):
        validation.execute(spec, ["deploy", "spike", "verify", "teardown"], "sigterm-unit-between", use_prefect=False)
    report = json.loads((tmp_path / "reports" / "sigterm-unit-between" / "report.json").read_text())
    st = {name: rec["status"] for name, rec in report["stages"].items()}
    assert (st["spike"], st["verify"], st["teardown"]) == ("passed", "not_run", "passed")


# -- the deploy stage's readiness wait ------------------------------------------------------------------
class _NeverReady:
    """A cluster on which the InferenceService never becomes Ready (each watch session times out)."""

    def __init__(self):
        self.sessions = 0

    def wait_for(self, *_args, timeout_s: float, **_kw):
        self.sessions += 1
        time.sleep(timeout_s)
        raise TimeoutError

    def get(self, *_args, **_kw):
        return None

    def list(self, *_args, **_kw):
        return []


def test_sigterm_stops_the_readiness_wait_between_watch_sessions(monkeypatch):
    from tasks import deploy as D

    monkeypatch.setattr(D, "CANCEL_CHECK_S", 0.1)
    kube, created = _NeverReady(), []
    spec = load_spec(str(LOCAL), [])
    with cancel.deferring():
        timer = threading.Timer(0.35, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        began = time.monotonic()
        with pytest.raises(cancel.Terminated):
            D.deploy(kube, [], spec, create=created.append, timeout_s=60)
        timer.join()
    assert time.monotonic() - began < 2 and created == [[]] and kube.sessions >= 2


def test_the_readiness_wait_still_ends_at_its_timeout(monkeypatch):
    from tasks import deploy as D
    from tasks.errors import StageFailed

    monkeypatch.setattr(D, "CANCEL_CHECK_S", 0.1)
    with cancel.deferring(), pytest.raises(StageFailed, match="not Ready after 0s"):
        D.deploy(_NeverReady(), [], load_spec(str(LOCAL), []), create=lambda _objs: [], timeout_s=0.35)
