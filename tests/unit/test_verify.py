"""Unit tests of the verification on a timeline recorded from the test bed
(tests/unit/fixtures/spill_timeline.json) and on edited copies of it.

The expected figures were checked by hand against the fixture's rows:

- spike 21:45:55.880460, cool-down 21:46:59.735955, end 21:47:34.043392 (UTC)
- SuccessfulRescale 21:46:04 "New size: 2" and 21:46:19 "New size: 3" (above target), 21:47:10
  "New size: 2" and 21:47:15 "New size: 1" (below target): hpa_max_replicas 3, 4 rescales,
  first scale-up after 8.120 s
- pod pqzhn Ready on idc-gpu-0 21:45:52 (before the spike), 8kxlf Ready on idc-gpu-1 21:46:07:
  idc_pods_max 2; fjwd4 FailedScheduling 21:46:20 and 21:46:50 (2), TriggeredScaleUp 21:46:50
  (1), ScaledUpGroup "setting group" 21:46:50 (1 in the window; the same event object's
  earlier occurrence, count 6 at 21:44:20, is an earlier run's)
- node np-elastic-tg5vf created and Ready 21:46:50: time_to_cloud_node_s 54.120; fjwd4 Ready
  on it 21:46:52: 56.120; cloud_pods_max 1
- scale-in 3 -> 2 -> 1: fjwd4 (cloud) deletion requested 21:47:10, 8kxlf (IDC) 21:47:15;
  pqzhn left on idc-gpu-0
- ScaleDownEmpty "removing empty node" 21:47:30 (1); NodeDeleted 21:47:30.892686: the elastic
  pool (min 0) back to 0 after 95.012 s
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tasks.observe import Timeline
from tasks.spec import load_spec
from tasks.verify import CONTRACT_KEYS, Elasticity, summary, verify

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "spill_timeline.json"
DOC = json.loads(FIXTURE.read_text())
MARKS = DOC["marks"]
NS = DOC["namespace"]
CLOUD_POD = f"{NS}/qwen-chat-predictor-546cc8969b-fjwd4"
IDC_POD = f"{NS}/qwen-chat-predictor-546cc8969b-8kxlf"  # removed on scale-in
LEFT_POD = f"{NS}/qwen-chat-predictor-546cc8969b-pqzhn"
CLOUD_NODE = "np-elastic-tg5vf"


def _spec():
    return load_spec(ROOT / "examples" / "qwen-chat.local.yaml", [f"cluster.namespace={NS}"])


def _timeline(edit=None) -> Timeline:
    rows = [dict(r) for r in DOC["rows"]]
    if edit:
        rows = edit(rows)
    tl = Timeline.read_json(FIXTURE)
    return Timeline.from_rows(rows, started_at=tl.started_at, stopped_at=tl.stopped_at, idc_pool_id=tl.idc_pool_id,
                              elastic_pool_id=tl.elastic_pool_id, gaps=list(tl.gaps))


def _verify(tl: Timeline, **marks) -> Elasticity:
    return verify(tl, _spec(), **{**MARKS, **marks})


def _row(time: str, kind: str, obj: str, reason: str, message: str, **extra) -> dict:
    base = {"time": time, "observed_at": time, "kind": kind, "object": obj,
            "object_kind": extra.pop("object_kind", "Pod"), "reason": reason, "message": message, "count": 1, "replicas": None, "desired_replicas": None, "metric_value": None,
            "pool": None, "node": None, "source": "cluster-autoscaler", "uid": extra.pop("uid", "u-" + time)}
    base.update(extra)
    return base


def test_recorded_spill_gives_the_hand_checked_figures():
    el = _verify(_timeline())
    assert el.block(extras=False) == {
        "hpa_max_replicas": 3,
        "idc_pods_max": 2,
        "cloud_pods_max": 1,
        "scale_up_events": 1,
        "scale_down_events": 1,
        "time_to_hpa_rescale_s": 8.12,
        "time_to_cloud_node_s": 54.12,
        "time_to_first_cloud_pod_ready_s": 56.12,
        "scale_in_back_to_idc": True,
    }
    assert list(el.block())[:len(CONTRACT_KEYS)] == list(CONTRACT_KEYS)
    extras = el.block()
    assert (extras["successful_rescale_count"], extras["failed_scheduling_idc"], extras["triggered_scale_up"],
            extras["scaled_up_group"], extras["elastic_nodes_max"]) == (4, 2, 1, 1, 1)
    assert extras["scale_up_events_source"] == "TriggeredScaleUp"
    assert extras["scale_down_events_source"] == "ScaleDown on nodes, ScaleDownEmpty on cluster-autoscaler-status"
    assert (extras["elastic_pool_back_to_min"], extras["elastic_pool_min_nodes"],
            extras["cloud_pods_removed_before_idc"]) == (True, 0, True)
    assert extras["time_to_elastic_pool_min_s"] == 95.012
    json.dumps(el.block())  # plain JSON values for report.json


def test_recorded_spill_findings_cite_their_events():
    el = _verify(_timeline())
    names = [f.name for f in el.findings]
    assert names == ["hpa_scaled_out", "idc_pool_full", "autoscaler_scaled_up", "cloud_node_ready", "cloud_pod_ready",
                     "cloud_pods_removed_first", "pods_left_on_idc", "elastic_pool_back_to_min",
                     "hpa_metric_available"]  # the plumbing's links that are not steps of the sequence
    assert all(f.ok for f in el.findings), [f for f in el.findings if not f.ok]
    full = el.finding("idc_pool_full")
    assert full.evidence[0] == (
        f"Event FailedScheduling {CLOUD_POD} 21:46:20: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu. no "
        "new claims to deallocate, preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.")
    assert el.finding("hpa_scaled_out").evidence == [
        f"Event SuccessfulRescale {NS}/qwen-chat-hpa 21:46:04: New size: 2; reason: pods metric "
        "DCGM_CUSTOM_PROCESS_SM_UTIL above target",
        f"Event SuccessfulRescale {NS}/qwen-chat-hpa 21:46:19: New size: 3; reason: pods metric "
        "DCGM_CUSTOM_PROCESS_SM_UTIL above target"]
    assert el.finding("autoscaler_scaled_up").evidence[0] == (
        f"Event TriggeredScaleUp {CLOUD_POD} 21:46:50: pod triggered scale-up: [{{np-elastic 0->1 (max: 3)}}]")
    assert any("ScaleDownEmpty" in e and CLOUD_NODE in e for e in el.finding("elastic_pool_back_to_min").evidence)
    assert el.finding("cloud_pods_removed_first").evidence == [
        f"Pod PodDeleted {CLOUD_POD} 21:47:10: deletion requested (grace 30s); was on {CLOUD_NODE}",
        f"Pod PodDeleted {IDC_POD} 21:47:15: deletion requested (grace 30s); was on idc-gpu-1"]
    assert el.finding("pods_left_on_idc").evidence == [f"Pod {LEFT_POD} on idc-gpu-0"]
    for f in el.findings:
        assert f.evidence or f.name == "pods_left_on_idc", f


def test_no_scale_up_names_the_missing_triggered_scale_up_and_cites_not_trigger():
    def edit(rows):
        gone = {"TriggeredScaleUp", "ScaledUpGroup", "ScaleDownEmpty", "ScaleDown", "RegisteredNode"}
        rows = [r for r in rows if r["reason"] not in gone and r.get("node") != CLOUD_NODE
                and not (r["object"] == CLOUD_POD and r["reason"] in ("PodScheduled", "PodReady", "Scheduled"))]
        rows.append(_row("2026-11-28T21:46:30.000000Z", "Event", CLOUD_POD, "NotTriggerScaleUp",
                         "pod didn't trigger scale-up: 1 max node group size reached"))
        return rows

    el = _verify(_timeline(edit))
    assert el.scale_up_events == 0 and el.scale_up_events_source == "none"
    assert el.cloud_pods_max == 0 and el.time_to_cloud_node_s is None and el.time_to_first_cloud_pod_ready_s is None
    assert el.scale_in_back_to_idc is None  # no spill-over: no spill-back is invented
    f = el.finding("autoscaler_scaled_up")
    assert not f.ok
    assert "no TriggeredScaleUp from the cluster-autoscaler" in f.detail
    assert "max node group size reached" in f.detail
    assert f.evidence[0].startswith(f"Event NotTriggerScaleUp {CLOUD_POD} 21:46:30: pod didn't trigger scale-up")
    assert not el.finding("cloud_node_ready").ok and "np-elastic" in el.finding("cloud_node_ready").detail
    assert not el.finding("cloud_pod_ready").ok
    assert el.finding("idc_pool_full").ok  # the IDC pool was full: that step did happen
    assert not el.finding("spill_back").ok and "no spill-back" in el.finding("spill_back").detail


def test_cloud_pod_removed_after_an_idc_pod_is_not_a_scale_in_back_to_idc():
    def edit(rows):
        for r in rows:
            if r["object"] == CLOUD_POD and r["reason"] == "PodDeleted":
                r["time"] = "2026-11-28T21:47:20.000000Z"
        return rows

    el = _verify(_timeline(edit))
    assert el.cloud_pods_removed_before_idc is False
    assert el.scale_in_back_to_idc is False
    f = el.finding("cloud_pods_removed_first")
    assert not f.ok
    assert IDC_POD in f.detail and CLOUD_POD in f.detail and "21:47:15" in f.detail and "21:47:20" in f.detail
    assert el.cloud_pods_max == 1  # the spill-over itself still counts


def test_one_step_scale_in_removing_cloud_and_idc_pods_together_is_a_scale_in_back_to_idc():
    # what a 3 -> 1 rescale looks like (recorded that way in another run): one ReplicaSet sync
    # requests both deletions in the same second, the cloud pod picked by its deletion cost
    def edit(rows):
        for r in rows:
            if r["object"] == IDC_POD and r["reason"] == "PodDeleted":
                r["time"] = "2026-11-28T21:47:10.000000Z"
        return rows

    el = _verify(_timeline(edit))
    assert el.cloud_pods_removed_before_idc is True and el.scale_in_back_to_idc is True
    assert el.finding("cloud_pods_removed_first").detail == "all 1 cloud pod(s) were removed before any IDC pod"


def test_elastic_node_still_there_at_the_end():
    def edit(rows):
        return [r for r in rows if not (r["reason"] in ("NodeDeleted", "ScaleDown", "ScaleDownEmpty")
                                        and r["time"] > "2026-11-28T21:46")]

    el = _verify(_timeline(edit))
    assert el.elastic_pool_back_to_min is False and el.scale_in_back_to_idc is False
    assert el.scale_down_events == 0 and el.time_to_elastic_pool_min_s is None
    f = el.finding("elastic_pool_back_to_min")
    assert not f.ok
    assert CLOUD_NODE in f.detail and "No ScaleDown/ScaleDownEmpty from the cluster-autoscaler" in f.detail
    assert el.cloud_pods_removed_before_idc is True  # the pod order was still right


def test_ended_before_the_node_was_removed():
    el = _verify(_timeline(), ended_at="2026-11-28T21:47:25+00:00")
    assert el.elastic_pool_back_to_min is False and el.scale_in_back_to_idc is False
    assert "scale-down-unneeded-time" in el.finding("elastic_pool_back_to_min").detail


def test_scale_down_counted_per_node_when_the_status_configmap_events_were_rate_limited():
    # on a long-lived autoscaler client-go drops the status ConfigMap's events (spam filter);
    # the node's own ScaleDown event still names the node (seen on the test bed after 8 runs)
    def edit(rows):
        return [r for r in rows if not (r["reason"] == "ScaleDownEmpty")]

    el = _verify(_timeline(edit))
    assert el.scale_down_events == 1 and el.scale_down_events_source == "ScaleDown on nodes"
    assert el.elastic_pool_back_to_min is True and el.scale_in_back_to_idc is True


def test_cloud_pod_never_removed_leaves_pods_off_idc():
    def edit(rows):
        return [r for r in rows if not (r["object"] == CLOUD_POD and r["reason"] == "PodDeleted")]

    el = _verify(_timeline(edit))
    assert el.cloud_pods_removed_before_idc is False and el.scale_in_back_to_idc is False
    f = el.finding("pods_left_on_idc")
    assert not f.ok and CLOUD_POD in f.detail and "np-elastic" in f.detail


def test_enough_idc_capacity_reports_no_spill_over_and_invents_none():
    # the same run cut at 21:46:15: the HPA scaled to 2 and both pods fit on the IDC pool
    el = _verify(_timeline(lambda rows: [r for r in rows if r["time"] < "2026-11-28T21:46:15"]),
                 cooldown_started_at="2026-11-28T21:46:10+00:00", ended_at="2026-11-28T21:46:15+00:00")
    assert (el.hpa_max_replicas, el.idc_pods_max, el.cloud_pods_max, el.scale_up_events) == (2, 2, 0, 0)
    assert el.scale_in_back_to_idc is None
    f = el.finding("idc_pool_full")
    assert not f.ok and "no FailedScheduling" in f.detail and "held 2" in f.detail
    assert "no pod was Pending" in el.finding("autoscaler_scaled_up").detail
    assert el.finding("cloud_pods_removed_first") is None and el.finding("pods_left_on_idc") is None


def test_hpa_that_never_rescaled_says_what_to_check():
    def edit(rows):
        return [r for r in rows if r["kind"] != "HPA" and r["reason"] != "SuccessfulRescale"]

    el = _verify(_timeline(edit))
    assert el.hpa_max_replicas is None and el.time_to_hpa_rescale_s is None
    f = el.finding("hpa_scaled_out")
    assert not f.ok and "no SuccessfulRescale from the HPA" in f.detail and "DCGM_CUSTOM_PROCESS_SM_UTIL" in f.detail


def test_observer_gaps_become_a_finding_and_naive_times_are_utc():
    tl = _timeline()
    tl.gaps = ["Event watch in kube-system: watch Event(v1) kube-system/: 403 events is forbidden"]
    naive = {k: pd.Timestamp(v).tz_convert("UTC").tz_localize(None).to_pydatetime() for k, v in MARKS.items()}
    el = verify(tl, _spec(), **naive)
    assert el.finding("observer_complete").evidence == tl.gaps
    assert el.time_to_hpa_rescale_s == 8.12


def test_summary_lists_the_figures_and_what_was_not_observed():
    text = summary(_verify(_timeline(lambda rows: [r for r in rows if r["reason"] != "TriggeredScaleUp"
                                                   and r["reason"] != "ScaledUpGroup"])))
    assert text.splitlines()[0].startswith("hpa_max_replicas=3, idc_pods_max=2, cloud_pods_max=1")
    assert "not observed: autoscaler_scaled_up: no TriggeredScaleUp" in text


def test_phase_and_traffic_time_of_the_spill_over_and_back():
    # fjwd4 Ready on the elastic node 21:46:52 (+56.12 s, before the cool-down at 21:46:59.7);
    # its deletion requested 21:47:10 (+74.12 s), after which no cloud pod is Ready
    phases = [SimpleNamespace(name="baseline", start="2026-11-28T21:45:40+00:00", end=MARKS["spike_started_at"]),
              SimpleNamespace(name="spike", start=MARKS["spike_started_at"], end=MARKS["cooldown_started_at"]),
              SimpleNamespace(name="cooldown", start=MARKS["cooldown_started_at"], end="2026-11-28T21:47:20+00:00")]
    el = _verify(_timeline(), load=SimpleNamespace(phases=phases), traffic_clock=lambda s: f"T+{s * 240:.0f}s")
    assert el.first_cloud_pod_ready_phase == "spike"
    assert el.time_to_cloud_pods_gone_s == 74.12
    assert el.spill_over_traffic_time == "T+13469s" and el.spill_back_traffic_time == "T+17789s"
    block = el.block()
    assert block["spill_over_traffic_time"] == "T+13469s" and block["first_cloud_pod_ready_phase"] == "spike"
    # the same run as a shorter load: the pod came up after the load ended
    short = [SimpleNamespace(name="spike", start=MARKS["spike_started_at"], end="2026-11-28T21:46:30+00:00")]
    assert _verify(_timeline(), load=SimpleNamespace(phases=short)).first_cloud_pod_ready_phase == "after"


def test_no_cloud_pod_leaves_the_spill_times_empty():
    def no_cloud(rows):
        return [r for r in rows if r["object"] != CLOUD_POD]

    el = _verify(_timeline(no_cloud), traffic_clock=lambda s: f"{s}")
    assert el.time_to_cloud_pods_gone_s is None
    assert el.spill_over_traffic_time is None and el.spill_back_traffic_time is None
    assert el.first_cloud_pod_ready_phase is None


# -- only this run's evidence, and the plumbing's silent failures ---------------------------------
HPA = f"{NS}/qwen-chat-hpa"


def test_a_blind_hpa_is_named_with_its_condition_and_counted():
    def edit(rows):
        return rows + [
            _row("2026-11-28T21:45:40.000000Z", "HPA", HPA, "HPACondition",
                 "ScalingActive=False (FailedGetPodsMetric): the HPA was unable to compute the replica count: "
                 "unable to get metric DCGM_CUSTOM_PROCESS_SM_UTIL", object_kind="HorizontalPodAutoscaler"),
            _row("2026-11-28T21:46:01.000000Z", "Event", HPA, "FailedGetPodsMetric",
                 "unable to get metric DCGM_CUSTOM_PROCESS_SM_UTIL: no metrics returned",
                 object_kind="HorizontalPodAutoscaler")]

    el = _verify(_timeline(edit))
    f = el.finding("hpa_metric_available")
    assert el.hpa_metric_failures == 2 and not f.ok
    assert "could not read DCGM_CUSTOM_PROCESS_SM_UTIL (2 time(s), already before the spike started)" in f.detail
    assert "FailedGetPodsMetric" in f.detail
    assert any("ScalingActive=False (FailedGetPodsMetric)" in e for e in f.evidence)


def test_stockout_not_triggered_and_a_node_that_never_became_ready_are_findings():
    def edit(rows):
        out = []
        for r in rows:
            if r["kind"] == "Autoscaler" and r.get("pool") == "np-elastic":
                r = {**r, "message": (r["message"] or "").replace("max=3", "max=0")}
            if r.get("node") == CLOUD_NODE and r["reason"] == "NodeReady":
                continue  # created, never Ready
            out.append(r)
        out.append(_row("2026-11-28T21:46:30.000000Z", "Event", CLOUD_POD, "NotTriggerScaleUp",
                        "pod didn't trigger scale-up: 1 max node group size reached"))
        return out

    el = _verify(_timeline(edit))
    assert el.not_trigger_scale_up_events == 1
    assert "max node group size reached" in el.finding("autoscaler_declined").detail
    assert el.elastic_pool_at_max_while_pending is True
    assert "at its max of 0 node(s)" in el.finding("elastic_pool_capacity").detail
    spec = load_spec(ROOT / "examples" / "qwen-chat.local.yaml",
                     [f"cluster.namespace={NS}", "cluster.max_node_provision_time_s=10"])
    late = verify(_timeline(edit), spec, **MARKS)
    assert late.nodes_not_ready_in_time == 1
    assert f"{CLOUD_NODE} was still not Ready after" in late.finding("nodes_provisioned").detail
    assert _verify(_timeline(edit)).nodes_not_ready_in_time == 0  # within the default 900 s


def test_only_the_elastic_groups_own_scale_ups_count():
    def edit(rows):
        rows = [r for r in rows if r["reason"] != "TriggeredScaleUp"]
        for r in rows:
            if r["reason"] == "ScaledUpGroup":
                r["message"] = (r["message"] or "").replace("group np-elastic ", "group np-other ")
        return rows

    el = _verify(_timeline(edit))
    assert el.scaled_up_group == 0 and el.scale_up_events == 0


def test_cloud_pods_ready_before_the_spike_are_named_not_counted():
    def edit(rows):
        early = f"{NS}/qwen-chat-predictor-546cc8969b-early"
        return rows + [
            _row("2026-11-28T21:40:00.000000Z", "Node", CLOUD_NODE + "x", "NodeCreated", "node created",
                 object_kind="Node", node=CLOUD_NODE + "x", pool="np-elastic"),
            _row("2026-11-28T21:40:10.000000Z", "Pod", early, "PodScheduled", "scheduled", node=CLOUD_NODE + "x",
                 pool="np-elastic"),
            _row("2026-11-28T21:40:20.000000Z", "Pod", early, "PodReady", "Ready", node=CLOUD_NODE + "x",
                 pool="np-elastic")]

    el = _verify(_timeline(edit))
    assert (el.cloud_pods_preexisting, el.elastic_nodes_preexisting) == (1, 1)
    assert el.cloud_pods_max == 1  # the run's own cloud pod only, not 2
    assert "not counted as this run's spill-over" in el.finding("preexisting_cloud_capacity").detail


def test_a_step_not_seen_while_events_were_lost_is_inconclusive():
    def edit(rows):
        return [r for r in rows if r["reason"] != "TriggeredScaleUp" and r["reason"] != "ScaledUpGroup"]

    tl = _timeline(edit)
    tl.gaps = ["Event watch in default: re-list failed"]
    f = _verify(tl).finding("autoscaler_scaled_up")
    assert not f.ok and f.inconclusive and "inconclusive: the observer lost events" in f.detail


def test_pods_the_replicaset_could_not_create_are_named():
    def edit(rows):
        return rows + [_row("2026-11-28T21:46:12.000000Z", "Event", f"{NS}/qwen-chat-predictor-546cc8969b",
                            "FailedCreate", 'pods "qwen-chat-predictor-546cc8969b-x" is forbidden: exceeded quota: '
                            "gpu-quota, requested: requests.nvidia.com/gpu=1", object_kind="ReplicaSet")]

    el = _verify(_timeline(edit))
    f = el.finding("replicas_created")
    assert el.failed_create_events == 1 and not f.ok and "exceeded quota" in f.detail
