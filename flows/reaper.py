"""reaper: stops Prefect's temporary API server when the CLI that started it dies without
stopping it.

``tidegate validate`` runs its flow on Prefect's temporary API server, which Prefect starts as a
plain child process (``SubprocessASGIServer``: ``python -m uvicorn ...
prefect.server.api.server:create_app``) and stops from an exit handler. A SIGTERM or Ctrl-C
reaches that handler; ``kill -9`` of the CLI does not, and the server lived on, holding its port.

``start(parent_pid)`` launches this module as a detached watchdog (its own session, so that a
signal to the CLI's process group does not stop it first; an environment with nothing but
``PATH``), which every ``INTERVAL_S`` notes the parent's children that run the Prefect server
app. Once the parent is gone it sends those still running (the same process, by pid and start
time) SIGTERM, then SIGKILL after ``GRACE_S``, and exits; it exits at once when the parent is
gone and had no such child. Linux only (it reads /proc); elsewhere ``start`` does nothing.

Example::

    from flows import reaper
    reaper.start(os.getpid())      # before the flow starts Prefect's temporary server
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVER_APP = "prefect.server.api.server:create_app"
INTERVAL_S = 0.5
GRACE_S = 10.0


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None   # field 22 of stat: starttime


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def servers_of(parent: int) -> dict[int, str]:
    """pid -> start time of the parent's live children running the Prefect server app."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        fields = _stat(pid)
        if fields and len(fields) > 19 and fields[0] != "Z" and int(fields[1]) == parent \
                and SERVER_APP in _cmdline(pid):
            found[pid] = fields[19]
    return found


def watch(parent: int, *, interval_s: float = INTERVAL_S, grace_s: float = GRACE_S) -> list[int]:
    """Block until ``parent`` is gone, then stop the Prefect servers it left; their pids."""
    known: dict[int, str] = {}
    while _alive(parent):
        known.update(servers_of(parent))
        time.sleep(interval_s)
    left = [pid for pid, started in known.items() if _alive(pid) and _start_time(pid) == started]
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in left):
        time.sleep(0.1)
    for pid in left:
        if _alive(pid) and _start_time(pid) == known[pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return left


def start(parent_pid: int) -> subprocess.Popen | None:
    """Launch the watchdog for ``parent_pid`` (see the module docstring); None off Linux."""
    if not Path(f"/proc/{parent_pid}/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "flows.reaper", str(parent_pid)],
                            cwd=str(Path(__file__).resolve().parents[1]),
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


if __name__ == "__main__":  # pragma: no cover - run by start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
