"""The code that runs inside the Locust subprocess of the spike stage (never import it elsewhere
for anything but its pure helpers: :func:`step_at` and the arrival schedule, :func:`unit_gaps`,
:class:`RateIntegral`, :func:`intended_offsets`; ``tasks.load`` starts it).

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

Arrivals (``cfg["arrival"]``)
    ``closed``: the Locust users above, each sending its next request when the last returned,
    along the users shape (``cfg["steps"]``). ``poisson``, ``gamma``, ``constant`` (open loop):
    no Locust users run; each process's ``OpenLoop`` draws intended send times over the rate
    table (``cfg["rate_steps"]``, ``LoadShape.rate_table``) by time rescaling of a unit-rate
    renewal process (exponential gaps; gamma gaps with shape ``1/cv^2``; constant gaps), sleeps
    until each and sends the request on a greenlet of its own over a pool of keep-alive
    connections, at most ``cfg["max_in_flight"]`` at once (a request due at the cap waits for a
    slot: schedule delay; the waits are counted). ``local`` dispatches the whole rate; with
    workers, the master sends them the start epoch (Locust custom message ``tidegate_start``),
    each worker dispatches ``rate / workers`` from its own seed (``schedule_seed(seed, index)``)
    and answers ``tidegate_done`` after its drain, and the master quits when all answered.
    After the shape, requests in flight get ``stop_timeout_s`` to finish, then are cancelled.
    Request content (prompt, max_tokens) comes from ``tasks.requestgen.RequestSource`` for
    ``cfg["requests"]`` (``kind: requestgen``), or the fixed prompt (``kind: fixed``).

Record (one JSON object per line): ``start``/``end`` (UTC epoch s), ``e2e_ms``, ``status``
(0: no HTTP answer), ``error`` ("" when ok), ``ttft_ms`` (first non-empty content delta; None
when none arrived or not streamed), ``itl_ms`` (gap before every further content chunk),
``chunks`` (content chunks), ``output_tokens`` + ``tokens_source`` (``usage`` when the server
reported it, else ``chunks``), ``done`` (``[DONE]`` seen), ``cancelled`` (the generator
stopped the user mid-request), ``users`` (the process's running users at the start; None on
workers, whose own count is not the total: the parent joins ``users.jsonl`` instead; open loop:
the requests in flight in this process, this one included), ``worker``, ``intended`` (UTC epoch
s: the intended send time; closed loop: = ``start``), ``send_delay_ms`` (start - intended),
``input_tokens`` (the request source's estimate) and ``max_tokens``, and for open loop
``in_flight``. **Open loop: ``ttft_ms`` and ``e2e_ms`` count from ``intended``**, not from the
actual send, so the time a request waited to be sent is part of its latency (no coordinated
omission), and ``end = intended + e2e_ms``; closed loop: intended = start, nothing changes.

``runner.json`` (local / master) and ``runner-worker<N>.json``: times (``started_at`` is the
shape's start; open loop: the epoch the schedule counts from), ``cpu_seconds``,
``cpu_max_percent`` / ``cpu_mean_percent`` (1 s samples, 100 = one core), loop lag, records
kept / dropped, failures; open loop also ``arrival``, ``seed``, ``scheduled`` (intended send
times drawn within the shape), ``sent``, ``nominal_requests`` (this process's share of the rate
integral), ``in_flight_max``, ``in_flight_cap_hits``, ``max_in_flight``; the local open-loop
process samples its requests in flight into ``users.jsonl``, a worker into
``users-worker<N>.jsonl`` (the parent sums them).

Bounds: every request runs under ``request_timeout_s``; a failed request is followed by a
pause of ``failure_pause_s`` so an unreachable target cannot spin the generator; at most
``max_records`` records are kept per process (the rest are counted); the process quits at
``deadline_epoch`` and exits hard 10 s later, and quits when its parent dies.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from http.client import HTTPException
from typing import Any

CONFIG_VERSION = 1
SAMPLE_INTERVAL_S = 0.25
FLUSH_INTERVAL_S = 1.0
MAX_ERROR_BODY_BYTES = 2048
MAX_LINE_BYTES = 1 << 20
STOP_WAIT_GRACE_S = 10.0


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


class _FixedSource:
    """Today's request content (``load.prompt``, ``load.max_tokens``): the fallback used when the
    parent had no ``tasks.requestgen`` to build ``cfg["requests"]`` with."""

    def __init__(self, cfg: dict[str, Any]):
        self.prompt = str(cfg["prompt"])
        self.max_tokens = int(cfg["max_tokens"])
        self.input_tokens = max(1, round(len(self.prompt.split()) / float(cfg.get("words_per_token") or 0.75)))

    @classmethod
    def from_config(cls, cfg: dict[str, Any], seed: int, worker: int) -> _FixedSource:
        return cls(cfg)

    def next(self) -> tuple[str, int, int]:
        return self.prompt, self.max_tokens, self.input_tokens


def request_source(cfg: dict[str, Any], worker: int) -> Any:
    """The process's request source: ``tasks.requestgen.RequestSource`` for ``cfg["requests"]``
    (seeded from the run seed and this process's index), or today's fixed prompt."""
    req = cfg.get("requests") or {"kind": "fixed", "config": {"prompt": cfg["body"]["messages"][0]["content"],
                                                             "max_tokens": cfg["body"].get("max_tokens", 16)}}
    seed = int(cfg.get("seed") or 0)
    if req.get("kind") == "requestgen":
        from tasks.requestgen import RequestSource

        return RequestSource.from_config(req["config"], seed=seed, worker=worker)
    return _FixedSource.from_config(req["config"], seed=seed, worker=worker)


# -- the arrival schedule (pure: no gevent) -------------------------------------------------------
ARRIVALS = ("poisson", "gamma", "constant")


def unit_gaps(arrival: str, cv: float, rng: Any) -> Iterator[float]:
    """Inter-arrival gaps of a renewal process with mean 1: exponential (poisson), gamma with
    shape ``k = 1/cv^2`` and scale ``1/k`` (gamma: mean 1, coefficient of variation ``cv``), or
    exactly 1 (constant)."""
    if arrival == "poisson":
        expo = rng.expovariate
        while True:
            yield expo(1.0)
    elif arrival == "gamma":
        k = 1.0 / (float(cv) ** 2)
        gam = rng.gammavariate
        while True:
            yield gam(k, 1.0 / k)
    elif arrival == "constant":
        while True:
            yield 1.0
    else:
        raise ValueError(f"arrival {arrival!r} is not one of {', '.join(ARRIVALS)}")


class RateIntegral:
    """``L(t)``, the integral of a piecewise-linear rate (rows ``[t_end_s, rate_from, rate, phase]``,
    ``LoadShape.rate_table``) times ``share``, and its inverse.

    Arrivals over a time-varying rate come from a unit-rate renewal process mapped through the
    inverse (time rescaling): the k-th arrival is at ``t`` with ``L(t) = s_k``. For a constant rate
    this is the plain process at that rate; during a ramp the gaps shrink with the rate, and a
    gamma process keeps its cv at every rate.
    """

    def __init__(self, rate_steps: Sequence[Sequence[Any]], share: float = 1.0):
        self.segments: list[tuple[float, float, float, float, float]] = []  # a, b, r0, slope, L(a)
        self.ends: list[float] = []
        a = total = 0.0
        for row in rate_steps:
            b, r0, r1 = float(row[0]), float(row[1]) * share, float(row[2]) * share
            w = b - a
            slope = (r1 - r0) / w if w > 0 else 0.0
            self.segments.append((a, b, r0, slope, total))
            total += r0 * w + slope * w * w / 2
            self.ends.append(total)
            a = b
        self.total = total
        self.duration_s = a

    def time_at(self, s: float) -> float | None:
        """The ``t`` with ``L(t) = s``; None when ``s`` is beyond the shape's total."""
        i = bisect.bisect_right(self.ends, s)
        if i >= len(self.segments) or s < 0:
            return None
        a, b, r0, slope, l0 = self.segments[i]
        d = s - l0
        root = r0 * r0 + 2 * slope * d
        den = r0 + math.sqrt(root if root > 0 else 0.0)
        x = 2 * d / den if den > 0 else 0.0
        return min(a + x, b)


def intended_offsets(rate_steps: Sequence[Sequence[Any]], arrival: str, cv: float, rng: Any, *,
                     share: float = 1.0, phase: float = 0.5) -> Iterator[float]:
    """Intended send times (seconds from the shape's start, increasing) over the rate table,
    for one generator process carrying ``share`` of the rate. ``phase`` (in [0, 1)) places a
    constant process's first arrival: processes ``i`` of ``n`` at ``(i + 0.5) / n`` interleave
    into one evenly spaced stream. Ends at the shape's end."""
    integral = RateIntegral(rate_steps, share)
    gaps = unit_gaps(arrival, cv, rng)
    s = float(phase) if arrival == "constant" else next(gaps)
    while True:
        t = integral.time_at(s)
        if t is None:
            return
        yield t
        s += next(gaps)


def schedule_seed(seed: int, index: int) -> str:
    """The seed of process ``index``'s arrival draws: independent per process, fixed by the run seed."""
    return f"tidegate-arrivals:{int(seed)}:{int(index)}"


# -- the request -----------------------------------------------------------------------------------
def _build_sender(cfg: dict[str, Any], recorder: Recorder):
    """(Conn, send): a keep-alive connection holder and the function that sends one chat request
    on it and returns its record (defined after gevent is imported)."""
    import gevent
    from gevent import GreenletExit
    from geventhttpclient import HTTPClient
    from geventhttpclient.url import URL

    base = URL(cfg["base_url"])
    path = base.path.rstrip("/") + cfg["path"] if base.path not in ("", "/") else cfg["path"]
    template = dict(cfg["body"])
    stream = bool(cfg["stream"])
    headers = {"Host": cfg["host"], "Content-Type": "application/json",
               "Accept": "text/event-stream" if stream else "application/json"}
    timeout_s = float(cfg["request_timeout_s"])
    connect_s = float(cfg["connect_timeout_s"])
    loads = json.loads
    dumps = json.dumps
    perf = time.perf_counter

    class _RequestTimeout(Exception):
        pass

    class Conn:
        """One keep-alive connection (geventhttpclient, concurrency 1), dropped after an error."""

        __slots__ = ("_client",)

        def __init__(self) -> None:
            self._client: HTTPClient | None = None

        def drop(self) -> None:
            client, self._client = self._client, None
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a broken pool must not fail the user
                    pass

        def http(self) -> HTTPClient:
            if self._client is None:
                self._client = HTTPClient.from_url(
                    base, concurrency=1, connection_timeout=connect_s,
                    network_timeout=timeout_s, insecure=not cfg.get("verify_tls", True))
            return self._client

    def body_for(prompt: str, max_tokens: int) -> bytes:
        doc = dict(template)
        doc["messages"] = [{"role": "user", "content": prompt}]
        doc["max_tokens"] = int(max_tokens)
        return dumps(doc, separators=(",", ":")).encode()

    def send(conn: Conn, body: bytes, rec: dict[str, Any], intended: float | None) -> dict[str, Any]:
        """Send on ``conn``; ``rec`` has the request's fields. ``intended`` (epoch s, open loop):
        TTFT and e2e count from it, so time spent waiting to be sent is part of the latency."""
        rec.update({"start": time.time(), "end": None, "e2e_ms": None, "status": 0,
                    "error": "", "ttft_ms": None, "itl_ms": [], "chunks": 0,
                    "output_tokens": 0, "tokens_source": "chunks", "done": False, "cancelled": False})
        if intended is None:
            rec["intended"], lead_ms = rec["start"], 0.0
        else:
            rec["intended"], lead_ms = intended, max(0.0, (rec["start"] - intended) * 1000)
        rec["send_delay_ms"] = round(lead_ms, 3)
        t0 = perf() - lead_ms / 1000
        usage_tokens = None
        streaming = False
        timer = gevent.Timeout(timeout_s, _RequestTimeout)
        timer.start()
        try:
            resp = conn.http().request("POST", path, body=body, headers=headers)
            status = rec["status"] = resp.get_code()
            rec["pod"] = resp.get("x-tidegate-served-by") or None   # the test bed's emulator says which pod
            if status != 200:
                rec["error"] = _error_text(status, resp.read(MAX_ERROR_BODY_BYTES))
                conn.drop()
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
                        conn.drop()
                        break
                    if "error" in event and not event.get("choices"):
                        err = event["error"]
                        message = err.get("message") if isinstance(err, dict) else err
                        rec["error"] = f"error event: {message}"[:240]
                        conn.drop()
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
                    conn.drop()
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
            conn.drop()
        except GreenletExit:
            rec["cancelled"] = True
            rec["error"] = "cancelled: the generator stopped this user mid-request"
            _finish(rec, t0, usage_tokens)
            conn.drop()
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
            conn.drop()
        finally:
            timer.cancel()
        _finish(rec, t0, usage_tokens)
        return rec

    def _finish(rec: dict[str, Any], t0: float, usage_tokens: int | None) -> None:
        rec["e2e_ms"] = round((perf() - t0) * 1000, 3)
        rec["end"] = rec["intended"] + rec["e2e_ms"] / 1000
        if usage_tokens is not None:
            rec["output_tokens"], rec["tokens_source"] = usage_tokens, "usage"
        else:
            rec["output_tokens"] = rec["chunks"]

    return Conn, send, body_for


def _build_user(cfg: dict[str, Any], recorder: Recorder, source: Any):
    """The closed-loop Locust user class for ``cfg`` (defined after locust is imported)."""
    import gevent
    from locust import User, constant, task

    Conn, send, body_for = _build_sender(cfg, recorder)
    pause_s = float(cfg["failure_pause_s"])

    class ChatUser(User):
        """Sends a chat request in a loop (closed loop: the next when the last returned),
        recording one record per request; one keep-alive connection per user."""

        host = cfg["base_url"]
        wait_time = constant(0)

        def on_start(self) -> None:
            self._conn = Conn()

        def on_stop(self) -> None:
            self._conn.drop()

        @task
        def chat(self) -> None:
            prompt, max_tokens, input_tokens = source.next()
            rec: dict[str, Any] = {"users": recorder.users() if recorder.users is not None else None,
                                   "input_tokens": int(input_tokens), "max_tokens": int(max_tokens)}
            rec = send(self._conn, body_for(prompt, max_tokens), rec, None)
            recorder.add(rec)
            if rec["error"] and not rec["cancelled"]:
                gevent.sleep(pause_s)

    return ChatUser


class OpenLoop:
    """The open-loop dispatcher of one generator process (runs in gevent).

    It draws intended send times from ``intended_offsets`` for this process's share of the rate
    (``1 / processes``; seeds ``schedule_seed(seed, index)``), sleeps until each, and sends the
    request on a greenlet of its own over a free keep-alive connection (a new one when none is
    idle). At most ``max_in_flight`` requests are in flight: a request due while the cap is
    reached waits for a slot, its wait is schedule delay, and ``cap_hits`` counts those waits.
    A failed request does not pause the schedule (arrivals do not depend on answers).
    """

    def __init__(self, cfg: dict[str, Any], recorder: Recorder, source: Any, index: int, processes: int):
        import random

        self.cfg, self.recorder, self.source = cfg, recorder, source
        self.conn_cls, self.send, self.body_for = _build_sender(cfg, recorder)
        self.rng = random.Random(schedule_seed(int(cfg.get("seed") or 0), index))
        self.share = 1.0 / max(1, processes)
        slot = index - 1 if processes > 1 else 0  # workers are numbered from 1
        self.phase = (slot + 0.5) / max(1, processes)
        self.cap = int(cfg.get("max_in_flight") or 2000)
        self.idle: list[Any] = []
        self.in_flight = 0
        self.in_flight_max = 0
        self.cap_hits = 0
        self.scheduled = 0
        self.sent = 0
        self.nominal = RateIntegral(cfg["rate_steps"], self.share).total
        self.greenlets: Any = None
        self.started_at: float | None = None
        self.schedule_ended_at: float | None = None

    def run(self, t0: float, stop_timeout_s: float) -> None:
        """Dispatch the schedule from epoch ``t0``, then wait (up to ``stop_timeout_s``) for the
        requests in flight; those still running then are cancelled (and recorded so)."""
        import gevent
        from gevent.lock import Semaphore
        from gevent.pool import Group

        self.started_at = t0
        self.greenlets = Group()
        slots = Semaphore(self.cap)
        duration = RateIntegral(self.cfg["rate_steps"]).duration_s
        give_up_at = t0 + duration + stop_timeout_s
        try:
            for offset in intended_offsets(self.cfg["rate_steps"], self.cfg["arrival"], float(self.cfg.get("cv") or 1.0),
                                           self.rng, share=self.share, phase=self.phase):
                self.scheduled += 1
                due = t0 + offset
                wait = due - time.time()
                if wait > 0:
                    gevent.sleep(wait)
                if slots.locked():
                    self.cap_hits += 1
                    if not slots.acquire(timeout=max(0.0, give_up_at - time.time())):
                        break  # still at the cap when the drain is over: the rest is never sent
                else:
                    slots.acquire()
                self.greenlets.spawn(self._one, due, slots)
        finally:
            self.schedule_ended_at = time.time()
        self.greenlets.join(timeout=max(0.0, min(give_up_at, time.time() + stop_timeout_s) - time.time()))
        self.greenlets.kill(block=True, timeout=5)

    def abort(self) -> None:
        """Cancel every request in flight (recorded as cancelled)."""
        if self.greenlets is not None:
            self.greenlets.kill(block=True, timeout=5)

    def _one(self, intended: float, slots: Any) -> None:
        conn = self.idle.pop() if self.idle else self.conn_cls()
        self.in_flight += 1
        self.sent += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            prompt, max_tokens, input_tokens = self.source.next()
            # a worker's own count is not the total: the parent joins the summed samples instead
            rec: dict[str, Any] = {"users": self.in_flight if self.share >= 1.0 else None, "in_flight": self.in_flight,
                                   "input_tokens": int(input_tokens), "max_tokens": int(max_tokens)}
            rec = self.send(conn, self.body_for(prompt, max_tokens), rec, intended)
            self.recorder.add(rec)
        finally:
            self.in_flight -= 1
            slots.release()
        self.idle.append(conn)

    def summary(self) -> dict[str, Any]:
        return {"scheduled": self.scheduled, "sent": self.sent, "nominal_requests": round(self.nominal, 3),
                "in_flight_max": self.in_flight_max, "in_flight_cap_hits": self.cap_hits,
                "max_in_flight": self.cap, "schedule_ended_at": self.schedule_ended_at}


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
    source = request_source(cfg, args.index)
    # the master never runs users, but dispatches them by class name
    user_class = _build_user(cfg, recorder, source)
    open_loop = cfg.get("arrival", "closed") != "closed"
    if open_loop and role == "local":
        return _drive_open(cfg, role, None, recorder, source, name, args.index)
    shape = _build_shape(cfg["steps"]) if role != "worker" and not open_loop else None
    env = Environment(user_classes=[user_class], shape_class=shape,
                      host=cfg["base_url"], stop_timeout=float(cfg["stop_timeout_s"]))
    if role == "local":
        runner = env.create_local_runner()
        recorder.users = lambda: runner.user_count
    elif role == "master":
        runner = env.create_master_runner(master_bind_host="127.0.0.1", master_bind_port=int(cfg["master_port"]))
    else:
        runner = env.create_worker_runner(master_host="127.0.0.1", master_port=int(cfg["master_port"]))
    if open_loop:
        return _drive_open(cfg, role, runner, recorder, source, name, args.index)
    return _drive(cfg, role, runner, recorder, shape, name)


def _drive_open(cfg: dict[str, Any], role: str, runner: Any, recorder: Recorder, source: Any, name: str,
                index: int) -> int:
    """Open-loop arrivals: ``local`` dispatches the whole rate itself; ``master`` waits for its
    workers, then sends them the start epoch (Locust's custom message ``tidegate_start``) and
    waits for every ``tidegate_done``; each ``worker`` dispatches its share of the rate from that
    epoch. No Locust users run: the dispatcher (``OpenLoop``) is the load."""
    import signal

    import gevent
    from gevent.event import Event

    out_dir = cfg["out_dir"]
    deadline = float(cfg["deadline_epoch"])
    stop_timeout = float(cfg["stop_timeout_s"])
    duration = RateIntegral(cfg["rate_steps"]).duration_s
    parent = os.getppid()
    workers = int(cfg.get("workers") or 0)
    info: dict[str, Any] = {"role": role, "name": name, "started_at": None, "shape_ended_at": None,
                            "stopped_at": None, "stopped_early": False, "deadline_hit": False,
                            "workers_connected": 0, "cpu_max_percent": 0.0, "arrival": cfg["arrival"],
                            "seed": cfg.get("seed")}
    # an in-cluster worker (tasks._incluster_worker) runs as ``local`` with its share of the rate
    # (``processes``) from a start epoch all workers share (``start_epoch``)
    dispatcher = OpenLoop(cfg, recorder, source, index, workers if role != "local" else int(cfg.get("processes") or 1)) \
        if role != "master" else None
    done_event = Event()
    runs: list[Any] = []
    done_workers: set[str] = set()

    def flusher() -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            recorder.flush()

    def abort(reason: str) -> None:
        info["stopped_early"] = True
        info["deadline_hit"] = reason == "deadline"
        info.setdefault("quit_reason", reason)
        for g in runs:
            g.kill(block=False)
        if runner is not None:
            gevent.spawn(_quietly, runner.quit)
        done_event.set()

    lag, cpu_s = _guard(abort, recorder, flusher, parent=parent, deadline=deadline)

    def sampler() -> None:  # the open-loop "users" are the requests in flight
        assert dispatcher is not None
        path = os.path.join(out_dir, "users.jsonl" if role == "local" else f"users-{name}.jsonl")
        with open(path, "a", encoding="utf-8") as fh:
            while True:
                fh.write(json.dumps([round(time.time(), 3), int(dispatcher.in_flight)]) + "\n")
                fh.flush()
                gevent.sleep(SAMPLE_INTERVAL_S)

    if dispatcher is not None:
        gevent.spawn(sampler)

    def dispatch(t0: float) -> None:
        assert dispatcher is not None
        info["started_at"] = t0
        dispatcher.run(t0, stop_timeout)
        done_event.set()

    def finish(path: str) -> int:
        info["stopped_at"] = time.time()
        info["cpu_seconds"] = round(cpu_s() - cpu0, 3)
        if info["started_at"] is not None and info["shape_ended_at"] is None:
            info["shape_ended_at"] = min(info["started_at"] + duration, info["stopped_at"])
        recorder.flush()
        extra = dispatcher.summary() if dispatcher is not None else {}
        _write_json(path, {**info, **lag.summary(), **extra, "records": recorder.kept,
                           "records_dropped": recorder.dropped, "failures": recorder.failures})
        return 0

    if role == "worker":
        def on_start(environment: Any, msg: Any, **_kw: Any) -> None:
            def go() -> None:
                dispatch(float(msg.data["t0"]))
                _quietly(runner.send_message, "tidegate_done", {"index": index})
            runs.append(gevent.spawn(go))

        runner.register_message("tidegate_start", on_start)
        gevent.spawn(_cpu_sampler, info)
        cpu0 = cpu_s()
        runner.greenlet.join()  # ends on the master's quit
        if any(not g.dead for g in runs):  # the master quit before this worker's schedule and drain were done
            info["stopped_early"] = True
        for g in runs:
            g.kill(block=True, timeout=5)
        if info["stopped_early"]:
            dispatcher.abort()  # the requests still in flight are recorded as cancelled
        return finish(os.path.join(out_dir, f"runner-{name}.json"))

    if role == "master":
        want = workers
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

        def on_done(environment: Any, msg: Any, **_kw: Any) -> None:
            done_workers.add(str(msg.node_id))
            if len(done_workers) >= want:
                done_event.set()

        runner.register_message("tidegate_done", on_done)
        t0 = time.time() + 0.5  # the workers hear of it before it comes
        info["started_at"] = t0
        cpu0 = cpu_s()
        runner.send_message("tidegate_start", {"t0": t0})
        _write_json(os.path.join(out_dir, "started.json"), {"started_at": t0})
        gevent.spawn(_cpu_sampler, info)
        done_event.wait(timeout=max(0.0, t0 + duration + stop_timeout + STOP_WAIT_GRACE_S - time.time()))
        info["shape_ended_at"] = min(t0 + duration, time.time())
        info["workers_done"] = len(done_workers)
        _quietly(runner.quit)
        return finish(os.path.join(out_dir, "runner.json"))

    # local
    assert dispatcher is not None
    cpu0 = cpu_s()
    t0 = float(cfg["start_epoch"]) if cfg.get("start_epoch") else time.time() + 0.05
    _write_json(os.path.join(out_dir, "started.json"), {"started_at": t0})
    gevent.spawn(_cpu_sampler, info)
    runs.append(gevent.spawn(dispatch, t0))
    done_event.wait()
    for g in runs:
        g.join(timeout=10)
    if info["stopped_early"]:
        dispatcher.abort()
    return finish(os.path.join(out_dir, "runner.json"))


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - quitting / telling the master is best effort
        print(f"locust runner: {getattr(fn, '__name__', fn)} failed: {exc!r}", file=sys.stderr)


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

    lag, cpu_s = _guard(quit_runner, recorder, flusher, parent=parent, deadline=deadline)

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


def _guard(stop: Any, recorder: Recorder, flusher: Any, *, parent: int, deadline: float) -> tuple[Any, Any]:
    """Bounds of a generator process, open or closed loop: ``stop(reason)`` when the parent dies, at
    the deadline and on SIGTERM/SIGINT; a hard exit 10 s after the deadline; the record flusher and
    the event-loop lag probe running. Returns (the LoopLag, a function giving the process's CPU seconds)."""
    import signal

    import gevent
    import psutil

    def watchdog() -> None:
        while True:
            gevent.sleep(0.5)
            if os.getppid() != parent:
                stop("parent gone")
                return
            if time.time() > deadline:
                stop("deadline")
                return

    def hard_exit() -> None:
        recorder.flush()
        print("locust runner: did not stop in time after its deadline; exiting hard", file=sys.stderr)
        os._exit(3)

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(stop, "signal"))
    gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(stop, "signal"))
    me = psutil.Process()

    def cpu_s() -> float:
        t = me.cpu_times()
        return t.user + t.system

    lag = LoopLag()
    gevent.spawn(flusher)
    gevent.spawn(watchdog)
    gevent.spawn(lag.run)
    gevent.spawn_later(max(0.0, deadline - time.time()) + 10.0, hard_exit)
    return lag, cpu_s


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
