"""The spike stage's generator for real: Locust subprocesses against emulated vLLM replicas
behind the test bed's gateway, both served in this process on free loopback ports (no
Kubernetes needed). The replicas' latency model is fixed (TTFT 40 ms, ITL 10 ms at any load),
so measured figures can be checked against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp import web

from tasks import load as L
from tasks.spec import LoadSpec
from testbed.config import EmulatorModel
from testbed.emulator import ReplicaPool
from testbed.gateway import Gateway

pytestmark = pytest.mark.integration

HOST = "qwen-chat-default.example.com"
TTFT_MS, ITL_MS = 40.0, 10.0


class ServedBed:
    """Two emulated replicas and the gateway on a private asyncio loop in a thread."""

    def __init__(self, model: EmulatorModel | None = None, replicas: int = 2) -> None:
        self.model = model or EmulatorModel(load_delay_s=0, ttft_base_ms=TTFT_MS, ttft_per_running_ms=0,
                                            itl_base_ms=ITL_MS, itl_per_running_ms=0, max_num_seqs=256,
                                            prefill_tokens_per_s=1e9, itl_per_1k_context_ms=0, gpu_memory_gib=1024)
        self.replicas = replicas
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="served-bed", daemon=True)
        self.pool: ReplicaPool
        self.gateway: Gateway

    def call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> None:
        self.thread.start()

        async def up() -> None:
            self.pool = ReplicaPool(self.model, base_port=0, seed=7)
            for i in range(self.replicas):
                await self.pool.add(f"default/qwen-{i}", served_model_name="qwen", model_root="/mnt/models/qwen")
            self.gateway = Gateway()
            await self.gateway.start()
            self.gateway.set_routes({HOST: [r.url for r in self.pool.replicas()]})

        self.call(up())

    def stop(self) -> None:
        async def down() -> None:
            await self.gateway.close()
            await self.pool.close()

        with contextlib.suppress(Exception):
            self.call(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return self.gateway.url

    @contextlib.contextmanager
    def faults(self, **kw: Any) -> Iterator[None]:
        keys = [r.key for r in self.pool.replicas()]
        try:
            for key, fault in zip(keys, kw.pop("per_replica")):
                self.pool.set_fault(key, **fault)
            yield
        finally:
            for key in keys:
                self.pool.set_fault(key)


@pytest.fixture(scope="module")
def bed() -> Iterator[ServedBed]:
    served = ServedBed()
    served.start()
    yield served
    served.stop()


def short(**kw: Any) -> LoadSpec:
    values = {"baseline_users": 0, "spike_users": 4, "spawn_rate": 50, "baseline_s": 0, "spike_s": 2,
              "hold_s": 0, "cooldown_s": 0, "max_tokens": 16, "request_timeout_s": 10}
    return LoadSpec(**{**values, **kw})


def test_spike_shape_end_to_end(bed: ServedBed, tmp_path: Path) -> None:
    load = LoadSpec(baseline_users=2, spike_users=12, spawn_rate=20, baseline_s=3, spike_s=6, hold_s=3,
                    cooldown_s=3, max_tokens=16, request_timeout_s=10)
    began = time.monotonic()
    res = L.run_load(load, tmp_path, base_url=bed.url, host=HOST)
    took = time.monotonic() - began
    assert 15 <= took < 15 + 12, took

    s = res.summary
    assert set(L.CONTRACT_KEYS) <= set(s)
    assert s["failures"] == 0 and s["error_rate"] == 0.0 and s["cancelled"] == 0
    assert s["requests"] > 100 and s["rps"] > 5
    # the replicas' latency model, seen through the gateway and the generator (loose: the
    # server shares this process and the box with other tests)
    assert TTFT_MS <= s["ttft_p50_ms"] < TTFT_MS * 2, s["ttft_p50_ms"]
    assert ITL_MS * 0.8 <= s["itl_p50_ms"] < ITL_MS * 1.3, s["itl_p50_ms"]
    assert s["itl_p95_ms"] < ITL_MS * 5
    assert s["tpot_p50_ms"] == pytest.approx(ITL_MS, rel=0.3)
    assert s["output_tokens"] == 16 * s["requests"] and s["tokens_source"] == {"usage": s["requests"]}
    assert s["output_tokens_per_s"] == pytest.approx(s["output_tokens"] / s["duration_s"], rel=1e-3)
    assert s["duration_s"] == pytest.approx(15, abs=1.5)
    assert s["users_max"] == 12

    by = s["by_phase"]
    assert list(by) == ["baseline", "spike", "hold", "cooldown"]
    assert by["baseline"]["users_max"] <= 2 and by["hold"]["users_max"] == 12
    assert by["hold"]["rps"] > 3 * by["baseline"]["rps"]
    assert all(by[p]["requests"] > 0 for p in by)

    req = res.requests
    assert list(req.columns) == list(L.REQUEST_COLUMNS)
    assert req["ok"].all() and (req["status"] == 200).all() and req["done"].all()
    assert (req["output_tokens"] == 16).all() and (req["chunks"] == 16).all() and (req["itl_count"] == 15).all()
    assert req[req["phase"] == "baseline"]["users"].max() <= 2
    assert req[req["phase"] == "hold"]["users"].min() == 12
    assert len(res.itl) == 15 * len(req)

    ps = res.per_second
    assert list(ps.columns) == list(L.PER_SECOND_COLUMNS)
    assert ps["users"].max() == 12 and ps["completed"].sum() == len(req)
    assert ps["output_tokens_per_s"].sum() == s["output_tokens"]
    assert ps.loc[ps["phase"] == "hold", "output_tokens_per_s"].mean() > \
        3 * ps.loc[ps["phase"] == "baseline", "output_tokens_per_s"].mean()

    assert [p.name for p in res.phases] == ["baseline", "spike", "hold", "cooldown"]
    assert (res.phases[1].start - res.phases[0].start).total_seconds() == pytest.approx(3.0)
    assert res.phases[0].start.tzinfo is not None
    # the CSVs read back with the documented columns
    assert list(pd.read_csv(tmp_path / "requests.csv").columns) == list(L.REQUEST_COLUMNS)
    assert len(pd.read_csv(tmp_path / "per_second.csv")) == len(ps)
    assert res.describe().startswith(f"{s['requests']} requests (0 failed)")


def test_distributed_workers_not_streamed(bed: ServedBed, tmp_path: Path) -> None:
    res = L.run_load(short(workers=2, spike_users=6, spike_s=3, stream=False), tmp_path, base_url=bed.url,
                     host=HOST)
    s = res.summary
    assert s["failures"] == 0 and s["requests"] > 20
    assert s["generator"]["processes"] == 3 and s["generator"]["workers_connected"] == 2
    assert set(res.requests["worker"]) == {1, 2}
    assert res.requests["users"].max() == 6                       # from the master's samples
    assert res.requests["ttft_ms"].isna().all() and s["ttft_p50_ms"] is None
    assert (res.requests["output_tokens"] == 16).all() and s["e2e_p95_ms"] > 150


def test_injected_faults_are_failures(bed: ServedBed, tmp_path: Path) -> None:
    with bed.faults(per_replica=[{"close_stream_after_tokens": 3}, {"error_rate": 0.5, "status": 503}]):
        res = L.run_load(short(), tmp_path, base_url=bed.url, host=HOST)
    s, req = res.summary, res.requests
    truncated = req[req["error"].str.startswith("truncated stream")]
    http503 = req[req["error"] == "HTTP 503: injected fault: HTTP 503"]
    assert len(truncated) > 0 and len(http503) > 0
    assert s["failures"] == len(truncated) + len(http503) == (~req["ok"]).sum()
    assert (truncated["status"] == 200).all() and (~truncated["done"]).all() and (truncated["chunks"] == 3).all()
    assert s["ttft_p50_ms"] is not None  # the ok requests are still measured
    assert 0 < s["error_rate"] < 1


def test_unreachable_target_is_all_errors_and_ends_on_time(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    began = time.monotonic()
    res = L.run_load(short(spike_s=3), tmp_path, base_url=f"http://127.0.0.1:{port}", host=HOST)
    assert time.monotonic() - began < 3 + 10
    s = res.summary
    assert s["error_rate"] == 1.0 and s["requests"] > 0 and s["ttft_p95_ms"] is None
    assert all(e.startswith("connection error") for e in s["errors"])
    # failed users pause before retrying: no spinning
    assert s["requests"] < 4 * 3 / L.FAILURE_PAUSE_S * 1.5


def test_wrong_host_header_is_an_http_error(bed: ServedBed, tmp_path: Path) -> None:
    res = L.run_load(short(spike_users=1, spike_s=1), tmp_path, base_url=bed.url, host="nobody.example.com")
    assert res.summary["error_rate"] == 1.0
    assert list(res.summary["errors"]) == ["HTTP 404: no service for host 'nobody.example.com'"]


def test_request_timeout(bed: ServedBed, tmp_path: Path) -> None:
    bed.model.ttft_base_ms = 3000
    try:
        began = time.monotonic()
        res = L.run_load(short(spike_users=2, spike_s=1, request_timeout_s=0.5), tmp_path, base_url=bed.url,
                         host=HOST)
        took = time.monotonic() - began
    finally:
        bed.model.ttft_base_ms = TTFT_MS
    assert res.summary["error_rate"] == 1.0 and list(res.summary["errors"]) == ["timeout after 0.5s"]
    assert took < 1 + 0.5 + 10


async def _odd_stream(request: web.Request) -> web.StreamResponse:
    """SSE streams that differ from vLLM's in one way each, chosen by the Host header."""
    host = request.headers.get("Host", "").split(":")[0]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    def event(doc: dict) -> bytes:
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    def token(text: str) -> bytes:
        return event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})

    await resp.write(event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}))
    for word in ("one ", "two ", "three"):
        await asyncio.sleep(0.005)
        await resp.write(token(word))
    if host == "error-event.test":
        await resp.write(event({"error": {"message": "out of KV cache", "code": 500}}))
    elif host == "malformed.test":
        await resp.write(b"data: {not json\n\n")
    elif host == "no-content.test":
        pass
    # no usage chunk on any host: output tokens fall back to the counted deltas
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _empty_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def odd_server(bed: ServedBed) -> Iterator[str]:
    async def up() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _odd_stream)
        app.router.add_post("/empty/v1/chat/completions", _empty_stream)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = bed.call(up())
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    bed.call(runner.cleanup())


@pytest.mark.parametrize("host, error", [
    ("plain.test", ""),
    ("error-event.test", "error event: out of KV cache"),
    ("malformed.test", "malformed SSE event: b'{not json'"),
])
def test_stream_variants(odd_server: str, tmp_path: Path, host: str, error: str) -> None:
    res = L.run_load(short(spike_users=1, spike_s=1), tmp_path, base_url=odd_server, host=host)
    req = res.requests
    assert len(req) > 3 and set(req["error"]) == {error}
    assert (req["chunks"] == 3).all() and (req["tokens_source"] == "chunks").all()
    assert (req["output_tokens"] == 3).all() and (req["itl_count"] == 2).all()


def test_a_stream_without_content_is_a_failure(odd_server: str, tmp_path: Path) -> None:
    res = L.run_load(short(spike_users=1, spike_s=1), tmp_path, base_url=odd_server + "/empty", host="x.test")
    assert res.summary["error_rate"] == 1.0
    assert list(res.summary["errors"]) == ["empty response: no content"]


def test_stop_event_ends_the_run_early(bed: ServedBed, tmp_path: Path) -> None:
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)
    timer.start()
    began = time.monotonic()
    try:
        res = L.run_load(short(spike_s=120), tmp_path, base_url=bed.url, host=HOST, stop_event=stop)
    finally:
        timer.cancel()
    assert time.monotonic() - began < 12
    s = res.summary
    assert s["generator"]["stopped_early"] and s["requests"] > 0 and s["failures"] == 0
    assert s["duration_s"] < 10


# -- open-loop arrivals (issue 18) -----------------------------------------------------------------
# One replica serving one sequence at a time, 100 ms to the first token + 5 x 40 ms: a request
# takes 300 ms of service, three times the 100 ms between arrivals at 10 requests/s.
SLOW_RATE_RPS = 10.0
SLOW_SERVICE_MS = 100.0 + 5 * 40.0


@pytest.fixture(scope="module")
def slow_bed() -> Iterator[ServedBed]:
    served = ServedBed(EmulatorModel(load_delay_s=0, ttft_base_ms=100, ttft_per_running_ms=0, itl_base_ms=40,
                                     itl_per_running_ms=0, max_num_seqs=1, prefill_tokens_per_s=1e9,
                                     itl_per_1k_context_ms=0, gpu_memory_gib=1024), replicas=1)
    served.start()
    yield served
    served.stop()


def slow_load(**kw: Any) -> LoadSpec:
    values = {"arrival": "poisson", "baseline_rps": SLOW_RATE_RPS, "spike_rps": SLOW_RATE_RPS, "baseline_s": 0,
              "spike_s": 3, "hold_s": 0, "cooldown_s": 0, "max_tokens": 6, "request_timeout_s": 20, "seed": 18}
    return LoadSpec(**{**values, **kw})


def thirds(series: pd.Series) -> tuple[float, float]:
    n = len(series)
    return float(series.iloc[: n // 3].median()), float(series.iloc[-(n // 3):].median())


def test_open_loop_in_flight_grows_and_e2e_includes_the_queue(slow_bed: ServedBed, tmp_path: Path) -> None:
    began = time.monotonic()
    res = L.run_load(slow_load(), tmp_path, base_url=slow_bed.url, host=HOST)
    assert time.monotonic() - began < 40
    s, g = res.summary, res.summary["generator"]
    req = res.requests.sort_values("intended")
    assert s["failures"] == 0 and s["cancelled"] == 0
    # arrivals did not wait for answers: ~30 sent in 3 s while the server finished ~10 of them
    assert g["arrival"] == "poisson" and g["seed"] == 18
    assert 15 <= g["scheduled"] <= 50 and g["sent"] == g["scheduled"] == s["requests"]
    assert g["achieved_ratio"] == 1.0 and g["in_flight_cap_hits"] == 0
    assert g["nominal_requests"] == pytest.approx(30.0)
    # the requests in flight grow over the run (open loop)
    first, last = thirds(req["users"])
    assert last >= first + 5, (first, last)
    assert g["in_flight_max"] >= 10 and s["users_max"] >= 10
    # e2e counts from the intended send time and includes the server's queue
    first, last = thirds(req["e2e_ms"])
    assert last > 2 * first and last > 3 * SLOW_SERVICE_MS, (first, last)
    assert (req["e2e_ms"] >= SLOW_SERVICE_MS * 0.9).all()
    assert (req["send_delay_ms"] < 200).all() and g["schedule_delay_p50_ms"] < 50
    assert (req["intended"] <= req["start"]).all()
    assert set(req["max_tokens"]) == {6} and (req["input_tokens"] > 0).all()
    assert list(pd.read_csv(tmp_path / "requests.csv").columns) == list(L.REQUEST_COLUMNS)


def test_closed_loop_in_flight_does_not_grow(slow_bed: ServedBed, tmp_path: Path) -> None:
    load = slow_load(arrival="closed", baseline_users=0, spike_users=3, spawn_rate=50)
    res = L.run_load(load, tmp_path, base_url=slow_bed.url, host=HOST)
    s, g = res.summary, res.summary["generator"]
    req = res.requests.sort_values("start")
    assert s["failures"] == 0 and g["arrival"] == "closed" and g["behind"] == []
    # each user waits for its answer: never more than 3 in flight, and the load backs off
    assert s["users_max"] <= 3 and (req["users"] <= 3).all()
    assert s["requests"] <= 3 * (1000 / SLOW_SERVICE_MS) + 3  # 3 s at the server's pace, + the last 3
    first, last = thirds(req["e2e_ms"])
    assert last < 1.6 * first, (first, last)
    assert (req["send_delay_ms"] == 0).all() and (req["intended"] == req["start"]).all()


def test_in_flight_cap_turns_into_schedule_delay(slow_bed: ServedBed, tmp_path: Path) -> None:
    res = L.run_load(slow_load(max_in_flight=3), tmp_path, base_url=slow_bed.url, host=HOST)
    g, req = res.summary["generator"], res.requests.sort_values("intended")
    assert g["in_flight_max"] == 3 and g["in_flight_cap_hits"] > 0
    # a request waiting for a slot is late: its wait is in its latency, and the generator says so
    assert req["send_delay_ms"].iloc[-1] > 500
    assert (req["e2e_ms"] >= req["send_delay_ms"]).all() and (req["ttft_ms"] >= req["send_delay_ms"]).all()
    assert g["schedule_delay_p50_ms"] > 10 and any("schedule delay p50" in b for b in g["behind"])


def test_open_loop_distributed_splits_the_rate(bed: ServedBed, tmp_path: Path) -> None:
    load = LoadSpec(arrival="constant", baseline_rps=20, spike_rps=20, baseline_s=0, spike_s=2, hold_s=0,
                    cooldown_s=0, max_tokens=8, request_timeout_s=10, workers=2, seed=4)
    res = L.run_load(load, tmp_path, base_url=bed.url, host=HOST)
    s, g = res.summary, res.summary["generator"]
    assert s["failures"] == 0 and g["processes"] == 3 and g["behind"] == []
    assert g["scheduled"] == g["sent"] == s["requests"] == 40 and g["achieved_ratio"] == 1.0
    req = res.requests.sort_values("intended")
    assert set(req["worker"]) == {1, 2} and (req["worker"] == 1).sum() == 20
    assert 1 <= s["users_max"] <= g["in_flight_max"]  # the workers' in-flight samples, summed
    # two streams of 10/s interleave into one of 20/s
    gaps = req["intended"].diff().dt.total_seconds().dropna()
    assert gaps.to_numpy() == pytest.approx(0.05, abs=1e-3)


@pytest.mark.parametrize("workers", [0, 2])
def test_open_loop_stop_event_cancels_what_is_in_flight(slow_bed: ServedBed, tmp_path: Path, workers: int) -> None:
    stop = threading.Event()
    timer = threading.Timer(4.0 if workers else 2.0, stop.set)
    timer.start()
    began = time.monotonic()
    try:
        res = L.run_load(slow_load(spike_s=120, workers=workers), tmp_path, base_url=slow_bed.url, host=HOST,
                         stop_event=stop)
    finally:
        timer.cancel()
    assert time.monotonic() - began < 25
    s, g = res.summary, res.summary["generator"]
    assert g["stopped_early"] and s["duration_s"] < 15
    # the server holds a queue when the run stops: those requests are cancelled, not failures
    assert s["cancelled"] > 0 and s["failures"] == 0 and s["requests"] > 0
    assert g["scheduled"] >= g["sent"] == s["requests"] + s["cancelled"]
