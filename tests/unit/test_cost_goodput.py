"""Attainment against cost on a recorded test-bed run (issue 21): the GPUs each pool held on
average, what the run cost, the cost per million SLO-good output tokens, and which figures are
measured and which extrapolated."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tasks.cost import compute_cost
from tasks.spec import load_spec

pytestmark = pytest.mark.unit
FIX = Path(__file__).parent / "fixtures" / "critical_path"
ROOT = Path(__file__).resolve().parents[2]


def _run(ttft_slo: float):
    meta = json.loads((FIX / "spike-openloop.meta.json").read_text())
    spec = load_spec(ROOT / "examples" / "qwen-chat.local.yaml", [f"load.slo.ttft_ms={ttft_slo}"])
    timeline = pd.read_csv(FIX / "spike-openloop.timeline.csv")
    requests = pd.read_csv(FIX / "spike-openloop.requests.csv.gz")
    start, end = meta["phases"][0]["start"], meta["phases"][-1]["end"]
    load = SimpleNamespace(requests=requests, started_at=start, ended_at=end, summary={})
    return compute_cost(timeline, spec, started_at=start, ended_at=end, compression_factor=1.0, load=load), requests


def test_cost_per_million_good_tokens_and_the_basis_of_each_figure():
    report, requests = _run(2000)
    block = report.block()
    ok = requests[requests["ok"].astype(bool) & ~requests["cancelled"].astype(bool)]
    assert block["good_output_tokens"] == int(ok.loc[ok["ttft_ms"] <= 2000, "output_tokens"].sum())
    assert block["cost_run"] == pytest.approx(block["idc_cost_run"] + block["cloud_cost_run"], abs=1e-3)
    assert block["cost_per_million_good_output_tokens"] == pytest.approx(
        block["cost_run"] / block["good_output_tokens"] * 1e6, rel=1e-3)
    gpus = block["gpus_time_averaged"]
    assert 1.0 <= gpus["np-idc"] <= 2.0 and 0 < gpus["np-elastic"] < 1.0   # two IDC replicas at most, one cloud
    assert block["basis"]["cost_run"].startswith("measured over this run's")
    assert block["basis"]["hybrid_cost_per_day"].startswith("extrapolated x")


def test_a_stricter_slo_makes_good_tokens_dearer():
    loose, _ = _run(2000)
    strict, _ = _run(100)
    assert strict.slo_attainment < loose.slo_attainment
    assert strict.cost_per_million_good_output_tokens > loose.cost_per_million_good_output_tokens
