"""Open-loop arrivals (issue 18): the arrival generators, the rate shapes (spike and tidal), the
schedule figures the generator reports about itself, and the standalone constant-rate spec. Pure:
no Locust, no server."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import numpy as np
import pytest

from tasks import load as L
from tasks._locust_runner import (
    RateIntegral,
    intended_offsets,
    schedule_seed,
    unit_gaps,
)
from tasks.errors import SpecError
from tasks.shapes import (
    MAX_RPS_PER_PROCESS,
    LoadShape,
    Step,
    check_capacity,
    rate_spike_shape,
    spike_shape,
)
from tasks.spec import LoadSpec, TidalSpec
from tasks.tidal import plan_tidal

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0
N = 10_000


def cv_of(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


# -- arrival generators ---------------------------------------------------------------------------
@pytest.mark.parametrize(("arrival", "cv"), [("poisson", 1.0), ("gamma", 0.5), ("gamma", 2.0), ("gamma", 1.0)])
def test_unit_gaps_have_mean_one_and_the_asked_cv(arrival: str, cv: float) -> None:
    gen = unit_gaps(arrival, cv, random.Random(11))
    gaps = [next(gen) for _ in range(N)]
    assert statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)
    assert cv_of(gaps) == pytest.approx(cv, rel=0.08)
    assert min(gaps) >= 0


def test_constant_gaps_are_exact() -> None:
    gen = unit_gaps("constant", 1.0, random.Random(1))
    assert {next(gen) for _ in range(100)} == {1.0}
    with pytest.raises(ValueError, match="closed"):
        next(unit_gaps("closed", 1.0, random.Random(1)))


@pytest.mark.parametrize(("arrival", "cv"), [("poisson", 1.0), ("gamma", 3.0), ("constant", 1.0)])
def test_offsets_hold_the_rate_over_ten_thousand_draws(arrival: str, cv: float) -> None:
    rate, duration = 200.0, 50.0  # 10^4 intended send times expected
    times = list(intended_offsets([[duration, rate, rate, "spike"]], arrival, cv, random.Random(3)))
    assert times == sorted(times) and 0 <= times[0] and times[-1] < duration
    tol = 0.01 if arrival == "constant" else 0.05
    assert len(times) / duration == pytest.approx(rate, rel=tol)
    gaps = np.diff(times)
    assert float(gaps.mean()) == pytest.approx(1 / rate, rel=tol)
    assert cv_of(list(gaps)) == pytest.approx(0.0 if arrival == "constant" else cv, abs=0.12 * cv)


def test_offsets_are_seeded() -> None:
    table = [[10.0, 50.0, 50.0, "spike"]]
    a = list(intended_offsets(table, "poisson", 1.0, random.Random(schedule_seed(7, 1))))
    b = list(intended_offsets(table, "poisson", 1.0, random.Random(schedule_seed(7, 1))))
    c = list(intended_offsets(table, "poisson", 1.0, random.Random(schedule_seed(7, 2))))
    assert a == b and a != c


def test_a_linear_ramp_sends_a_quarter_in_its_first_half() -> None:
    # rate 0 -> 400/s over 50 s: 10^4 requests, L(t) = 4 t^2, so a quarter before t = 25 s
    times = np.array(list(intended_offsets([[50.0, 0.0, 400.0, "spike"]], "poisson", 1.0, random.Random(5))))
    assert len(times) == pytest.approx(10_000, rel=0.03)
    assert (times < 25).sum() / len(times) == pytest.approx(0.25, abs=0.02)


def test_zero_rate_steps_send_nothing() -> None:
    table = [[5.0, 0.0, 0.0, "baseline"], [10.0, 100.0, 100.0, "spike"], [15.0, 0.0, 0.0, "cooldown"]]
    times = np.array(list(intended_offsets(table, "poisson", 1.0, random.Random(2))))
    assert times.min() >= 5.0 and times.max() < 10.0


def test_workers_share_the_rate_and_constant_streams_interleave() -> None:
    table = [[10.0, 20.0, 20.0, "spike"]]
    one = list(intended_offsets(table, "constant", 1.0, random.Random(0), share=1.0, phase=0.5))
    w1 = list(intended_offsets(table, "constant", 1.0, random.Random(0), share=0.5, phase=0.25))
    w2 = list(intended_offsets(table, "constant", 1.0, random.Random(0), share=0.5, phase=0.75))
    assert len(one) == 200 and len(w1) == len(w2) == 100
    assert sorted(w1 + w2) == pytest.approx(one)
    assert np.diff(sorted(w1 + w2)) == pytest.approx(np.full(199, 0.05))


def test_rate_integral_inverts() -> None:
    table = [[3.0, 2.0, 2.0, "baseline"], [5.0, 2.0, 10.0, "spike"], [9.0, 10.0, 10.0, "spike"]]
    integral = RateIntegral(table, share=1.0)
    assert integral.total == pytest.approx(6 + 12 + 40)
    assert integral.time_at(6.0) == pytest.approx(3.0)
    assert integral.time_at(6 + 4.0) == pytest.approx(4.0)  # 2 x + 2 x^2 = 4 at x = 1
    assert integral.time_at(58.0) is None and integral.time_at(-1) is None
    assert RateIntegral(table, share=0.5).total == pytest.approx(29.0)


# -- rate shapes ----------------------------------------------------------------------------------
def open_spec(**kw) -> LoadSpec:
    values = {"arrival": "poisson", "baseline_rps": 2, "spike_rps": 10, "baseline_s": 3, "spike_s": 6,
              "hold_s": 3, "cooldown_s": 3}
    return LoadSpec(**{**values, **kw})


def test_rate_spike_shape_table_phases_and_integral() -> None:
    shape = spike_shape(open_spec(ramp_s=2))
    assert shape.open_loop and shape.max_users == 0 and shape.max_rate == 10
    assert shape.rate_table() == [[3.0, 2.0, 2.0, "baseline"], [5.0, 2.0, 10.0, "spike"],
                                  [9.0, 10.0, 10.0, "spike"], [12.0, 10.0, 10.0, "hold"],
                                  [15.0, 2.0, 2.0, "cooldown"]]
    # today's phase names: the ramp is the start of the spike
    assert shape.phases() == [("baseline", 0.0, 3.0), ("spike", 3.0, 9.0), ("hold", 9.0, 12.0),
                              ("cooldown", 12.0, 15.0)]
    assert shape.rate_at(4.0) == pytest.approx(6.0) and shape.rate_at(13) == 2.0 and shape.rate_at(15) is None
    assert shape.nominal_requests() == pytest.approx(6 + 12 + 40 + 30 + 6)
    assert shape.nominal_requests(4.0) == pytest.approx(6 + 4)


def test_rate_spike_shape_without_ramp_or_baseline() -> None:
    assert spike_shape(open_spec(baseline_s=0, hold_s=0, cooldown_s=0)).rate_table() == [[6.0, 10.0, 10.0, "spike"]]
    # a ramp longer than the spike is the whole spike
    assert spike_shape(open_spec(ramp_s=60, hold_s=0, cooldown_s=0, baseline_s=0)).rate_table() == \
        [[6.0, 2.0, 10.0, "spike"]]


def test_closed_loop_shapes_are_unchanged() -> None:
    shape = spike_shape(LoadSpec(baseline_users=2, spike_users=10, spawn_rate=5, baseline_s=3, spike_s=6,
                                 hold_s=3, cooldown_s=3, baseline_rps=1, spike_rps=4))
    assert not shape.open_loop and shape.nominal_requests() == 0 and shape.rate_at(1) is None
    assert shape.table() == [[3.0, 2, 5.0, "baseline"], [9.0, 10, 5.0, "spike"], [12.0, 10, 5.0, "hold"],
                             [15.0, 2, 5.0, "cooldown"]]


def test_a_shape_mixing_rates_and_users_is_refused() -> None:
    with pytest.raises(SpecError, match="every step or none has a rate"):
        LoadShape("x", (Step(1, 0, 1, "a", 1.0), Step(2, 3, 1, "b")))


def test_capacity_of_an_open_loop_shape_is_a_rate() -> None:
    shape = rate_spike_shape(open_spec(spike_rps=MAX_RPS_PER_PROCESS * 2.5))
    with pytest.raises(SpecError, match="set load.workers to at least 3"):
        check_capacity(shape, 0)
    check_capacity(shape, 3)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "traffic.csv"
    path.write_text(text)
    return str(path)


def test_tidal_rps_csv_is_replayed_as_a_rate(tmp_path: Path) -> None:
    rows = [1, 3, 4, 8, 10, 6, 1]
    csv = "timestamp,rps\n" + "".join(f"{h:02d}:00,{v}\n" for h, v in enumerate(rows))
    load = LoadSpec(shape="tidal", arrival="poisson", tidal=TidalSpec(csv_path=write(tmp_path, csv),
                                                                        compress_to_minutes=0.5))
    shape = plan_tidal(load).shape
    assert shape.open_loop and shape.max_users == 0
    assert [r[2] for r in shape.rate_table()] == rows  # the real rates, not users by Little's law
    assert [p[0] for p in shape.phases()] == ["baseline", "ramp", "spike", "cooldown"]
    assert shape.nominal_requests() == pytest.approx(sum(rows) * 30.0 / len(rows))


def test_tidal_rps_csv_scaled_to_spike_rps(tmp_path: Path) -> None:
    csv = "timestamp,rps\n" + "".join(f"{h:02d}:00,{v}\n" for h, v in enumerate([1, 3, 5, 1]))
    load = LoadSpec(shape="tidal", arrival="constant", baseline_rps=0.5, spike_rps=40,
                    tidal=TidalSpec(csv_path=write(tmp_path, csv), compress_to_minutes=0.5))
    assert [r[2] for r in plan_tidal(load).shape.rate_table()] == [0.5, 20.25, 40.0, 0.5]


def test_tidal_users_csv_with_an_open_arrival_is_refused(tmp_path: Path) -> None:
    csv = "timestamp,users\n00:00,1\n01:00,5\n02:00,1\n"
    load = LoadSpec(shape="tidal", arrival="poisson", spike_rps=10,
                    tidal=TidalSpec(csv_path=write(tmp_path, csv), compress_to_minutes=0.5))
    with pytest.raises(SpecError, match=r"^load\.arrival: poisson .*users column"):
        plan_tidal(load)


def test_built_in_diurnal_profile_open_and_closed() -> None:
    closed = plan_tidal(LoadSpec(shape="tidal", baseline_users=2, spike_users=24,
                                 tidal=TidalSpec(compress_to_minutes=2))).shape
    assert closed.max_users == 24 and not closed.open_loop
    opened = plan_tidal(LoadSpec(shape="tidal", arrival="gamma", cv=2, baseline_rps=1, spike_rps=30,
                                 tidal=TidalSpec(compress_to_minutes=2))).shape
    assert opened.open_loop and opened.max_rate == 30 and min(r[2] for r in opened.rate_table()) == 1
    assert [p[0] for p in opened.phases()] == [p[0] for p in closed.phases()]
    with pytest.raises(SpecError, match=r"^load\.spike_rps: is required"):
        plan_tidal(LoadSpec(shape="tidal", arrival="poisson", tidal=TidalSpec(compress_to_minutes=2)))


# -- what the generator says about itself ---------------------------------------------------------
def rec(intended: float, delay_ms: float, *, ttft: float = 50.0, error: str = "") -> dict:
    start = T0 + intended + delay_ms / 1000
    e2e = delay_ms + ttft + 20.0
    return {"intended": T0 + intended, "start": start, "send_delay_ms": delay_ms, "end": T0 + intended + e2e / 1000,
            "e2e_ms": e2e, "status": 200 if not error else 503, "error": error, "ttft_ms": delay_ms + ttft,
            "itl_ms": [20.0], "chunks": 2, "output_tokens": 2, "tokens_source": "usage", "done": not error,
            "cancelled": False, "users": 3, "in_flight": 3, "worker": 0, "input_tokens": 12, "max_tokens": 16}


SHAPE = LoadShape("spike", (Step(2, 0, 1, "baseline", 2.0, 2.0), Step(4, 0, 1, "spike", 3.0, 3.0)))


def test_schedule_delay_and_rates_from_hand_made_records() -> None:
    delays = [0.5, 1.0, 2.0, 3.0, 40.0, 0.2, 0.1, 0.4, 0.3, 60.0]
    records = [rec(i * 0.4, d) for i, d in enumerate(delays)]
    gen = {"arrival": "poisson", "seed": 9, "processes": 1, "scheduled": 11, "sent": 10,
           "nominal_requests": 10.0, "in_flight_max": 3, "in_flight_cap_hits": 2, "cpu_max_percent": 12.0}
    res = L.compute_result(records, [], SHAPE, T0, T0 + 4.0, generator=gen)
    g = res.summary["generator"]
    assert g["schedule_delay_p50_ms"] == pytest.approx(np.percentile(delays, 50))
    assert g["schedule_delay_p99_ms"] == pytest.approx(np.percentile(delays, 99), abs=1e-3)
    assert g["requested_rps"] == 2.75 and g["nominal_rps"] == 2.5 and g["achieved_rps"] == 2.5
    assert g["achieved_ratio"] == pytest.approx(10 / 11, abs=1e-4)
    assert g["seed"] == 9 and g["in_flight_cap_hits"] == 2 and g["cpu_percent_max"] == 12.0
    assert len(g["behind"]) == 1 and "of the 2.75 scheduled" in g["behind"][0]
    req = res.requests
    # latency from the intended send time: the send delay is part of TTFT and e2e
    assert list(req["send_delay_ms"]) == delays
    assert list(req["ttft_ms"]) == [d + 50.0 for d in delays]
    assert (req["intended"] <= req["start"]).all() and set(req["input_tokens"]) == {12}
    assert set(req["max_tokens"]) == {16}
    # phases follow the intended send time
    assert list(req["phase"]) == ["baseline"] * 5 + ["spike"] * 5


def test_behind_reasons() -> None:
    slow = [rec(i * 0.4, 25.0) for i in range(10)]
    gen = {"arrival": "constant", "scheduled": 10, "sent": 10, "nominal_requests": 10.0, "cpu_max_percent": 20.0,
           "worker_cpu_max_percent": [91.0], "in_flight_cap_hits": 4}
    behind = L.compute_result(slow, [], SHAPE, T0, T0 + 4.0, generator=gen).summary["generator"]["behind"]
    assert len(behind) == 2
    assert behind[0].startswith("schedule delay p50 25 ms") and "cap was reached 4 times" in behind[0]
    assert behind[1].startswith("generator CPU peaked at 91%")


def test_closed_loop_has_no_schedule_and_is_never_behind_on_it() -> None:
    records = [{k: v for k, v in rec(i * 0.4, 0.0).items() if k not in ("intended", "send_delay_ms")}
               for i in range(10)]
    g = L.compute_result(records, [], SHAPE, T0, T0 + 4.0, generator={"processes": 1}).summary["generator"]
    assert g["arrival"] == "closed" and g["behind"] == [] and g["schedule_delay_p50_ms"] == 0.0
    assert "requested_rps" not in g


def test_requests_csv_columns(tmp_path: Path) -> None:
    res = L.compute_result([rec(0.1, 1.0)], [], SHAPE, T0, T0 + 4.0, generator={"arrival": "poisson"})
    assert list(res.requests.columns) == list(L.REQUEST_COLUMNS)
    assert {"intended", "send_delay_ms", "input_tokens", "max_tokens"} <= set(L.REQUEST_COLUMNS)


# -- the standalone constant-rate run -------------------------------------------------------------
def test_constant_rate_spec() -> None:
    load = L.constant_rate_spec(20, 15, arrival="gamma", max_tokens=16, cv=2, seed=3)
    assert (load.arrival, load.cv, load.seed, load.max_tokens) == ("gamma", 2, 3, 16)
    shape = L.shape_for(load)
    assert shape.rate_table() == [[15.0, 20.0, 20.0, "spike"]] and shape.nominal_requests() == 300
    with pytest.raises(SpecError, match="load.arrival"):
        L.constant_rate_spec(20, 15, arrival="closed")
    with pytest.raises(SpecError, match="load"):
        L.constant_rate_spec(-1, 15)


def test_request_config_falls_back_or_uses_requestgen() -> None:
    cfg = L.request_config(LoadSpec(), "qwen")
    assert cfg["kind"] in ("fixed", "requestgen") and isinstance(cfg["config"], dict)


# -- checked before the run (tasks.stages.check_inputs) -------------------------------------------
def rollout(load: LoadSpec):
    from tasks.spec import load_spec

    return load_spec("examples/qwen-chat.local.yaml").model_copy(update={"load": load})


def test_check_inputs_accepts_open_loop_and_checks_its_rate_and_requests(tmp_path: Path) -> None:
    from tasks.stages import check_inputs

    check_inputs(rollout(open_spec()), ["spike"])
    with pytest.raises(SpecError, match="set load.workers to at least 2"):
        check_inputs(rollout(open_spec(spike_rps=MAX_RPS_PER_PROCESS + 1)), ["spike"])
    check_inputs(rollout(open_spec(spike_rps=MAX_RPS_PER_PROCESS + 1, workers=2)), ["spike"])
    missing = LoadSpec(requests={"source": "jsonl", "path": str(tmp_path / "none.jsonl")})
    with pytest.raises(SpecError, match="none.jsonl"):
        check_inputs(rollout(missing), ["spike"])
    check_inputs(rollout(missing), ["smoke"])  # only the load stage needs them


def test_distributed_in_flight_samples_are_summed() -> None:
    assert L.merge_samples([[[1.0, 2], [3.0, 4]], [[2.0, 1], [3.0, 0]]]) == [[1.0, 2], [2.0, 3], [3.0, 4]]
    assert L.merge_samples([]) == []


def test_goodput_counts_latency_from_the_intended_send_time() -> None:
    from tasks.spec import RequestSlo

    # TTFT from the intended time: 50 ms of service + the send delay; the SLO is 100 ms
    records = [rec(i * 0.4, d) for i, d in enumerate([1.0, 2.0, 80.0, 3.0, 1.0, 1.0, 2.0, 70.0, 1.0, 1.0])]
    res = L.compute_result(records, [], SHAPE, T0, T0 + 4.0, generator={"arrival": "poisson"},
                           slo=RequestSlo(ttft_ms=100))
    s = res.summary
    assert s["arrival"] == "poisson" and s["slo_attainment"] == 0.8 and s["goodput"]["good_requests"] == 8
    assert s["goodput"]["slo"] == {"ttft_ms": 100.0} and "TTFT <= 100 ms" in s["goodput"]["rule"]
    assert s["by_phase"]["baseline"]["slo_attainment"] == 0.8 and s["by_phase"]["spike"]["slo_attainment"] == 0.8
    res.report_block()  # the report model takes it
    assert L.compute_result(records, [], SHAPE, T0, T0 + 4.0).summary["slo_attainment"] == 1.0
