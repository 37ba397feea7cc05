"""The spec a ``release-gate`` run validates, rebuilt from the run's parameters.

Shared by the ``release-gate`` flow (flows/deployments.py) and the failure hooks
(flows/hooks.py), which rebuild it to tear a failed run down; it imports neither flow.
"""

from __future__ import annotations

import copy
from typing import Any

from tasks.errors import SpecError
from tasks.spec import RolloutSpec, load_spec, spec_from_dict
from tasks.spec.base import check_rooted_path


def spec_parameters(spec: RolloutSpec) -> dict[str, Any]:
    """The spec as a deployment parameter: JSON, defaults left out where they are None."""
    return spec.model_dump(mode="json", exclude_none=True)


def _apply_release_inputs(data: dict[str, Any], image: str | None, model_source: str | None) -> dict[str, Any]:
    out = copy.deepcopy(data)
    if image:
        out.setdefault("service", {})["image"] = image
    if model_source:
        model = out.setdefault("model", {})
        model["source"] = model_source
        model.pop("sha256", None)  # the spec's hash pinned the file it named, not the one under test
    return out


def release_spec(spec_path: str, image: str | None = None, model_source: str | None = None,
                 overrides: list[str] | None = None, spec: RolloutSpec | dict | None = None) -> RolloutSpec:
    """The spec a release-gate run validates: the inline ``spec`` or the file at ``spec_path``,
    then ``overrides`` (``key.path=value``), then the image and model under test."""
    from tasks.spec import apply_overrides

    if spec is None:
        try:  # a Prefect parameter: the worker reads no file outside the directories tidegate may use
            check_rooted_path(spec_path)
        except ValueError as exc:
            raise SpecError(f"spec_path: {exc}") from None
        base = load_spec(spec_path, overrides or [])
        source = spec_path
    else:
        data = spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, RolloutSpec) else dict(spec)
        base = spec_from_dict(apply_overrides(data, overrides or [], "<inline spec>"), "<inline spec>")
        source = "<inline spec>"
    if not (image or model_source):
        return base
    return spec_from_dict(_apply_release_inputs(spec_parameters(base), image, model_source), source)
