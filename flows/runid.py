"""Run ids: the label of everything a run creates and the name of its ``reports/<run id>/``.

Used by the flows (flows/validation.py, flows/deployments.py) and by the failure hooks
(flows/hooks.py), which derive the same id as the run they clean up after.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets as _secrets
from typing import TYPE_CHECKING

from tasks.errors import SpecError

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


_RUN_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_run_id(run_id: str) -> str:
    """A run id names ``reports/<run id>/`` and labels every object: a DNS-1123 label (lower-case
    letters, digits and '-', at most 63), never a path. SpecError otherwise, before anything runs."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        shown = repr(run_id)[:80].replace("\\x00", "\\0")
        raise SpecError(f"run_id: {shown} is not a valid run id (lower-case letters, digits and '-', "
                        "at most 63 characters, starting and ending with a letter or digit)")
    return run_id
