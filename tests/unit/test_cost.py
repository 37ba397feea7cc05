"""The cost model against hand-computed values: node- and replica-seconds from a timeline,
billing granularities and minimum charges, compression scaling, the three day estimates,
efficiency figures, the report block and the stage glue.

The worked example (``spill_timeline``), a 600 s run compressed 144x (one real day):

=========  ===============================  ==================================================
IDC        idc-1, idc-2 Ready before the    2 x 600 = 1200 node-s; pods p1, p2 Ready
           run, never deleted               throughout: 1200 replica-s
cloud-1    Ready +100 s, deleted +400.5 s   300.5 node-s; pod p3 Ready +130 .. +330: 200 s
cloud-2    Ready +200 s, deleted +230 s     30 node-s; pod p4 Ready +205 .. +225: 20 s
=========  ===============================  ==================================================

Prices: IDC 1.2 CNY/GPU-h amortised, cloud 9.5 CNY/GPU-h, 1 GPU per node and per replica.

- cloud cost of the run, per second with a 60 s minimum: 301 + 60 = 361 s -> 361/3600 x 9.5
  = 0.9526 CNY (per minute: 360 + 60 = 420 s -> 1.1083; per hour: 2 x 3600 s -> 19.0)
- one day (x144): cloud-1 300.5 x 144 = 43 272 s, cloud-2 30 x 144 = 4 320 s -> 47 592 s
  = 13.22 h x 9.5 = 125.59 CNY; IDC 2 GPUs x 24 h x 1.2 = 57.60 -> (a) hybrid 183.19 CNY
- (b) IDC for the peak: 4 replicas at once (+205 .. +225) x 24 h x 1.2 = 115.20 CNY
- (c) cloud only: (600 + 600 + 200 + 20) x 144 = 204 480 s = 56.8 h x 9.5 = 539.60 CNY
- utilisation: IDC 1200/1200 = 1.0, cloud 220/330.5 = 0.6657; scale-down lag: the last cloud
  pod left at +330, cloud-1 stayed until +400.5: 70.5 node-s
- requests per GPU-hour: 1000 ok / ((1200 + 220)/3600 h) = 2535.21
- idle unscaled: cloud-1 200 x 144 + 100.5 = 28 900.5 -> 28 901 s, cloud-2 20 x 144 + 10
  = 2 890 s -> 31 791 s x 9.5/3600 = 83.89 CNY
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from tasks import cost as costs
from tasks.cost import CostSpec, billed_seconds, compute_cost, cost_of_run, cost_plot
from tasks.errors import SpecError
from tasks.gate import evaluate
from tasks.observe import Timeline
from tasks.report_model import RunReport
from tasks.spec import (
    RolloutSpec,
    TidalSpec,
    apply_overrides,
    load_spec,
    spec_from_dict,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "qwen-chat.tidal.local.yaml"
T0 = pd.Timestamp("2026-01-01T00:00:00Z")
WINDOW_S = 600.0
BASE: dict[str, Any] = {"storage": {"oss": {"endpoint": "oss-cn-shanghai-internal.aliyuncs.com",
                                            "bucket": "tidegate-models"}}}


def at(seconds: float) -> str:
    return (T0 + pd.Timedelta(seconds=seconds)).isoformat()


def node(t: float, name: str, reason: str, pool: str) -> dict[str, Any]:
    return {"time": at(t), "observed_at": at(t), "kind": "Node", "object": name, "object_kind": "Node",
            "reason": reason, "message": reason, "pool": pool, "node": name, "source": "watch/Node",
            "uid": f"uid-{name}"}


def pod(t: float, name: str, reason: str, node_name: str | None, pool: str | None) -> dict[str, Any]:
    return {"time": at(t), "observed_at": at(t), "kind": "Pod", "object": f"default/{name}", "object_kind": "Pod",
            "reason": reason, "message": reason, "pool": pool, "node": node_name, "source": "watch/Pod",
            "uid": f"uid-{name}"}


def spill_rows() -> list[dict[str, Any]]:
    """The worked example of the module docstring, as the observer records it."""
    rows = [
        node(-7200, "idc-1", "NodeCreated", "np-idc"), node(-7190, "idc-1", "NodeReady", "np-idc"),
        node(-7200, "idc-2", "NodeCreated", "np-idc"), node(-7190, "idc-2", "NodeReady", "np-idc"),
        pod(-3600, "p1", "PodCreated", None, None), pod(-3599, "p1", "PodScheduled", "idc-1", "np-idc"),
        pod(-3590, "p1", "PodReady", "idc-1", "np-idc"),
        pod(-3600, "p2", "PodCreated", None, None), pod(-3590, "p2", "PodReady", "idc-2", "np-idc"),
        {"time": at(60), "observed_at": at(60), "kind": "HPA", "object": "default/qwen-chat-hpa",
         "object_kind": "HorizontalPodAutoscaler", "reason": "HPAReplicas", "message": "2 -> 4", "replicas": 2,
         "desired_replicas": 4, "metric_value": 80.0, "pool": None, "node": None, "source": "watch/HPA",
         "uid": "uid-hpa"},
        pod(61, "p3", "PodCreated", None, None),
        {"time": at(62), "observed_at": at(62), "kind": "Event", "object": "default/p3", "object_kind": "Pod",
         "reason": "FailedScheduling", "message": "0/2 nodes are available", "pool": None, "node": None,
         "source": "default-scheduler", "uid": "ev-1"},
        node(90, "cloud-1", "NodeCreated", "np-elastic"), node(100, "cloud-1", "NodeReady", "np-elastic"),
        pod(110, "p3", "PodScheduled", "cloud-1", "np-elastic"),
        pod(130, "p3", "PodReady", "cloud-1", "np-elastic"),
        node(195, "cloud-2", "NodeCreated", "np-elastic"), node(200, "cloud-2", "NodeReady", "np-elastic"),
        # the observer had not seen cloud-2's labels yet: the pod's pool comes from the Node rows
        pod(205, "p4", "PodReady", "cloud-2", None),
        pod(225, "p4", "PodDeleted", "cloud-2", "np-elastic"),
        node(230, "cloud-2", "NodeDeleted", "np-elastic"),
        pod(330, "p3", "PodDeleted", "cloud-1", "np-elastic"),
        node(390, "cloud-1", "NodeNotReady", "np-elastic"),      # still billed until deleted
        node(400.5, "cloud-1", "NodeDeleted", "np-elastic"),
    ]
    return rows


def spill_timeline() -> Timeline:
    return Timeline.from_rows(spill_rows(), started_at=T0 - pd.Timedelta(seconds=5),
                              stopped_at=T0 + pd.Timedelta(seconds=WINDOW_S),
                              idc_pool_id="np-idc", elastic_pool_id="np-elastic")


def priced(*overrides: str) -> RolloutSpec:
    sets = ["cost.idc.price_per_gpu_hour=1.2", "cost.idc.pricing=amortised", "cost.cloud.price_per_gpu_hour=9.5",
            "cost.billing_granularity=second", "cost.minimum_charge_s=60", *overrides]
    return spec_from_dict(apply_overrides(BASE, sets, "x.yaml"), "x.yaml")


def fake_load(duration_s: float = WINDOW_S, ok: int = 1000, failed: int = 10, cancelled: int = 5) -> Any:
    requests = pd.DataFrame({"ok": [True] * ok + [False] * (failed + cancelled),
                             "cancelled": [False] * (ok + failed) + [True] * cancelled})
    def when(seconds: float) -> dt.datetime:
        return (T0 + pd.Timedelta(seconds=seconds)).to_pydatetime()

    phases = [SimpleNamespace(name="baseline", start=when(0), end=when(100)),
              SimpleNamespace(name="spike", start=when(100), end=when(350)),
              SimpleNamespace(name="cooldown", start=when(350), end=when(duration_s))]
    return SimpleNamespace(requests=requests, summary={"requests": ok + failed, "failures": failed},
                           shape=SimpleNamespace(duration_s=duration_s), phases=phases,
                           started_at=when(0), ended_at=when(duration_s))


def run(spec: RolloutSpec | None = None, *, factor: float = 144.0, load: Any = None, timeline: Any = None,
        window_s: float = WINDOW_S):
    return compute_cost(spill_timeline() if timeline is None else timeline, spec or priced(),
                        started_at=T0, ended_at=T0 + pd.Timedelta(seconds=window_s),
                        compression_factor=factor, load=load)


# -- billing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds,granularity,minimum,billed", [
    (300.5, "second", 0, 301), (300.0, "second", 0, 300), (30, "second", 60, 60), (61, "second", 60, 61),
    (300.5, "minute", 0, 360), (60, "minute", 0, 60), (61, "minute", 0, 120), (30, "minute", 120, 120),
    (1, "hour", 0, 3600), (3600, "hour", 0, 3600), (3601, "hour", 0, 7200), (1, "hour", 5400, 5400),
    (0, "second", 60, 0), (-5, "hour", 60, 0),
])
def test_billed_seconds_round_up_per_node_with_minimum(seconds, granularity, minimum, billed):
    assert billed_seconds(seconds, granularity, minimum) == billed


# -- the worked example -------------------------------------------------------------------------
def test_node_and_replica_seconds_per_pool():
    c = run()
    assert c.status == "ok"
    assert c.node_seconds == pytest.approx({"np-idc": 1200.0, "np-elastic": 330.5})
    assert c.replica_seconds == pytest.approx({"np-idc": 1200.0, "np-elastic": 220.0})
    assert c.cloud_nodes == 2 and c.peak_replicas == 4


@pytest.mark.parametrize("granularity,minimum,billed_s,run_cost", [
    ("second", 60, 361, 0.9526),      # 301 + max(30, 60)
    ("second", 0, 331, 0.8735),       # 301 + 30
    ("minute", 0, 420, 1.1083),       # 360 + 60
    ("minute", 120, 480, 1.2667),     # 360 + max(60, 120)
    ("hour", 60, 7200, 19.0),         # 3600 + 3600
])
def test_cloud_cost_of_the_run_by_granularity_and_minimum(granularity, minimum, billed_s, run_cost):
    c = run(priced(f"cost.billing_granularity={granularity}", f"cost.minimum_charge_s={minimum}"))
    assert c.cloud_billed_s == billed_s
    assert c.block()["cloud_cost_run"] == pytest.approx(run_cost, abs=1e-4)


def test_three_day_estimates():
    b = run(load=fake_load()).block()
    assert b["compression_factor"] == 144.0 and b["real_span_s"] == 86400.0 and b["day_scale"] == 1.0
    assert b["cloud_cost_per_day"] == pytest.approx(125.59)            # 47 592 s x 9.5 / 3600
    assert b["idc_cost_per_day"] == pytest.approx(57.6)                # 2 GPUs x 24 h x 1.2
    assert b["hybrid_cost_per_day"] == pytest.approx(183.19)           # (a)
    assert b["idc_for_peak_cost_per_day"] == pytest.approx(115.2)      # (b) 4 x 24 x 1.2
    assert b["cloud_only_cost_per_day"] == pytest.approx(539.6)        # (c) 204 480 s x 9.5 / 3600
    assert b["cloud_cost_per_day_idle_unscaled"] == pytest.approx(31791 * 9.5 / 3600, abs=1e-4)


def test_day_estimates_with_hourly_billing():
    b = run(priced("cost.billing_granularity=hour")).block()
    # 43 272 s -> 13 h, 4 320 s -> 2 h: 15 h x 9.5; replicas 24 h + 24 h + 8 h + 1 h (2880 s -> 1 h)
    assert b["cloud_cost_per_day"] == pytest.approx(142.5)
    assert b["cloud_only_cost_per_day"] == pytest.approx(57 * 9.5)


def test_efficiency_figures():
    b = run(load=fake_load()).block()
    assert b["gpu_utilisation"] == {"np-idc": 1.0, "np-elastic": pytest.approx(0.6657, abs=1e-4)}
    assert b["idc_gpu_utilisation"] == 1.0 and b["cloud_gpu_utilisation"] == pytest.approx(0.6657, abs=1e-4)
    assert b["scale_down_lag_s"] == pytest.approx(70.5)                # 330 -> 400.5 on cloud-1
    assert b["cloud_idle_node_s"] == pytest.approx(110.5)              # 100.5 on cloud-1 + 10 on cloud-2
    assert b["requests_served"] == 1000                                # failed and cancelled excluded
    assert b["requests_per_gpu_hour"] == pytest.approx(2535.21)        # 1000 / (1420 / 3600)


def test_compression_scales_by_real_span_not_by_window():
    # the same run read as half a day (x72): the per-day figures double back to the same day
    half = run(factor=72.0).block()
    assert half["real_span_s"] == 43200.0 and half["day_scale"] == 2.0
    assert half["cloud_cost_per_day"] == pytest.approx(125.59)
    assert half["cloud_only_cost_per_day"] == pytest.approx(539.6)
    assert half["idc_cost_per_day"] == pytest.approx(57.6)             # IDC is paid all day either way
    # the traffic ran 500 s of the 600 s window (the rest is the spill-back tail): the day is
    # 500 x 144 = 72 000 real s, so the tail counts to it and the day scale is 1.2
    tail = run(load=fake_load(duration_s=500.0)).block()
    assert tail["traffic_span_s"] == 500.0 and tail["real_span_s"] == 72000.0
    assert tail["day_scale"] == pytest.approx(1.2)
    assert tail["cloud_cost_per_day"] == pytest.approx(47592 * 1.2 * 9.5 / 3600, abs=1e-4)   # 150.708
    assert tail["cloud_cost_run"] == pytest.approx(0.9526)             # the run's bill does not scale


def test_uncompressed_run_extrapolates_the_window_to_a_day():
    b = run(factor=1.0).block()
    assert b["day_scale"] == 144.0
    # cloud-1 301 s + cloud-2 60 s minimum, 144 times
    assert b["cloud_cost_per_day"] == pytest.approx(361 * 144 * 9.5 / 3600, abs=1e-4)


def test_node_hour_prices_and_gpus_per_node():
    spec = priced("cost.cloud.price_per_gpu_hour=null", "cost.cloud.price_per_node_hour=19",
                  "cost.cloud.gpus_per_node=2", "cost.idc.price_per_gpu_hour=null", "cost.idc.price_per_node_hour=1.2")
    b = run(spec).block()
    assert b["cloud_cost_run"] == pytest.approx(361 * 19 / 3600, abs=1e-4)     # 1.9053: node-hour
    assert b["cloud_only_cost_per_day"] == pytest.approx(539.6)                 # 19 / 2 = 9.5 per GPU-hour
    assert b["gpu_utilisation"]["np-elastic"] == pytest.approx(220 / (330.5 * 2), abs=1e-4)


def test_window_clips_intervals():
    # a window from +150 to +350: idc 2 x 200, cloud-1 200, cloud-2 30; p3 180, p4 20
    c = compute_cost(spill_timeline(), priced(), started_at=T0 + pd.Timedelta(seconds=150),
                     ended_at=T0 + pd.Timedelta(seconds=350), compression_factor=1.0)
    assert c.node_seconds == pytest.approx({"np-idc": 400.0, "np-elastic": 230.0})
    assert c.replica_seconds == pytest.approx({"np-idc": 400.0, "np-elastic": 200.0})
    assert c.cloud_billed_s == 200 + 60
    assert c.scale_down_lag_s == pytest.approx(20.0)   # p3 left at +330, cloud-1 counted to the end +350
    assert any(iv.open_at_end for iv in c.nodes if iv.object == "cloud-1")


def test_pod_ready_again_opens_a_new_interval_and_cloud_pod_at_the_end_has_no_lag():
    rows = spill_rows() + [pod(500, "p5", "PodReady", "cloud-3", "np-elastic"),
                           node(480, "cloud-3", "NodeReady", "np-elastic"),
                           pod(540, "p5", "PodNotReady", "cloud-3", "np-elastic"),
                           pod(550, "p5", "PodReady", "cloud-3", "np-elastic")]
    c = run(timeline=Timeline.from_rows(rows))
    p5 = [(iv.start_s, iv.end_s) for iv in c.pods if iv.object == "default/p5"]
    assert p5 == [(500.0, 540.0), (550.0, 600.0)]
    assert c.scale_down_lag_s is None
    assert "a cloud pod was still Ready when the window ended: no scale-down lag" in c.notes


def test_recorded_timeline_round_trips_through_csv(tmp_path: Path):
    path = spill_timeline().to_csv(tmp_path / "timeline.csv")
    c = run(timeline=Timeline.read_csv(path))
    assert c.node_seconds == pytest.approx({"np-idc": 1200.0, "np-elastic": 330.5})
    assert c.block()["hybrid_cost_per_day"] == pytest.approx(183.19)
    assert run(timeline=spill_timeline().df).block() == run().block()   # a bare DataFrame works too


# -- missing data and prices --------------------------------------------------------------------
def test_unpriced_pools_leave_costs_out_but_keep_seconds():
    spec = spec_from_dict(BASE, "x.yaml")
    b = run(spec).block()
    assert b["status"] == "ok"
    assert b["node_seconds"] == {"np-idc": 1200.0, "np-elastic": 330.5}
    for key in ("cloud_cost_run", "cloud_cost_per_day", "hybrid_cost_per_day", "idc_for_peak_cost_per_day",
                "cloud_only_cost_per_day"):
        assert b[key] is None, key
    assert "cost.cloud has no price: cost figures of pool np-elastic left out" in b["notes"]
    assert b["gpu_utilisation"]["np-elastic"] == pytest.approx(0.6657, abs=1e-4)


REQUIRED = ("cloud_cost_run", "cloud_cost_per_day", "hybrid_cost_per_day", "idc_for_peak_cost_per_day",
            "cloud_only_cost_per_day", "currency", "compression_factor", "node_seconds", "replica_seconds",
            "gpu_utilisation", "scale_down_lag_s", "requests_per_gpu_hour")


@pytest.mark.parametrize("timeline,start,end", [
    (None, T0, T0 + pd.Timedelta(seconds=60)),
    (Timeline.from_rows([]), T0, T0 + pd.Timedelta(seconds=60)),
    ("spill", None, T0),
    ("spill", T0, T0),
])
def test_no_data_is_stated_not_raised(timeline, start, end):
    tl = spill_timeline() if timeline == "spill" else timeline
    c = compute_cost(tl, priced(), started_at=start, ended_at=end, compression_factor=144.0)
    b = c.block()
    assert b["status"].startswith("no data: ")
    assert all(k in b for k in REQUIRED)
    assert b["cloud_cost_per_day"] is None and b["node_seconds"] == {}
    json.dumps(b)
    assert c.describe().startswith("cost: no data: ")


def test_unknown_compression_factor_leaves_day_figures_out():
    b = run(factor=None).block()
    assert b["cloud_cost_run"] == pytest.approx(0.9526)
    assert b["cloud_cost_per_day"] is None and b["cloud_only_cost_per_day"] is None
    assert b["idc_for_peak_cost_per_day"] == pytest.approx(115.2)    # needs no factor


# -- block, gate, plot --------------------------------------------------------------------------
def test_block_has_the_contract_keys_and_is_json():
    b = run(load=fake_load()).block()
    assert set(REQUIRED) <= set(b)
    assert b["currency"] == "CNY" and b["pools"] == {"idc": "np-idc", "cloud": "np-elastic"}
    assert b["prices"]["np-elastic"]["price_per_gpu_hour"] == 9.5
    assert json.loads(json.dumps(b)) == b


def test_gate_rules_on_cost_keys():
    spec = load_spec(EXAMPLE)
    rules = [r for r in spec.slo if r.rule.startswith("cost.")]
    assert [r.rule for r in rules] == ["cost.cloud_cost_per_day", "cost.scale_down_lag_s"]
    b = run(spec, load=fake_load()).block()
    results = evaluate(rules, {"cost": b})
    assert [(r.status, r.value) for r in results] == [("pass", pytest.approx(125.59)), ("pass", 70.5)]
    results = evaluate(rules, {"cost": run(spec, factor=None).block()})
    # no data is never a pass: inconclusive by default, fail for a critical rule
    assert results[0].status == "inconclusive" and results[0].detail == "no data for this metric in the run"
    critical = [r.model_copy(update={"critical": True}) for r in rules]
    assert evaluate(critical, {"cost": run(spec, factor=None).block()})[0].status == "fail"


def test_cost_plot_is_an_agg_figure():
    import matplotlib

    backend = matplotlib.get_backend()
    fig = cost_plot(run(load=fake_load()))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[:2] == ["np-idc (CNY)", "np-elastic (CNY)"]
    idc = ax.get_lines()[0]
    assert idc.get_ydata()[-1] == pytest.approx(1200 / 3600 * 1.2)    # 0.4 CNY of IDC over the run
    cloud = ax.get_lines()[1]
    assert cloud.get_ydata()[-1] == pytest.approx(330.5 / 3600 * 9.5)
    assert matplotlib.get_backend() == backend                        # pyplot's backend untouched
    empty = cost_plot(compute_cost(None, priced(), started_at=T0, ended_at=T0, compression_factor=1.0))
    empty.savefig(io.BytesIO(), format="png")


# -- the run's cost (what the verify stage records) ---------------------------------------------
def cost_for(spec: RolloutSpec, timeline: Any = None, spike: Any = None, ended_at: Any = None) -> costs.CostReport:
    return cost_of_run(spec, spike, timeline, ended_at)


def test_cost_of_run_fills_the_report():
    spec = priced("load.shape=tidal", "load.baseline_users=2", "load.spike_users=24", "load.spawn_rate=12",
                  "load.tidal.compress_to_minutes=10")
    assert spec.load.tidal == TidalSpec(compress_to_minutes=10)
    report = cost_for(spec, timeline=spill_timeline(), spike=fake_load(),
                      ended_at=T0 + pd.Timedelta(seconds=WINDOW_S))
    line = report.describe()
    block = report.block()
    assert block["compression_factor"] == 144.0                        # 24 h into 10 min
    assert block["hybrid_cost_per_day"] == pytest.approx(183.19)
    assert line == ("cost: cloud 330 node-s, 0.95 CNY this run; per day (x144): hybrid 183.19 CNY, IDC for peak "
                    "115.20 CNY, cloud only 539.60 CNY; scale-down lag 70s")
    assert "\n" not in line
    assert isinstance(report, costs.CostReport)
    assert list(report.intervals_frame()["object"])[:2] == ["idc-1", "idc-2"]
    run = RunReport(run_id="r", spec="s", profile="local", started_at="t", cost=block)
    run.fill_definitions()
    assert "cost.cloud_cost_per_day" in run.definitions


@pytest.mark.parametrize("results", [
    {},
    {"spike": None, "timeline": None},
    {"timeline": Timeline.from_rows([])},
    {"timeline": "not a timeline", "spike": SimpleNamespace()},
])
def test_cost_of_run_never_raises_on_missing_data(results):
    report = cost_for(priced(), **results)
    assert report.describe().startswith("cost: no data: ")
    assert report.block()["status"].startswith("no data: ")


def test_cost_of_run_with_unreadable_tidal_csv_states_the_gap(tmp_path: Path):
    spec = priced("load.shape=tidal", f"load.tidal.csv_path={tmp_path / 'gone.csv'}")
    block = cost_for(spec, timeline=spill_timeline(), spike=fake_load(),
                     ended_at=T0 + pd.Timedelta(seconds=WINDOW_S)).block()
    assert block["status"] == "ok" and block["cloud_cost_per_day"] is None
    assert block["cloud_cost_run"] == pytest.approx(0.9526)


# -- the spec section ---------------------------------------------------------------------------
def test_spec_cost_section_default_and_example():
    spec = spec_from_dict(BASE, "x.yaml")
    assert spec.cost == CostSpec()
    assert spec.cost.cloud.priced is False and spec.cost.idc.pricing == "amortised"
    example = load_spec(EXAMPLE).cost
    assert (example.currency, example.billing_granularity, example.minimum_charge_s) == ("CNY", "second", 60)
    assert (example.idc.price_per_gpu_hour, example.idc.pricing) == (1.2, "amortised")
    assert (example.cloud.price_per_gpu_hour, example.cloud.pricing) == (9.5, "on-demand")


@pytest.mark.parametrize("override,expected", [
    (["cost.cloud.price_per_gpu_hour=9.5", "cost.cloud.price_per_node_hour=19"],
     "cost.cloud.price_per_node_hour: set price_per_gpu_hour or price_per_node_hour, not both"),
    (["cost.currency=yuan"], "cost.currency: "),
    (["cost.currency=cny"], "cost.currency: must be an ISO 4217 code of three capital letters (got 'cny')"),
    (["cost.billing_granularity=day"], "cost.billing_granularity: must be 'second', 'minute' or 'hour'"),
    (["cost.minimum_charge_s=-1"], "cost.minimum_charge_s: must be greater than or equal to 0"),
    (["cost.idc.price_per_gpu_hour=-1.2"], "cost.idc.price_per_gpu_hour: must be greater than or equal to 0"),
    (["cost.idc.price_per_gpu_hour=.nan"], "cost.idc.price_per_gpu_hour: must be a finite number"),
    (["cost.idc.price_per_gpu_hour=true"], "cost.idc.price_per_gpu_hour: must be a number (got True)"),
    (["cost.cloud.gpus_per_node=0"], "cost.cloud.gpus_per_node: must be greater than or equal to 1"),
    (["cost.cloud.pricing=reserved"], "cost.cloud.pricing: must be 'amortised', 'on-demand' or 'spot'"),
    (["cost.cloud.price=1"], "cost.cloud.price: unknown field (allowed: price_per_gpu_hour, price_per_node_hour, "
                             "gpus_per_node, pricing)"),
])
def test_bad_cost_section_is_one_spec_error_line(override, expected):
    with pytest.raises(SpecError) as info:
        spec_from_dict(apply_overrides(BASE, override, "x.yaml"), "x.yaml")
    message = info.value.one_line()
    assert message.startswith("spec x.yaml: ") and expected in message, message


def test_yaml_round_trip_keeps_the_cost_section(tmp_path: Path):
    spec = load_spec(EXAMPLE)
    out = tmp_path / "spec.yaml"
    out.write_text(spec.to_yaml())
    assert load_spec(out) == spec


def test_cost_module_import_stays_light():
    import subprocess
    import sys

    code = "import sys, tasks.spec; print(any(m in sys.modules for m in ('pandas', 'matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# -- a timeline recorded on the test bed ----------------------------------------------------------
# a frozen copy of fixtures/spill_timeline.json, so that re-recording that one cannot move these figures
RECORDED = Path(__file__).parent / "fixtures" / "cost_spill_timeline.json"


def test_recorded_spill_timeline():
    """fixtures/cost_spill_timeline.json (HPA 1 -> 3, the third pod spilled to np-elastic),
    from the spike start 21:39:11.420877 to the end 21:40:57.740081 (106.319204 s):

    - IDC: idc-gpu-0/1 Ready since 21:24:49: 2 x 106.319204 = 212.638408 node-s; pod ppkxc
      Ready before the window until 21:40:30 (78.579123 s), 86wfc from 21:39:22 to the end
      (95.740081 s): 174.319204 replica-s
    - cloud: np-elastic-r48m7 Ready 21:40:09, deleted 21:40:54.814522: 45.814522 node-s, billed
      per second 46 s, raised to the 60 s minimum: 60/3600 x 9.5 = 0.1583 CNY; pod jhznd Ready
      21:40:11 to 21:40:30: 19 s; the node outlived it by 24.814522 s (scale-down lag)
    """
    doc = json.loads(RECORDED.read_text())
    marks = doc["marks"]
    c = compute_cost(Timeline.read_json(RECORDED), priced(), started_at=marks["spike_started_at"],
                     ended_at=marks["ended_at"], compression_factor=1.0)
    assert c.window_s == pytest.approx(106.319204)
    assert c.node_seconds == pytest.approx({"np-idc": 212.638408, "np-elastic": 45.814522})
    assert c.replica_seconds == pytest.approx({"np-idc": 174.319204, "np-elastic": 19.0})
    assert c.cloud_nodes == 1 and c.peak_replicas == 3
    assert c.cloud_billed_s == 60
    b = c.block()
    assert b["cloud_cost_run"] == pytest.approx(0.1583, abs=1e-4)
    assert b["scale_down_lag_s"] == pytest.approx(24.815, abs=1e-3)
    assert b["cloud_gpu_utilisation"] == pytest.approx(19 / 45.814522, abs=1e-4)
    assert b["idc_gpu_utilisation"] == pytest.approx(174.319204 / 212.638408, abs=1e-4)
    assert b["idc_for_peak_cost_per_day"] == pytest.approx(3 * 24 * 1.2)
