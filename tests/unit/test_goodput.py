"""Goodput on hand-made samples: which requests are good, attainment, rates over the episode
(drain included) and per phase."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tasks.goodput import describe_slo, goodput
from tasks.spec import RequestSlo

pytestmark = pytest.mark.unit


def _requests(rows):
    cols = ("ok", "cancelled", "t_s", "end_t_s", "ttft_ms", "itl_p95_ms", "tpot_ms", "e2e_ms", "output_tokens")
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


ROWS = [  # ok, cancelled, t_s, end_t_s, ttft, itl p95, tpot, e2e, tokens
    (True, False, 1.0, 2.0, 100, 20, 15, 900, 64),      # good under every SLO below
    (True, False, 2.0, 3.5, 400, 20, 15, 1500, 64),     # TTFT too slow
    (True, False, 12.0, 13.0, 100, 80, 15, 900, 64),    # ITL p95 too slow
    (False, False, 13.0, 14.0, math.nan, math.nan, math.nan, 50, 0),   # failed
    (True, False, 14.0, 25.0, 150, 25, 18, 950, 32),    # good, ends after the shape (drain)
    (True, True, 19.0, 19.5, 100, 20, 15, 300, 10),     # cancelled: counts nowhere
    (True, False, 15.0, 16.0, math.nan, 20, 15, 900, 64),   # no TTFT known: cannot meet a TTFT SLO
]


def test_a_request_is_good_when_it_succeeded_and_met_every_slo():
    slo = RequestSlo(ttft_ms=300, itl_ms=50, e2e_ms=1000)
    out = goodput(_requests(ROWS), slo, duration_s=20.0, phases=[("baseline", 0, 10), ("spike", 10, 20)])
    assert out["good_requests"] == 2                     # rows 1 and 5
    assert out["slo_attainment"] == round(2 / 6, 4)      # 6 finished (the cancelled one excluded)
    assert out["episode_s"] == 25.0                      # the drain counts: last request ends at 25 s
    assert out["request_goodput_rps"] == round(2 / 25, 3)
    assert out["token_goodput_per_s"] == round((64 + 32) / 25, 2)
    assert out["slo"] == {"ttft_ms": 300.0, "itl_p95_ms": 50.0, "e2e_ms": 1000.0}
    base, spike = out["by_phase"]["baseline"], out["by_phase"]["spike"]
    assert base["slo_attainment"] == 0.5 and base["request_goodput_rps"] == 0.1      # 1 of 2, over 10 s
    assert spike["slo_attainment"] == 0.25 and spike["token_goodput_per_s"] == 3.2   # 1 of 4, 32 tokens


def test_without_an_slo_every_successful_request_is_good():
    out = goodput(_requests(ROWS), RequestSlo(), duration_s=30.0)
    assert out["good_requests"] == 5 and out["slo_attainment"] == round(5 / 6, 4)
    assert out["episode_s"] == 30.0
    assert describe_slo({}) .startswith("no per-request SLO set")


def test_no_finished_request_is_no_data_not_zero():
    out = goodput(_requests([]), RequestSlo(ttft_ms=100), duration_s=10.0, phases=[("spike", 0, 10)])
    assert out["slo_attainment"] is None and out["request_goodput_rps"] is None
    assert out["by_phase"]["spike"] == {"slo_attainment": None, "request_goodput_rps": None,
                                        "token_goodput_per_s": None}


def test_tpot_slo_uses_the_requests_own_tpot():
    rows = [(True, False, 1.0, 2.0, 100, 20, 15, 900, 64), (True, False, 2.0, 3.0, 100, 20, 45, 900, 64)]
    out = goodput(_requests(rows), RequestSlo(tpot_ms=30), duration_s=10.0)
    assert out["good_requests"] == 1
    assert describe_slo(out["slo"]) == "good = succeeded and TPOT <= 30 ms"
