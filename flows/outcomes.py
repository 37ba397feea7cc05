"""What a flow run's final Prefect state means to tidegate: the exit code ``tidegate gate``
returns (0 Completed, 1 the gate or a stage failed, 2 anything else) and the ``tidegate.outcome``
of the failed-run event the hooks emit. Both read the exception class Prefect names in the
state message (``Flow run encountered an exception: GateFailed: ...``)."""

from __future__ import annotations

import re

_EXC_IN_MESSAGE = re.compile(r"encountered an exception:\s*([A-Za-z_][A-Za-z0-9_.]*)(?::|\(|$)")


def exit_code_for_state(state_type: str, message: str | None) -> int:
    """0 Completed; 1 when the flow failed with GateFailed/StageFailed; 3 with RunInconclusive; 2 for
    everything else."""
    if state_type == "COMPLETED":
        return 0
    if state_type != "FAILED":
        return 2
    m = _EXC_IN_MESSAGE.search(message or "")
    if not m:
        return 2
    from tasks import errors

    cls = getattr(errors, m.group(1).rsplit(".", 1)[-1], None)
    if isinstance(cls, type) and issubclass(cls, errors.TidegateError):
        return cls.exit_code
    return 2


def outcome_for_state(state_type: str, message: str | None) -> str:
    """gate-failed | stage-failed | inconclusive | error | crashed | cancelled: the event's
    tidegate.outcome."""
    if state_type == "CRASHED":
        return "crashed"
    if state_type in ("CANCELLED", "CANCELLING"):
        return "cancelled"
    m = _EXC_IN_MESSAGE.search(message or "")
    name = m.group(1).rsplit(".", 1)[-1] if m else ""
    return {"GateFailed": "gate-failed", "StageFailed": "stage-failed",
            "RunInconclusive": "inconclusive"}.get(name, "error")
