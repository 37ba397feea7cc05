"""The stage chain: one ordered list that the spec, --stages, the report and Prefect read; every
stage needs only what an earlier stage produces."""

from __future__ import annotations

import pytest

from tasks.context import RunContext
from tasks.errors import SpecError
from tasks.names import STAGE_NAMES
from tasks.spec import STAGE_NAMES as SPEC_STAGE_NAMES
from tasks.stages import STAGES, normalize_stages

pytestmark = pytest.mark.unit


def test_the_chain_is_the_one_list_of_stage_names():
    assert tuple(s.name for s in STAGES) == STAGE_NAMES
    assert [n for n in SPEC_STAGE_NAMES if n != "report"] == list(STAGE_NAMES)
    assert len({s.task_name for s in STAGES}) == len(STAGES)


def test_every_stage_needs_only_what_an_earlier_stage_produces():
    slots = set(RunContext.__dataclass_fields__)
    produced: set[str] = set()
    for stage in STAGES:
        assert set(stage.needs) <= produced, (stage.name, set(stage.needs) - produced)
        produced |= set(stage.produces)
    assert {p for s in STAGES for p in s.produces} - slots <= {"staging", "phases", "findings"}  # report blocks


def test_normalize_stages_orders_aliases_and_refuses_unknown_names():
    assert normalize_stages(None) == list(STAGE_NAMES)
    assert normalize_stages("teardown,load,report,staging") == ["stage", "spike", "teardown"]
    with pytest.raises(SpecError, match="unknown stage 'observe_only'"):
        normalize_stages(["observe_only"])
