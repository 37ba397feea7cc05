"""flows.reaper: a Prefect temporary server left by a SIGKILLed CLI is stopped; nothing else is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from flows import reaper

pytestmark = pytest.mark.unit

# a parent that starts two children and waits: one looks like Prefect's server, one does not
PARENT = f"""
import subprocess, sys, time
server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "{reaper.SERVER_APP}"])
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "something-else"])
print(server.pid, other.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not reaper._alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_server_left_by_a_killed_parent_is_stopped_and_others_are_not():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    server, other = (int(x) for x in parent.stdout.readline().split())
    try:
        stopped: list[int] = []
        t = threading.Thread(target=lambda: stopped.extend(reaper.watch(parent.pid, interval_s=0.05, grace_s=5)))
        t.start()
        deadline = time.monotonic() + 5
        while server not in reaper.servers_of(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reaper.servers_of(parent.pid).keys() == {server}
        time.sleep(0.2)                      # the watchdog has seen it
        parent.send_signal(signal.SIGKILL)   # like `kill -9` of the CLI: its exit handlers never run
        parent.wait(5)
        t.join(10)
        assert stopped == [server]
        assert _gone(server, 5)
        assert reaper._alive(other)          # not a Prefect server: not the reaper's business
    finally:
        for pid in (server, other):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_parent_that_exits_normally_leaves_nothing_to_stop():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    assert reaper.watch(parent.pid, interval_s=0.05) == []
    parent.wait(5)


def test_start_launches_a_detached_watchdog_that_ends_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    dog = reaper.start(parent.pid)
    assert dog is not None
    assert os.getsid(dog.pid) == dog.pid                      # its own session: a group signal misses it
    assert dog.wait(10) == 0                                  # ended after the parent
    parent.wait(5)
