"""``tidegate experiment``: the same seeded load against variants of a spec, one after the other,
and one comparison of what each attained and cost.

Variants (``--variants``, comma-separated):

- ``hybrid``: the spec as it is (IDC first, spill-over to the elastic pool);
- ``idc-only``: ``service.max_replicas`` capped at what the IDC pool holds (its allocatable GPUs,
  read by the preflight, over the GPUs of a replica): no spill-over;
- ``static-peak``: ``service.min_replicas`` = ``max_replicas``, placed as the spec places them: the
  peak provisioned all the time;
- ``signal=<metric>[:<target>]``: the HPA on another metric the metrics adapter serves (e.g. vLLM's
  ``vllm:num_requests_waiting``), at the given target (default: the spec's).

Every variant runs the full chain (teardown included) with the same ``load.seed``, so its arrivals
and request lengths are the same; the variants run at different times, which the comparison
says. A variant whose gate fails or that is inconclusive is data, not an error; one that cannot
run (exit 2) stops the experiment. Under Prefect the experiment is a flow and every variant a
subflow run of the validation flow (visible in the UI).

Output: ``reports/<experiment id>/comparison.json`` and ``comparison.html``: per variant the
verdict, SLO attainment, TTFT p95, cloud cost and cost of the run, cost per million SLO-good output
tokens, the scale-ups' critical-path medians, and one recommendation sentence made from those
figures only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import secrets
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import SpecError, TidegateError

BASE_VARIANTS = ("hybrid", "idc-only", "static-peak")
ATTAINMENT_TARGET = 0.95


@dataclass(frozen=True)
class Variant:
    name: str
    metric: str | None = None
    target: int | None = None

    @property
    def slug(self) -> str:
        if self.metric is None:
            return self.name
        clean = "".join(ch if ch.isalnum() else "-" for ch in self.metric.lower()).strip("-")
        return f"signal-{clean}"[:40].rstrip("-")


def parse_variants(text: str) -> list[Variant]:
    """``hybrid,idc-only,signal=vllm:num_requests_waiting:5`` -> variants (SpecError naming a bad one)."""
    out: list[Variant] = []
    for raw in [v.strip() for v in (text or "").split(",") if v.strip()]:
        if raw in BASE_VARIANTS:
            out.append(Variant(raw))
        elif raw.startswith("signal="):
            body = raw.split("=", 1)[1]
            metric, _, target = body.rpartition(":") if body.count(":") >= 1 and _is_number(body.rsplit(":", 1)[1]) \
                else (body, "", "")
            if not metric:
                raise SpecError(f"--variants: {raw!r} names no metric (signal=<metric>[:<target>])")
            if target and not float(target).is_integer():
                raise SpecError(f"--variants: {raw!r}: the target is service.scale_target, a whole number "
                                f"(got {target})")
            out.append(Variant("signal", metric, int(float(target)) if target else None))
        else:
            raise SpecError(f"--variants: unknown variant {raw!r} (known: {', '.join(BASE_VARIANTS)}, "
                            "signal=<metric>[:<target>])")
    if not out:
        raise SpecError("--variants: name at least one variant, e.g. hybrid,idc-only")
    if len({v.slug for v in out}) != len(out):
        raise SpecError("--variants: a variant is named twice")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def variant_spec(spec, variant: Variant, *, idc_replicas: int | None, seed: int):
    """The spec a variant runs: the same load (seed) and everything else as the spec, but for what
    the variant changes (SpecError when it cannot apply, e.g. idc-only without the IDC capacity)."""
    from tasks.spec import spec_from_dict

    data = spec.model_dump(mode="json", exclude_none=True)
    data.setdefault("load", {})["seed"] = seed
    svc = data.setdefault("service", {})
    if variant.name == "idc-only":
        if not idc_replicas:
            raise SpecError("--variants idc-only: the IDC pool holds no replica of the service (no allocatable GPU)")
        svc["max_replicas"] = max(1, min(spec.service.max_replicas, idc_replicas))
        svc["min_replicas"] = min(spec.service.min_replicas, svc["max_replicas"])
    elif variant.name == "static-peak":
        svc["min_replicas"] = spec.service.max_replicas
    elif variant.name == "signal":
        svc["scale_metric"] = variant.metric
        if variant.target is not None:
            svc["scale_target"] = variant.target
    data["name"] = spec.name
    return spec_from_dict(data, f"<variant {variant.slug}>")


def idc_replicas(spec) -> int:
    """Replicas of the service the IDC pool holds: its allocatable GPUs (read-only preflight) over a
    replica's GPUs."""
    from tasks.cluster import preflight
    from tasks.kube import Kube
    from tasks.profile import resolve_profile

    c = spec.cluster
    kube = Kube.connect(kubeconfig=resolve_profile(spec).kubeconfig, context=c.context, in_cluster=c.in_cluster)
    report = preflight(kube, spec)
    return report.idc.gpus_allocatable // max(1, spec.service.gpus) if spec.service.gpus else report.idc.ready_nodes


# -- the comparison ------------------------------------------------------------------------------
def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def variant_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """The compared figures of one variant's report.json."""
    load, el, cost = doc.get("load") or {}, doc.get("elasticity") or {}, doc.get("cost") or {}
    ups = [e for e in el.get("scale_events") or [] if e.get("direction") == "up"]
    steps: dict[str, list[float]] = {}
    for e in ups:
        for s in e.get("steps") or []:
            if s.get("seconds") is not None:
                steps.setdefault(s["step"], []).append(float(s["seconds"]))
    return {
        "run_id": doc.get("run_id"), "verdict": doc.get("verdict"),
        "started_at": doc.get("started_at"), "finished_at": doc.get("finished_at"),
        "slo_attainment": load.get("slo_attainment"), "ttft_p95_ms": load.get("ttft_p95_ms"),
        "requests": load.get("requests"), "error_rate": load.get("error_rate"),
        "cloud_pods_max": el.get("cloud_pods_max"), "cloud_cost_run": cost.get("cloud_cost_run"),
        "cost_run": cost.get("cost_run"), "currency": cost.get("currency"),
        "cost_per_million_good_output_tokens": cost.get("cost_per_million_good_output_tokens"),
        "scale_up_total_s_median": _median([float(e["total_s"]) for e in ups if e.get("total_s") is not None]),
        "critical_path_medians_s": {k: _median(v) for k, v in steps.items()},
    }


def recommend(figures: dict[str, dict[str, Any]], target: float = ATTAINMENT_TARGET) -> str:
    """One sentence from the figures only: the cheapest variant per good token among those that
    attained the target; else the one that attained most."""
    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    ok = {n: f for n, f in figures.items() if (num(f.get("slo_attainment")) or 0) >= target}
    priced = {n: f for n, f in ok.items() if num(f.get("cost_per_million_good_output_tokens")) is not None}
    if priced:
        best = min(priced, key=lambda n: priced[n]["cost_per_million_good_output_tokens"])
        f = priced[best]
        others = ", ".join(f"{n} {num(g.get('slo_attainment')) or 0:.0%}" for n, g in figures.items() if n != best)
        return (f"{best} is the cheapest variant that met the SLO for at least {target:.0%} of requests: "
                f"{f['slo_attainment']:.0%} at {f['cost_per_million_good_output_tokens']:.4g} {f.get('currency') or ''} "
                f"per million good output tokens" + (f" (attainment of the others: {others})" if others else ""))
    ranked = [n for n in figures if num(figures[n].get("slo_attainment")) is not None]
    if not ranked:
        return "no variant reported an SLO attainment: no recommendation"
    best = max(ranked, key=lambda n: figures[n]["slo_attainment"])
    return (f"no variant met the SLO for {target:.0%} of requests; {best} came closest with "
            f"{figures[best]['slo_attainment']:.0%}")


def comparison_html(doc: dict[str, Any]) -> str:
    rows = ["variant", "verdict", "slo_attainment", "ttft_p95_ms", "cloud_pods_max", "cloud_cost_run", "cost_run",
            "cost_per_million_good_output_tokens", "scale_up_total_s_median", "started_at", "finished_at"]
    names = list(doc["variants"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{html.escape(r)}</td>" + "".join(
            f"<td>{html.escape(str(doc['variants'][n].get(r, n if r == 'variant' else '')))}</td>" for n in names)
        + "</tr>" for r in rows[1:])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tidegate experiment "
            f"{html.escape(doc['experiment_id'])}</title><style>body{{font-family:sans-serif;margin:2em}}"
            f"td,th{{border:1px solid #ccc;padding:4px 8px}} table{{border-collapse:collapse}}</style></head><body>"
            f"<h1>experiment {html.escape(doc['experiment_id'])}: spec {html.escape(doc['spec'])}</h1>"
            f"<p><b>{html.escape(doc['recommendation'])}</b></p><p>{html.escape(doc['note'])}</p>"
            f"<table><tr><th></th>{head}</tr>{body}</table></body></html>")


# -- running it --------------------------------------------------------------------------------
def run_experiment(spec, variants: list[Variant], *, use_prefect: bool, experiment_id: str | None = None) -> dict:
    from flows.runid import check_run_id
    from tasks.report import reports_root

    exp = experiment_id or f"{spec.name[:30]}-exp-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    check_run_id(exp)
    seed = spec.load.seed if spec.load.seed is not None else secrets.randbelow(2**31)
    cap = idc_replicas(spec) if any(v.name == "idc-only" for v in variants) else None
    specs = {v.slug: variant_spec(spec, v, idc_replicas=cap, seed=seed) for v in variants}  # all checked first
    figures: dict[str, dict[str, Any]] = {}
    for slug, vspec in specs.items():
        rid = f"{exp[:50]}-{slug}"[:63].rstrip("-")
        print(f"tidegate: experiment {exp}: variant {slug} as run {rid}", file=sys.stderr, flush=True)
        try:
            _run_variant(vspec, rid, use_prefect)
        except TidegateError as exc:
            if exc.exit_code == 2:  # could not run: the comparison would compare nothing
                raise
            print(f"tidegate: variant {slug}: {exc.one_line()[:200]}", file=sys.stderr)
        doc = json.loads((reports_root() / rid / "report.json").read_text())
        figures[slug] = variant_figures(doc)
    out = {"experiment_id": exp, "spec": spec.name, "seed": seed, "variants": figures,
           "idc_replicas": cap, "recommendation": recommend(figures),
           "note": "the variants ran one after the other, each with its own teardown, on the same seeded load; "
                   "they ran at different times (started_at / finished_at), so the cluster may have changed "
                   "between them"}
    out_dir = reports_root() / exp
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(out, indent=1))
    (out_dir / "comparison.html").write_text(comparison_html(out))
    out["dir"] = str(out_dir)
    return out


def _run_variant(vspec, run_id: str, use_prefect: bool) -> None:
    from flows.validation import elastic_rollout_validation, execute
    from tasks.stages import normalize_stages

    if use_prefect:
        elastic_rollout_validation(spec=vspec, stages=None, run_id=run_id)   # a subflow run of the experiment
    else:
        execute(vspec, normalize_stages(None), run_id, use_prefect=False)


def _experiment_flow():
    from prefect import flow

    @flow(name="tidegate-experiment", log_prints=True)
    def tidegate_experiment(spec, variants: str, experiment_id: str | None = None) -> dict:
        """The same seeded load against variants of the spec, one after the other (subflow runs)."""
        return run_experiment(spec, parse_variants(variants), use_prefect=True, experiment_id=experiment_id)

    return tidegate_experiment


def cmd_experiment(args: argparse.Namespace) -> int:
    from flows.commands import _load, _setup_logging

    spec = _load(args)
    variants = parse_variants(args.variants)
    _setup_logging(args.verbose)
    if args.no_prefect:
        out = run_experiment(spec, variants, use_prefect=False)
    else:
        out = _experiment_flow()(spec=spec, variants=args.variants)
    print(f"\nexperiment {out['experiment_id']} ({out['note']})")
    for name, f in out["variants"].items():
        print(f"  {name:<24} {str(f.get('verdict')):<13} attainment {f.get('slo_attainment')}, TTFT p95 "
              f"{f.get('ttft_p95_ms')} ms, cloud cost {f.get('cloud_cost_run')}, per M good tokens "
              f"{f.get('cost_per_million_good_output_tokens')}, scale-up median {f.get('scale_up_total_s_median')} s")
    print(out["recommendation"])
    print(f"tidegate: comparison {out.get('dir', '')}/comparison.html")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="the same seeded load against variants (hybrid, idc-only, static-peak, "
                                          "signal=<metric>) and one comparison")
    p.add_argument("--spec", required=True, help="RolloutSpec YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variants", required=True,
                   help="comma-separated: hybrid, idc-only, static-peak, signal=<metric>[:<target>]")
    p.add_argument("--no-prefect", action="store_true", help="run the variants without Prefect")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_experiment)


__all__ = ["BASE_VARIANTS", "Variant", "cmd_experiment", "parse_variants", "recommend", "register",
           "run_experiment", "variant_figures", "variant_spec"]
