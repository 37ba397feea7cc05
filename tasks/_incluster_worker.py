"""The entrypoint of an in-cluster load worker pod (``load.generators.in_cluster``); runs inside
the pod, never imported by tidegate itself.

    python -m tasks._incluster_worker            (config from the environment, below)

Environment: ``TIDEGATE_LOAD_CONFIG`` (the runner's JSON config, ``tasks._locust_runner``),
``TIDEGATE_WORKER_INDEX`` (1..N), ``TIDEGATE_COLLECTOR_URL`` and ``TIDEGATE_COLLECTOR_TOKEN``
(tidegate's sample collector, ``tasks.incluster``), ``TIDEGATE_CLIENT_POOL`` (idc or elastic),
``NODE_NAME`` and ``POD_NAME`` (downward API).

Protocol with the collector (JSON over HTTP, the token in ``X-Tidegate-Token``):

1. ``POST /v1/hello`` with the worker's clock; the answer carries the collector's clock, so the
   worker knows its offset to tidegate's clock (± half the round trip, reported with it).
2. ``GET /v1/start`` until it answers a start epoch (tidegate's clock): every worker starts the
   schedule at the same instant, converted to its own clock.
3. The open-loop runner (``python -m tasks._locust_runner --role local``, this worker's share of
   the rate) runs as a child; every second the new complete lines of its records and in-flight
   samples are sent raw (``POST /v1/samples``): the per-request samples themselves, never a
   summary, so tidegate merges them exactly.
4. ``POST /v1/done`` with the runner's exit code and its ``runner.json``; the pod exits with the
   runner's code.

Bounded: every HTTP call has a timeout and a bounded number of attempts; waiting for the start
gives up at ``ready_timeout_s``; the runner keeps its own deadline (``deadline_epoch``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HTTP_TIMEOUT_S = 10.0
PUSH_INTERVAL_S = 1.0


class Collector:
    def __init__(self, url: str, token: str, index: int):
        self.url, self.token, self.index = url.rstrip("/"), token, index

    def call(self, method: str, path: str, body: Any = None, *, attempts: int = 5) -> Any:
        data = None if body is None else json.dumps(body).encode()
        last: Exception | None = None
        for i in range(attempts):
            req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json", "X-Tidegate-Token": self.token,
                                                  "X-Tidegate-Worker": str(self.index)})
            try:
                with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                    return json.loads(resp.read() or b"null")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
                time.sleep(min(2.0, 0.2 * 2 ** i))
        raise RuntimeError(f"collector {self.url}{path}: {last}")


class Tail:
    """The new complete lines of a file since the last read."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                blob = fh.read()
        except OSError:
            return []
        end = blob.rfind(b"\n") + 1
        self.offset += end
        return [ln for ln in blob[:end].decode("utf-8", "replace").splitlines() if ln.strip()]


def main() -> int:
    cfg = json.loads(os.environ["TIDEGATE_LOAD_CONFIG"])
    index = int(os.environ["TIDEGATE_WORKER_INDEX"])
    col = Collector(os.environ["TIDEGATE_COLLECTOR_URL"], os.environ.get("TIDEGATE_COLLECTOR_TOKEN", ""), index)
    who = {"index": index, "pool": os.environ.get("TIDEGATE_CLIENT_POOL", ""),
           "node": os.environ.get("NODE_NAME", ""), "pod": os.environ.get("POD_NAME", "")}
    t_send = time.time()
    answer = col.call("POST", "/v1/hello", {**who, "sent_at": t_send})
    t_recv = time.time()
    # the collector's clock minus ours, at the midpoint of the round trip
    offset = float(answer["now"]) - (t_send + t_recv) / 2
    col.call("POST", "/v1/clock", {"offset_s": round(offset, 6), "rtt_s": round(t_recv - t_send, 6)})
    give_up = time.time() + float(cfg.get("ready_timeout_s", 180))
    start = None
    while start is None:
        doc = col.call("GET", "/v1/start")
        if doc.get("abort"):
            print(f"in-cluster worker {index}: the run aborted before the start", file=sys.stderr)
            return 3
        start = doc.get("start_epoch")
        if start is None:
            if time.time() > give_up:
                print(f"in-cluster worker {index}: no start within {cfg.get('ready_timeout_s')}s", file=sys.stderr)
                return 3
            time.sleep(0.2)
    out = Path(tempfile.mkdtemp(prefix=f"tidegate-load-{index}-"))
    local = float(start) - offset  # the shared start on this worker's clock
    cfg.update({"out_dir": str(out), "start_epoch": local, "workers": 0,
                "deadline_epoch": float(cfg["deadline_epoch"]) - offset})
    (out / "config.json").write_text(json.dumps(cfg))
    with open(out / "runner.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tasks._locust_runner", "--config", str(out / "config.json"),
                                 "--role", "local", "--index", str(index)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    tails = {"records": Tail(out / "records-local.jsonl"), "users": Tail(out / "users.jsonl")}

    def push() -> None:
        batch = {kind: t.read() for kind, t in tails.items()}
        if any(batch.values()):
            col.call("POST", "/v1/samples", batch)

    try:
        while proc.poll() is None:
            time.sleep(PUSH_INTERVAL_S)
            push()
    except BaseException:
        proc.kill()
        raise
    push()
    runner: dict[str, Any] = {}
    try:
        runner = json.loads((out / "runner.json").read_text())
    except (OSError, ValueError):
        pass
    tail = (out / "runner.log").read_text(errors="replace")[-2000:]
    col.call("POST", "/v1/done", {"rc": proc.returncode, "runner": runner, "log_tail": tail})
    return int(proc.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
