"""Shared pieces of the reliability suite: the private test bed, the CLI run as a user runs it,
and the small probes the fault tests use.

The suite runs on its own test bed (own state dir and ports, see ``PORTS``) because its faults
restart the apiserver and stop the autoscaler; the shared test bed is never touched. Every CLI
run gets ``--set`` overrides that point the example spec at that bed and the environment
variable ``TIDEGATE_TESTBED_DIR`` (profile ``local`` reads the bed's OSS keys from there).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SPEC = ROOT / "examples" / "qwen-chat.local.yaml"
# distinct from the defaults (testbed/config.py Ports) and from test_realism's bed, and below the
# kernel's ephemeral range (32768-60999 here): an outgoing connection may take any port in it and
# a bed that binds there fails now and then with PortInUse. SeaweedFS also takes each of its ports
# + 10000 (gRPC), so its ports stay below 22768.
PORTS = {
    "etcd_client": 24379, "etcd_peer": 24380, "apiserver": 24443, "controller_manager": 24257,
    "scheduler": 24259, "kwok": 24247, "autoscaler": 24085, "metrics_adapter": 24444, "daemon": 24080,
    "webhook": 24453, "gateway": 24000, "oss": 24333, "seaweed_s3": 21334, "seaweed_master": 21333,
    "seaweed_volume": 21081, "seaweed_filer": 21888, "replica_base": 24600,
}
# a spike short enough for a fault test, long enough for spill-over and back on the test bed: closed
# loop (users), whose load backs off while the service scales, so that a 40 s spike holds the gate's
# latency rules; the open-loop demo is tests/e2e/test_spike_e2e.py
SHORT_LOAD = ["--set", "load.baseline_s=5", "--set", "load.spike_s=40", "--set", "load.hold_s=10",
              "--set", "load.cooldown_s=35", "--set", "load.arrival=closed"]
RUN_STARTED = re.compile(r"tidegate: run (\S+) started")


@dataclass
class Bed:
    """The suite's private test bed and its canary credentials."""

    cfg: Any  # testbed.config.TestbedConfig
    work: Path
    oss_key_id: str
    oss_key_secret: str
    run_ids: list[str] = field(default_factory=list)

    @property
    def prefect_home(self) -> Path:
        return self.work / "prefect-home"

    def admin(self):
        from tasks.kube import Kube

        return Kube.connect(kubeconfig=self.cfg.kubeconfig)

    def sets(self, kubeconfig: Path | str | None = None) -> list[str]:
        """``--set`` overrides that point the example spec at this bed."""
        return ["--set", f"cluster.kubeconfig={kubeconfig or self.cfg.kubeconfig}",
                "--set", f"ingress.url=http://127.0.0.1:{self.cfg.ports.gateway}",
                "--set", f"storage.oss.endpoint=http://127.0.0.1:{self.cfg.ports.oss}"]

    def env(self, reports: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TIDEGATE_OSS_", "PREFECT_API_", "KUBECONFIG"))}
        env.update(TIDEGATE_TESTBED_DIR=str(self.cfg.state_dir), TIDEGATE_REPORTS_DIR=str(reports),
                   PREFECT_HOME=str(self.prefect_home), PYTHONUNBUFFERED="1")
        env.update(extra or {})
        return env

    def leftovers(self, run_id: str) -> list[str]:
        from tasks.cluster import leftovers

        return leftovers(self.admin(), run_id, ["default"])

    def cleanup(self, run_id: str) -> list[str]:
        """Remove what carries ``run_id``'s label (as admin, after a test that may have left
        something: the suite's own clean-up, not tidegate's); what was removed."""
        from tasks.cluster import RUN_KINDS_CLUSTER, RUN_KINDS_NAMESPACED

        admin, kinds = self.admin(), {k: v for v, k in RUN_KINDS_NAMESPACED + RUN_KINDS_CLUSTER}
        left = self.leftovers(run_id)
        for ref in left:
            kind, *where = ref.split("/")
            ns, name = (where[0], where[1]) if len(where) == 2 else (None, where[0])
            admin.delete(kinds[kind], kind, name, ns, propagation="Foreground")
        deadline = time.monotonic() + 120
        while self.leftovers(run_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left


class Cli:
    """One ``tidegate`` process, started as a user starts it (``python -m flows.cli``)."""

    def __init__(self, bed: Bed, args: list[str], reports: Path, *, env: dict[str, str] | None = None,
                 module: str = "flows.cli"):
        self.bed = bed
        self.reports = reports
        reports.mkdir(parents=True, exist_ok=True)
        self.out_path = reports.parent / f"{reports.name}.stdout"
        self.err_path = reports.parent / f"{reports.name}.stderr"
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                                          env=bed.env(reports, env), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err)
        self._run_id: str | None = None

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def rc(self) -> int | None:
        return self.popen.poll()

    def run_id(self, timeout_s: float = 120) -> str:
        """The run id the CLI announces before it creates anything."""
        deadline = time.monotonic() + timeout_s
        while self._run_id is None:
            m = RUN_STARTED.search(self.stderr)
            if m:
                self._run_id = m.group(1)
                self.bed.run_ids.append(self._run_id)
                break
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no 'tidegate: run <id> started' line (rc {self.popen.poll()}): "
                                     f"{self.stderr[-1500:]}")
            time.sleep(0.1)
        return self._run_id

    def wait(self, timeout_s: float = 900) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"tidegate did not finish within {timeout_s:.0f}s; stderr: {self.stderr[-1500:]}")

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def report(self) -> dict:
        rid = self.run_id()
        path = self.reports / rid / "report.json"
        assert path.exists(), f"no report written at {path}; stderr: {self.stderr[-1500:]}"
        return json.loads(path.read_text())

    def wait_for_spike(self, timeout_s: float = 240) -> float:
        """Block until the load generator started; monotonic time it was seen."""
        marker = self.reports / self.run_id() / "locust" / "locust-config.json"
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            assert self.popen.poll() is None, f"tidegate ended before the spike: {self.stderr[-1500:]}"
            assert time.monotonic() < deadline, "the spike did not start in time"
            time.sleep(0.1)
        return time.monotonic()


def run_cli(bed: Bed, args: list[str], reports: Path, *, timeout_s: float = 900, **kw) -> Cli:
    cli = Cli(bed, args, reports, **kw)
    cli.wait(timeout_s)
    return cli


def validate_args(bed: Bed, *extra: str, stages: str | None = None, prefect: bool = False,
                  kubeconfig: Path | str | None = None, spec: Path = LOCAL_SPEC) -> list[str]:
    args = ["validate", "--spec", str(spec), *bed.sets(kubeconfig)]
    if stages:
        args += ["--stages", stages]
    if not prefect:
        args.append("--no-prefect")
    return args + list(extra)


def processes_matching(*needles: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose command line or environment contains every
    needle (environment: ``NAME=value`` needles)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if all(n in cmd or n in env for n in needles):
            found.append((int(proc.name), cmd.strip()))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]
