"""The spike stage's pure logic: load shapes, the request body, metrics from synthetic runner
records, and the parent's handling of a generator process that crashes or hangs (with stand-in
commands: no Locust, no server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import load as L
from tasks._locust_runner import _error_text, step_at
from tasks.errors import SpecError, StageFailed, StageNotImplemented
from tasks.spec import LoadSpec, load_spec

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def spec(**kw) -> LoadSpec:
    values = {"baseline_users": 2, "spike_users": 10, "spawn_rate": 5, "baseline_s": 3, "spike_s": 6,
              "hold_s": 3, "cooldown_s": 3}
    return LoadSpec(**{**values, **kw})


# -- shapes ---------------------------------------------------------------------------------------
def test_spike_shape_table_and_phases() -> None:
    shape = L.spike_shape(spec())
    assert shape.table() == [[3.0, 2, 5.0, "baseline"], [9.0, 10, 5.0, "spike"], [12.0, 10, 5.0, "hold"],
                             [15.0, 2, 5.0, "cooldown"]]
    assert shape.duration_s == 15.0 and shape.max_users == 10
    assert shape.phases() == [("baseline", 0.0, 3.0), ("spike", 3.0, 9.0), ("hold", 9.0, 12.0),
                              ("cooldown", 12.0, 15.0)]


def test_users_at_boundaries() -> None:
    shape = L.spike_shape(spec())
    assert shape.users_at(-1.0) == (2, 5.0)
    assert shape.users_at(0.0) == (2, 5.0)
    assert shape.users_at(2.999) == (2, 5.0)
    assert shape.users_at(3.0) == (10, 5.0)  # a step covers [previous end, its end)
    assert shape.users_at(11.5) == (10, 5.0)
    assert shape.users_at(12.0) == (2, 5.0)  # cool-down keeps the baseline users
    assert shape.users_at(15.0) is None
    assert shape.phase_at(100.0) == "cooldown" and shape.phase_at(-5) == "baseline"


def test_zero_length_phases_are_left_out() -> None:
    shape = L.spike_shape(spec(baseline_s=0, hold_s=0, cooldown_s=0))
    assert shape.table() == [[6.0, 10, 5.0, "spike"]]


def test_consecutive_steps_of_one_phase_merge() -> None:
    # a tidal table: many steps, phases named by the part of the day
    steps = (L.Step(10, 1, 5, "trough"), L.Step(20, 3, 5, "trough"), L.Step(30, 8, 5, "peak"),
             L.Step(40, 2, 5, "trough"))
    shape = L.LoadShape("tidal", steps)
    assert shape.phases() == [("trough", 0.0, 20.0), ("peak", 20.0, 30.0), ("trough", 30.0, 40.0)]
    assert shape.users_at(15) == (3, 5.0)


@pytest.mark.parametrize("steps, match", [
    ((), "no steps"),
    ((L.Step(5, 1, 1, "a"), L.Step(5, 2, 1, "b")), "t_end_s"),
    ((L.Step(0, 1, 1, "a"),), "t_end_s"),
    ((L.Step(float("inf"), 1, 1, "a"),), "t_end_s"),
    ((L.Step(5, -1, 1, "a"),), "users"),
    ((L.Step(5, 1, 0, "a"),), "spawn_rate"),
    ((L.Step(5, 1, 1, ""),), "phase"),
])
def test_bad_shapes_are_refused(steps, match) -> None:
    with pytest.raises(SpecError, match=match):
        L.LoadShape("x", steps)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 50), min_size=1, max_size=20), st.floats(-5, 600))
def test_runner_lookup_matches_the_shape(lengths, t) -> None:
    ends = np.cumsum(lengths).tolist()
    shape = L.LoadShape("x", tuple(L.Step(e, i, 1.0, f"p{i}") for i, e in enumerate(ends)))
    assert step_at(shape._t_ends, t) == shape.step_index(t)
    for end in ends:  # exactly on a boundary too
        assert step_at(shape._t_ends, end) == shape.step_index(end)


def test_shape_registry() -> None:
    assert L.shape_for(spec()).kind == "spike"
    tidal = LoadSpec(shape="tidal")
    if "tidal" not in L._SHAPES:
        try:
            import tasks.tidal  # noqa: F401
        except ModuleNotFoundError:
            with pytest.raises(StageNotImplemented, match="available: spike"):
                L.shape_for(tidal)
    L.register_shape("flat", lambda load: L.LoadShape("flat", (L.Step(5, load.spike_users, 1, "flat"),)))
    try:
        flat = L._SHAPES["flat"](spec(spike_users=7))
        assert flat.users_at(1) == (7, 1.0)
    finally:
        del L._SHAPES["flat"]


def test_capacity_is_checked_before_the_run() -> None:
    shape = L.LoadShape("big", (L.Step(5, L.MAX_USERS_PER_PROCESS * 2 + 1, 10, "peak"),))
    with pytest.raises(SpecError, match="set load.workers to at least 3"):
        L.check_capacity(shape, 0)
    L.check_capacity(shape, 3)


# -- the request ----------------------------------------------------------------------------------
def test_chat_request_is_the_seeds() -> None:
    load = spec(prompt="hi", max_tokens=32)
    assert L.chat_request("qwen", load) == {
        "model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32,
        "temperature": 0.7, "top_p": 0.9, "seed": 10, "stream": True, "stream_options": {"include_usage": True}}
    assert "stream_options" not in L.chat_request("qwen", spec(stream=False))
    # a server without stream_options (vLLM 0.4.x): usage from the finish chunk or the chunks are counted
    plain = L.chat_request("qwen", load, stream_options=False)
    assert plain["stream"] is True and "stream_options" not in plain


def test_what_the_server_accepts_comes_from_its_version() -> None:
    from tasks.smoke import features_of_version, parse_version

    assert parse_version("0.4.1") == (0, 4, 1) and parse_version("v0.6.3.post1") == (0, 6, 3)
    assert parse_version("unknown") is None
    assert features_of_version("0.4.1").stream_options is False
    assert features_of_version("0.4.3").stream_options is False  # stream_options came with 0.5.0
    assert features_of_version("0.6.3").stream_options is True
    assert features_of_version("dev") is None
    # an unreachable target: the default (send it), the run itself then reports the failure
    assert L.server_features("http://127.0.0.1:9", "x", "qwen", True).stream_options is True


def test_error_text() -> None:
    assert _error_text(503, b'{"error": "service has no ready backend", "host": "x"}') == \
        "HTTP 503: service has no ready backend"
    assert _error_text(500, b'{"object": "error", "message": "boom", "type": "InternalServerError"}') == \
        "HTTP 500: boom"
    assert _error_text(502, b"<html>bad\n gateway</html>") == "HTTP 502: <html>bad gateway</html>"
    assert _error_text(504, b"") == "HTTP 504"


# -- metrics from synthetic records ---------------------------------------------------------------
def rec(start: float, *, ttft=None, gaps=(), tokens=None, status=200, error="", cancelled=False, users=None,
        worker=0, source="usage") -> dict:
    chunks = (1 + len(gaps)) if ttft is not None else 0
    e2e = (ttft or 0) + sum(gaps) + 5.0
    return {"start": T0 + start, "end": T0 + start + e2e / 1000, "e2e_ms": e2e, "status": status,
            "error": error, "ttft_ms": ttft, "itl_ms": list(gaps), "chunks": chunks,
            "output_tokens": chunks if tokens is None else tokens, "tokens_source": source,
            "done": not error, "cancelled": cancelled, "users": users, "worker": worker}


SHAPE = L.LoadShape("spike", (L.Step(2, 1, 10, "baseline"), L.Step(4, 4, 10, "spike")))
RECORDS = [
    rec(0.1, ttft=50.0, gaps=[10.0, 20.0, 30.0], users=1),                 # ok, baseline
    rec(2.5, ttft=100.0, gaps=[40.0], users=4),                            # ok, spike
    rec(2.6, status=503, error="HTTP 503: busy", users=4),                 # failure
    rec(2.7, ttft=70.0, gaps=[500.0], error="truncated stream: ended without [DONE]", users=4),
    rec(3.0, ttft=60.0, gaps=[15.0], cancelled=True, error="cancelled: ...", users=4),
]
SAMPLES = [[T0 + 0.0, 1], [T0 + 2.2, 4]]


def result(records=RECORDS, samples=SAMPLES) -> L.LoadResult:
    return L.compute_result(records, samples, SHAPE, T0, T0 + 4.0, generator={"processes": 1})


def test_summary_has_the_report_contract() -> None:
    s = result().summary
    assert set(L.CONTRACT_KEYS) <= set(s)
    assert list(s)[: len(L.CONTRACT_KEYS)] == list(L.CONTRACT_KEYS)
    assert s["requests"] == 4 and s["failures"] == 2 and s["error_rate"] == 0.5 and s["cancelled"] == 1
    assert s["rps"] == 1.0                                         # 4 finished / 4 s
    assert s["ttft_p50_ms"] == 75.0                                # ok only: 50, 100
    assert s["ttft_p95_ms"] == pytest.approx(np.percentile([50, 100], 95))
    assert s["itl_p95_ms"] == pytest.approx(np.percentile([10, 20, 30, 40], 95), abs=1e-3)
    assert s["itl_p50_ms"] == 25.0                                 # the failed stream's 500 ms gap is not in
    assert s["e2e_p95_ms"] == pytest.approx(np.percentile([115.0, 145.0], 95))
    assert s["output_tokens"] == 6 and s["output_tokens_per_s"] == 1.5
    assert s["errors"] == {"HTTP 503: busy": 1, "truncated stream: ended without [DONE]": 1}
    assert s["users_max"] == 4 and s["generator"]["processes"] == 1 and s["generator"]["behind"] == []
    json.dumps(s)  # report.json-ready


def test_tpot_is_decode_time_per_token_after_the_first() -> None:
    req = result().requests.set_index("id")
    # (e2e - ttft) / (tokens - 1): request 0 has e2e 50+60+5, 4 tokens
    assert req.loc[0, "tpot_ms"] == pytest.approx((115.0 - 50.0) / 3)
    assert np.isnan(req.loc[2, "tpot_ms"])                         # failed: no TPOT
    assert req.loc[0, "itl_mean_ms"] == 20.0 and req.loc[0, "itl_max_ms"] == 30.0
    assert result().summary["tpot_p50_ms"] == pytest.approx(np.percentile([65 / 3, 45.0], 50), abs=1e-3)


def test_requests_frame() -> None:
    req = result().requests
    assert list(req.columns) == list(L.REQUEST_COLUMNS)
    assert req["phase"].tolist() == ["baseline", "spike", "spike", "spike", "spike"]
    assert req["ok"].tolist() == [True, True, False, False, False]
    assert req["start"].dt.tz is not None
    assert req.loc[0, "start"].timestamp() == pytest.approx(T0 + 0.1, abs=1e-6)


def test_users_come_from_the_record_else_from_samples() -> None:
    records = [dict(r, users=None) for r in RECORDS]             # as written by distributed workers
    assert result(records).requests["users"].tolist() == [1, 4, 4, 4, 4]
    records[0]["users"] = 7
    assert result(records).requests["users"].tolist()[0] == 7
    early = [rec(-0.5, ttft=5.0)]                                  # before the first sample
    assert result(early).requests["users"].tolist() == [0]


def test_itl_frame_has_every_gap_with_its_arrival() -> None:
    itl = result().itl
    assert list(itl.columns) == ["request", "t_s", "itl_ms"]
    assert itl[itl["request"] == 0]["itl_ms"].tolist() == [10.0, 20.0, 30.0]
    # first token at 0.1 + 0.05 s, then +10, +20, +30 ms
    assert itl[itl["request"] == 0]["t_s"].tolist() == pytest.approx([0.16, 0.18, 0.21])
    assert len(itl) == 6                                           # failed and cancelled gaps are kept here


def test_per_second() -> None:
    ps = result().per_second
    assert list(ps.columns) == list(L.PER_SECOND_COLUMNS)
    assert ps["t_s"].tolist() == [0, 1, 2, 3]
    assert ps["phase"].tolist() == ["baseline", "baseline", "spike", "spike"]
    assert ps["users"].tolist() == [1, 1, 4, 4]
    assert ps["started"].tolist() == [1, 0, 3, 1]
    assert ps["completed"].tolist() == [1, 0, 2, 1]                # the truncated stream ends at 3.275 s
    assert ps["output_tokens_per_s"].tolist() == [4.0, 0.0, 2.0, 0.0]
    assert ps.loc[2, "ttft_p50_ms"] == 100.0 and np.isnan(ps.loc[1, "ttft_p50_ms"])
    assert ps["failures"].sum() == 2


def test_by_phase_and_phases() -> None:
    res = result()
    by = res.summary["by_phase"]
    assert list(by) == ["baseline", "spike"]
    assert by["baseline"]["requests"] == 1 and by["baseline"]["failures"] == 0
    assert by["spike"]["requests"] == 3 and by["spike"]["failures"] == 2
    assert by["spike"]["rps"] == 1.5 and by["spike"]["users_max"] == 4
    assert [(p.name, p.start.timestamp(), p.end.timestamp()) for p in res.phases] == \
        [("baseline", T0, T0 + 2), ("spike", T0 + 2, T0 + 4)]
    assert set(res.definitions) >= {"ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "output_tokens_per_s",
                                    "error_rate"}


def test_no_requests_is_no_data_not_zero() -> None:
    s = result(records=[]).summary
    assert s["requests"] == 0 and s["error_rate"] is None and s["ttft_p95_ms"] is None
    assert s["output_tokens_per_s"] is None and s["rps"] == 0.0


def test_all_failed_is_error_rate_one() -> None:
    records = [rec(0.1 * i, status=0, error="connection error: refused") for i in range(10)]
    s = result(records).summary
    assert s["error_rate"] == 1.0 and s["ttft_p50_ms"] is None and s["itl_p95_ms"] is None


def test_not_streamed_counts_tokens_when_the_request_ends() -> None:
    records = [dict(rec(0.2, tokens=16), chunks=1, ttft_ms=None, done=True)]
    res = result(records)
    assert res.summary["output_tokens"] == 16 and res.summary["ttft_p50_ms"] is None
    assert res.per_second["output_tokens_per_s"].tolist()[0] == 16.0


def test_torn_lines_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "records-local.jsonl").write_text(json.dumps(RECORDS[0]) + "\n" + '{"start": 1')
    (tmp_path / "users.jsonl").write_text("[1, 2]\n[2,")
    (tmp_path / "runner.json").write_text(json.dumps({"started_at": T0}))
    records, samples, info = L.read_runner_output(tmp_path)
    assert len(records) == 1 and samples == [[1, 2]] and info["torn_lines"] == 1


# -- the process boundary -------------------------------------------------------------------------
def test_importing_the_stage_does_not_import_locust() -> None:
    code = ("import sys, tasks.load, tasks._locust_runner; "
            "bad = [m for m in ('locust', 'gevent', 'geventhttpclient') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def fake_runner(monkeypatch, script: str) -> None:
    monkeypatch.setattr(L, "_runner_command", lambda config, role, index: [sys.executable, "-c", script])


def test_a_crashing_generator_raises_with_its_stderr(monkeypatch, tmp_path: Path) -> None:
    fake_runner(monkeypatch, "import sys; print('warming up'); "
                             "sys.stderr.write('Traceback ...\\nImportError: no module named gevent\\n'); sys.exit(3)")
    with pytest.raises(StageFailed, match=r"exited with code 3(.|\n)*ImportError: no module named gevent"):
        L.run_load(spec(), tmp_path, base_url="http://127.0.0.1:9")


def test_a_generator_that_writes_nothing_is_a_failure(monkeypatch, tmp_path: Path) -> None:
    fake_runner(monkeypatch, "pass")
    with pytest.raises(StageFailed, match="wrote no runner.json"):
        L.run_load(spec(), tmp_path, base_url="http://127.0.0.1:9")


def test_a_hanging_generator_is_killed_at_its_time_bound(monkeypatch, tmp_path: Path) -> None:
    import time

    fake_runner(monkeypatch, "import time; time.sleep(600)")
    monkeypatch.setattr(L, "STARTUP_GRACE_S", 0.0)
    monkeypatch.setattr(L, "KILL_GRACE_S", 0.5)
    monkeypatch.setattr(L, "STOP_GRACE_S", 0.0)
    load = spec(baseline_s=0, spike_s=1, hold_s=0, cooldown_s=0, request_timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(StageFailed, match="did not finish in time and was killed"):
        L.run_load(load, tmp_path, base_url="http://127.0.0.1:9")
    assert time.monotonic() - began < 15


def test_bad_targets(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="base_url is required"):
        L.run_load(spec(), tmp_path)
    with pytest.raises(SpecError, match="http"):
        L.run_load(spec(), tmp_path, base_url="ftp://x")
    with pytest.raises(SpecError, match="RolloutSpec or LoadSpec"):
        L.run_load({"load": {}}, tmp_path)  # type: ignore[arg-type]


def test_rollout_spec_target(monkeypatch, tmp_path: Path) -> None:
    seen = {}

    def capture(config, role, index):
        seen.update(json.loads(Path(config).read_text()))
        return [sys.executable, "-c", "raise SystemExit(5)"]

    monkeypatch.setattr(L, "_runner_command", capture)
    rollout = load_spec(Path(__file__).parents[2] / "examples" / "qwen-chat.local.yaml")
    rollout = rollout.model_copy(update={"load": spec()})
    with pytest.raises(StageFailed):
        L.run_load(rollout, tmp_path)
    assert seen["base_url"] == "http://127.0.0.1:18000" and seen["host"] == "qwen-chat-default.example.com"
    assert seen["body"]["model"] == "qwen" and seen["path"] == "/v1/chat/completions"
    assert seen["steps"] == L.spike_shape(rollout.load).table() and seen["workers"] == 0


def test_a_server_without_version_is_probed_once() -> None:
    import httpx

    from tasks.smoke import detect_server

    seen: list[str] = []

    def strict(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/version":
            return httpx.Response(404, json={"detail": "Not Found"})
        body = json.loads(request.content)
        ok = "stream_options" not in body
        return httpx.Response(200 if ok else 400, json={"object": "error", "type": "BadRequestError"})

    with httpx.Client(base_url="http://x", transport=httpx.MockTransport(strict)) as c:
        found = detect_server(c, "qwen")
    assert found.version is None and found.stream_options is False
    assert seen == ["/version", "/v1/chat/completions"]
    with httpx.Client(base_url="http://x", transport=httpx.MockTransport(
            lambda r: httpx.Response(200, json={"version": "0.6.3"}))) as c:
        assert detect_server(c, "qwen").stream_options is True


def test_a_probe_that_a_server_ignores_is_not_taken_for_stream_options() -> None:
    """vLLM 0.4.1 drops unknown fields: its 200 to the probe has usage on the finish chunk only,
    which says nothing about stream_options; an honoured probe ends with a usage-only chunk."""
    import httpx

    from tasks.smoke import detect_server

    finish = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    usage_only = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    def server(*events: dict) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/version":
                return httpx.Response(404, json={"detail": "Not Found"})
            sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, content=sse.encode(), headers={"Content-Type": "text/event-stream"})
        return httpx.MockTransport(handle)

    with httpx.Client(base_url="http://x", transport=server(finish)) as c:
        assert detect_server(c, "qwen").stream_options is False
    with httpx.Client(base_url="http://x", transport=server({**finish, "usage": None}, usage_only)) as c:
        assert detect_server(c, "qwen").stream_options is True
    with httpx.Client(base_url="http://x", transport=httpx.MockTransport(
            lambda r: httpx.Response(503, json={"detail": "loading"}))) as c:
        assert detect_server(c, "qwen").stream_options is True  # unknown: the default, the checks will say
