"""Kube.watch's 410-Gone re-list: what changed while the watch was down reaches the consumer
with the type the server would have sent (new ADDED, changed MODIFIED, gone DELETED)."""

from __future__ import annotations

from tasks.kube import Kube


def pod(name: str, rv: str, phase: str = "Running") -> dict:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}, "status": {"phase": phase}}


class FakeResource:
    namespaced = True

    def __init__(self, sessions):
        self.sessions = list(sessions)

    def watch(self, **_kw):
        events = self.sessions.pop(0) if self.sessions else []
        yield from events


def fake_kube(lists, sessions) -> Kube:
    kube = Kube.__new__(Kube)
    kube.resource = lambda *_a: FakeResource(sessions)
    pending = list(lists)
    kube.list_with_version = lambda *_a, **_kw: pending.pop(0)
    return kube


def test_relist_after_410_reports_added_modified_and_deleted():
    lists = [([pod("a", "1"), pod("b", "2"), pod("c", "3")], "3"),
             # after the 410: a unchanged, b changed, c gone, d new
             ([pod("a", "1"), pod("b", "7", "Succeeded"), pod("d", "8")], "9")]
    sessions = [[{"type": "MODIFIED", "raw_object": pod("a", "1")},
                 {"type": "ERROR", "raw_object": {"code": 410, "message": "too old"}}],
                [{"type": "ADDED", "raw_object": pod("e", "10")}]]
    seen = []
    for etype, obj in fake_kube(lists, sessions).watch("v1", "Pod", "ns", timeout_s=5):
        seen.append((etype, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
        if obj["metadata"]["name"] == "e":
            break
    assert seen == [("ADDED", "a", "1"), ("ADDED", "b", "2"), ("ADDED", "c", "3"),
                    ("MODIFIED", "a", "1"),
                    ("MODIFIED", "b", "7"), ("ADDED", "d", "8"), ("DELETED", "c", "3"),
                    ("ADDED", "e", "10")]


def test_relist_forgets_objects_deleted_through_the_stream():
    lists = [([pod("a", "1")], "1"), ([], "5")]
    sessions = [[{"type": "DELETED", "raw_object": pod("a", "4")},
                 {"type": "ERROR", "raw_object": {"code": 410}}],
                [{"type": "ADDED", "raw_object": pod("z", "6")}]]
    seen = []
    for etype, obj in fake_kube(lists, sessions).watch("v1", "Pod", "ns", timeout_s=5):
        seen.append((etype, obj["metadata"]["name"]))
        if obj["metadata"]["name"] == "z":
            break
    assert seen == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "z")]   # no second DELETED for a
