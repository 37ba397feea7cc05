"""The code that runs inside the Locust subprocess of the spike stage (never import it elsewhere
for anything but :func:`step_at`; ``tasks.load`` starts it).

    python -m tasks._locust_runner --config run/locust-config.json --role local|master|worker [--index N]

Locust monkey-patches the process with gevent when it is imported, so ``locust`` and
``gevent`` are imported only inside :func:`main`; importing this module is harmless.

Roles: ``local`` runs the shape and the users in one process; ``master`` runs the shape and
hands users to ``workers`` worker processes on 127.0.0.1 (``--master-bind-host 127.0.0.1``);
``worker`` runs users only. Every process appends its own per-request records to
``records-<role><index>.jsonl`` every second; the local/master process samples the user count
into ``users.jsonl`` and writes ``runner.json`` (times, counts) at the end. The parent reads
these files; nothing is passed back through pipes.

The user is a Locust ``User`` over geventhttpclient's ``HTTPClient`` (the HTTP client of
``FastHttpUser``), one keep-alive connection per user, because the stream must be read line by
line with a timestamp per SSE event and because ``FastHttpUser``'s per-request bookkeeping
(event firing, response wrappers, stats) costs more CPU than the request itself against a
fast endpoint. Locust's own request statistics are not used: the records are the data.

Record (one JSON object per line): ``start``/``end`` (UTC epoch s), ``e2e_ms``, ``status``
(0: no HTTP answer), ``error`` ("" when ok), ``ttft_ms`` (first non-empty content delta; None
when none arrived or not streamed), ``itl_ms`` (gap before every further content chunk),
``chunks`` (content chunks), ``output_tokens`` + ``tokens_source`` (``usage`` when the server
reported it, else ``chunks``), ``done`` (``[DONE]`` seen), ``cancelled`` (the generator
stopped the user mid-request), ``users`` (the process's running users at the start; None on
workers, whose own count is not the total: the parent joins ``users.jsonl`` instead),
``worker``.

Bounds: every request runs under ``request_timeout_s``; a failed request is followed by a
pause of ``failure_pause_s`` so an unreachable target cannot spin the generator; at most
``max_records`` records are kept per process (the rest are counted); the process quits at
``deadline_epoch`` and exits hard 10 s later, and quits when its parent dies.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import time
from collections.abc import Sequence
from http.client import HTTPException
from typing import Any

CONFIG_VERSION = 1
SAMPLE_INTERVAL_S = 0.25
FLUSH_INTERVAL_S = 1.0
MAX_ERROR_BODY_BYTES = 2048
MAX_LINE_BYTES = 1 << 20


def step_at(t_ends: Sequence[float], t: float) -> int | None:
    """Index of the shape step that covers ``t`` seconds into the run (None: the run is over).

    Step ``i`` covers ``[t_ends[i-1], t_ends[i])``; the same rule as ``LoadShape.users_at``.
    """
    if t < 0:
        return 0 if t_ends else None
    i = bisect.bisect_right(t_ends, t)
    return i if i < len(t_ends) else None


def _error_text(status: int, raw: bytes) -> str:
    """``HTTP 503: <message>`` from a vLLM / gateway error body (JSON or text)."""
    text = raw[:MAX_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            inner = doc.get("error")
            msg = doc.get("message") or (inner.get("message") if isinstance(inner, dict) else inner)
            if msg:
                text = str(msg)
    except ValueError:
        pass
    text = " ".join(text.split())[:200]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


class Recorder:
    """Per-process record buffer, flushed to a JSONL file by a greenlet."""

    def __init__(self, path: str, max_records: int, worker: int):
        self.users: Any = None  # () -> int: the process's user count, set where it is the total
        self.path = path
        self.max_records = max_records
        self.worker = worker
        self.pending: list[str] = []
        self.kept = 0
        self.dropped = 0
        self.failures = 0

    def add(self, rec: dict[str, Any]) -> None:
        if not rec["cancelled"] and rec["error"]:
            self.failures += 1
        if self.kept >= self.max_records:
            self.dropped += 1
            return
        self.kept += 1
        rec["worker"] = self.worker
        self.pending.append(json.dumps(rec, separators=(",", ":")))

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(batch) + "\n")


def _build_user(cfg: dict[str, Any], recorder: Recorder):
    """The Locust user class for ``cfg`` (defined after locust is imported)."""
    import gevent
    from gevent import GreenletExit
    from geventhttpclient import HTTPClient
    from geventhttpclient.url import URL
    from locust import User, constant, task

    base = URL(cfg["base_url"])
    path = base.path.rstrip("/") + cfg["path"] if base.path not in ("", "/") else cfg["path"]
    body = json.dumps(cfg["body"], separators=(",", ":")).encode()
    stream = bool(cfg["stream"])
    headers = {"Host": cfg["host"], "Content-Type": "application/json",
               "Accept": "text/event-stream" if stream else "application/json"}
    timeout_s = float(cfg["request_timeout_s"])
    connect_s = float(cfg["connect_timeout_s"])
    pause_s = float(cfg["failure_pause_s"])
    loads = json.loads
    perf = time.perf_counter

    class _RequestTimeout(Exception):
        pass

    class ChatUser(User):
        """Sends the seed's chat request in a loop, recording one record per request."""

        host = cfg["base_url"]
        wait_time = constant(0)
        _client: HTTPClient | None = None

        def on_stop(self) -> None:
            self._drop_client()

        def _drop_client(self) -> None:
            client, self._client = self._client, None
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a broken pool must not fail the user
                    pass

        def _http(self) -> HTTPClient:
            if self._client is None:
                self._client = HTTPClient.from_url(
                    base, concurrency=1, connection_timeout=connect_s,
                    network_timeout=timeout_s, insecure=not cfg.get("verify_tls", True))
            return self._client

        @task
        def chat(self) -> None:
            rec = self._request()
            recorder.add(rec)
            if rec["error"] and not rec["cancelled"]:
                gevent.sleep(pause_s)

        def _request(self) -> dict[str, Any]:
            rec: dict[str, Any] = {"start": time.time(), "end": None, "e2e_ms": None, "status": 0,
                                   "error": "", "ttft_ms": None, "itl_ms": [], "chunks": 0,
                                   "output_tokens": 0, "tokens_source": "chunks", "done": False,
                                   "cancelled": False,
                                   "users": recorder.users() if recorder.users is not None else None}
            t0 = perf()
            usage_tokens = None
            streaming = False
            timer = gevent.Timeout(timeout_s, _RequestTimeout)
            timer.start()
            try:
                resp = self._http().request("POST", path, body=body, headers=headers)
                status = rec["status"] = resp.get_code()
                if status != 200:
                    rec["error"] = _error_text(status, resp.read(MAX_ERROR_BODY_BYTES))
                    self._drop_client()
                elif stream:
                    streaming = True
                    gaps = rec["itl_ms"]
                    last = None
                    readline = resp.readline
                    while True:
                        line = readline(b"\n")
                        if not line:
                            break
                        now = perf()
                        if len(line) > MAX_LINE_BYTES:
                            raise ValueError(f"SSE line longer than {MAX_LINE_BYTES} bytes")
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            rec["done"] = True
                            break
                        try:
                            event = loads(data)
                        except ValueError:
                            rec["error"] = f"malformed SSE event: {data[:80]!r}"
                            self._drop_client()
                            break
                        if "error" in event and not event.get("choices"):
                            err = event["error"]
                            message = err.get("message") if isinstance(err, dict) else err
                            rec["error"] = f"error event: {message}"[:240]
                            self._drop_client()
                            break
                        usage = event.get("usage")
                        if usage and usage.get("completion_tokens") is not None:
                            usage_tokens = int(usage["completion_tokens"])
                        choices = event.get("choices")
                        if choices:
                            delta = choices[0].get("delta") or {}
                            if delta.get("content"):
                                rec["chunks"] += 1
                                if last is None:
                                    rec["ttft_ms"] = round((now - t0) * 1000, 3)
                                else:
                                    gaps.append(round((now - last) * 1000, 3))
                                last = now
                    if rec["done"]:
                        resp.read()  # the chunked terminator: leaves the connection reusable
                    elif not rec["error"]:
                        rec["error"] = "truncated stream: ended without [DONE]"
                        self._drop_client()
                else:
                    doc = loads(resp.read())
                    usage = doc.get("usage") or {}
                    if usage.get("completion_tokens") is not None:
                        usage_tokens = int(usage["completion_tokens"])
                    choice = (doc.get("choices") or [{}])[0]
                    content = (choice.get("message") or {}).get("content")
                    rec["chunks"] = 1 if content else 0
                    rec["done"] = True
                if not rec["error"] and not rec["chunks"]:
                    rec["error"] = "empty response: no content"
            except _RequestTimeout:
                rec["error"] = f"timeout after {timeout_s:g}s"
                self._drop_client()
            except GreenletExit:
                rec["cancelled"] = True
                rec["error"] = "cancelled: the generator stopped this user mid-request"
                self._finish(rec, t0, usage_tokens)
                self._drop_client()
                recorder.add(rec)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is this request's error
                what = f"{type(exc).__name__}: {exc}"
                if streaming:
                    rec["error"] = f"truncated stream: connection broken mid-response ({what})"[:240]
                elif isinstance(exc, (OSError, HTTPException)):
                    rec["error"] = f"connection error: {what}"[:240]
                else:
                    rec["error"] = what[:240]
                self._drop_client()
            finally:
                timer.cancel()
            self._finish(rec, t0, usage_tokens)
            return rec

        @staticmethod
        def _finish(rec: dict[str, Any], t0: float, usage_tokens: int | None) -> None:
            rec["e2e_ms"] = round((perf() - t0) * 1000, 3)
            rec["end"] = rec["start"] + rec["e2e_ms"] / 1000
            if usage_tokens is not None:
                rec["output_tokens"], rec["tokens_source"] = usage_tokens, "usage"
            else:
                rec["output_tokens"] = rec["chunks"]

    return ChatUser


def _build_shape(steps: list[list[Any]]):
    from locust import LoadTestShape

    t_ends = [float(s[0]) for s in steps]

    class TableShape(LoadTestShape):
        """The step table from ``tasks.load.LoadShape``: (t_end_s, users, spawn_rate, phase)."""

        ended_at: float | None = None

        def tick(self):
            i = step_at(t_ends, self.get_run_time())
            if i is None:
                if self.ended_at is None:
                    self.ended_at = time.time()
                return None
            return int(steps[i][1]), float(steps[i][2])

    return TableShape()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks._locust_runner")
    parser.add_argument("--config", required=True)
    parser.add_argument("--role", choices=("local", "master", "worker"), default="local")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as fh:
        cfg = json.load(fh)
    if cfg.get("version") != CONFIG_VERSION:
        print(f"locust runner: config version {cfg.get('version')!r} != {CONFIG_VERSION}", file=sys.stderr)
        return 2

    import logging

    import gevent  # noqa: F401 - after this point the process is gevent-patched
    import locust  # noqa: F401 - monkey-patches on import
    from locust.env import Environment

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir = cfg["out_dir"]
    role = args.role
    name = "local" if role == "local" else ("master" if role == "master" else f"worker{args.index}")
    recorder = Recorder(os.path.join(out_dir, f"records-{name}.jsonl"), int(cfg["max_records"]), args.index)
    # the master never runs users, but dispatches them by class name
    user_class = _build_user(cfg, recorder)
    shape = _build_shape(cfg["steps"]) if role != "worker" else None
    env = Environment(user_classes=[user_class], shape_class=shape,
                      host=cfg["base_url"], stop_timeout=float(cfg["stop_timeout_s"]))
    if role == "local":
        runner = env.create_local_runner()
        recorder.users = lambda: runner.user_count
    elif role == "master":
        runner = env.create_master_runner(master_bind_host="127.0.0.1", master_bind_port=int(cfg["master_port"]))
    else:
        runner = env.create_worker_runner(master_host="127.0.0.1", master_port=int(cfg["master_port"]))
    return _drive(cfg, role, runner, recorder, shape, name)


def _drive(cfg: dict[str, Any], role: str, runner: Any, recorder: Recorder, shape: Any, name: str) -> int:
    import signal

    import gevent

    out_dir = cfg["out_dir"]
    deadline = float(cfg["deadline_epoch"])
    parent = os.getppid()
    info: dict[str, Any] = {"role": role, "name": name, "started_at": None, "shape_ended_at": None,
                            "stopped_at": None, "stopped_early": False, "deadline_hit": False,
                            "workers_connected": 0, "cpu_max_percent": 0.0}

    def flusher() -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            recorder.flush()

    def quit_runner(reason: str) -> None:
        if reason in ("signal", "parent gone", "deadline"):
            # an abort: requests in flight are cancelled (and recorded so), not waited for
            runner.environment.stop_timeout = 0
            info["stopped_early"] = True
            info["deadline_hit"] = reason == "deadline"
        info.setdefault("quit_reason", reason)
        try:
            runner.quit()
        except Exception as exc:  # noqa: BLE001 - quitting is best effort; the watchdog exits hard
            print(f"locust runner: quit failed: {exc!r}", file=sys.stderr)

    def watchdog() -> None:
        while True:
            gevent.sleep(0.5)
            if os.getppid() != parent:
                quit_runner("parent gone")
                return
            if time.time() > deadline:
                quit_runner("deadline")
                return

    def hard_exit() -> None:
        recorder.flush()
        print("locust runner: did not stop in time after its deadline; exiting hard", file=sys.stderr)
        os._exit(3)

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(quit_runner, "signal"))
    gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(quit_runner, "signal"))
    import psutil

    me = psutil.Process()

    def cpu_s() -> float:
        t = me.cpu_times()
        return t.user + t.system

    lag = LoopLag()
    gevent.spawn(flusher)
    gevent.spawn(watchdog)
    gevent.spawn(lag.run)
    gevent.spawn_later(max(0.0, deadline - time.time()) + 10.0, hard_exit)

    if role == "worker":
        # A worker handles the master's "stop" by sleeping stop_timeout before it reads the next
        # message, so the "quit" that follows would wait that long: end when the stop is done.
        def on_test_stop(**_kwargs: Any) -> None:
            gevent.spawn_later(0.5, runner.greenlet.kill, block=False)

        runner.environment.events.test_stop.add_listener(on_test_stop)
        gevent.spawn(_cpu_sampler, info)
        cpu0 = cpu_s()
        runner.greenlet.join()
        info["cpu_seconds"] = round(cpu_s() - cpu0, 3)
        recorder.flush()
        _write_json(os.path.join(out_dir, f"runner-{name}.json"),
                    {**info, **lag.summary(), "records": recorder.kept, "records_dropped": recorder.dropped,
                     "failures": recorder.failures})
        return 0

    users_path = os.path.join(out_dir, "users.jsonl")
    if role == "master":
        want = int(cfg["workers"])
        until = time.time() + float(cfg["worker_connect_timeout_s"])
        while len(runner.clients.ready) < want and time.time() < until:
            gevent.sleep(0.1)
        info["workers_connected"] = len(runner.clients.ready)
        if info["workers_connected"] < want:
            print(f"locust runner: only {info['workers_connected']} of {want} workers connected within "
                  f"{cfg['worker_connect_timeout_s']}s", file=sys.stderr)
            runner.quit()
            _write_json(os.path.join(out_dir, "runner.json"), {**info, "error": "workers did not connect"})
            return 4

    def sampler() -> None:
        with open(users_path, "a", encoding="utf-8") as fh:
            while True:
                fh.write(json.dumps([round(time.time(), 3), int(runner.user_count)]) + "\n")
                fh.flush()
                gevent.sleep(SAMPLE_INTERVAL_S)

    def end_of_shape() -> None:
        # Locust only stops (does not quit) a library-mode runner when the shape ends
        total = float(cfg["steps"][-1][0]) if cfg["steps"] else 0.0
        gevent.sleep(max(0.0, info["started_at"] + total - time.time()))
        while runner.shape_greenlet is not None and not runner.shape_greenlet.dead:
            gevent.sleep(0.1)
        info["shape_ended_at"] = shape.ended_at or time.time()
        quit_runner("shape ended")

    info["started_at"] = time.time()
    cpu0 = cpu_s()
    runner.start_shape()
    _write_json(os.path.join(out_dir, "started.json"), {"started_at": info["started_at"]})
    gevent.spawn(sampler)
    gevent.spawn(_cpu_sampler, info)
    gevent.spawn(end_of_shape)
    runner.greenlet.join()
    info["stopped_at"] = time.time()
    info["cpu_seconds"] = round(cpu_s() - cpu0, 3)
    if info["shape_ended_at"] is None:
        info["shape_ended_at"] = info["stopped_at"]
    recorder.flush()
    _write_json(os.path.join(out_dir, "runner.json"),
                {**info, **lag.summary(), "records": recorder.kept, "records_dropped": recorder.dropped,
                 "failures": recorder.failures})
    return 0


def _cpu_sampler(info: dict[str, Any]) -> None:
    """Peak and mean CPU of this process (100 = one core): a generator near 100 bends its timings."""
    import gevent
    import psutil

    proc = psutil.Process()
    proc.cpu_percent()
    total = samples = 0.0
    while True:
        gevent.sleep(1.0)
        cpu = proc.cpu_percent()
        total, samples = total + cpu, samples + 1
        info["cpu_max_percent"] = max(info["cpu_max_percent"], cpu)
        info["cpu_mean_percent"] = round(total / samples, 1)


class LoopLag:
    """How late this process's gevent hub wakes a sleeping greenlet, sampled every 50 ms.

    A streamed token is timestamped when its greenlet resumes, so this lag is the generator's
    own share of every TTFT/ITL it reports: near zero while the process has CPU to spare.
    """

    PERIOD_S = 0.05
    KEEP = 20_000

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.count = 0
        self.max_ms = 0.0

    def run(self) -> None:
        import gevent

        while True:
            t = time.perf_counter()
            gevent.sleep(self.PERIOD_S)
            lag = max(0.0, (time.perf_counter() - t - self.PERIOD_S) * 1000)
            self.count += 1
            self.max_ms = max(self.max_ms, lag)
            if len(self.samples) < self.KEEP:
                self.samples.append(lag)
            else:  # keep a uniform sample of the whole run
                import random

                j = random.randrange(self.count)
                if j < self.KEEP:
                    self.samples[j] = lag

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"loop_lag_p50_ms": None, "loop_lag_p99_ms": None, "loop_lag_max_ms": None}
        ordered = sorted(self.samples)
        return {"loop_lag_p50_ms": round(ordered[len(ordered) // 2], 3),
                "loop_lag_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
                "loop_lag_max_ms": round(self.max_ms, 3)}


def _write_json(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


if __name__ == "__main__":
    # run the importable module's code, not this __main__ copy
    from tasks._locust_runner import main as _main

    sys.exit(_main())
