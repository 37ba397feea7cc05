"""The test bed's kubelet for generic pods: a pod labelled ``tidegate.dev/local-exec: "true"``
and bound to a (KWOK) node runs as a local process, as a kubelet would run its container.

KWOK's pods run nothing; the daemon (``testbed.daemon``) already plays the kubelet for
predictor pods (a vLLM emulator each). This module does the same for everything else the test
bed must really run: the in-cluster Locust workers of ``load.generators.in_cluster`` and the
Jobs a Prefect Kubernetes worker creates for a flow run. KWOK's ``pod-ready`` and
``pod-complete`` stages skip pods with the label (``testbed.cluster``), so the status a pod
shows is this runner's and nobody else's.

Invariants:

- Only an image the test bed can run locally is run (``runnable_image``): tidegate's own image
  and Prefect's. Any other image gets ``ErrImagePull`` with a message saying why, phase Pending,
  never Running.
- The first container only (init containers and sidecars are not run: none of our pods has
  them); its ``command`` + ``args`` are run with ``python``/``python3``/``prefect`` mapped to the
  test bed's interpreter, its ``env`` (``value`` and the downward API's ``fieldRef``;
  ``secretKeyRef`` is read from the apiserver), tidegate's source on ``PYTHONPATH``, in a working
  directory of its own; stdout and stderr go to ``<state>/pods/<namespace>_<name>/<container>.log``.
- Status is reported with server-side apply of the status (field manager ``kubelet-testbed``):
  Running (with a pod IP) once started, then Succeeded (exit 0) or Failed with the container's
  exit code, ``reason`` Completed/Error and the log's last line as message.
- A pod being deleted has its process group killed (SIGTERM, SIGKILL after the grace period,
  at most 5 s); ``activeDeadlineSeconds`` is enforced; the children die with the daemon
  (``PR_SET_PDEATHSIG``), so nothing outlives ``testbed down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import ClusterError
from tasks.kube import Kube

log = logging.getLogger("testbed.podrunner")
LOCAL_EXEC_LABEL = "tidegate.dev/local-exec"
FIELD_MANAGER = "kubelet-testbed"
# images the test bed knows how to run as a local process: tidegate's own and Prefect's
RUNNABLE_IMAGE = re.compile(r"^(?:[^/]+/)*(?:tidegate|prefect)(?::[^/]+)?(?:@sha256:[0-9a-f]+)?$")
KILL_GRACE_MAX_S = 5.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent

Obj = dict[str, Any]
Call = Callable[..., Awaitable[Any]]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(pod: Obj) -> str:
    return f"{pod['metadata'].get('namespace', '')}/{pod['metadata']['name']}"


def wants(pod: Obj) -> bool:
    """Is this pod the runner's (labelled for local execution)?"""
    return (pod["metadata"].get("labels") or {}).get(LOCAL_EXEC_LABEL) == "true"


def runnable_image(image: str) -> bool:
    """tidegate's or Prefect's image (any registry, tag or digest)."""
    return bool(RUNNABLE_IMAGE.match(image or ""))


def local_argv(container: Obj) -> list[str]:
    """The container's command + args with the interpreter mapped to the test bed's."""
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    if not argv:
        raise ValueError("the container has no command: the test bed cannot know the image's entrypoint")
    head = argv[0].rsplit("/", 1)[-1]
    bindir = Path(sys.executable).parent
    if head in ("python", "python3") or re.fullmatch(r"python3\.\d+", head):
        argv[0] = sys.executable
    elif (bindir / head).exists():
        argv[0] = str(bindir / head)
    elif not shutil.which(argv[0]):
        raise ValueError(f"command {argv[0]!r} is not on the test bed")
    return argv


def _field(pod: Obj, path: str, pod_ip: str) -> str:
    values = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"].get("namespace", ""),
              "metadata.uid": pod["metadata"].get("uid", ""), "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.podIP": pod_ip, "status.hostIP": "127.0.0.1"}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((pod["metadata"].get(m.group(1)) or {}).get(m.group(2), ""))
    return values.get(path, "")


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Run:
    pod: Obj
    popen: subprocess.Popen[bytes]
    log: Path
    started_at: str
    pod_ip: str
    deadline: float | None
    kill_at: float | None = None
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class PodRunner:
    """Runs the labelled pods of the test bed as local processes (see the module docstring)."""

    def __init__(self, kube: Kube, state_dir: Path, call: Call):
        self.kube, self.call = kube, call
        self.dir = Path(state_dir) / "pods"
        self.runs: dict[str, _Run] = {}
        self.refused: set[str] = set()
        self.ips: dict[str, str] = {}

    # -- events --------------------------------------------------------------------------------
    async def handle(self, etype: str, pod: Obj) -> None:
        key = _key(pod)
        if etype == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            self.refused.discard(key)
            run = self.runs.get(key)
            if run is not None and not run.done:
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                self._terminate(run, min(KILL_GRACE_MAX_S, float(grace if grace is not None else 30)))
            if etype == "DELETED":
                self.runs.pop(key, None)
            return
        if not pod["spec"].get("nodeName") or key in self.runs or key in self.refused:
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # finished before a daemon restart: never run twice
        container = pod["spec"]["containers"][0]
        image = container.get("image", "")
        if not runnable_image(image):
            self.refused.add(key)
            await self._status(pod, "Pending", waiting=("ErrImagePull", (
                f'image "{image}" cannot run on the test bed: its pod runner runs only tidegate\'s and '
                "Prefect's images as local processes")))
            return
        try:
            argv = local_argv(container)
            env = await self._env(pod, container)
        except (ValueError, ClusterError) as exc:
            self.refused.add(key)
            await self._status(pod, "Pending", waiting=("CreateContainerConfigError", str(exc)))
            return
        workdir = self.dir / f"{pod['metadata'].get('namespace', '')}_{pod['metadata']['name']}"
        workdir.mkdir(parents=True, exist_ok=True)
        logf = workdir / f"{container['name']}.log"
        with open(logf, "ab") as fh:
            # started from the loop's thread: PR_SET_PDEATHSIG follows the thread that forked
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(workdir), start_new_session=True,
                                     preexec_fn=_set_pdeathsig)
        ads = pod["spec"].get("activeDeadlineSeconds")
        run = _Run(pod, popen, logf, _now(), self._ip(key), time.monotonic() + float(ads) if ads else None)
        self.runs[key] = run
        log.info("pod %s: started %s (pid %s), log %s", key, " ".join(argv[:4]), popen.pid, logf)
        await self._status(pod, "Running", run=run)

    async def _env(self, pod: Obj, container: Obj) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")}
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        env["HOSTNAME"] = pod["metadata"]["name"]
        # the pod network of local processes is the loopback: status.podIP as the downward API
        # gives it is 127.0.0.1 (the podIP reported in the status is a pod-network address, as
        # endpoint controllers refuse loopback)
        ip = "127.0.0.1"
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = str(item.get("value") or "")
            elif (item.get("valueFrom") or {}).get("fieldRef"):
                env[name] = _field(pod, item["valueFrom"]["fieldRef"]["fieldPath"], ip)
            elif (item.get("valueFrom") or {}).get("secretKeyRef"):
                ref = item["valueFrom"]["secretKeyRef"]
                secret = await self.call(self.kube.get, "v1", "Secret", ref["name"], pod["metadata"].get("namespace"))
                data = (secret or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise ValueError(f'secret "{ref["name"]}" has no key {ref["key"]!r} (env {name})')
                import base64

                env[name] = base64.b64decode(data[ref["key"]]).decode("utf-8", "replace")
        return env

    def _ip(self, key: str) -> str:
        if key not in self.ips:
            n = len(self.ips) + 2
            self.ips[key] = f"10.246.{(n >> 8) & 255}.{n & 255}"
        return self.ips[key]

    def _terminate(self, run: _Run, grace_s: float) -> None:
        if run.popen.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(run.popen.pid, signal.SIGTERM)
            run.kill_at = time.monotonic() + grace_s

    # -- the loop ------------------------------------------------------------------------------
    async def run(self, stop: Any) -> None:
        """Notice exits, enforce deadlines and kill grace periods; every 0.2 s until ``stop`` is set."""
        while not stop.is_set():
            now = time.monotonic()
            for key, run in list(self.runs.items()):
                if run.done:
                    continue
                rc = run.popen.poll()
                if rc is None:
                    if run.kill_at is not None and now > run.kill_at:
                        with contextlib.suppress(OSError):
                            os.killpg(run.popen.pid, signal.SIGKILL)
                    elif run.deadline is not None and now > run.deadline and run.kill_at is None:
                        run.extra["reason"] = "DeadlineExceeded"
                        self._terminate(run, KILL_GRACE_MAX_S)
                    continue
                run.done = True
                if run.kill_at is not None and "reason" not in run.extra:
                    continue  # killed because the pod is being deleted: nothing to report
                log.info("pod %s: exited with code %s", key, rc)
                await self._status(run.pod, "Succeeded" if rc == 0 else "Failed", run=run, exit_code=rc)
            await asyncio.sleep(0.2)

    def stop_all(self) -> None:
        for run in self.runs.values():
            if run.popen.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(run.popen.pid, signal.SIGKILL)

    def status_doc(self) -> Obj:
        return {k: {"pid": r.popen.pid, "exit_code": r.popen.poll(), "log": str(r.log)} for k, r in self.runs.items()}

    # -- status --------------------------------------------------------------------------------
    async def _status(self, pod: Obj, phase: str, *, run: _Run | None = None, exit_code: int | None = None,
                      waiting: tuple[str, str] | None = None) -> None:
        now = _now()
        container = pod["spec"]["containers"][0]
        running = phase == "Running"
        if waiting:
            state: Obj = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        elif running and run is not None:
            state = {"running": {"startedAt": run.started_at}}
        else:
            assert run is not None
            state = {"terminated": {"exitCode": int(exit_code or 0),
                                    "reason": run.extra.get("reason") or ("Completed" if exit_code == 0 else "Error"),
                                    "message": _last_line(run.log), "startedAt": run.started_at, "finishedAt": now}}

        def cond(t: str, ok: bool) -> Obj:
            return {"type": t, "status": "True" if ok else "False", "lastTransitionTime": now}

        status: Obj = {
            "phase": phase, "hostIP": "10.0.0.1", "startTime": (run.started_at if run else now),
            "conditions": [cond("PodScheduled", True), cond("Initialized", True),
                           cond("ContainersReady", running), cond("Ready", running)],
            "containerStatuses": [{
                "name": container["name"], "image": container.get("image", ""), "imageID": "",
                "ready": running, "started": running, "restartCount": 0, "state": state,
                **({"containerID": f"local://{run.popen.pid}"} if run else {})}],
        }
        if run is not None:
            status["podIP"] = run.pod_ip
            status["podIPs"] = [{"ip": run.pod_ip}]
        if run is not None and run.extra.get("reason") == "DeadlineExceeded":
            status["reason"] = "DeadlineExceeded"
        try:
            await self.call(self.kube.apply_status, {"apiVersion": "v1", "kind": "Pod",
                                                     "metadata": {"name": pod["metadata"]["name"],
                                                                  "namespace": pod["metadata"]["namespace"]},
                                                     "status": status}, field_manager=FIELD_MANAGER)
        except ClusterError as exc:
            log.info("pod status %s: %s", _key(pod), exc)


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-400:] if lines else ""


__all__ = ["LOCAL_EXEC_LABEL", "PodRunner", "local_argv", "runnable_image", "wants"]
