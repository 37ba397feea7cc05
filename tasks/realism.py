"""The report's realism block: which timings the run's cluster assumed, and a ``fast`` run's
critical path projected onto ``ack-gpu``.

A test bed writes ``realism.json`` into its state directory, beside the kubeconfig it hands out
(testbed/realism.py's ``Realism.document()``: the profile, every figure with unit and source, and
the ``ack-gpu`` figures as the projection's reference). The run reads that file next to the
kubeconfig it used; this module never imports the test bed. No such file: a real cluster,
``profile: none (real cluster)``.

The projection (:func:`project`) is arithmetic on the measured critical path, stated as such:
every step of a scale event gets the difference between the reference's and the run's timings
of what that step waits for (``UP_DELTAS`` / ``DOWN_DELTAS``); a figure of ``elasticity`` gets
the differences of the steps up to it. It assumes the rest of the run unchanged (the same load,
the same replicas asked for, the same decisions), so it says how much later, not whether the
spike would still have needed the cloud.

Example::

    doc, where = read_testbed_realism(profile.kubeconfig)   # (None, why) on a real cluster
    report.realism = realism_block(doc, report.elasticity, source=where, spec_stabilization_s=15,
                                   phases=report.phases)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.report_model import (ElasticityBlock, PhaseBlock, ProjectedFigureBlock, RealismBlock, RealismFigureBlock,
                                RealismProjectionBlock)

REALISM_FILE = "realism.json"
NO_TESTBED = "none (real cluster)"
Figures = dict[str, Any]


def _half(name: str) -> Callable[[Figures], float]:
    return lambda f: float(f.get(name) or 0) / 2


def _sum(*names: str) -> Callable[[Figures], float]:
    return lambda f: sum(float(f.get(n) or 0) for n in names)


def _model_load(f: Figures) -> float:
    return float(f.get("model_load_s") if f.get("model_load_s") is not None
                 else float(f.get("weight_load_s") or 0) + float(f.get("engine_start_s") or 0))


# step of a scale-up -> (what it waits for, timing of one profile); the step gets reference - run
UP_DELTAS: dict[str, tuple[str, Callable[[Figures], float]]] = {
    "metric above target": ("metric_lag_s + hpa_sync_period_s / 2 (the mean wait for the next HPA sync)",
                            lambda f: _sum("metric_lag_s")(f) + _half("hpa_sync_period_s")(f)),
    "autoscaler decision": ("ca_new_pod_scale_up_delay_s + ca_scan_interval_s / 2",
                            lambda f: _sum("ca_new_pod_scale_up_delay_s")(f) + _half("ca_scan_interval_s")(f)),
    "node Ready": ("node_ready_s + node_ready_jitter_s / 2",
                   lambda f: _sum("node_ready_s")(f) + _half("node_ready_jitter_s")(f)),
    "pod scheduled": ("gpu_allocatable_s (the pod waits for the node's GPUs)", _sum("gpu_allocatable_s")),
    "pod Ready": ("image_pull_s + model load (weight_load_s + engine_start_s)",
                  lambda f: _sum("image_pull_s")(f) + _model_load(f)),
}
DOWN_DELTAS: dict[str, tuple[str, Callable[[Figures], float]]] = {
    "HPA desired decrease": ("hpa_downscale_stabilization_s (unless the spec sets the HPA's own) + "
                             "hpa_sync_period_s / 2", lambda f: _sum("hpa_downscale_stabilization_s")(f)
                             + _half("hpa_sync_period_s")(f)),
    "node marked for deletion": ("ca_scale_down_unneeded_s + ca_scan_interval_s / 2",
                                 lambda f: _sum("ca_scale_down_unneeded_s")(f) + _half("ca_scan_interval_s")(f)),
}
# elasticity figure -> the scale-up steps before it
FIGURE_STEPS: dict[str, tuple[str, ...]] = {
    "time_to_hpa_rescale_s": ("metric above target",),
    "time_to_cloud_node_s": ("metric above target", "autoscaler decision", "node Ready"),
    "time_to_first_cloud_pod_ready_s": ("metric above target", "autoscaler decision", "node Ready",
                                        "pod scheduled", "pod Ready"),
}


def read_testbed_realism(kubeconfig: str | None) -> tuple[dict[str, Any] | None, str]:
    """(the test bed's realism document, where it was read) for the cluster of ``kubeconfig``;
    (None, why) when the kubeconfig is not a test bed's."""
    if not kubeconfig:
        return None, "no kubeconfig path (in-cluster or the client's default): not a test bed"
    path = Path(kubeconfig).expanduser().parent / REALISM_FILE
    if not path.is_file():
        return None, f"no {REALISM_FILE} beside {kubeconfig}: not a test bed"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path}: unreadable ({exc})"
    return (doc, str(path)) if isinstance(doc, dict) and doc.get("profile") else (None, f"{path}: no profile")


def _values(figures: list[dict[str, Any]] | None) -> Figures:
    return {f["name"]: f.get("value") for f in figures or [] if isinstance(f, dict) and "name" in f}


def step_deltas(run: Figures, ref: Figures, *, spec_stabilization_s: float | None = None) -> dict[str, float]:
    """Step -> seconds the reference's timings add to it over the run's (may be negative)."""
    out = {step: round(fn(ref) - fn(run), 1) for step, (_, fn) in UP_DELTAS.items()}
    down = {step: round(fn(ref) - fn(run), 1) for step, (_, fn) in DOWN_DELTAS.items()}
    if spec_stabilization_s is not None:  # the HPA's behavior wins over the controller-manager's default
        down["HPA desired decrease"] = round(_half("hpa_sync_period_s")(ref) - _half("hpa_sync_period_s")(run), 1)
    return {**{f"up:{k}": v for k, v in out.items()}, **{f"down:{k}": v for k, v in down.items()}}


def _projected(name: str, measured: float | None, steps: dict[str, float]) -> ProjectedFigureBlock:
    added = round(sum(steps.values()), 1)
    return ProjectedFigureBlock(figure=name, measured_s=measured,
                                projected_s=None if measured is None else round(measured + added, 1),
                                added_s=added, steps=steps)


def _seconds(start: str, end: str) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def project(run: Figures, ref: Figures, elasticity: ElasticityBlock | None, *, run_profile: str,
            onto: str = "ack-gpu", spec_stabilization_s: float | None = None,
            phases: list[PhaseBlock] | None = None) -> RealismProjectionBlock:
    """This run's critical-path figures under ``ref``'s timings (see the module docstring)."""
    deltas = step_deltas(run, ref, spec_stabilization_s=spec_stabilization_s)
    el = elasticity or ElasticityBlock()
    figures = [_projected(name, getattr(el, name), {s: deltas[f"up:{s}"] for s in steps})
               for name, steps in FIGURE_STEPS.items()]
    events = []
    for i, ev in enumerate(el.scale_events or [], 1):
        direction = ev.get("direction")
        present = {s.get("step") for s in ev.get("steps") or []}
        steps = {k.split(":", 1)[1]: v for k, v in deltas.items()
                 if k.startswith(f"{direction}:") and k.split(":", 1)[1] in present}
        pod = str(ev.get("pod") or "pod unknown").rsplit("/", 1)[-1]
        events.append(_projected(f"scale_events[{i}] {direction} {pod} on {ev.get('pool') or '?'}: total_s",
                                 ev.get("total_s"), steps))
    formula = {**{f"up: {k}": v[0] for k, v in UP_DELTAS.items()}, **{f"down: {k}": v[0] for k, v in DOWN_DELTAS.items()}}
    statement = (f"PROJECTION, not a measurement: this run's measured critical path on the '{run_profile}' test bed "
                 f"with each step's seconds increased by the difference between the '{onto}' timings and this "
                 f"run's for what that step waits for (step_deltas); load, replicas and decisions assumed unchanged.")
    notes = []
    cloud = next(f for f in figures if f.figure == "time_to_first_cloud_pod_ready_s")
    spike_s = None
    if phases:
        loaded = [p for p in phases if p.name != "cooldown" and p.name != "baseline"]
        if loaded:
            spike_s = _seconds(loaded[0].start, loaded[-1].end)
    if cloud.projected_s is not None and spike_s is not None and cloud.projected_s > spike_s:
        notes.append(f"under {onto} the first cloud pod would be Ready {cloud.projected_s:.0f} s after the spike "
                     f"began, after the {spike_s:.0f} s of spike and hold ended: this load would see no "
                     f"spill-over on such a cluster; a validation there needs a spike longer than the critical path")
    elif cloud.measured_s is None:
        notes.append("no cloud pod was Ready in this run: nothing to project for the spill-over")
    return RealismProjectionBlock(onto=onto, statement=statement, figures=figures, scale_events=events,
                                  step_deltas=formula, notes=notes)


def realism_block(doc: dict[str, Any] | None, elasticity: ElasticityBlock | None, *, source: str = "",
                  spec_stabilization_s: float | None = None,
                  phases: list[PhaseBlock] | None = None) -> RealismBlock:
    """The report's realism block from a test bed's realism document (None: a real cluster)."""
    if doc is None:
        return RealismBlock(profile=NO_TESTBED, source=source)
    figures = [RealismFigureBlock.model_validate({k: f.get(k) for k in ("name", "value", "unit", "what", "source")
                                                  if k in f}) for f in doc.get("figures") or []]
    block = RealismBlock(profile=str(doc["profile"]), source=source, overridden=list(doc.get("overridden") or []),
                         figures=figures)
    ref = doc.get("reference") or {}
    if doc["profile"] != ref.get("profile") and ref.get("figures"):
        run_values = _values(doc.get("figures"))
        if doc.get("model_load_s") is not None:
            run_values["model_load_s"] = doc["model_load_s"]
        block.projection = project(run_values, _values(ref["figures"]), elasticity, run_profile=str(doc["profile"]),
                                   onto=str(ref["profile"]), spec_stabilization_s=spec_stabilization_s,
                                   phases=phases)
    return block


__all__ = ["DOWN_DELTAS", "FIGURE_STEPS", "NO_TESTBED", "REALISM_FILE", "UP_DELTAS", "project",
           "read_testbed_realism", "realism_block", "step_deltas"]
