"""Run ids: the label of everything a run creates and the name of its ``reports/<run id>/``.

Used by the flows (flows/validation.py, flows/deployments.py) and by the failure hooks
(flows/hooks.py), which derive the same id as the run they clean up after.
"""

from __future__ import annotations

import datetime as dt
import secrets as _secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.spec import RolloutSpec


def run_id_for_flow_run(spec_name: str, flow_run_id: object) -> str:
    """The run id of a flow run started without one (nightly/manual deployments); the failure
    hooks derive the same id, so they can tear down what the run created."""
    return f"{spec_name[:40].rstrip('-')}-{str(flow_run_id).replace('-', '')[:8]}"


def new_run_id(spec: RolloutSpec) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = spec.name[:40].rstrip("-")
    return f"{base}-{stamp}-{_secrets.token_hex(2)}"
