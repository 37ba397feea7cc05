"""load.repeat: the per-run figures' confidence intervals over repeated spikes (issue 22)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from scipy import stats as sps

from flows.commands import _load
from tasks.errors import SpecError
from tasks.repeats import REPEAT_FIGURES, interval, repeats_block, t_quantile
from tasks.report import _repeats_html
from tasks.report_model import RepeatsBlock, RunReport
from tasks.spec import load_spec

pytestmark = pytest.mark.unit
LOCAL = Path(__file__).resolve().parents[2] / "examples" / "qwen-chat.local.yaml"


@pytest.mark.parametrize("df", [1, 2, 4, 9, 19, 30])
def test_t_quantile_matches_scipy(df):
    assert t_quantile(df) == pytest.approx(sps.t.ppf(0.975, df), abs=1e-3)


@pytest.mark.parametrize("values", [[40.0, 44.0, 38.0, 42.0], [10.0, 11.5], [0.97, 0.95, 0.99, 0.96, 0.98, 0.93]])
def test_interval_is_the_student_t_interval_of_the_mean(values):
    ci = interval(values)
    low, high = sps.t.interval(0.95, len(values) - 1, loc=sps.tmean(values), scale=sps.sem(values))
    assert ci.n == len(values) and ci.low == pytest.approx(low, rel=1e-3) and ci.high == pytest.approx(high, rel=1e-3)
    assert ci.low <= ci.mean <= ci.high


def test_interval_without_enough_values_says_why_and_never_invents_one():
    one = interval([41.0, None, "x"])
    assert one.n == 1 and one.low is None and one.high is None
    assert "2 of 3 repetitions had no value" in one.note and "one value: no interval" in one.note
    none = interval([None, None])
    assert none.n == 0 and none.mean is None and none.note == "2 of 2 repetitions had no value"


def rep(index, ready, attainment, settled=True, missing=()):
    return {"index": index, "settled": settled, "missing": list(missing), "started_at": f"t{index}",
            "figures": {"elasticity": {"time_to_first_cloud_pod_ready_s": ready, "cloud_pods_max": 1},
                        "load": {"slo_attainment": attainment, "ttft_p95_ms": 800.0},
                        "cost": {"cost_run": 0.5}}}


def test_repeats_block_lines_up_the_figures_and_validates_as_the_report_block():
    block = repeats_block([rep(1, 40.0, 0.97), rep(2, 44.0, 0.95), rep(3, None, 0.5, settled=False,
                                                                       missing=["spill-over"])])
    assert block["n"] == 3 and set(block["intervals"]) == set(REPEAT_FIGURES)
    ready = block["intervals"]["elasticity.time_to_first_cloud_pod_ready_s"]
    assert ready["n"] == 2 and ready["mean"] == 42.0 and "1 of 3 repetitions had no value" in ready["note"]
    assert block["runs"][2]["settled"] is False and block["runs"][2]["missing"] == ["spill-over"]
    assert block["runs"][1]["figures"]["load.slo_attainment"] == 0.95
    assert block["intervals"]["load.ttft_p95_ms"]["stdev"] == 0.0   # identical values: a zero-width interval
    model = RepeatsBlock.model_validate(block)
    report = RunReport(run_id="r", spec="s", profile="local", started_at="t", repeats=model)
    page = _repeats_html(report)
    assert "repeated spikes (3" in page and "#3 (not settled)" in page and "42 [" in page


def test_repeat_is_a_spec_field_and_a_cli_flag():
    assert load_spec(LOCAL).load.repeat == 1
    args = argparse.Namespace(spec=str(LOCAL), set=["load.baseline_s=5"], repeat=3)
    assert _load(args).load.repeat == 3
    with pytest.raises(SpecError, match=r"load.repeat: must be less than or equal to 20"):
        load_spec(LOCAL, ["load.repeat=21"])
