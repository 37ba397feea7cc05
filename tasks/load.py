"""spike: drive the service with Locust along a load shape and measure what users felt.

The Locust generator runs in its own process (``python -m tasks._locust_runner``), because
importing ``locust`` monkey-patches the whole process with gevent; this module never imports
``locust`` or ``gevent``. ``run_load`` writes the runner's config, starts one process (or a
master and ``load.workers`` worker processes on 127.0.0.1), waits for it with a hard time
bound, and turns the per-request records it wrote into DataFrames and the report's ``load``
block.

Load shape
    A ``LoadShape`` is a table of steps ``(t_end_s, users, spawn_rate, phase)``: from the end of
    the previous step until ``t_end_s`` seconds into the run, hold ``users`` concurrent users
    (reached at ``spawn_rate`` users/s). ``spike_shape`` builds ``baseline -> spike -> hold ->
    cooldown`` from ``LoadSpec``; the tidal shape (``tasks.tidal``) is another table of the same
    kind (both in ``tasks.shapes``; ``shape_for`` picks by ``load.shape``). Locust's shape worker ticks once a
    second, so a step boundary takes effect within one second. Cool-down runs at
    *baseline users*, not zero: spill-back (HPA scale-in, cloud pods removed, the elastic pool
    shrinking) is then observed under the light traffic a real service still has after a
    peak, and the TTFT of the requests in flight while cloud pods are removed is measured.

Open-loop arrivals (``load.arrival`` poisson, gamma, constant)
    The shape is a rate (``LoadShape.rate_table``: the spike's baseline_rps -> ramp -> spike_rps
    -> cool-down at baseline_rps, or a tidal rps curve); every generator process draws intended
    send times from the arrival process and sends each request at its time whether or not
    earlier ones returned (``tasks._locust_runner``); TTFT and e2e count from the intended
    send time. ``summary.generator`` then says whether the generator kept its schedule
    (``generator_figures``); ``behind`` non-empty means the figures measure the generator.
    ``constant_rate_spec`` is one phase at a fixed rate (``tidegate load --rate``).

Request
    The seed's chat request (``chat_request``) ``POST <ingress url>/v1/chat/completions`` with
    ``Host: <ingress host>``, its prompt and max_tokens from ``tasks.requestgen`` per request
    (``request_config``); closed loop: every user sends in a loop (no think time). A failed
    request is followed by a 0.2 s pause, so an unreachable target cannot spin the generator.
    Users leaving at a ramp-down or at the end of the shape finish their request first (up to
    ``request_timeout_s``); requests cut by an abort (``stop_event``, the time bound) are
    recorded with ``cancelled`` and left out of every figure but ``summary.cancelled``.

``LoadResult.requests`` (one row per request, CSV ``requests.csv``)
    id, start, end (UTC datetimes), t_s (intended send time, seconds since the shape started;
    closed loop: the start), phase (shape phase at the intended send time), users (concurrent
    users the generator ran at start; open loop: requests in flight in the sending process,
    this one included), worker (process
    index), status (HTTP status, 0 when no answer), ok, cancelled, error (text, "" when ok),
    ttft_ms, e2e_ms, output_tokens, tokens_source (``usage`` | ``chunks``), chunks (content
    chunks received), done ([DONE] seen), itl_count, itl_mean_ms, itl_p95_ms, itl_max_ms,
    tpot_ms, intended (UTC datetime: the intended send time; closed loop = start), send_delay_ms,
    pod (the pod that served it when the target says: the test bed's emulator does; empty otherwise)
    (start - intended), input_tokens (the request's estimated prompt tokens), max_tokens.
    Latency columns are NaN where they do not apply (no token received, not streamed); open
    loop: ttft_ms and e2e_ms count from ``intended`` (the send delay is part of them).

``LoadResult.itl`` (one row per inter-token gap, every request, first token excluded)
    request (id), t_s (arrival of the token closing the gap, seconds since the shape started),
    itl_ms. Summary percentiles use the gaps of ok requests only.

``LoadResult.per_second`` (one row per second of the run, CSV ``per_second.csv``)
    second (UTC), t_s, phase, users (at the end of the second), started (requests sent),
    completed (requests finished, = rps), failures (failed requests finished), ttft_p50_ms,
    ttft_p95_ms, e2e_p95_ms (ok requests *sent* in that second), itl_p95_ms and
    output_tokens_per_s (tokens of ok requests *arriving* in that second).

``LoadResult.summary``
    exactly the report contract's ``load`` keys (``CONTRACT_KEYS``) plus extras: cancelled,
    duration_s, output_tokens, ttft_p99_ms, itl_p50_ms, itl_p99_ms, e2e_p50_ms, tpot_p50_ms,
    tpot_p95_ms, users_max, tokens_source counts, errors (top error texts), by_phase (the
    contract keys per phase, by the phase a request was *sent* in), generator (processes,
    CPU seconds and peak %, event-loop lag p99 = the generator's own share of the latencies it
    reports, records dropped, stopped early, deadline hit; arrival, seed, cpu_percent_max over
    every process, schedule_delay_p50/p99/max_ms; open loop also scheduled, sent,
    nominal_requests, requested_rps, nominal_rps, achieved_rps, achieved_ratio, in_flight_max,
    in_flight_cap_hits, max_in_flight; and ``behind``, see ``generator_figures``). Values are None when there is no
    data (a gate's ``no-data``). Definitions of every figure: ``DEFINITIONS``. Latency
    percentiles are over successful requests; failures count in requests and error_rate only.

Failure modes: an unreachable target makes every request an error and the run still ends on
time; a generator process that crashes raises ``StageFailed`` with the tail of its log; one
that outlives its time bound (shape + stop timeout + startup grace) is killed and raises
``StageFailed``. ``stop_event`` ends a run early (the result covers what ran,
``summary.generator.stopped_early`` is true).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import importlib.util
import itertools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd

from tasks import cancel, console
from tasks.errors import SpecError, StageFailed, StageNotImplemented
from tasks.goodput import KEYS as GOODPUT_KEYS
from tasks.goodput import describe_slo, goodput
from tasks.incluster import InClusterTarget, run_workers, worker_rows
from tasks.report_model import CONTRACT_KEYS as REPORT_CONTRACT_KEYS
from tasks.report_model import E2E, ITL, TPOT, TTFT, LoadBlock
from tasks.shapes import (
    MAX_USERS_PER_PROCESS,
    LoadShape,
    Step,
    check_capacity,
    spike_shape,
)
from tasks.smoke import ServerFeatures, detect_server
from tasks.spec import LoadSpec, ModelSpec, RolloutSpec
from tasks.tidal import tidal_shape

# the report contract's load keys and the definitions of the figures: from the report model
CONTRACT_KEYS = REPORT_CONTRACT_KEYS["load"]
DEFINITIONS: dict[str, str] = {
    "ttft_ms": TTFT[0].upper() + TTFT[1:] + ".",
    "itl_ms": ITL[0].upper() + ITL[1:] + ".",
    "tpot_ms": TPOT[0].upper() + TPOT[1:] + ".",
    "e2e_ms": E2E[0].upper() + E2E[1:] + ".",
    **{k: LoadBlock.model_fields[k].description or "" for k in ("output_tokens_per_s", "rps", "error_rate")},
}

REQUEST_COLUMNS = ("id", "start", "end", "t_s", "phase", "users", "worker", "status", "ok", "cancelled",
                   "error", "ttft_ms", "e2e_ms", "output_tokens", "tokens_source", "chunks", "done",
                   "itl_count", "itl_mean_ms", "itl_p95_ms", "itl_max_ms", "tpot_ms", "intended",
                   "send_delay_ms", "input_tokens", "max_tokens", "pod", "client_pool")
PER_SECOND_COLUMNS = ("second", "t_s", "phase", "users", "started", "completed", "failures",
                      "ttft_p50_ms", "ttft_p95_ms", "e2e_p95_ms", "itl_p95_ms", "output_tokens_per_s")

CHAT_PATH = "/v1/chat/completions"
FAILURE_PAUSE_S = 0.2
CONNECT_TIMEOUT_S = 10.0
STARTUP_GRACE_S = 30.0
WORKER_CONNECT_TIMEOUT_S = 30.0
KILL_GRACE_S = 15.0
STOP_GRACE_S = 5.0
MAX_RECORDS_PER_PROCESS = 5_000_000
# the generator fell behind (open loop): the run is inconclusive (issue 18)
BEHIND_ACHIEVED_RATIO = 0.97
BEHIND_DELAY_P50_MS = 10.0
BEHIND_CPU_PERCENT = 85.0

_RUNNER_FILES = ("records-", "runner", "users", "started.json", "locust-config.json")


# -- load shapes -------------------------------------------------------------------------------
ShapeBuilder = Callable[[LoadSpec], LoadShape]
_SHAPES: dict[str, ShapeBuilder] = {"spike": spike_shape, "tidal": tidal_shape}


def register_shape(kind: str, builder: ShapeBuilder) -> None:
    """Make ``load.shape: <kind>`` build its table with ``builder(load_spec)``."""
    _SHAPES[kind] = builder


def shape_for(load: LoadSpec) -> LoadShape:
    """The LoadShape the spec asks for; StageNotImplemented naming the known kinds otherwise."""
    kind = load.shape
    builder = _SHAPES.get(kind)
    if builder is None:
        raise StageNotImplemented(f"load.shape {kind!r} has no shape builder yet "
                                  f"(available: {', '.join(sorted(_SHAPES))})")
    return builder(load)


# -- the request -------------------------------------------------------------------------------
def chat_request(served_name: str, load: LoadSpec, *, stream_options: bool = True) -> dict[str, Any]:
    """The seed's chat request body, streamed when ``load.stream``: with
    ``stream_options.include_usage`` only where the server has it (``stream_options``; vLLM
    0.4.1 ignores it, 0.4.2-0.4.3 answer it with a 400), else usage comes from the finish chunk
    or the generator counts the content chunks."""
    body: dict[str, Any] = {"model": served_name, "messages": [{"role": "user", "content": load.prompt}],
                            "max_tokens": load.max_tokens, "temperature": 0.7, "top_p": 0.9, "seed": 10,
                            "stream": bool(load.stream)}
    if load.stream and stream_options:
        body["stream_options"] = {"include_usage": True}
    return body


def server_features(url: str, host: str, served_name: str, verify: bool) -> ServerFeatures:
    """What the target accepts (``tasks.smoke.detect_server``); the default when it cannot be asked."""
    try:
        with httpx.Client(base_url=url, headers={"Host": host}, verify=verify, trust_env=False,
                          timeout=httpx.Timeout(10.0, connect=3.0)) as c:
            return detect_server(c, served_name)
    except httpx.HTTPError:
        return ServerFeatures()


def request_config(load: LoadSpec, served_name: str) -> dict[str, Any]:
    """What the generator processes build their requests from: ``tasks.requestgen``'s config
    (``kind: requestgen``), or today's fixed prompt when that module is not installed."""
    if importlib.util.find_spec("tasks.requestgen") is None:
        return {"kind": "fixed", "config": {"prompt": load.prompt, "max_tokens": int(load.max_tokens),
                                            "words_per_token": float(load.requests.words_per_token)}}
    from tasks import requestgen

    return {"kind": "requestgen", "config": requestgen.request_config(load, served_name)}


def constant_rate_spec(rate_rps: float, duration_s: int, *, arrival: str = "poisson",
                       max_tokens: int = 128, **load_fields: Any) -> LoadSpec:
    """A LoadSpec of one open-loop phase (``spike``) at ``rate_rps`` for ``duration_s`` (the
    standalone ``tidegate load --rate --duration --arrival --max-tokens``); ``load_fields`` are
    any other ``load`` fields (seed, cv, max_in_flight, requests, slo, stream, workers...).

    >>> constant_rate_spec(20, 15).arrival, spike_shape(constant_rate_spec(20, 15)).rate_table()
    ('poisson', [[15.0, 20.0, 20.0, 'spike']])
    """
    if arrival == "closed":
        raise SpecError("load.arrival: a constant rate needs an open-loop arrival (poisson, gamma, constant)")
    values: dict[str, Any] = {"shape": "spike", "arrival": arrival, "baseline_rps": float(rate_rps),
                              "spike_rps": float(rate_rps), "baseline_s": 0, "spike_s": int(duration_s),
                              "hold_s": 0, "cooldown_s": 0, "ramp_s": 0, "max_tokens": int(max_tokens)}
    try:
        return LoadSpec(**{**values, **load_fields})
    except ValueError as exc:
        raise SpecError(f"load: {exc}") from None


# -- results -----------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    start: dt.datetime
    end: dt.datetime


@dataclass
class LoadResult:
    """What the spike stage measured; the columns are in the module docstring."""

    requests: pd.DataFrame
    itl: pd.DataFrame
    per_second: pd.DataFrame
    phases: list[Phase]
    summary: dict[str, Any]
    definitions: dict[str, str]
    shape: LoadShape
    started_at: dt.datetime
    ended_at: dt.datetime
    out_dir: Path | None = None

    def report_block(self) -> dict[str, Any]:
        """The report.json ``load`` block: the contract keys, then the extras (checked against
        the report model's ``LoadBlock``)."""
        return LoadBlock.model_validate(self.summary).model_dump(mode="json")

    def describe(self) -> str:
        s = self.summary

        def ms(key: str) -> str:
            return "n/a" if s.get(key) is None else f"{s[key]:.0f} ms"

        rps = "n/a" if s.get("rps") is None else f"{s['rps']:.1f}"
        gen = s.get("generator") or {}
        if self.shape.open_loop:
            level = (f"{gen.get('arrival')} arrivals (seed {gen.get('seed')}), up to "
                     f"{gen.get('in_flight_max', s['users_max'])} in flight")
            if gen.get("behind"):
                level += f"; the generator fell behind: {'; '.join(gen['behind'])}"
        else:
            level = f"up to {s['users_max']} users"
        return (f"{s['requests']} requests ({s['failures']} failed) in {s['duration_s']:.0f}s of the "
                f"{self.shape.kind} shape, {level}: {rps} rps, TTFT p95 "
                f"{ms('ttft_p95_ms')}, ITL p95 {ms('itl_p95_ms')}, e2e p95 {ms('e2e_p95_ms')}")


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)


def _pct(values: np.ndarray, q: float) -> float | None:
    values = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    if values.size == 0:
        return None
    return round(float(np.percentile(values, q)), 3)


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def compute_result(records: Sequence[dict[str, Any]], users: Sequence[Sequence[float]], shape: LoadShape,
                   started_at: float, ended_at: float, *, generator: dict[str, Any] | None = None,
                   out_dir: Path | None = None, slo: Any = None) -> LoadResult:
    """Turn runner records into the DataFrames and the summary (pure; no I/O).

    ``records`` are the runner's per-request dicts (``tasks._locust_runner`` docstring),
    ``users`` its samples ``[epoch, user_count, ...]``, ``started_at``/``ended_at`` the epochs
    at which the shape started and ended, ``slo`` the per-request SLOs (``load.slo``) goodput is
    counted against (``tasks.goodput``; None: good = succeeded).
    """
    recs = sorted(records, key=lambda r: r.get("intended", r["start"]))
    n = len(recs)
    start = np.array([r["start"] for r in recs], dtype=float)
    end = np.array([r["end"] for r in recs], dtype=float)
    # closed loop (and records from before intended times existed): intended = start
    intended = np.array([r.get("intended", r["start"]) for r in recs], dtype=float)
    send_delay = np.array([r.get("send_delay_ms") or 0.0 for r in recs], dtype=float)
    t_s = intended - started_at
    cancelled = np.array([bool(r.get("cancelled")) for r in recs], dtype=bool)
    error = np.array([r.get("error") or "" for r in recs], dtype=object)
    ok = (~cancelled) & (error == "") if n else np.zeros(0, dtype=bool)
    ttft = np.array([np.nan if r.get("ttft_ms") is None else r["ttft_ms"] for r in recs], dtype=float)
    e2e = np.array([r["e2e_ms"] for r in recs], dtype=float)
    out_tokens = np.array([int(r.get("output_tokens") or 0) for r in recs], dtype=np.int64)

    # users at request start: the last sample at or before it
    u_t = np.array([float(u[0]) for u in users], dtype=float)
    u_n = np.array([int(u[1]) for u in users], dtype=np.int64)
    order = np.argsort(u_t, kind="stable")
    u_t, u_n = u_t[order], u_n[order]

    def users_at(epochs: np.ndarray) -> np.ndarray:
        if u_t.size == 0:
            return np.zeros(epochs.shape, dtype=np.int64)
        idx = np.searchsorted(u_t, epochs, side="right") - 1
        return np.where(idx >= 0, u_n[np.clip(idx, 0, None)], 0)

    t_ends = np.array([s.t_end_s for s in shape.steps], dtype=float)
    step_names = np.array([s.phase for s in shape.steps], dtype=object)

    def phase_of(offsets: np.ndarray) -> np.ndarray:
        idx = np.clip(np.searchsorted(t_ends, offsets, side="right"), 0, len(t_ends) - 1)
        return step_names[idx]

    # every gap of every request, flat, with its request index; arrivals from the first token on
    lengths = np.fromiter((len(r.get("itl_ms") or ()) for r in recs), dtype=np.int64, count=n)
    flat = np.fromiter(itertools.chain.from_iterable(r.get("itl_ms") or () for r in recs), dtype=float,
                       count=int(lengths.sum()))
    gap_req = np.repeat(np.arange(n, dtype=np.int64), lengths)
    first = t_s + ttft / 1000.0  # NaN where no token arrived
    has = lengths > 0
    offsets = np.cumsum(lengths) - lengths
    itl_count = lengths
    itl_mean = np.full(n, np.nan)
    itl_max = np.full(n, np.nan)
    itl_p95 = np.full(n, np.nan)
    if flat.size:
        itl_mean[has] = np.add.reduceat(flat, offsets[has]) / lengths[has]
        itl_max[has] = np.maximum.reduceat(flat, offsets[has])
        itl_p95[has] = pd.Series(flat).groupby(gap_req).quantile(0.95).to_numpy()
    csum = np.cumsum(flat)
    before = np.where(offsets > 0, csum[np.clip(offsets - 1, 0, None)] if csum.size else 0.0, 0.0)
    arrivals = first[gap_req] + (csum - np.repeat(before, lengths)) / 1000.0
    keep = ~np.isnan(arrivals)
    ok_first = first[ok & ~np.isnan(first)]
    tokens_at = np.concatenate((ok_first, arrivals[keep & ok[gap_req]]))  # content chunks of ok requests
    tpot = np.full(n, np.nan)
    mask = ok & ~np.isnan(ttft) & (out_tokens > 1)
    tpot[mask] = (e2e[mask] - ttft[mask]) / (out_tokens[mask] - 1)

    requests = pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "start": pd.to_datetime(start, unit="s", utc=True),
        "end": pd.to_datetime(end, unit="s", utc=True),
        "t_s": np.round(t_s, 6),
        "phase": phase_of(t_s) if n else np.array([], dtype=object),
        "users": _request_users(recs, users_at(start)),
        "worker": np.array([int(r.get("worker") or 0) for r in recs], dtype=np.int64),
        "status": np.array([int(r.get("status") or 0) for r in recs], dtype=np.int64),
        "ok": ok,
        "cancelled": cancelled,
        "error": error,
        "ttft_ms": ttft,
        "e2e_ms": e2e,
        "output_tokens": out_tokens,
        "tokens_source": np.array([r.get("tokens_source") or "chunks" for r in recs], dtype=object),
        "chunks": np.array([int(r.get("chunks") or 0) for r in recs], dtype=np.int64),
        "done": np.array([bool(r.get("done")) for r in recs], dtype=bool),
        "itl_count": itl_count,
        "itl_mean_ms": itl_mean,
        "itl_p95_ms": itl_p95,
        "itl_max_ms": itl_max,
        "tpot_ms": tpot,
        "intended": pd.to_datetime(intended, unit="s", utc=True),
        "send_delay_ms": send_delay,
        "input_tokens": np.array([-1 if r.get("input_tokens") is None else int(r["input_tokens"]) for r in recs],
                                 dtype=np.int64),
        "max_tokens": np.array([-1 if r.get("max_tokens") is None else int(r["max_tokens"]) for r in recs],
                               dtype=np.int64),
        "pod": [r.get("pod") or None for r in recs],   # the pod that served it, where the target says (the twin)
        # where the client stood: the in-cluster worker's pool (idc, elastic), or local
        "client_pool": np.array([r.get("client_pool") or "local" for r in recs], dtype=object),
    }, columns=list(REQUEST_COLUMNS))

    itl = pd.DataFrame({"request": gap_req[keep], "t_s": arrivals[keep], "itl_ms": flat[keep].astype(np.float32)})
    itl_ok = flat[keep & ok[gap_req]]

    duration = max(0.0, ended_at - started_at)
    per_second = _per_second(requests, itl, tokens_at, u_t, u_n, shape, started_at, ended_at)
    finished = ~cancelled
    n_finished = int(finished.sum())
    n_failed = int((finished & ~ok).sum())
    streamed_tokens = bool(np.any(~np.isnan(ttft)))
    summary: dict[str, Any] = {
        "requests": n_finished,
        "failures": n_failed,
        "error_rate": round(n_failed / n_finished, 6) if n_finished else None,
        "rps": _rate(n_finished, duration),
        "ttft_p50_ms": _pct(ttft[ok], 50),
        "ttft_p95_ms": _pct(ttft[ok], 95),
        "itl_p95_ms": _pct(itl_ok, 95),
        "e2e_p95_ms": _pct(e2e[ok], 95),
        "output_tokens_per_s": _rate(int(out_tokens[ok].sum()), duration) if n_finished else None,
        # extras
        "cancelled": int(cancelled.sum()),
        "duration_s": round(duration, 3),
        "output_tokens": int(out_tokens[ok].sum()),
        "ttft_p99_ms": _pct(ttft[ok], 99),
        "itl_p50_ms": _pct(itl_ok, 50),
        "itl_p99_ms": _pct(itl_ok, 99),
        "e2e_p50_ms": _pct(e2e[ok], 50),
        "tpot_p50_ms": _pct(tpot[ok], 50),
        "tpot_p95_ms": _pct(tpot[ok], 95),
        # open loop: users are the requests in flight (sampled; distributed: summed over the
        # workers' samples)
        "users_max": int(u_n.max()) if u_n.size else (int(requests["users"].max()) if n else 0),
        "streamed": streamed_tokens,
        "tokens_source": dict(Counter(requests.loc[ok, "tokens_source"])) if n else {},
        "errors": dict(Counter(e[:120] for e in error[finished & ~ok]).most_common(10)),
        "by_phase": _by_phase(requests, itl, u_t, u_n, shape, started_at, ended_at),
        "by_client_pool": by_client_pool(requests, itl),
        "generator": generator_figures(generator or {}, send_delay, n, duration),
    }
    # goodput over the episode, drain included (the last request's end), and per phase
    episode_s = max(duration, float(np.nanmax(end[finished]) - started_at) if n_finished else 0.0)
    good = goodput(requests, slo, duration_s=episode_s, phases=shape.phases())
    summary["arrival"] = summary["generator"].get("arrival", "closed")
    for key in GOODPUT_KEYS:
        summary[key] = good[key]
    summary["goodput"] = {"rule": describe_slo(good["slo"]), "slo": good["slo"], "episode_s": good["episode_s"],
                          "good_requests": good["good_requests"]}
    for name, figures in good["by_phase"].items():
        summary["by_phase"].setdefault(name, {}).update(figures)
    phases = [Phase(name, _utc(started_at + a), _utc(started_at + min(b, max(duration, a))))
              for name, a, b in shape.phases() if a < max(duration, 1e-9)]
    return LoadResult(requests=requests, itl=itl, per_second=per_second, phases=phases, summary=summary,
                      definitions=dict(DEFINITIONS), shape=shape, started_at=_utc(started_at),
                      ended_at=_utc(ended_at), out_dir=out_dir)


def by_client_pool(requests: pd.DataFrame, itl: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Latency per client pool (``client_pool``: where the generator that sent the request stood),
    each over that pool's own requests (percentiles of the merged samples, never averaged)."""
    out: dict[str, dict[str, Any]] = {}
    if not len(requests):
        return out
    finished = ~requests["cancelled"].to_numpy(dtype=bool)
    ok = requests["ok"].to_numpy(dtype=bool)
    req_ok = np.zeros(len(requests), dtype=bool)
    req_ok[requests["id"].to_numpy()] = ok
    for pool in sorted(set(requests["client_pool"])):
        mine = (requests["client_pool"] == pool).to_numpy()
        good = mine & ok & finished
        n, failed = int((mine & finished).sum()), int((mine & finished & ~ok).sum())
        ids = set(requests.loc[good, "id"])
        gaps = itl.loc[itl["request"].isin(ids), "itl_ms"].to_numpy(dtype=float) if len(itl) else np.array([])
        out[str(pool)] = {
            "requests": n, "failures": failed, "error_rate": round(failed / n, 6) if n else None,
            "ttft_p50_ms": _pct(requests.loc[good, "ttft_ms"].to_numpy(dtype=float), 50),
            "ttft_p95_ms": _pct(requests.loc[good, "ttft_ms"].to_numpy(dtype=float), 95),
            "itl_p95_ms": _pct(gaps, 95),
            "e2e_p95_ms": _pct(requests.loc[good, "e2e_ms"].to_numpy(dtype=float), 95),
        }
    return out


def generator_figures(generator: dict[str, Any], send_delay_ms: np.ndarray, records: int,
                      duration_s: float) -> dict[str, Any]:
    """The generator's account of itself: ``generator`` (what the runner reported) plus its
    schedule figures and ``behind``, the reasons it did not hold the load (pure).

    ``requested_rps`` is the realised schedule (intended send times drawn / duration: a Poisson
    count varies by several percent, so "achieved" is judged against it), ``nominal_rps`` the
    rate integral / duration, ``achieved_rps`` requests actually sent / duration. ``behind`` (open
    loop only): achieved < ``BEHIND_ACHIEVED_RATIO`` of requested, schedule delay p50 >
    ``BEHIND_DELAY_P50_MS``, or a generator process's CPU peak > ``BEHIND_CPU_PERCENT``.
    """
    gen = dict(generator)
    arrival = gen.get("arrival") or "closed"
    gen["arrival"] = arrival
    cpus = [float(c) for c in [gen.get("cpu_max_percent"), *(gen.get("worker_cpu_max_percent") or [])]
            if c is not None]
    gen["cpu_percent_max"] = max(cpus) if cpus else None
    delays = send_delay_ms.astype(float) if send_delay_ms.size else np.zeros(0)
    gen["schedule_delay_p50_ms"] = _pct(delays, 50)
    gen["schedule_delay_p99_ms"] = _pct(delays, 99)
    gen["schedule_delay_max_ms"] = round(float(delays.max()), 3) if delays.size else None
    behind: list[str] = []
    if arrival != "closed":
        sent = gen.get("sent")
        sent = int(records if sent is None else sent)
        scheduled = gen.get("scheduled")
        nominal = gen.get("nominal_requests")
        gen["requested_rps"] = _rate(float(scheduled), duration_s) if scheduled is not None else None
        gen["nominal_rps"] = _rate(float(nominal), duration_s) if nominal is not None else None
        gen["achieved_rps"] = _rate(sent, duration_s)
        gen["achieved_ratio"] = (round(sent / float(scheduled), 4) if scheduled else None)
        ratio = gen["achieved_ratio"]
        if ratio is not None and ratio < BEHIND_ACHIEVED_RATIO:
            behind.append(f"achieved {gen['achieved_rps']:g} requests/s, {ratio:.1%} of the {gen['requested_rps']:g} "
                          f"scheduled (below {BEHIND_ACHIEVED_RATIO:.0%})")
        p50 = gen["schedule_delay_p50_ms"]
        if p50 is not None and p50 > BEHIND_DELAY_P50_MS:
            hits = int(gen.get("in_flight_cap_hits") or 0)
            why = f"; the in-flight cap was reached {hits} times" if hits else ""
            behind.append(f"schedule delay p50 {p50:g} ms (above {BEHIND_DELAY_P50_MS:g} ms){why}")
        cpu = gen["cpu_percent_max"]
        if cpu is not None and cpu > BEHIND_CPU_PERCENT:
            behind.append(f"generator CPU peaked at {cpu:g}% of a core (above {BEHIND_CPU_PERCENT:g}%)")
    gen["behind"] = behind
    return gen


def _request_users(recs: Sequence[dict[str, Any]], sampled: np.ndarray) -> np.ndarray:
    """The count a record carries (exact, local runner) or else the sampled one (distributed)."""
    own = np.array([-1 if r.get("users") is None else int(r["users"]) for r in recs], dtype=np.int64)
    return np.where(own >= 0, own, sampled) if own.size else sampled


def _per_second(requests: pd.DataFrame, itl: pd.DataFrame, tokens_at: np.ndarray, u_t: np.ndarray,
                u_n: np.ndarray, shape: LoadShape, started_at: float, ended_at: float) -> pd.DataFrame:
    last_end = float((requests["end"].astype("int64").max() / 1e9) - started_at) if len(requests) else 0.0
    seconds = int(math.ceil(max(ended_at - started_at, last_end, 0.0)))
    idx = np.arange(seconds, dtype=np.int64)
    frame = pd.DataFrame({"t_s": idx})
    frame.insert(0, "second", pd.to_datetime(started_at + idx, unit="s", utc=True))
    frame["phase"] = [shape.phase_at(float(t)) for t in idx]
    if u_t.size:
        pos = np.searchsorted(u_t, started_at + idx + 1, side="right") - 1
        frame["users"] = np.where(pos >= 0, u_n[np.clip(pos, 0, None)], 0)
    else:
        frame["users"] = 0

    def by_second(offsets: pd.Series | np.ndarray) -> np.ndarray:
        return np.floor(np.asarray(offsets, dtype=float)).astype(np.int64)

    done = requests[~requests["cancelled"]]
    end_s = by_second((done["end"].astype("int64") / 1e9 - started_at).to_numpy()) if len(done) else np.zeros(0)
    frame["started"] = np.bincount(np.clip(by_second(requests["t_s"]), 0, None),
                                   minlength=seconds)[:seconds] if len(requests) else 0
    frame["completed"] = np.bincount(np.clip(end_s, 0, None), minlength=seconds)[:seconds] if len(done) else 0
    failed_end = end_s[~done["ok"].to_numpy()] if len(done) else np.zeros(0, dtype=np.int64)
    frame["failures"] = (np.bincount(np.clip(failed_end, 0, None), minlength=seconds)[:seconds]
                         if failed_end.size else 0)
    good = requests[requests["ok"]].assign(sec=lambda d: by_second(d["t_s"]))
    grouped = good.groupby("sec")
    for col, src, q in (("ttft_p50_ms", "ttft_ms", 0.5), ("ttft_p95_ms", "ttft_ms", 0.95),
                        ("e2e_p95_ms", "e2e_ms", 0.95)):
        vals = grouped[src].quantile(q) if len(good) else pd.Series(dtype=float)
        frame[col] = frame["t_s"].map(vals).astype(float).round(3)
    ok_ids = requests["ok"].to_numpy()
    gaps = itl[ok_ids[itl["request"].to_numpy()]] if len(itl) else itl
    if len(gaps):
        vals = gaps["itl_ms"].astype(float).groupby(by_second(gaps["t_s"])).quantile(0.95)
        frame["itl_p95_ms"] = frame["t_s"].map(vals).astype(float).round(3)
    else:
        frame["itl_p95_ms"] = np.nan
    if tokens_at.size:
        frame["output_tokens_per_s"] = np.bincount(np.clip(by_second(tokens_at), 0, None),
                                                   minlength=seconds)[:seconds]
    elif len(good):
        # not streamed: all of a request's tokens count in the second it ended
        tok = np.zeros(seconds)
        ends = by_second((good["end"].astype("int64") / 1e9 - started_at).to_numpy())
        np.add.at(tok, np.clip(ends, 0, seconds - 1), good["output_tokens"].to_numpy())
        frame["output_tokens_per_s"] = tok
    else:
        frame["output_tokens_per_s"] = 0
    frame["output_tokens_per_s"] = frame["output_tokens_per_s"].astype(float)
    return frame[list(PER_SECOND_COLUMNS)]


def _by_phase(requests: pd.DataFrame, itl: pd.DataFrame, u_t: np.ndarray, u_n: np.ndarray, shape: LoadShape,
              started_at: float, ended_at: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ok_ids = requests["ok"].to_numpy()
    req_phase = requests["phase"].to_numpy()
    itl_req = itl["request"].to_numpy()
    itl_vals = itl["itl_ms"].to_numpy(dtype=float)
    run_s = ended_at - started_at
    for name, a, b in shape.phases():
        length = max(0.0, min(b, run_s) - a)
        sel = (req_phase == name) if len(requests) else np.zeros(0, dtype=bool)
        part = requests[sel]
        done = part[~part["cancelled"]]
        good = done[done["ok"]]
        gaps = itl_vals[(req_phase[itl_req] == name) & ok_ids[itl_req]] if itl_req.size else np.zeros(0)
        in_phase = (u_t >= started_at + a) & (u_t < started_at + b)
        out[name] = {
            "start_s": a, "end_s": b,
            "requests": int(len(done)),
            "failures": int((~done["ok"]).sum()),
            "error_rate": round(float((~done["ok"]).sum()) / len(done), 6) if len(done) else None,
            "rps": _rate(len(done), length),
            "ttft_p50_ms": _pct(good["ttft_ms"].to_numpy(dtype=float), 50),
            "ttft_p95_ms": _pct(good["ttft_ms"].to_numpy(dtype=float), 95),
            "itl_p95_ms": _pct(gaps, 95),
            "e2e_p95_ms": _pct(good["e2e_ms"].to_numpy(dtype=float), 95),
            "output_tokens_per_s": _rate(int(good["output_tokens"].sum()), length) if len(done) else None,
            "users_max": int(u_n[in_phase].max()) if in_phase.any() else 0,
        }
    return out


# -- reading what the runner wrote ------------------------------------------------------------
def read_runner_output(run_dir: Path) -> tuple[list[dict[str, Any]], list[list[float]], dict[str, Any]]:
    """(records, user samples, runner info) from a runner directory; a torn last line is skipped."""
    records: list[dict[str, Any]] = []
    torn = 0
    for path in sorted(run_dir.glob("records-*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    torn += 1
    samples: list[list[float]] = []
    users_path = run_dir / "users.jsonl"
    if users_path.exists():
        with open(users_path, encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    samples.append(json.loads(line))
    per_worker = []
    for path in sorted(run_dir.glob("users-worker*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            rows = []
            for line in fh:
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(line))
            per_worker.append(rows)
    if per_worker and not samples:
        samples = merge_samples(per_worker)
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((run_dir / "runner.json").read_text())
    workers = []
    for path in sorted(run_dir.glob("runner-worker*.json")):
        with contextlib.suppress(OSError, ValueError):
            workers.append(json.loads(path.read_text()))
    info["worker_info"] = workers
    info["torn_lines"] = torn
    return records, samples, info


def merge_samples(per_process: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """The total of several processes' ``[epoch, count]`` samples (open loop, distributed: the
    requests in flight): at every sample time, the sum of each process's latest count.

    >>> merge_samples([[[1.0, 2], [3.0, 4]], [[2.0, 1]]])
    [[1.0, 2], [2.0, 3], [3.0, 5]]
    """
    events = sorted((float(row[0]), i, int(row[1])) for i, rows in enumerate(per_process) for row in rows)
    latest = [0] * len(per_process)
    out: list[list[float]] = []
    for t, i, n in events:
        latest[i] = n
        if out and out[-1][0] == t:
            out[-1][1] = sum(latest)
        else:
            out.append([t, sum(latest)])
    return out


# -- running the generator --------------------------------------------------------------------
def _target(spec: RolloutSpec | LoadSpec, base_url: str | None, host: str | None,
            served_name: str | None) -> tuple[LoadSpec, str, str, str, bool]:
    if isinstance(spec, RolloutSpec):
        load, url = spec.load, base_url or spec.ingress.url
        host = host or spec.ingress.host
        served, verify = served_name or spec.model.served_name, spec.ingress.verify_tls
    elif isinstance(spec, LoadSpec):
        if not base_url:
            raise SpecError("run_load: base_url is required when the spec is a LoadSpec")
        load, url, served, verify = spec, base_url, served_name or ModelSpec().served_name, True
    else:
        raise SpecError(f"run_load: spec must be a RolloutSpec or LoadSpec (got {type(spec).__name__})")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(f"run_load: base_url must be an http(s)://host[:port] URL (got {url!r})")
    return load, url.rstrip("/"), host or parts.netloc, served, verify


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runner_command(config: Path, role: str, index: int) -> list[str]:
    return [sys.executable, "-m", "tasks._locust_runner", "--config", str(config), "--role", role,
            "--index", str(index)]


def _tail(path: Path, lines: int = 12) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16_384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(kept) or "(empty log)"


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def _start(run_dir: Path, config: Path, workers: int) -> list[_Proc]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    roles = [("local", 0)] if workers <= 0 else [("master", 0)] + [("worker", i + 1) for i in range(workers)]
    procs: list[_Proc] = []
    try:
        for role, index in roles:
            name = role if role != "worker" else f"worker{index}"
            log = run_dir / f"{name}.log"
            with open(log, "wb") as fh:
                popen = subprocess.Popen(_runner_command(config, role, index), stdin=subprocess.DEVNULL,
                                         stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(run_dir),
                                         start_new_session=True)
            procs.append(_Proc(name, popen, log))
    except OSError as exc:
        _kill(procs)
        raise StageFailed(f"load generator: cannot start {sys.executable}: {exc}") from exc
    return procs


def _kill(procs: Sequence[_Proc]) -> None:
    for p in procs:
        if p.popen.poll() is None:
            with contextlib.suppress(OSError):
                p.popen.kill()
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=5)


PROGRESS_INTERVAL_S = 10.0
PROGRESS_BAR_REFRESH_S = 1.0
ACHIEVED_WINDOW_S = 10.0


class Progress:
    """The spike's console, read from the records the generator's processes flush every second.

    Without a terminal (or before ``start()``): one line on stderr every ``interval_s``: the phase,
    the offered rate, elapsed of the shape, requests completed per second, failures, TTFT p50/p95
    of the requests that completed in the interval, requests in flight, and ``extra()`` (the spike
    stage: replicas and nodes per pool). On a terminal, between ``start()`` and ``stop()`` (or as a
    context manager): a live bar (``tasks.console.LiveBar``) instead, refreshed every
    ``PROGRESS_BAR_REFRESH_S``: phase, elapsed/total, offered and achieved rate (completions over
    the last ``ACHIEVED_WINDOW_S``), errors, TTFT p95 so far, ``extra()``. A console for `make demo`;
    the figures of the report are computed from all records afterwards."""

    def __init__(self, run_dir: Path, duration_s: float, began: float, interval_s: float = PROGRESS_INTERVAL_S,
                 *, shape: LoadShape | None = None, extra: Callable[[], str] | None = None,
                 bar: bool | None = None):
        self.run_dir, self.duration_s, self.began, self.interval_s = run_dir, duration_s, began, interval_s
        self.shape, self.extra = shape, extra
        self.offsets: dict[Path, int] = {}
        self.next_at = began + interval_s
        self.lines = 0
        self.want_bar = console.interactive() if bar is None else bar
        self.bar: console.LiveBar | None = None
        self._interval: list[dict[str, Any]] = []    # records since the last line
        self.completed = self.failed = 0              # so far
        self._ttft: list[float] = []                  # so far, sorted
        self._recent: list[tuple[float, int]] = []    # (poll time, completions) within the window
        self._now = began
        self._bar_at = began
        self._extra_text = ""
        self._inflight: int | None = None

    def _new_records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in sorted(self.run_dir.glob("records-*.jsonl")):
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets.get(path, 0))
                    blob = fh.read()
            except OSError:
                continue
            end = blob.rfind(b"\n") + 1          # a line still being written waits for the next tick
            self.offsets[path] = self.offsets.get(path, 0) + end
            for line in blob[:end].splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def _poll(self, now: float) -> None:
        recs = [r for r in self._new_records() if not r.get("cancelled")]
        self._interval.extend(recs)
        failed = sum(1 for r in recs if r.get("error"))
        self.completed += len(recs) - failed
        self.failed += failed
        for r in recs:
            if not r.get("error") and r.get("ttft_ms") is not None:
                bisect.insort(self._ttft, float(r["ttft_ms"]))
        self._recent = [(t, n) for t, n in self._recent if t > now - ACHIEVED_WINDOW_S] + [(now, len(recs))]
        inflight = [int(r["in_flight"]) for r in recs if r.get("in_flight") is not None]
        if inflight:
            self._inflight = max(inflight)

    def _phase_and_offer(self, elapsed: float) -> tuple[str | None, float | None, int | None]:
        if self.shape is None:
            return None, None, None
        t = min(max(elapsed, 0.0), self.shape.duration_s - 1e-6)  # the end still names the last phase
        rate = self.shape.rate_at(t) if self.shape.open_loop else None
        users = None if self.shape.open_loop else (self.shape.users_at(t) or (None,))[0]
        return self.shape.phase_at(t), rate, users

    def _extra(self) -> str:
        if self.extra is None:
            return ""
        with contextlib.suppress(Exception):
            self._extra_text = str(self.extra())
        return self._extra_text

    # -- the bar (a terminal) ------------------------------------------------------------------
    def start(self) -> Self:
        if self.want_bar and self.bar is None:
            with contextlib.suppress(Exception):
                bar = console.LiveBar(self._bar_title, self.duration_s,
                                      lambda done: f"{done:.0f}/{self.duration_s:.0f} s", self._bar_lines)
                self.bar = bar if bar.start().shown else None
        return self

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bar_title(self) -> str:
        elapsed = self._now - self.began
        if elapsed >= self.duration_s:
            return "load: requests in flight end"
        phase = self._phase_and_offer(elapsed)[0]
        return f"load: {phase}" if phase else "load"

    def _bar_lines(self) -> list[str]:
        elapsed = self._now - self.began
        _, rate, users = self._phase_and_offer(elapsed)
        window = sum(n for _, n in self._recent)
        span = min(ACHIEVED_WINDOW_S, max(elapsed, 1e-6))
        done = self.completed + self.failed
        ttft = (f"{self._ttft[min(len(self._ttft) - 1, int(0.95 * len(self._ttft)))]:.0f} ms"
                if self._ttft else "-")
        offered = (f"offered {rate:.1f}/s" if rate is not None else
                   f"{users} users" if users is not None else "offered -")
        lines = [f"{offered}, achieved {window / span:.1f}/s, {done} done, errors {self.failed}"
                 f" ({self.failed / done if done else 0.0:.1%}), TTFT p95 {ttft} so far"
                 + (f", {self._inflight} in flight" if self._inflight is not None else "")]
        if self._extra_text:
            lines.append(self._extra_text)
        return lines

    def _refresh_bar(self, now: float) -> None:
        if self.bar is None or now < self._bar_at:
            return
        self._bar_at = now + PROGRESS_BAR_REFRESH_S
        self._poll(now)
        self._extra()
        self._now = now
        self.bar.update(now - self.began)

    # -- the line (no terminal) ----------------------------------------------------------------
    def tick(self, now: float) -> str | None:
        """Called often by the waiting loop: refreshes the bar when one is shown; returns (and,
        without a bar, prints) the interval's line when one is due."""
        self._refresh_bar(now)
        if now < self.next_at:
            return None
        span = now - (self.next_at - self.interval_s)
        self.next_at = now + self.interval_s
        self._poll(now)
        self._now = now
        recs, self._interval = self._interval, []
        ok = [r for r in recs if not r.get("error")]
        ttft = sorted(float(r["ttft_ms"]) for r in ok if r.get("ttft_ms") is not None)

        def pct(q: float) -> str:
            return f"{ttft[min(len(ttft) - 1, int(q * len(ttft)))]:.0f}" if ttft else "-"

        inflight = max((int(r["in_flight"]) for r in recs if r.get("in_flight") is not None), default=None)
        elapsed = now - self.began
        offered = ""
        phase, rate, users = self._phase_and_offer(elapsed)
        if phase is not None:
            offered = f"{phase}, " + (f"offered {rate:.1f}/s, " if rate is not None else
                                      f"{users} users, " if users is not None else "")
        line = (f"load: {offered}elapsed {elapsed:.0f}/{self.duration_s:.0f} s, {len(recs) / span:.1f} rps "
                f"completed ({len(recs) - len(ok)} failed), TTFT p50 {pct(0.5)} ms p95 {pct(0.95)} ms"
                + (f", {inflight} in flight" if inflight is not None else ""))
        extra = self._extra()
        if self.extra is not None and extra:
            line += f"; {extra}"
        if self.bar is None:
            # printed, not logged: under Prefect the console shows only Prefect's own loggers' INFO lines
            print(f"tidegate: {line}", file=sys.stderr, flush=True)
        self.lines += 1
        return line


def _wait(procs: list[_Proc], kill_at: float, stop_event: threading.Event | None,
          progress: Progress | None = None) -> tuple[bool, bool]:
    """Wait for every process; (stopped early, killed at the time bound). A checkpoint of
    ``tasks.cancel``: Terminated (the caller kills the processes)."""
    lead = procs[0]
    stopped = False
    term_sent_at: float | None = None
    while any(p.popen.poll() is None for p in procs):
        cancel.check()
        now = time.time()
        if progress is not None:
            with contextlib.suppress(Exception):  # a console line must never cost the run
                progress.tick(now)
        if now > kill_at:
            _kill(procs)
            return stopped, True
        if stop_event is not None and stop_event.is_set() and not stopped:
            stopped = True
            term_sent_at = now
            for p in procs:  # each process cancels its requests in flight and writes its records
                if p.popen.poll() is None:
                    with contextlib.suppress(OSError):
                        p.popen.send_signal(signal.SIGTERM)
        if term_sent_at is not None and now > term_sent_at + KILL_GRACE_S:
            _kill(procs)
            return stopped, True
        if lead.popen.poll() is not None and len(procs) > 1:
            # the master is gone: its workers get a bounded while to write their records
            kill_at = min(kill_at, now + KILL_GRACE_S)
        time.sleep(0.1)
    return stopped, False


def _max_of(docs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [float(d[key]) for d in docs if d.get(key) is not None]
    return max(values) if values else None


def run_load(spec: RolloutSpec | LoadSpec, out_dir: Path | str, *, base_url: str | None = None,
             host: str | None = None, shape: LoadShape | None = None,
             stop_event: threading.Event | None = None, served_name: str | None = None,
             progress_extra: Callable[[], str] | None = None,
             cluster: InClusterTarget | None = None) -> LoadResult:
    """Run the load shape against the service and return what was measured (blocking).
    ``progress_extra`` adds to the console's progress line (the spike stage: replicas and nodes per pool).

    ``spec`` is the RolloutSpec (target: ``ingress.url`` + ``ingress.host``, ``model.served_name``)
    or a bare LoadSpec with ``base_url`` (and ``host``, default the URL's host). ``shape``
    overrides ``shape_for(spec.load)``. Writes ``requests.csv`` and ``per_second.csv`` to
    ``out_dir`` and the runner's raw files (config, records, logs) to ``out_dir/locust``.

    With ``load.generators.in_cluster`` the workers run as Jobs in ``cluster`` (``tasks.incluster``:
    tidegate coordinates them and collects their raw samples into ``out_dir/locust``, read as the
    local workers' files); ``load.generator.workers`` then names each worker's pool and share.

    Bounded: the generator is killed after the shape's duration + the stop timeout
    (``request_timeout_s``) + startup grace. Raises ``StageFailed`` when a generator process
    crashes or has to be killed, ``SpecError`` for a bad target or a shape beyond capacity.
    """
    load, url, host_header, served, verify = _target(spec, base_url, host, served_name)
    shape = shape or shape_for(load)
    in_cluster = bool(load.generators.in_cluster)
    if in_cluster and (cluster is None or not isinstance(spec, RolloutSpec)):
        raise SpecError("load.generators.in_cluster: the in-cluster workers need the cluster of a validation run "
                        "(tidegate validate); tidegate load generates locally")
    check_capacity(shape, load.generators.workers if in_cluster else load.workers)
    out = Path(out_dir).resolve()  # the generator runs with its own working directory
    run_dir = out / "locust"
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.iterdir():
        if old.is_file() and (old.name.startswith(_RUNNER_FILES) or old.suffix == ".log"):
            old.unlink()
    seed = int(load.seed) if load.seed is not None else random.SystemRandom().randrange(2**31)
    requests_cfg = request_config(load, served)
    features = server_features(url, host_header, served, verify) if load.stream else ServerFeatures()
    stop_timeout = float(load.request_timeout_s)
    began = time.time()
    deadline = began + STARTUP_GRACE_S + (WORKER_CONNECT_TIMEOUT_S if load.workers else 0) \
        + shape.duration_s + stop_timeout + STOP_GRACE_S
    cfg = {
        "version": 1, "base_url": url, "host": host_header, "path": CHAT_PATH,
        "body": chat_request(served, load, stream_options=features.stream_options), "stream": bool(load.stream),
        "verify_tls": verify, "server_version": features.version,
        "request_timeout_s": float(load.request_timeout_s),
        "connect_timeout_s": min(CONNECT_TIMEOUT_S, float(load.request_timeout_s)),
        "failure_pause_s": FAILURE_PAUSE_S, "stop_timeout_s": stop_timeout,
        "steps": shape.table(), "out_dir": str(run_dir.resolve()), "workers": int(load.workers),
        "master_port": _free_loopback_port() if load.workers else 0,
        "worker_connect_timeout_s": WORKER_CONNECT_TIMEOUT_S,
        "deadline_epoch": deadline, "max_records": MAX_RECORDS_PER_PROCESS,
        "arrival": load.arrival if shape.open_loop else "closed", "cv": float(load.cv), "seed": seed,
        "max_in_flight": int(load.max_in_flight), "requests": requests_cfg,
        "rate_steps": shape.rate_table() if shape.open_loop else None,
    }
    config = run_dir / "locust-config.json"
    config.write_text(json.dumps(cfg, indent=1))
    if in_cluster:
        assert cluster is not None and isinstance(spec, RolloutSpec)
        return _run_in_cluster(spec, cluster, cfg, shape, out, run_dir, began=began, seed=seed,
                               kill_at=deadline + KILL_GRACE_S, stop_event=stop_event)
    procs = _start(run_dir, config, int(load.workers))
    try:
        with Progress(run_dir, shape.duration_s, time.time(), shape=shape, extra=progress_extra) as progress:
            stopped, killed = _wait(procs, deadline + KILL_GRACE_S, stop_event, progress=progress)
    finally:
        _kill(procs)
    if killed:
        late = [p for p in procs if p.popen.returncode is not None and p.popen.returncode < 0] or procs[:1]
        raise StageFailed(f"load generator process {late[0].name} did not finish in time and was killed "
                          f"after {time.time() - began:.0f}s (time bound {deadline + KILL_GRACE_S - began:.0f}s); "
                          f"last lines of {late[0].log}:\n{_tail(late[0].log)}")
    for p in procs:
        rc = p.popen.returncode
        if rc != 0:
            raise StageFailed(f"load generator process {p.name} exited with code {rc}; last lines of "
                              f"{p.log}:\n{_tail(p.log)}")
    records, samples, info = read_runner_output(run_dir)
    if not info.get("started_at"):
        raise StageFailed(f"load generator wrote no runner.json in {run_dir}; last lines of "
                          f"{procs[0].log}:\n{_tail(procs[0].log)}")
    processes = [info] + info.get("worker_info", []) if not load.workers else info.get("worker_info", [])

    def total(key: str) -> float | None:
        values = [float(d[key]) for d in processes if d.get(key) is not None]
        return sum(values) if values else None

    generator = {
        "arrival": cfg["arrival"], "seed": seed,
        "processes": len(procs), "workers": int(load.workers),
        "workers_connected": info.get("workers_connected"),
        # CPU seconds the generator processes spent while the shape ran (start-up excluded)
        "cpu_seconds": round(sum(float(d.get("cpu_seconds") or 0)
                                 for d in [info] + info.get("worker_info", [])), 3),
        "cpu_max_percent": info.get("cpu_max_percent"),
        "cpu_mean_percent": info.get("cpu_mean_percent"),
        "worker_cpu_max_percent": [w.get("cpu_max_percent") for w in info.get("worker_info", [])],
        # the generator's own share of the latencies it reports (see _locust_runner.LoopLag)
        "loop_lag_p99_ms": _max_of([info] + info.get("worker_info", []), "loop_lag_p99_ms"),
        "loop_lag_max_ms": _max_of([info] + info.get("worker_info", []), "loop_lag_max_ms"),
        "records_dropped": int(info.get("records_dropped") or 0)
        + sum(int(w.get("records_dropped") or 0) for w in info.get("worker_info", [])),
        "stopped_early": bool(stopped or info.get("stopped_early")),
        "deadline_hit": bool(info.get("deadline_hit")),
        "seconds_total": round(time.time() - began, 3),
    }
    if shape.open_loop:
        # summed over the processes that dispatched (in-flight max: the sum of each one's peak,
        # an upper bound of the total when several did)
        generator.update({
            "scheduled": int(total("scheduled") or 0), "sent": int(total("sent") or 0),
            "nominal_requests": round(shape.nominal_requests(), 3),
            "in_flight_max": int(total("in_flight_max") or 0),
            "in_flight_cap_hits": int(total("in_flight_cap_hits") or 0),
            "max_in_flight": int(load.max_in_flight),
        })
    result = compute_result(records, samples, shape, float(info["started_at"]),
                            float(info.get("shape_ended_at") or info.get("stopped_at") or info["started_at"]),
                            generator=generator, out_dir=out, slo=load.slo)
    result.requests.to_csv(out / "requests.csv", index=False)
    result.per_second.to_csv(out / "per_second.csv", index=False)
    return result


def _run_in_cluster(spec: RolloutSpec, cluster: InClusterTarget, cfg: dict[str, Any], shape: LoadShape, out: Path,
                    run_dir: Path, *, began: float, seed: int, kill_at: float,
                    stop_event: threading.Event | None) -> LoadResult:
    load = spec.load
    extra = run_workers(spec, cluster, cfg, run_dir, kill_at=kill_at, stop_event=stop_event)
    states = extra.pop("workers_state")
    pools = {w.index: w.pool for w in states}
    records, samples, info = read_runner_output(run_dir)
    for rec in records:
        rec["client_pool"] = pools.get(int(rec.get("worker") or 0), "")
    processes = info.get("worker_info", [])

    def total(key: str) -> float | None:
        values = [float(d[key]) for d in processes if d.get(key) is not None]
        return sum(values) if values else None

    generator = {
        "arrival": cfg["arrival"], "seed": seed, "processes": len(states), "in_cluster": True,
        "workers_connected": len(states),
        "cpu_seconds": round(sum(float(d.get("cpu_seconds") or 0) for d in processes), 3),
        "cpu_max_percent": _max_of(processes, "cpu_max_percent"),
        "worker_cpu_max_percent": [w.get("cpu_max_percent") for w in processes],
        "loop_lag_p99_ms": _max_of(processes, "loop_lag_p99_ms"),
        "loop_lag_max_ms": _max_of(processes, "loop_lag_max_ms"),
        "records_dropped": sum(int(w.get("records_dropped") or 0) for w in processes),
        "stopped_early": bool(info.get("stopped_early") or (stop_event is not None and stop_event.is_set())),
        "deadline_hit": any(bool(w.get("deadline_hit")) for w in processes),
        "seconds_total": round(time.time() - began, 3),
        "scheduled": int(total("scheduled") or 0), "sent": int(total("sent") or 0),
        "nominal_requests": round(shape.nominal_requests(), 3),
        "in_flight_max": int(total("in_flight_max") or 0),
        "in_flight_cap_hits": int(total("in_flight_cap_hits") or 0),
        "max_in_flight": int(load.max_in_flight),
        **extra,
    }
    ended = info.get("shape_ended_at") or (float(info["started_at"]) + shape.duration_s)
    result = compute_result(records, samples, shape, float(info["started_at"]), float(ended),
                            generator=generator, out_dir=out, slo=load.slo)
    result.summary["generator"]["workers"] = worker_rows(states, result.requests)
    result.requests.to_csv(out / "requests.csv", index=False)
    result.per_second.to_csv(out / "per_second.csv", index=False)
    return result


__all__ = [
    "CONTRACT_KEYS", "DEFINITIONS", "LoadResult", "constant_rate_spec", "generator_figures", "request_config", "LoadShape", "MAX_USERS_PER_PROCESS", "Phase",
    "PER_SECOND_COLUMNS", "REQUEST_COLUMNS", "Step", "chat_request", "check_capacity",
    "compute_result", "read_runner_output", "register_shape", "run_load", "by_client_pool", "shape_for", "spike_shape",
]
