"""Start, find and stop the test bed's processes by pid file.

Every process runs in its own session (so that the CLI that started it can exit), logs to
``<state>/logs/<name>.log`` and has ``<state>/run/<name>.pid``. A pid file is trusted only if
that pid is alive *and* its command line still names the binary we started (pids get
reused); otherwise it is stale and removed. Ports are checked before a start, and a port in
use is reported with the pid and command of the process holding it.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testbed.config import TestbedConfig
from testbed.errors import PortInUse, TestbedError


@dataclass
class Proc:
    name: str
    argv: list[str]
    ports: list[int]
    env: dict[str, str] | None = None
    cwd: Path | None = None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    """A live (not zombie) process in process group ``pgid``, the leader included."""
    if _alive(pgid):
        return True
    try:
        os.killpg(pgid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            fields = (proc_dir / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, command) of the process listening on 127.0.0.1/0.0.0.0:port, if we can tell."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    if not inodes:
        return None
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            for fd in (proc_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pid = int(proc_dir.name)
                    return pid, _cmdline(pid)[:120]
        except OSError:
            continue
    return (-1, "unknown process")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports(name: str, ports: list[int]) -> None:
    for port in ports:
        if not port_free(port):
            owner = port_owner(port)
            who = f"pid {owner[0]} ({owner[1]})" if owner and owner[0] > 0 else "another process"
            raise PortInUse(f"{name}: port {port} is in use by {who}",
                            hint="stop that process or choose another port with `tidegate testbed up --set ports.<name>=N`")


class ProcessTable:
    def __init__(self, run_dir: Path, log_dir: Path):
        self.run_dir = run_dir
        self.log_dir = log_dir

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The live pid of ``name`` or None; removes a stale pid file."""
        pf = self.pid_file(name)
        try:
            pid_s, _, marker = pf.read_text().partition("\n")
            pid = int(pid_s)
        except (OSError, ValueError):
            return None
        if _alive(pid) and marker.strip() and marker.strip() in _cmdline(pid):
            return pid
        pf.unlink(missing_ok=True)
        return None

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.pid")) if self.run_dir.exists() else []

    def start(self, proc: Proc) -> int:
        existing = self.pid(proc.name)
        if existing:
            return existing
        check_ports(proc.name, proc.ports)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(proc.env or {})
        log = open(self.log_file(proc.name), "ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {proc.name}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(proc.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=proc.cwd, start_new_session=True)
        except OSError as exc:
            raise TestbedError(f"{proc.name}: cannot start {proc.argv[0]}: {exc.strerror}") from exc
        finally:
            log.close()
        self.pid_file(proc.name).write_text(f"{popen.pid}\n{proc.argv[0]}\n")
        # between fork and exec /proc/<pid>/cmdline still shows the parent; wait for the exec so
        # that pid() recognises the process (else it would call the pid file stale)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and popen.poll() is None and proc.argv[0] not in _cmdline(popen.pid):
            time.sleep(0.01)
        return popen.pid

    def exited_early(self, name: str) -> str | None:
        """If ``name`` died, the tail of its log (for a one-line diagnosis)."""
        if self.pid(name):
            return None
        try:
            tail = [ln for ln in self.log_file(name).read_text(errors="replace").splitlines() if ln.strip()][-3:]
        except OSError:
            tail = []
        return " | ".join(t.strip()[:200] for t in tail) or "no log"

    def stop(self, name: str, *, timeout: float = 20.0, sig: int = signal.SIGTERM) -> bool:
        """Stop ``name`` (its whole process group); SIGKILL after ``timeout``. True if it was running."""
        pid = self.pid(name)
        if not pid:
            self.pid_file(name).unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, sig)
        except OSError:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        # the whole group: a child still holding an inherited listening socket keeps its port
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            end = time.monotonic() + 5
            while time.monotonic() < end and _group_alive(pid):
                time.sleep(0.1)
        self.pid_file(name).unlink(missing_ok=True)
        return True


def reap_strays(marker: str, *, timeout: float = 10.0) -> list[int]:
    """Stop processes whose command line contains ``marker`` (the test bed's state dir) but
    that no pid file knows any more, e.g. after a crash of the CLI that started them."""
    me = os.getpid()
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit() or int(proc_dir.name) == me:
            continue
        cmd = _cmdline(int(proc_dir.name))
        if marker in cmd and "pytest" not in cmd and "tidegate testbed" not in cmd:
            found.append(int(proc_dir.name))
    for pid in found:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in found):
        time.sleep(0.1)
    for pid in found:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return found


def wait_until(check, *, timeout: float, what: str, interval: float = 0.25, died=None) -> None:
    """Poll ``check()`` until true; ``died()`` returning text aborts early with that reason."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways while starting
            last_exc = exc
        if died:
            reason = died()
            if reason:
                raise TestbedError(f"{what}: the process exited while starting: {reason}")
        time.sleep(interval)
    detail = f" (last error: {str(last_exc)[:160]})" if last_exc else ""
    raise TestbedError(f"{what}: not ready after {timeout:.0f}s{detail}", hint="see `tidegate testbed logs`")


@dataclass
class Component:
    """A process of the test bed: how to start it and how to tell it is ready."""

    name: str
    version: str
    make_proc: Callable[[TestbedConfig], Proc]
    ready: Callable[[TestbedConfig], bool]
    timeout_s: float = 60.0
    before: Callable[[TestbedConfig], None] | None = None
    after: Callable[[TestbedConfig], None] | None = None
    stop_timeout_s: float = 20.0
    extra_status: Callable[[TestbedConfig], dict] | None = None


def kube(cfg: TestbedConfig):
    from tasks.kube import Kube

    return Kube.connect(kubeconfig=cfg.kubeconfig)
