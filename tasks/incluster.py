"""In-cluster load generation (``load.generators.in_cluster``): the Locust workers run as
Kubernetes Jobs on the pools named, and tidegate is their coordinator.

Design (and why it works on ACK as on the test bed):

- **Workers are Jobs** (``tasks.render.render_load_jobs``), created with the run's ownership
  ledger (``tasks.ownership.create_owned``: labelled with the run id, recorded by uid), worker
  ``i`` on ``pools[(i - 1) % len(pools)]`` by nodeSelector; each runs
  ``python -m tasks._incluster_worker``: tidegate's own open-loop runner on ``1 / workers`` of
  the rate (its own seed and phase of the schedule, as the local workers).
- **tidegate is the master**: no Locust master pod. The coordination the open loop needs is a
  start epoch shared by all workers and the samples back; a Locust master would need a Service
  and its ZMQ ports reachable from both pools, and it would still not hold the raw samples.
- **Samples come back over HTTP** to the ``Collector`` that this module runs beside the load:
  every worker sends the raw per-request records and in-flight samples every second, and its
  runner summary at the end. The records are the same dicts the local runner writes, so the
  merge is exact (concatenation; percentiles are computed once, over all of them). Reading
  ``pods/log`` through the apiserver was the alternative; it cannot work on the test bed (KWOK
  nodes serve no logs) and ties the sample volume to the log pipeline. On ACK the collector must
  be reachable from the pods: tidegate running in the cluster (a Prefect Kubernetes work pool's
  Job: ``$POD_IP``, flat pod network) or ``load.generators.collector_url`` (e.g. a Service or
  a routable address of the machine). On the test bed the pods are local processes: 127.0.0.1.
- **Clock skew**: each worker measures its offset to tidegate's clock at ``/v1/hello`` (NTP
  style, ± half the round trip); its records' epochs are shifted by it, and the report gives
  each worker's offset and round trip and the spread between workers (``clock_skew_ms``).
- **Bounded**: workers must say hello within ``READY_TIMEOUT_S`` (a pod stuck in
  ``ErrImagePull`` or ``Pending`` fails the stage naming it and its reason), the whole run within
  the caller's deadline; the Jobs are deleted (by uid, pods with them) as soon as the load ends,
  so a worker on the elastic pool does not hold a cloud node through spill-back.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tasks import cancel
from tasks.errors import ClusterError, StageFailed
from tasks.kube import Kube
from tasks.names import RUN_LABEL
from tasks.ownership import Ledger, create_owned
from tasks.render import LOAD_WORKER_LABEL, render_load_jobs
from tasks.spec import RolloutSpec

READY_TIMEOUT_S = 180.0
START_MARGIN_S = 3.0           # between the last hello and the shared start: every worker hears of it
MAX_BODY_BYTES = 64 << 20
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError")
TIME_KEYS = ("start", "end", "intended")
RUNNER_TIME_KEYS = ("started_at", "shape_ended_at", "stopped_at")


@dataclass
class WorkerState:
    """What the collector heard from one worker."""

    index: int
    pool: str = ""
    node: str = ""
    pod: str = ""
    offset_s: float = 0.0
    rtt_s: float | None = None
    hello_at: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    users: list[list[float]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    torn: int = 0


class Collector:
    """The HTTP endpoint the workers report to (the protocol: ``tasks._incluster_worker``)."""

    def __init__(self, workers: int, *, bind: str = "127.0.0.1", port: int = 0):
        self.want = workers
        self.token = secrets.token_urlsafe(24)
        self.lock = threading.Lock()
        self.workers: dict[int, WorkerState] = {}
        self.start_epoch: float | None = None
        self.aborted = False
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _reply(self, code: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _auth(self) -> int | None:
                if not secrets.compare_digest(self.headers.get("X-Tidegate-Token", ""), collector.token):
                    self._reply(403, {"error": "bad token"})
                    return None
                try:
                    return int(self.headers.get("X-Tidegate-Worker", ""))
                except ValueError:
                    self._reply(400, {"error": "X-Tidegate-Worker must be the worker's index"})
                    return None

            def do_GET(self) -> None:
                if self._auth() is None:
                    return
                if self.path == "/v1/start":
                    self._reply(200, {"start_epoch": collector.start_epoch, "abort": collector.aborted})
                else:
                    self._reply(404, {"error": "no such path"})

            def do_POST(self) -> None:
                index = self._auth()
                if index is None:
                    return
                size = int(self.headers.get("Content-Length") or 0)
                if size > MAX_BODY_BYTES:
                    self._reply(413, {"error": "body too large"})
                    return
                try:
                    doc = json.loads(self.rfile.read(size) or b"{}")
                except ValueError:
                    self._reply(400, {"error": "JSON body expected"})
                    return
                now = time.time()
                self._reply(200, collector.receive(self.path, index, doc, now))

        self.server = ThreadingHTTPServer((bind, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="load-collector", daemon=True)

    def start(self) -> Collector:
        self.thread.start()
        return self

    def close(self) -> None:
        if self.thread.is_alive():  # shutdown() waits for serve_forever, which never ran otherwise
            self.server.shutdown()
        self.server.server_close()

    def receive(self, path: str, index: int, doc: dict[str, Any], now: float) -> dict[str, Any]:
        with self.lock:
            w = self.workers.setdefault(index, WorkerState(index))
            if path == "/v1/hello":
                w.pool, w.node, w.pod = str(doc.get("pool", "")), str(doc.get("node", "")), str(doc.get("pod", ""))
                w.hello_at = now
                if len([x for x in self.workers.values() if x.hello_at]) >= self.want and self.start_epoch is None:
                    self.start_epoch = now + START_MARGIN_S
                return {"now": now}
            if path == "/v1/clock":
                w.offset_s, w.rtt_s = float(doc.get("offset_s") or 0.0), doc.get("rtt_s")
                return {}
            if path == "/v1/samples":
                for line in doc.get("records") or []:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        w.torn += 1
                        continue
                    for k in TIME_KEYS:  # onto tidegate's clock
                        if isinstance(rec.get(k), (int, float)):
                            rec[k] = float(rec[k]) + w.offset_s
                    w.records.append(rec)
                for line in doc.get("users") or []:
                    with contextlib.suppress(ValueError, TypeError, IndexError):
                        row = json.loads(line)
                        w.users.append([float(row[0]) + w.offset_s, int(row[1])])
                return {}
            if path == "/v1/done":
                runner = dict(doc.get("runner") or {})
                for k in RUNNER_TIME_KEYS:
                    if isinstance(runner.get(k), (int, float)):
                        runner[k] = float(runner[k]) + w.offset_s
                w.done = {"rc": doc.get("rc"), "runner": runner, "log_tail": str(doc.get("log_tail", ""))[-2000:]}
                return {}
        return {"error": f"unknown path {path}"}

    def ready(self) -> int:
        with self.lock:
            return sum(1 for w in self.workers.values() if w.hello_at)

    def finished(self) -> int:
        with self.lock:
            return sum(1 for w in self.workers.values() if w.done is not None)


def clock_skew(workers: list[WorkerState]) -> dict[str, Any]:
    """Each worker's offset to tidegate's clock and the spread between workers (ms)."""
    offsets = [w.offset_s * 1000 for w in workers]
    rtts = [float(w.rtt_s) * 1000 for w in workers if w.rtt_s is not None]
    return {"clock_skew_ms": round(max(offsets) - min(offsets), 3) if offsets else None,
            "clock_offset_max_ms": round(max((abs(o) for o in offsets), default=0.0), 3),
            "clock_uncertainty_ms": round(max(rtts, default=0.0) / 2, 3)}


def write_runner_dir(run_dir: Path, workers: list[WorkerState], start_epoch: float) -> None:
    """The collected samples as the local runner's files (``records-worker<i>.jsonl``,
    ``users-worker<i>.jsonl``, ``runner-worker<i>.json``, a master's ``runner.json``), so that
    ``tasks.load.read_runner_output`` reads them as it reads local workers'."""
    ended = []
    for w in workers:
        with open(run_dir / f"records-worker{w.index}.jsonl", "w", encoding="utf-8") as fh:
            for rec in w.records:
                fh.write(json.dumps(rec) + "\n")
        with open(run_dir / f"users-worker{w.index}.jsonl", "w", encoding="utf-8") as fh:
            for row in w.users:
                fh.write(json.dumps(row) + "\n")
        runner = dict((w.done or {}).get("runner") or {})
        runner.update({"pool": w.pool, "node": w.node, "pod": w.pod, "index": w.index})
        (run_dir / f"runner-worker{w.index}.json").write_text(json.dumps(runner))
        if runner.get("shape_ended_at"):
            ended.append(float(runner["shape_ended_at"]))
    master = {"role": "tidegate", "started_at": start_epoch, "shape_ended_at": max(ended) if ended else None,
              "workers_connected": len(workers), "stopped_early": any(
                  bool(((w.done or {}).get("runner") or {}).get("stopped_early")) for w in workers)}
    (run_dir / "runner.json").write_text(json.dumps(master))


def worker_rows(workers: list[WorkerState], requests: Any) -> list[dict[str, Any]]:
    """``load.generator.workers``: per worker its pool, node, pod, requests, errors, share of the
    requests, clock offset, CPU (from the requests table's ``worker`` column, cancelled excluded)."""
    total = 0
    counts: dict[int, tuple[int, int]] = {}
    if requests is not None and len(requests):
        done = requests[~requests["cancelled"].astype(bool)]
        total = len(done)
        for idx, grp in done.groupby("worker"):
            counts[int(idx)] = (len(grp), int((~grp["ok"].astype(bool)).sum()))
    rows = []
    for w in workers:
        n, errors = counts.get(w.index, (0, 0))
        runner = (w.done or {}).get("runner") or {}
        rows.append({"index": w.index, "pool": w.pool, "node": w.node, "pod": w.pod, "requests": n,
                     "errors": errors, "share": round(n / total, 4) if total else None,
                     "sent": runner.get("sent"), "scheduled": runner.get("scheduled"),
                     "exit_code": (w.done or {}).get("rc"),
                     "clock_offset_ms": round(w.offset_s * 1000, 3),
                     "clock_rtt_ms": round(float(w.rtt_s) * 1000, 3) if w.rtt_s is not None else None,
                     "cpu_max_percent": runner.get("cpu_max_percent")})
    return rows


@dataclass
class InClusterTarget:
    """Where the in-cluster workers are created: the cluster, the run, its ledger."""

    kube: Kube
    run_id: str
    ledger: Ledger


def _collector_address(spec: RolloutSpec) -> tuple[str, str, int]:
    """(bind address, host the workers use, port)."""
    import os
    from urllib.parse import urlsplit

    url = spec.load.generators.collector_url
    if url:
        parts = urlsplit(url)
        return "0.0.0.0", parts.hostname or "127.0.0.1", int(parts.port or 0)
    if os.environ.get("POD_IP"):  # in a pod: its own address, which the other pods reach
        return os.environ["POD_IP"], os.environ["POD_IP"], 0
    return "127.0.0.1", "127.0.0.1", 0


def _stuck_pods(kube: Kube, spec: RolloutSpec, run_id: str) -> list[str]:
    out = []
    for pod in kube.list("v1", "Pod", spec.cluster.namespace, label_selector=f"{RUN_LABEL}={run_id},{LOAD_WORKER_LABEL}"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                out.append(f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}")
        if (pod.get("status") or {}).get("phase") == "Failed":
            out.append(f"pod {pod['metadata']['name']} failed")
    return out


def _pending_reasons(kube: Kube, spec: RolloutSpec, run_id: str) -> str:
    with contextlib.suppress(ClusterError):
        pods = kube.list("v1", "Pod", spec.cluster.namespace, label_selector=f"{RUN_LABEL}={run_id},{LOAD_WORKER_LABEL}")
        return "; ".join(f"{p['metadata']['name']} {(p.get('status') or {}).get('phase', '?')} on "
                         f"{p['spec'].get('nodeName') or '(unscheduled)'}" for p in pods) or "no worker pod exists"
    return "(pods unreadable)"


def delete_jobs(target: InClusterTarget, jobs: list[dict[str, Any]], timeout_s: float = 60) -> None:
    """Delete the run's worker Jobs (by uid, pods with them: foreground) and wait until they are gone."""
    created = [e for e in target.ledger.entries if e.kind == "Job" and e.name in {j["metadata"]["name"] for j in jobs}]
    for e in created:
        with contextlib.suppress(ClusterError):
            target.kube.delete(e.api_version, e.kind, e.name, e.namespace, propagation="Foreground", uid=e.uid)
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        left = [e for e in created if (live := target.kube.get(e.api_version, e.kind, e.name, e.namespace))
                and live["metadata"].get("uid") == e.uid]
        if not left:
            return
        time.sleep(0.5)


def run_workers(spec: RolloutSpec, target: InClusterTarget, cfg: dict[str, Any], run_dir: Path, *,
                kill_at: float, stop_event: threading.Event | None = None) -> dict[str, Any]:
    """Create the worker Jobs, start them together, collect their samples into ``run_dir`` (as
    ``write_runner_dir``), delete the Jobs. Returns the generator's extra figures (workers, clock
    skew). Raises ``StageFailed`` when a worker cannot start or fails, ``ClusterError`` from the API."""
    gen = spec.load.generators
    bind, host, port = _collector_address(spec)
    collector = Collector(gen.workers, bind=bind, port=port).start()
    worker_cfg = {**cfg, "processes": gen.workers, "ready_timeout_s": READY_TIMEOUT_S,
                  "deadline_epoch": float(cfg["deadline_epoch"]) + READY_TIMEOUT_S}
    active_s = int(READY_TIMEOUT_S + (kill_at - time.time()) + 60)
    jobs = render_load_jobs(spec, target.run_id, config=worker_cfg, collector_url=f"http://{host}:{collector.port}",
                            token=collector.token, active_deadline_s=active_s)
    began = time.time()
    try:
        create_owned(target.kube, jobs, target.ledger)
        ready_by = time.monotonic() + READY_TIMEOUT_S
        next_check = 0.0
        while collector.start_epoch is None:
            cancel.check()
            if stop_event is not None and stop_event.is_set():
                raise StageFailed("load: stopped before the in-cluster workers started")
            if time.monotonic() > next_check:
                next_check = time.monotonic() + 2
                stuck = _stuck_pods(target.kube, spec, target.run_id)
                if stuck:
                    raise StageFailed(f"load: in-cluster worker cannot run: {'; '.join(stuck)}")
            if time.monotonic() > ready_by:
                raise StageFailed(f"load: {collector.ready()} of {gen.workers} in-cluster workers reported within "
                                  f"{READY_TIMEOUT_S:.0f}s ({_pending_reasons(target.kube, spec, target.run_id)})")
            time.sleep(0.2)
        start = float(collector.start_epoch)
        next_check = 0.0
        end_by = start + (kill_at - began)
        while collector.finished() < gen.workers:
            cancel.check()
            now = time.time()
            if now > next_check and now > start:  # a console line, as the local generator's Progress
                next_check = now + 10
                with collector.lock:
                    done = sum(len(w.records) for w in collector.workers.values())
                print(f"tidegate: load (in cluster, {gen.workers} workers): elapsed {now - start:.0f} s, "
                      f"{done} requests finished", file=sys.stderr, flush=True)
            if now > end_by:
                raise StageFailed(f"load: {gen.workers - collector.finished()} in-cluster workers did not finish "
                                  f"within {end_by - start:.0f}s of the start")
            if stop_event is not None and stop_event.is_set():
                break
            time.sleep(0.5)
    except BaseException:
        collector.aborted = True
        raise
    finally:
        with contextlib.suppress(Exception):
            time.sleep(0.3)  # a worker polling /v1/start hears of the abort
        collector.close()
        delete_jobs(target, jobs)
    workers = [collector.workers[i] for i in sorted(collector.workers)]
    failed = [w for w in workers if (w.done or {}).get("rc") not in (0, None)]
    if failed:
        w = failed[0]
        raise StageFailed(f"load: in-cluster worker {w.index} ({w.pool}, pod {w.pod}) exited with code "
                          f"{w.done['rc']}; its last lines:\n{w.done.get('log_tail', '')[-800:]}")
    write_runner_dir(run_dir, workers, start)
    return {"in_cluster": True, "workers_state": workers, **clock_skew(workers),
            "collector": f"http://{host}:{collector.port}"}


__all__ = ["Collector", "InClusterTarget", "WorkerState", "clock_skew", "run_workers", "worker_rows",
           "write_runner_dir"]
