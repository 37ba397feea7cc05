"""Unit tests of the observer: handlers, dedupe across re-listed watches, the autoscaler status
parser and the Timeline's derived series, with a fake Kube and a recorded timeline."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from tasks.errors import ClusterError
from tasks.observe import (
    AUTOSCALER_STATUS,
    COLUMNS,
    Observer,
    Timeline,
    _ts,
    event_line,
    parse_autoscaler_status,
)
from tasks.spec import load_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "spill_timeline.json"
NS = "obs-46c862"


def _spec(ns: str = NS):
    return load_spec(ROOT / "examples" / "qwen-chat.local.yaml", [f"cluster.namespace={ns}"])


def _fixture() -> Timeline:
    return Timeline.read_json(FIXTURE)


# -- fake cluster --------------------------------------------------------------------------------
class FakeKube:
    """``watch`` replays a script per (kind, namespace): every session yields the same objects
    again (as Kube.watch does after a re-list), then ends; after ``sessions`` sessions it waits
    for ``stop``. ``fail`` maps (kind, namespace) to a ClusterError to raise."""

    def __init__(self, scripts: dict[tuple[str, str | None], list[tuple[str, dict]]], *, sessions: int = 2,
                 fail: dict[tuple[str, str | None], ClusterError] | None = None):
        self.scripts, self.sessions, self.fail = scripts, sessions, fail or {}
        self.calls: dict[tuple[str, str | None], int] = {}
        self.done = threading.Event()

    def watch(self, api_version, kind, namespace=None, *, label_selector=None, field_selector=None,
              timeout_s=60.0, resource_version=None, stop=None, send_initial=True):
        key = (kind, namespace)
        if key in self.fail:
            raise self.fail[key]
        n = self.calls[key] = self.calls.get(key, 0) + 1
        if n <= self.sessions:
            yield from [(t, json.loads(json.dumps(o))) for t, o in self.scripts.get(key, [])]
            return
        self.done.set()
        stop.wait(5)


def _event(uid: str, reason: str, message: str, *, count: int = 1, last: str = "2026-11-28T21:40:09Z",
           kind: str = "Pod", name: str = "qwen-chat-predictor-abc-x1", ns: str = NS, component: str = "x") -> dict:
    return {"metadata": {"uid": uid, "name": f"{name}.{uid}", "namespace": ns, "resourceVersion": str(count)},
            "involvedObject": {"kind": kind, "name": name, "namespace": ns if kind != "Node" else None,
                               "uid": "pod-uid-1"},
            "reason": reason, "message": message, "count": count, "lastTimestamp": last,
            "firstTimestamp": "2026-11-28T21:40:00Z", "source": {"component": component}}


def _pod(*, node: str | None = None, ready: bool = False, deleting: bool = False, rv: int = 1) -> dict:
    conds = []
    if node:
        conds.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-28T21:40:09Z"})
    conds.append({"type": "Ready", "status": "True" if ready else "False",
                  "lastTransitionTime": "2026-11-28T21:40:11Z" if ready else "2026-11-28T21:40:05Z"})
    meta = {"name": "qwen-chat-predictor-abc-x1", "namespace": NS, "uid": "pod-uid-1",
            "creationTimestamp": "2026-11-28T21:40:05Z", "resourceVersion": str(rv)}
    if deleting:
        meta.update(deletionTimestamp="2026-11-28T21:41:00Z", deletionGracePeriodSeconds=30)
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": {"conditions": conds}}


def _node(name: str, pool: str, *, created: str = "2026-11-28T21:40:09Z") -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created,
                         "labels": {"alibabacloud.com/nodepool-id": pool}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": created}]}}


YAML_STATUS = """time: 2026-11-28 21:40:09.568 +0000 UTC
autoscalerStatus: Running
clusterWide:
  health:
    status: Healthy
nodeGroups:
- name: np-elastic
  health:
    status: Healthy
    nodeCounts:
      registered:
        total: 1
        ready: 1
    cloudProviderTarget: 1
    minSize: 0
    maxSize: 3
  scaleUp:
    status: InProgress
  scaleDown:
    status: NoCandidates
"""

LEGACY_STATUS = """Cluster-autoscaler status at 2024-03-01 10:00:05.123456789 +0000 UTC:
Cluster-wide:
  Health:      Healthy (ready=3 unready=0 notStarted=0 longNotStarted=0 registered=3 longUnregistered=0)
               LastProbeTime:      2024-03-01 10:00:05 +0000 UTC
  ScaleUp:     InProgress (ready=3 registered=3)

NodeGroups:
  Name:        asg-uf6abc
  Health:      Healthy (ready=1 unready=0 notStarted=0 longNotStarted=0 registered=1 longUnregistered=0 \
cloudProviderTarget=2 (minSize=0, maxSize=3))
               LastProbeTime:      2024-03-01 10:00:05 +0000 UTC
  ScaleUp:     InProgress (ready=1 cloudProviderTarget=2)
  ScaleDown:   NoCandidates (candidates=0)
"""


def _configmap(text: str, rv: str = "7") -> dict:
    meta = {"name": AUTOSCALER_STATUS, "namespace": "kube-system", "uid": "cm-uid", "resourceVersion": rv}
    return {"metadata": meta, "data": {"status": text}}


# -- tests ---------------------------------------------------------------------------------------
def test_timestamps_parse_rfc3339_and_go_format_to_utc():
    assert _ts("2026-11-28T21:40:09Z") == pd.Timestamp("2026-11-28 21:40:09", tz="UTC")
    assert _ts("2026-11-28T21:40:09.655806Z").microsecond == 655806
    assert _ts("2026-11-28 21:25:01.727938036 +0000 UTC") == pd.Timestamp("2026-11-28 21:25:01.727938036", tz="UTC")
    assert _ts("2026-11-28T23:40:09+02:00") == pd.Timestamp("2026-11-28 21:40:09", tz="UTC")
    assert _ts(None) is None and _ts("") is None and _ts("not a time") is None


def test_autoscaler_status_yaml_and_legacy_text():
    stamp, groups = parse_autoscaler_status(YAML_STATUS)
    assert stamp == pd.Timestamp("2026-11-28 21:40:09.568", tz="UTC")
    (g,) = groups
    assert (g.name, g.health, g.ready, g.registered, g.target, g.min_size, g.max_size, g.scale_up, g.scale_down) == \
        ("np-elastic", "Healthy", 1, 1, 1, 0, 3, "InProgress", "NoCandidates")
    # zero counts are omitted from the YAML
    _, (empty,) = parse_autoscaler_status(YAML_STATUS.replace("    nodeCounts:\n      registered:\n        total: 1\n"
                                                              "        ready: 1\n", ""))
    assert (empty.ready, empty.registered) == (0, 0)

    stamp, (legacy,) = parse_autoscaler_status(LEGACY_STATUS)
    assert stamp == pd.Timestamp("2024-03-01 10:00:05.123456789", tz="UTC")
    assert (legacy.name, legacy.health, legacy.ready, legacy.target, legacy.min_size, legacy.max_size,
            legacy.scale_up, legacy.scale_down) == ("asg-uf6abc", "Healthy", 1, 2, 0, 3, "InProgress", "NoCandidates")
    assert parse_autoscaler_status("garbage: [") == (None, [])


def test_observer_dedupes_events_and_states_across_relisted_sessions():
    spec = _spec()
    ev = _event("ev-1", "FailedScheduling", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    bumped = _event("ev-1", "FailedScheduling", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                    count=2, last="2026-11-28T21:40:12Z")
    scripts = {
        ("Event", NS): [("ADDED", ev), ("MODIFIED", ev), ("MODIFIED", bumped)],
        # each session replays older states too: they must not read as a readiness loss
        ("Pod", NS): [("ADDED", _pod()), ("MODIFIED", _pod(node="np-elastic-r48m7", rv=2)),
                      ("MODIFIED", _pod(node="np-elastic-r48m7", ready=True, rv=3))],
        ("Node", None): [("ADDED", _node("idc-gpu-0", "np-idc", created="2026-11-28T21:00:00Z")),
                         ("ADDED", _node("np-elastic-r48m7", "np-elastic"))],
        ("ConfigMap", "kube-system"): [("ADDED", _configmap(YAML_STATUS)),
                                       ("MODIFIED", _configmap(YAML_STATUS, "8"))],
    }
    kube = FakeKube(scripts, sessions=3)
    obs = Observer(kube, spec, run_id="t", event_history_s=10 ** 9).start()
    assert kube.done.wait(5)
    tl = obs.stop(grace_s=0)
    df = tl.df
    assert list(df.columns) == COLUMNS
    assert str(df["time"].dt.tz) == "UTC"
    failed = df[df["reason"] == "FailedScheduling"]
    # three sessions replayed the same objects: one row per occurrence (count 1 and count 2)
    assert len(failed) == 2
    assert list(failed["time"]) == [pd.Timestamp("2026-11-28 21:40:09", tz="UTC"),
                                    pd.Timestamp("2026-11-28 21:40:12", tz="UTC")]
    assert list(failed["count"]) == [1.0, 2.0]
    assert set(failed["source"]) == {"x"} and set(failed["object_kind"]) == {"Pod"}
    pods = df[df["kind"] == "Pod"]
    assert list(pods["reason"]) == ["PodCreated", "PodScheduled", "PodReady"]
    assert set(pods[pods["reason"] != "PodCreated"]["pool"]) == {"np-elastic"}  # pool from the node's label
    nodes = df[df["kind"] == "Node"]
    assert sorted(nodes["reason"]) == ["NodeCreated", "NodeCreated", "NodeReady", "NodeReady"]
    assert len(df[df["kind"] == "Autoscaler"]) == 1  # unchanged status written again: no new row
    assert tl.gaps == []
    ppp = tl.pods_per_pool()
    assert ppp.to_dict("records") == [{"time": pd.Timestamp("2026-11-28 21:40:11", tz="UTC"), "pool": "np-elastic",
                                       "pods": 1}]


def test_pod_deletion_time_is_the_request_time_not_the_grace_deadline():
    obs = Observer(FakeKube({}), _spec(), run_id="t")
    obs._on_pod("ADDED", _pod(node="idc-gpu-0", ready=True))
    obs._on_pod("MODIFIED", _pod(node="idc-gpu-0", ready=True, deleting=True, rv=2))
    obs._on_pod("DELETED", _pod(node="idc-gpu-0", ready=True, deleting=True, rv=3))
    df = obs.timeline().df
    deleted = df[df["reason"] == "PodDeleted"]
    assert len(deleted) == 1
    assert deleted["time"].iloc[0] == pd.Timestamp("2026-11-28 21:40:30", tz="UTC")  # 21:41:00 - 30 s
    assert "PodNotReady" not in set(df["reason"])  # terminating is a deletion, not a readiness loss


def test_node_deleted_without_timestamp_is_stamped_when_observed():
    obs = Observer(FakeKube({}), _spec(), run_id="t")
    node = _node("np-elastic-r48m7", "np-elastic")
    obs._on_node("ADDED", node)
    obs._on_node("DELETED", node)
    row = obs.timeline().df.iloc[-1]
    assert row["reason"] == "NodeDeleted" and row["message"].endswith("(time observed)")
    assert row["time"] == row["observed_at"]


def test_node_gpu_allocatable_is_recorded_once_when_the_device_plugin_registers_it():
    """A cloud node turns Ready with no nvidia.com/gpu, then the device plugin makes it allocatable:
    one NodeGPUAllocatable row, stamped when the watch saw it (no object stamps the change)."""
    obs = Observer(FakeKube({}), _spec(), run_id="t")
    node = _node("np-elastic-r48m7", "np-elastic")
    node["metadata"]["resourceVersion"] = "1"
    node["status"]["allocatable"] = {"cpu": "8", "nvidia.com/gpu": "0"}
    obs._on_node("ADDED", node)
    assert "NodeGPUAllocatable" not in set(obs.timeline().df["reason"])
    with_gpu = {**node, "metadata": {**node["metadata"], "resourceVersion": "2"},
                "status": {**node["status"], "allocatable": {"cpu": "8", "nvidia.com/gpu": "1"}}}
    obs._on_node("MODIFIED", with_gpu)
    obs._on_node("MODIFIED", {**with_gpu, "metadata": {**with_gpu["metadata"], "resourceVersion": "3"}})
    rows = obs.timeline().df
    gpu = rows[rows["reason"] == "NodeGPUAllocatable"]
    assert len(gpu) == 1 and gpu["node"].iloc[0] == "np-elastic-r48m7" and gpu["pool"].iloc[0] == "np-elastic"
    assert gpu["message"].iloc[0] == "nvidia.com/gpu allocatable: 1 (time observed)"
    assert gpu["time"].iloc[0] == gpu["observed_at"].iloc[0]


def test_hpa_rows_for_replica_and_metric_changes_only():
    obs = Observer(FakeKube({}), _spec(), run_id="t")

    def hpa(current, desired, value, t):
        metric = {"name": "DCGM_CUSTOM_PROCESS_SM_UTIL"}
        return {"metadata": {"name": "qwen-chat-hpa", "namespace": NS, "uid": "hpa-uid",
                             "resourceVersion": t[14:16] + t[17:19],
                             "managedFields": [{"manager": "kube-controller-manager", "subresource": "status",
                                                "time": t}]},
                "spec": {"metrics": [{"type": "Pods", "pods": {
                    "metric": metric, "target": {"type": "AverageValue", "averageValue": "50"}}}]},
                "status": {} if current is None else {
                    "currentReplicas": current, "desiredReplicas": desired,
                    "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": "DCGM_CUSTOM_PROCESS_SM_UTIL"},
                                                                 "current": {"averageValue": value}}}]}}

    obs._on_hpa("ADDED", hpa(None, None, None, "2026-11-28T21:39:00Z"))
    obs._on_hpa("MODIFIED", hpa(1, 1, "0", "2026-11-28T21:39:10Z"))
    obs._on_hpa("MODIFIED", hpa(1, 1, "30682m", "2026-11-28T21:39:15Z"))
    obs._on_hpa("MODIFIED", hpa(1, 1, "30682m", "2026-11-28T21:39:16Z"))
    obs._on_hpa("MODIFIED", hpa(1, 2, "80742m", "2026-11-28T21:39:20Z"))
    df = obs.timeline().df
    assert list(df["reason"]) == ["HPAReplicas", "HPAMetric", "HPAReplicas"]
    last = df.iloc[-1]
    assert (last["replicas"], last["desired_replicas"], last["metric_value"]) == (1.0, 2.0, 80.742)
    assert last["time"] == pd.Timestamp("2026-11-28 21:39:20", tz="UTC")
    assert last["message"] == "current 1, desired 2; DCGM_CUSTOM_PROCESS_SM_UTIL 80.742 (target 50)"


def test_hpa_condition_changes_are_rows_the_normal_state_is_not():
    obs = Observer(FakeKube({}), _spec(), run_id="t")

    def hpa(rv, active, reason, t):
        return {"metadata": {"name": "qwen-chat-hpa", "namespace": NS, "uid": "hpa-uid", "resourceVersion": rv},
                "spec": {"metrics": []},
                "status": {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [
                    {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "lastTransitionTime": t},
                    {"type": "ScalingActive", "status": active, "reason": reason, "lastTransitionTime": t,
                     "message": "the HPA was unable to compute the replica count"}]}}

    obs._on_hpa("ADDED", hpa("1", "True", "ValidMetricFound", "2026-11-28T21:39:00Z"))
    obs._on_hpa("MODIFIED", hpa("2", "False", "FailedGetPodsMetric", "2026-11-28T21:39:30Z"))
    obs._on_hpa("MODIFIED", hpa("3", "False", "FailedGetPodsMetric", "2026-11-28T21:39:30Z"))
    obs._on_hpa("MODIFIED", hpa("4", "False", "FailedComputeMetricsReplicas", "2026-11-28T21:39:30Z"))  # same status
    obs._on_hpa("MODIFIED", hpa("5", "True", "ValidMetricFound", "2026-11-28T21:40:00Z"))
    rows = obs.timeline().df
    rows = rows[rows["reason"] == "HPACondition"]
    assert [m.split(":")[0] for m in rows["message"]] == ["ScalingActive=False (FailedGetPodsMetric)",
                                                          "ScalingActive=True (ValidMetricFound)"]
    assert rows.iloc[0]["time"] == pd.Timestamp("2026-11-28 21:39:30", tz="UTC")


def test_event_series_time_and_old_history_left_out():
    obs = Observer(FakeKube({}), _spec(), run_id="t", event_history_s=60)
    obs._started_at = pd.Timestamp("2026-11-28 21:40:00", tz="UTC")
    series = _event("ev-s", "FailedScheduling", "0/3 nodes are available", count=1)
    series.update(count=None, lastTimestamp=None, eventTime="2026-11-28T21:40:01.5Z",
                  series={"count": 3, "lastObservedTime": "2026-11-28T21:40:20.250000Z"})
    old = _event("ev-old", "ScaledUpGroup", "Scale-up: setting group np-elastic size to 1",
                 last="2026-11-28T21:30:00Z", kind="ConfigMap", name=AUTOSCALER_STATUS, ns="kube-system")
    obs._on_event("ADDED", series)
    obs._on_event("ADDED", old)
    df = obs.timeline().df
    assert list(df["reason"]) == ["FailedScheduling"]
    assert df["time"].iloc[0] == pd.Timestamp("2026-11-28 21:40:20.25", tz="UTC")


def test_unreadable_namespace_is_a_gap_not_a_silence():
    spec = _spec()
    err = ClusterError("watch Event(v1) kube-system/: 403 events is forbidden")
    kube = FakeKube({("Node", None): [("ADDED", _node("idc-gpu-0", "np-idc"))]}, sessions=1,
                    fail={("Event", "kube-system"): err})
    obs = Observer(kube, spec, run_id="t").start()
    assert kube.done.wait(5)
    tl = obs.stop(grace_s=0)
    assert any("403" in g and "kube-system" in g for g in tl.gaps)
    assert kube.calls.get(("Event", "kube-system")) is None  # fatal: not retried


def test_watches_cover_the_namespaces_the_brief_names():
    obs = Observer(FakeKube({}), _spec(), run_id="t")
    got = {(w.kind, w.namespace, w.field_selector, w.label_selector) for w in obs.watches()}
    assert ("HorizontalPodAutoscaler", NS, "metadata.name=qwen-chat-hpa", None) in got
    assert ("Event", NS, None, None) in got
    assert ("Event", "kube-system", f"involvedObject.name={AUTOSCALER_STATUS}", None) in got
    assert ("Event", "default", "involvedObject.kind=Node", None) in got
    assert ("ConfigMap", "kube-system", f"metadata.name={AUTOSCALER_STATUS}", None) in got
    assert ("Pod", NS, None, "app=isvc.qwen-chat-predictor") in got
    assert ("Node", None, None, None) in got
    # the service in `default`: one watch of all its events, node events included
    kinds = [(w.kind, w.namespace) for w in Observer(FakeKube({}), _spec("default"), run_id="t").watches()]
    assert kinds.count(("Event", "default")) == 1


def test_recorded_timeline_series_and_files(tmp_path):
    tl = _fixture()
    assert tl.idc_pool_id == "np-idc" and tl.elastic_pool_id == "np-elastic" and tl.gaps == []
    assert set(tl.df["kind"]) == {"HPA", "Event", "Pod", "Node", "Autoscaler"}
    t = lambda s: pd.Timestamp(f"2026-11-28 {s}", tz="UTC")  # noqa: E731
    assert tl.pods_per_pool().to_dict("records") == [
        {"time": t("21:45:52"), "pool": "np-idc", "pods": 1},
        {"time": t("21:46:07"), "pool": "np-idc", "pods": 2},
        {"time": t("21:46:52"), "pool": "np-elastic", "pods": 1},
        {"time": t("21:47:10"), "pool": "np-elastic", "pods": 0},
        {"time": t("21:47:15"), "pool": "np-idc", "pods": 1},
    ]
    nodes = tl.nodes_per_pool()
    assert nodes[nodes["pool"] == "np-elastic"].to_dict("records") == [
        {"time": t("21:46:50"), "pool": "np-elastic", "nodes": 1},
        {"time": t("21:47:30.892686"), "pool": "np-elastic", "nodes": 0},
    ]
    assert Timeline.value_at(nodes, "np-idc", t("21:47:00"), "nodes") == 2
    # an event object that occurs again is one row per occurrence, with its count
    grown = tl.df[tl.df["message"] == "Scale-up: setting group np-elastic size to 1 instead of 0 (max: 3)"]
    assert list(grown["count"]) == [6.0, 7.0] and grown["uid"].nunique() == 1

    back = Timeline.read_csv(tl.to_csv(tmp_path / "timeline.csv"))
    pd.testing.assert_frame_equal(back.df, tl.df, check_dtype=False)
    again = Timeline.read_json(tl.to_json(tmp_path / "timeline.json"))
    pd.testing.assert_frame_equal(again.df, tl.df)
    assert again.started_at == tl.started_at


def test_event_line_is_what_findings_cite():
    tl = _fixture()
    row = tl.df[tl.df["reason"] == "TriggeredScaleUp"].iloc[0]
    assert event_line(row.to_dict()) == (f"Event TriggeredScaleUp {NS}/qwen-chat-predictor-546cc8969b-fjwd4 "
                                         "21:46:50: pod triggered scale-up: [{np-elastic 0->1 (max: 3)}]")
