"""`tidegate experiment` (issue 21), the parts that need no cluster: variants parsed and applied
to the spec with one seed, figures read from a variant's report, and the recommendation made
from the figures only."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.experiment import Variant, parse_variants, recommend, variant_figures, variant_spec
from tasks.errors import SpecError
from tasks.spec import load_spec

pytestmark = pytest.mark.unit
LOCAL = Path(__file__).resolve().parents[2] / "examples" / "qwen-chat.local.yaml"


def test_variants_are_parsed_and_refused_by_name():
    vs = parse_variants("hybrid, idc-only,static-peak,signal=vllm:num_requests_waiting:5,signal=kv_cache")
    assert [v.slug for v in vs] == ["hybrid", "idc-only", "static-peak", "signal-vllm-num-requests-waiting",
                                    "signal-kv-cache"]
    assert (vs[3].metric, vs[3].target) == ("vllm:num_requests_waiting", 5) and vs[4].target is None
    assert isinstance(vs[3].target, int)   # service.scale_target is an integer: a parsed variant must apply
    assert variant_spec(load_spec(LOCAL), vs[3], idc_replicas=2, seed=1).service.scale_target == 5
    for bad, why in (("cloud-only", "unknown variant"), ("", "at least one"), ("hybrid,hybrid", "twice"),
                     ("signal=", "no metric"), ("signal=m:2.5", "a whole number")):
        with pytest.raises(SpecError, match=why):
            parse_variants(bad)


def test_each_variant_changes_only_what_it_names_and_keeps_the_seeded_load():
    spec = load_spec(LOCAL)
    hybrid = variant_spec(spec, Variant("hybrid"), idc_replicas=2, seed=7)
    idc = variant_spec(spec, Variant("idc-only"), idc_replicas=2, seed=7)
    peak = variant_spec(spec, Variant("static-peak"), idc_replicas=None, seed=7)
    signal = variant_spec(spec, Variant("signal", "vllm:num_requests_waiting", 5), idc_replicas=None, seed=7)
    assert {s.load.seed for s in (hybrid, idc, peak, signal)} == {7}
    assert hybrid.service == spec.service and hybrid.load.spike_rps == spec.load.spike_rps
    assert (idc.service.min_replicas, idc.service.max_replicas) == (1, 2)
    assert (peak.service.min_replicas, peak.service.max_replicas) == (3, 3)
    assert (signal.service.scale_metric, signal.service.scale_target) == ("vllm:num_requests_waiting", 5)
    with pytest.raises(SpecError, match="IDC pool holds no replica"):
        variant_spec(spec, Variant("idc-only"), idc_replicas=0, seed=7)


def _doc(att, cpm, cloud, total=50.0):
    return {"run_id": "r", "verdict": "pass", "load": {"slo_attainment": att, "ttft_p95_ms": 180.0},
            "elasticity": {"cloud_pods_max": 1 if cloud else 0, "scale_events": [
                {"direction": "up", "total_s": total, "steps": [{"step": "node Ready", "seconds": 30.0},
                                                                 {"step": "pod Ready", "seconds": None}]},
                {"direction": "down", "total_s": 90.0, "steps": []}]},
            "cost": {"cloud_cost_run": cloud, "cost_run": 1.0 + cloud, "currency": "CNY",
                     "cost_per_million_good_output_tokens": cpm}}


def test_figures_and_the_recommendation_come_from_the_reports_only():
    hybrid, idc = variant_figures(_doc(0.99, 12.5, 0.3)), variant_figures(_doc(0.71, 9.0, 0.0))
    assert hybrid["scale_up_total_s_median"] == 50.0 and hybrid["critical_path_medians_s"] == {"node Ready": 30.0}
    assert idc["cloud_cost_run"] == 0.0
    text = recommend({"hybrid": hybrid, "idc-only": idc})
    assert text.startswith("hybrid is the cheapest variant that met the SLO for at least 95% of requests: 99% at 12.5")
    assert "idc-only 71%" in text
    assert recommend({"idc-only": idc}).startswith("no variant met the SLO for 95% of requests; idc-only came closest")
