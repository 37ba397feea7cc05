"""Critical path of scale events and the violation bill, on recorded test-bed timelines and hand-made ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.critical_path import (
    DOWN_STEPS,
    NO_EVENT,
    UP_STEPS,
    ScaleEvent,
    Step,
    bill_sentence,
    scale_events,
    violation_bill,
)
from tasks.goodput import good_mask
from tasks.observe import Timeline

FIXTURES = Path(__file__).parent / "fixtures" / "critical_path"
POOLS = {"hpa_target": 50.0, "elastic_pool": "np-elastic", "idc_pool": "np-idc"}
CLOUD_STEPS = ["autoscaler decision", "node created", "node Ready", "node GPU allocatable"]


@pytest.fixture(scope="module")
def openloop_meta() -> dict:
    return json.loads((FIXTURES / "spike-openloop.meta.json").read_text())


@pytest.fixture(scope="module")
def openloop_timeline() -> Timeline:
    return Timeline.read_csv(FIXTURES / "spike-openloop.timeline.csv")


@pytest.fixture(scope="module")
def openloop_events(openloop_timeline, openloop_meta) -> list[ScaleEvent]:
    return scale_events(openloop_timeline, load_started_at=openloop_meta["load_started_at"],
                        phases=openloop_meta["phases"], **POOLS)


def _names(event: ScaleEvent) -> list[str]:
    return [s.step for s in event.steps]


def _check_ordered_and_adding_up(event: ScaleEvent) -> None:
    known = event.known_steps
    times = [s.at for s in known]
    assert times == sorted(times), event.block()
    canonical = UP_STEPS if event.direction == "up" else DOWN_STEPS
    assert _names(event) == [n for n in canonical if n in _names(event)]  # causal order kept
    assert known[0].seconds == 0.0
    assert abs(sum(s.seconds for s in known) - event.total_s) < 1.0
    assert abs(sum(s.seconds for s in known) - event.total_s) < 0.01  # in fact, to rounding
    for s in event.steps:
        assert (s.seconds is None) == (s.at is None)
        if not s.known:
            assert s.evidence.startswith("unknown: ") and len(s.evidence) > len("unknown: ") + 10


# -- recorded timelines ---------------------------------------------------------------------------
def test_critical_path_openloop_has_two_up_and_two_down_events(openloop_events):
    shape = [(e.direction, e.replicas_from, e.replicas_to, e.pool) for e in openloop_events]
    assert shape == [("up", 1, 2, "np-idc"), ("up", 2, 3, "np-elastic"),
                     ("down", 3, 2, "np-elastic"), ("down", 2, 1, "np-idc")]
    assert openloop_events[1].pod == openloop_events[2].pod == "default/qwen-chat-predictor-65c447fffd-zrzsr"
    assert openloop_events[0].pod == "default/qwen-chat-predictor-65c447fffd-tnkk6"


def test_critical_path_openloop_idc_scale_up_needs_no_autoscaler(openloop_events):
    idc = openloop_events[0]
    assert _names(idc) == ["load step", "metric above target", "HPA desired increase", "pod created",
                           "pod scheduled", "image pulled", "container started", "pod Ready", "first request served"]
    assert set(idc.not_needed) == set(CLOUD_STEPS) | {"pod Pending on IDC"}
    assert idc.step("HPA desired increase").at == pd.Timestamp("2026-12-06T04:48:57Z")
    assert "SuccessfulRescale" in idc.step("HPA desired increase").evidence


def test_critical_path_openloop_cloud_scale_up_has_every_step_in_order(openloop_events, openloop_meta):
    cloud = openloop_events[1]
    assert _names(cloud) == list(UP_STEPS)
    assert cloud.not_needed == []
    at = {s.step: s.at for s in cloud.steps}
    assert at["load step"] == pd.Timestamp(openloop_meta["phases"][1]["start"])  # the spike's start
    assert at["metric above target"] == pd.Timestamp("2026-12-06T04:49:02Z")     # after the 1->2 rescale
    assert at["HPA desired increase"] == pd.Timestamp("2026-12-06T04:49:07Z")
    assert "FailedScheduling" in cloud.step("pod Pending on IDC").evidence
    assert "TriggeredScaleUp" in cloud.step("autoscaler decision").evidence
    assert "np-elastic-lmmxn" in cloud.step("node Ready").evidence
    assert at["pod Ready"] > at["node Ready"]
    assert at["pod Ready"] >= at["pod scheduled"] >= at["node Ready"] >= at["node created"] >= at["autoscaler decision"]
    assert cloud.step("autoscaler decision").seconds == pytest.approx(30.08, abs=0.01)
    for name in ("node GPU allocatable", "image pulled", "container started", "first request served"):
        assert not cloud.step(name).known and cloud.step(name).evidence.startswith("unknown: ")
    assert "requests" in cloud.step("first request served").evidence
    assert cloud.total_s == pytest.approx((at["pod Ready"] - at["load step"]).total_seconds(), abs=0.001)


def test_critical_path_openloop_scale_down_removes_the_cloud_pod_first(openloop_events):
    first, second = openloop_events[2], openloop_events[3]
    assert _names(first) == list(DOWN_STEPS)
    assert first.pool == "np-elastic" and second.pool == "np-idc"
    assert first.step("pod deleted").at < second.step("pod deleted").at
    assert "marked the node as toBeDeleted" in first.step("node marked for deletion").evidence
    assert "NodeDeleted" in first.step("node removed").evidence
    assert "CandidatesPresent" in first.step("node unneeded").evidence
    assert all(s.known for s in first.steps)
    # the second scale-in took an IDC pod: its node steps are not needed, not unknown
    assert _names(second) == ["metric below target", "HPA desired decrease", "pod deleted"]
    assert set(second.not_needed) == {"node unneeded", "node marked for deletion", "node removed"}
    # the HPA's scale-down stabilization is the gap between the metric and the decrease
    assert second.step("HPA desired decrease").seconds == pytest.approx(86.0)


def test_critical_path_openloop_steps_ordered_and_adding_up(openloop_events):
    for event in openloop_events:
        _check_ordered_and_adding_up(event)


def test_critical_path_block_is_json(openloop_events):
    blocks = [e.block() for e in openloop_events]
    text = json.dumps(blocks)
    assert json.loads(text) == blocks
    block = blocks[1]
    assert set(block) >= {"direction", "replicas_from", "replicas_to", "pool", "steps", "total_s"}
    step = block["steps"][0]
    assert set(step) == {"step", "started_at", "seconds", "evidence"}
    assert pd.Timestamp(step["started_at"]).tzinfo is not None
    unknown = next(s for s in block["steps"] if s["step"] == "image pulled")
    assert unknown["started_at"] is None and unknown["seconds"] is None


def test_critical_path_step_timeline_structure():
    tl = Timeline.read_csv(FIXTURES / "spike-step.timeline.csv")
    events = scale_events(tl, load_started_at=None, phases=None, **POOLS)
    shape = [(e.direction, e.replicas_from, e.replicas_to, e.pool) for e in events]
    # the recording stopped before the HPA went back to 1
    assert shape == [("up", 1, 2, "np-idc"), ("up", 2, 3, "np-elastic"), ("down", 3, 2, "np-elastic")]
    for event in events:
        _check_ordered_and_adding_up(event)
    up_cloud, down_cloud = events[1], events[2]
    assert _names(up_cloud) == list(UP_STEPS) and _names(down_cloud) == list(DOWN_STEPS)
    assert up_cloud.step("pod Ready").at > up_cloud.step("node Ready").at
    assert all(up_cloud.step(n).known for n in ("pod Pending on IDC", "autoscaler decision", "node created",
                                                "node Ready", "pod scheduled"))
    # no load start given: the load step is unknown and says why, the rest stands
    assert up_cloud.step("load step").evidence == "unknown: neither the load start nor its phases were given"
    assert up_cloud.step("metric above target").known
    assert all(s.known for s in down_cloud.steps)


def test_critical_path_missing_autoscaler_event_is_unknown_others_intact(openloop_timeline, openloop_meta):
    df = openloop_timeline.df
    cut = df[~df["reason"].isin(["TriggeredScaleUp", "ScaledUpGroup"])]
    kwargs = {"load_started_at": openloop_meta["load_started_at"], "phases": openloop_meta["phases"], **POOLS}
    full = scale_events(df, **kwargs)[1]
    part = scale_events(cut, **kwargs)[1]
    decision = part.step("autoscaler decision")
    assert not decision.known and decision.evidence.startswith("unknown: ")
    assert _names(part) == _names(full)
    for a, b in zip(full.steps, part.steps):
        if a.step != "autoscaler decision":
            assert (a.at, a.evidence) == (b.at, b.evidence)
    # the unknown step's time is inside the next known step's seconds
    assert part.step("node created").seconds == pytest.approx(
        full.step("autoscaler decision").seconds + full.step("node created").seconds)
    assert part.total_s == full.total_s
    _check_ordered_and_adding_up(part)


# -- hand-made timelines ---------------------------------------------------------------------------
T0 = pd.Timestamp("2026-01-01T10:00:00Z")


def _at(s: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(seconds=s)


def _row(s: float, kind: str, obj: str, reason: str, message: str = "", **extra) -> dict:
    object_kind = {"HPA": "HorizontalPodAutoscaler", "Pod": "Pod", "Node": "Node"}.get(kind, extra.pop("ok", "Pod"))
    return {"time": _at(s), "observed_at": _at(s), "kind": kind, "object": obj, "object_kind": object_kind,
            "reason": reason, "message": message, **extra}


def _hpa(s: float, current: int, desired: int, metric: float) -> dict:
    return _row(s, "HPA", "ns/hpa", "HPAReplicas" if current != desired or s == 0 else "HPAMetric",
                f"current {current}, desired {desired}", replicas=current, desired_replicas=desired,
                metric_value=metric)


def _overlapping_rows() -> list[dict]:
    """1->2 at 10 s, then 2->3 at 15 s while the first new pod still waits for a cloud node."""
    return [
        _row(-100, "Node", "idc-0", "NodeCreated", pool="np-idc", node="idc-0"),
        _row(-100, "Node", "idc-0", "NodeReady", pool="np-idc", node="idc-0"),
        _hpa(0, 1, 1, 30.0),
        _hpa(5, 1, 1, 70.0),
        _hpa(10, 1, 2, 80.0),
        _row(10, "Pod", "ns/p-a", "PodCreated"),
        _row(10.5, "Event", "ns/p-a", "FailedScheduling", "0/1 nodes are available"),
        _hpa(12, 2, 2, 75.0),
        _hpa(15, 2, 3, 78.0),
        _row(15, "Pod", "ns/p-b", "PodCreated"),
        _row(16, "Pod", "ns/p-b", "PodScheduled", "scheduled to idc-0", pool="np-idc", node="idc-0"),
        _row(19, "Pod", "ns/p-b", "PodReady", "Ready on idc-0", pool="np-idc", node="idc-0"),
        _row(20, "Event", "ns/p-a", "TriggeredScaleUp", "pod triggered scale-up"),
        _row(25, "Node", "el-1", "NodeCreated", pool="np-elastic", node="el-1"),
        _row(40, "Node", "el-1", "NodeReady", pool="np-elastic", node="el-1"),
        _row(41, "Pod", "ns/p-a", "PodScheduled", "scheduled to el-1", pool="np-elastic", node="el-1"),
        _row(50, "Pod", "ns/p-a", "PodReady", "Ready on el-1", pool="np-elastic", node="el-1"),
    ]


def test_critical_path_two_overlapping_up_events_get_their_own_steps():
    tl = Timeline.from_rows(_overlapping_rows())
    events = scale_events(tl, load_started_at=_at(0), phases=[{"name": "spike", "start": _at(2), "end": _at(60)}],
                          **POOLS)
    assert [(e.replicas_from, e.replicas_to, e.pod, e.pool) for e in events] == [
        (1, 2, "ns/p-a", "np-elastic"), (2, 3, "ns/p-b", "np-idc")]
    first, second = events
    at = {s.step: s.at for s in first.steps if s.known}
    assert at == {"load step": _at(2), "metric above target": _at(5), "HPA desired increase": _at(10),
                  "pod created": _at(10), "pod Pending on IDC": _at(10.5), "autoscaler decision": _at(20),
                  "node created": _at(25), "node Ready": _at(40), "pod scheduled": _at(41), "pod Ready": _at(50)}
    at2 = {s.step: s.at for s in second.steps if s.known}
    # the second signal counts from after the first rescale; its pod is the one made after it
    assert at2 == {"load step": _at(2), "metric above target": _at(12), "HPA desired increase": _at(15),
                   "pod created": _at(15), "pod scheduled": _at(16), "pod Ready": _at(19)}
    assert set(second.not_needed) == set(CLOUD_STEPS) | {"pod Pending on IDC"}
    assert first.total_s == 48.0 and second.total_s == 17.0
    for e in events:
        _check_ordered_and_adding_up(e)


def test_critical_path_rescale_by_two_gives_an_event_per_pod_and_unknown_when_no_pod():
    rows = [_hpa(0, 1, 1, 30.0), _hpa(5, 1, 3, 90.0),
            _row(5, "Pod", "ns/p-a", "PodCreated"), _row(6, "Pod", "ns/p-a", "PodScheduled", pool="np-idc",
                                                         node="idc-0"),
            _row(8, "Pod", "ns/p-a", "PodReady", pool="np-idc", node="idc-0")]
    events = scale_events(Timeline.from_rows(rows), load_started_at=_at(0), phases=None, **POOLS)
    assert [(e.replicas_from, e.replicas_to, e.pod) for e in events] == [(1, 3, "ns/p-a"), (1, 3, None)]
    orphan = events[1]
    assert orphan.step("pod created").evidence.startswith("unknown: no pod was created")
    assert orphan.step("HPA desired increase").known
    _check_ordered_and_adding_up(orphan)


def test_critical_path_out_of_order_stamp_taken_as_simultaneous():
    rows = [r for r in _overlapping_rows() if r["object"] not in ("ns/p-b",)]
    rows = [r for r in rows if not (r["kind"] == "HPA" and r["time"] >= _at(15))]
    for r in rows:  # the decision event stamped a second after the node it created
        if r["reason"] == "TriggeredScaleUp":
            r["time"] = _at(26)
    event = scale_events(Timeline.from_rows(rows), load_started_at=_at(0), phases=None, **POOLS)[0]
    decision, node = event.step("autoscaler decision"), event.step("node created")
    assert decision.at == _at(26) and node.at == _at(26) and node.seconds == 0.0
    assert "taken as simultaneous" in node.evidence
    _check_ordered_and_adding_up(event)


def test_critical_path_first_request_served_from_a_pod_column():
    tl = Timeline.from_rows(_overlapping_rows())
    requests = pd.DataFrame({"id": [1, 2, 3, 4], "t_s": [45.0, 51.0, 52.0, 18.0], "ok": [True, True, True, True],
                             "ttft_ms": [100.0, 200.0, 50.0, 80.0], "pod": [None, "p-a", "p-a", "p-b"]})
    events = scale_events(tl, load_started_at=_at(0), phases=None, requests_df=requests, **POOLS)
    served = events[0].step("first request served")
    assert served.at == _at(51.2) and served.seconds == pytest.approx(1.2)
    assert "request 2" in served.evidence
    # p-b's only request was sent before it was Ready: taken as simultaneous, never before Ready
    assert events[1].step("first request served").at >= events[1].step("pod Ready").at
    no_column = scale_events(tl, load_started_at=_at(0), phases=None, requests_df=requests.drop(columns="pod"),
                             **POOLS)[0]
    assert no_column.step("first request served").evidence.startswith("unknown: the requests table has no 'pod'")


# -- the violation bill ----------------------------------------------------------------------------
def _event(direction: str, steps: list[tuple[str, float]], start: int = 0) -> ScaleEvent:
    out, last = [], None
    for name, s in steps:
        at = _at(s) if s is not None else None
        out.append(Step(name, at, None if at is None else (0.0 if last is None else s - last), "row"))
        last = s if s is not None else last
    return ScaleEvent(direction, 1, 2, "np-elastic", "ns/p", out)


def _requests(bad_at: list[float], good_at: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"t_s": bad_at + good_at, "good": [False] * len(bad_at) + [True] * len(good_at),
                         "phase": ["spike"] * (len(bad_at) + len(good_at))})


def test_violation_bill_hand_made_counts_per_step():
    up = _event("up", [("load step", 0), ("metric above target", 10), ("HPA desired increase", 20),
                       ("pod created", 20), ("pod Pending on IDC", 21), ("autoscaler decision", 30),
                       ("node created", 40), ("node Ready", 60), ("node GPU allocatable", None),
                       ("pod scheduled", 60), ("pod Ready", 70)])
    bad = [1, 2, 3] + [12] + [22, 25] + [31, 35, 45, 55, 59.9] + [65, 66] + [80, 90, 100]
    requests = _requests(bad, good_at=[5, 33, 44, 75])
    requests.loc[len(requests)] = {"t_s": 50.0, "good": False, "phase": "spike"}
    requests["cancelled"] = False
    requests.loc[len(requests) - 1, "cancelled"] = True  # cancelled: counts nowhere
    bill = violation_bill(requests, [up], load_started_at=T0, good="good",
                          phases=[{"name": "spike", "start": T0, "end": _at(85)},
                                  {"name": "cooldown", "start": _at(85), "end": _at(200)}])
    counts = {b["step"]: b["requests"] for b in bill}
    assert counts == {"waiting for the cloud node": 5, "waiting for the load to show in the HPA metric (signal lag)": 3,
                      NO_EVENT: 3, "waiting for the autoscaler's decision": 2,
                      "waiting for the new pod to warm up": 2,
                      "waiting for the HPA to ask for more replicas (ask lag)": 1}
    assert [b["requests"] for b in bill] == sorted((b["requests"] for b in bill), reverse=True)
    assert sum(b["share"] for b in bill) == pytest.approx(1.0, abs=1e-3)
    assert bill[0]["share"] == pytest.approx(5 / 16, abs=1e-4)
    assert bill[0]["span"] == "autoscaler decision -> node Ready"
    idle = next(b for b in bill if b["step"] == NO_EVENT)
    assert idle["phases"] == {"spike": 1, "cooldown": 2}
    assert bill_sentence(bill[0]) == ("5 requests (31% of all violations) were sent while the service waited for "
                                      "the cloud node (autoscaler decision -> node Ready)")
    assert bill_sentence(idle) == "3 requests (19% of all violations) were sent while no scale event was in progress"
    lag = next(b for b in bill if "ask lag" in b["step"])
    assert bill_sentence(lag).endswith("waited for the HPA to ask for more replicas (ask lag: metric above target "
                                       "-> HPA desired increase)")


def test_violation_bill_overlap_goes_to_the_event_that_started_first_and_down_steps():
    first = _event("up", [("load step", 0), ("metric above target", 10), ("HPA desired increase", 20),
                          ("pod Ready", 40)])
    second = _event("up", [("load step", 5), ("metric above target", 25), ("HPA desired increase", 30),
                           ("pod Ready", 60)])
    down = _event("down", [("metric below target", 100), ("HPA desired decrease", 130), ("pod deleted", 130),
                           ("node unneeded", 135), ("node marked for deletion", 150), ("node removed", 151)])
    requests = _requests([7, 35, 45, 110, 140], good_at=[])
    bill = violation_bill(requests, [second, down, first], load_started_at=T0, good=lambda r: r["good"])
    counts = {b["step"]: b["requests"] for b in bill}
    assert counts == {"waiting for the load to show in the HPA metric (signal lag)": 1,  # 7 s: the first's
                      "waiting for the new pod to warm up": 2,  # 35 s: the first's, 45 s: the second's
                      "waiting for the HPA to scale in (stabilization)": 1,
                      "waiting for the cloud node to be removed": 1}
    assert violation_bill(_requests([], good_at=[1, 2]), [first], load_started_at=T0) == []


def test_violation_bill_on_recorded_requests_ttft_150(openloop_events, openloop_meta):
    requests = pd.read_csv(FIXTURES / "spike-openloop.requests.csv.gz")
    bill = violation_bill(requests, openloop_events, load_started_at=openloop_meta["load_started_at"],
                          good=lambda r: good_mask(r, {"ttft_ms": 150.0}), phases=openloop_meta["phases"])
    violations = int((~good_mask(requests, {"ttft_ms": 150.0})).sum())
    assert violations > 0
    assert sum(b["requests"] for b in bill) == violations
    assert sum(b["share"] for b in bill) == pytest.approx(1.0, abs=1e-3)
    assert [b["requests"] for b in bill] == sorted((b["requests"] for b in bill), reverse=True)
    largest = bill[0]
    # with three pods the HPA was at its max and TTFT still above 150 ms through spike and hold
    assert largest["step"] == NO_EVENT
    assert set(largest["phases"]) <= {"baseline", "spike", "hold", "cooldown"}
    assert "waiting for the new pod to warm up" in {b["step"] for b in bill}
    sentence = bill_sentence(largest)
    assert sentence.startswith(f"{largest['requests']} requests (") and "% of all violations)" in sentence


def test_critical_path_existing_elastic_node_and_pending_pod():
    rows = [
        _row(-100, "Node", "el-0", "NodeCreated", pool="np-elastic", node="el-0"),
        _row(-100, "Node", "el-0", "NodeReady", pool="np-elastic", node="el-0"),
        _hpa(0, 1, 1, 30.0), _hpa(5, 1, 2, 90.0),
        _row(5, "Pod", "ns/p-a", "PodCreated"),
        _row(6, "Pod", "ns/p-a", "PodScheduled", "scheduled to el-0", pool="np-elastic", node="el-0"),
        _row(9, "Pod", "ns/p-a", "PodReady", pool="np-elastic", node="el-0"),
        _hpa(10, 2, 2, 80.0), _hpa(15, 2, 3, 85.0),
        _row(15, "Pod", "ns/p-b", "PodCreated"),
        _row(16, "Event", "ns/p-b", "FailedScheduling", "0/2 nodes are available"),
    ]
    # a plain DataFrame (as read from timeline.csv) works as well as a Timeline
    df = pd.DataFrame(rows).astype({"time": str})
    on_existing, pending = scale_events(df, load_started_at=_at(0), phases=None, **POOLS)
    assert on_existing.pool == "np-elastic" and set(on_existing.not_needed) == set(CLOUD_STEPS) | {"pod Pending on IDC"}
    assert pending.pool is None and pending.step("pod Pending on IDC").known
    assert pending.step("autoscaler decision").evidence.startswith("unknown: no TriggeredScaleUp")
    assert pending.step("node Ready").evidence.startswith("unknown: the pod was never scheduled")
    assert pending.step("pod Ready").evidence == "unknown: the pod was never Ready in the timeline"
    assert pending.total_s == 16.0  # load start -> FailedScheduling
    _check_ordered_and_adding_up(pending)


def test_violation_bill_names_the_lags_an_unknown_step_hides():
    up = _event("up", [("load step", 0), ("pod Pending on IDC", 10), ("autoscaler decision", None),
                       ("node created", 40), ("pod Ready", 50)])
    bill = violation_bill(_requests([12, 30, 45], good_at=[]), [up], load_started_at=T0)
    merged = next(b for b in bill if b["requests"] == 2)
    assert merged["step"] == ("waiting for the autoscaler's decision or for the cloud node "
                              "(autoscaler decision unknown)")
    assert merged["span"] == "pod Pending on IDC -> node created"
    assert "waited for the autoscaler's decision or for the cloud node" in bill_sentence(merged)


# -- a recorded ack-gpu run (make demo-ack-timing, first run): minutes between the HPA's changes ----
def test_critical_path_ack_gpu_pods_belong_to_the_change_that_made_them():
    """A new HPA's status reads desired 0 until its metric is served: that is not a scale to zero.
    With ACK's timings the second IDC pod loads for minutes, so the cloud pod is created 316 s
    after the first rescale, by the second: each pod belongs to the change it followed."""
    meta = json.loads((FIXTURES / "spike-ack-gpu.meta.json").read_text())
    events = scale_events(Timeline.read_csv(FIXTURES / "spike-ack-gpu.timeline.csv"),
                          load_started_at=meta["load_started_at"], phases=meta["phases"], **POOLS)
    shape = [(e.direction, e.replicas_from, e.replicas_to, e.pool, e.pod.rsplit("-", 1)[-1] if e.pod else None)
             for e in events]
    assert shape == [("up", 1, 2, "np-idc", "4cnft"), ("up", 2, 3, "np-elastic", "khs72"),
                     ("down", 3, 2, "np-elastic", "khs72"), ("down", 2, 1, "np-idc", "4cnft")]
    cloud = events[1]
    assert cloud.step("pod created").seconds == 0.0  # created by the rescale to 3, not 316 s after the one to 2
    assert cloud.step("HPA desired increase").seconds == 301.0  # the HPA waited for the loading IDC pod
    why = cloud.step("HPA desired increase").evidence
    assert "until 11:24:17 pod default/qwen-chat-predictor-557b56dbb8-4cnft was not Ready" in why, why
    assert "was not Ready" not in events[0].step("HPA desired increase").evidence
    assert cloud.step("node Ready").seconds == 237.0 and cloud.step("image pulled").seconds == 137.0
    assert cloud.step("pod Ready").at == pd.Timestamp("2026-12-06T11:34:38Z")
    for event in events:
        _check_ordered_and_adding_up(event)
