"""The failure hook keeps what a run created only when the run finished every stage it selected
and teardown was not one of them (``--stages prepare,deploy``); a failed stage still tears down."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from flows.hooks import _kept_by_selection
from tasks.spec import load_spec

pytestmark = pytest.mark.unit
SPEC = load_spec(Path(__file__).resolve().parents[2] / "examples" / "qwen-chat.local.yaml")


def state(kind: str, exc: str) -> SimpleNamespace:
    return SimpleNamespace(type=SimpleNamespace(value=kind), message=f"Flow run encountered an exception: {exc}: why")


@pytest.mark.parametrize("stages, exc, kept", [
    (["prepare", "deploy"], "RunInconclusive", True),
    (["prepare", "deploy", "smoke", "gate"], "GateFailed", True),
    (["prepare", "deploy"], "StageFailed", False),            # half-finished: torn down
    (["prepare", "deploy", "teardown"], "RunInconclusive", False),
    (None, "RunInconclusive", False),                          # all stages: teardown was selected
    (["prepare", "deploy"], "ClusterError", False),
])
def test_objects_are_kept_only_when_teardown_was_not_selected_and_the_run_finished(stages, exc, kept):
    assert _kept_by_selection({"stages": stages}, SPEC, state("FAILED", exc)) is kept


def test_a_crashed_run_is_always_torn_down():
    assert _kept_by_selection({"stages": ["prepare", "deploy"]}, SPEC, state("CRASHED", "RunInconclusive")) is False
