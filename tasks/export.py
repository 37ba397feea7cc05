"""Exports of a recorded run into other tools' report formats.

``llmd_report(run)`` is a run (``tasks.report.read_run``: report.json plus its CSV tables) as an
llm-d-benchmark *Benchmark Report* of schema version 0.2, the format llm-d-benchmark's analysis
tools read. Written from that format's published description, not from its code:

    llm-d/llm-d-benchmark, llmdbenchmark/analysis/benchmark_report/br_v0_2_json_schema.json
    (the JSON Schema generated from schema_v0_2.py; last changed in commit
    f0dd0ba6ad5c2e44b0e1e5952fa8673089601084, read at 8bc9f1ddd873a24f1657d6cca2e0d0fb6947dd36),
    with br_v0_2_example.yaml and docs/benchmark_report.md.

What maps where (units are the schema's: latencies in ``ms``, per-token latencies in
``ms/token``, rates in ``queries/s`` and ``tokens/s``, lengths in ``count``):

=============================================  ===============================================
run.uid / eid                                  run_id / the spec's name (runs of one spec)
run.time                                       started_at, finished_at, their ISO-8601 duration
scenario.stack[0] (kind ``generic``)           the service: image, served model, replicas (max),
                                               the IDC and cloud pools
scenario.load.standardized                     generator (tidegate's Locust runner), processes,
                                               input length (prompt tokens as sent), rate_qps
                                               (open loop: the requested rate) or concurrency
                                               (closed loop: most users at once)
scenario.load.native.config                    the load shape: arrival, phases, rate/user steps
results.request_performance.aggregate          requests (total = finished, failures, incomplete =
                                               cancelled), TTFT, ITL, TPOT, e2e distributions
                                               over successful requests (requests.csv; without
                                               it only figures with a mean), request and token
                                               rates over the load shape's duration
results.request_performance.time_series        per second (per_second.csv): TTFT p50/p95, e2e
                                               p95 (by send time), completed/s, output tokens/s
results.observability.pod_startup_times        service pods from creation to Ready (timeline)
results.observability.tidegate                 the extension block (the schema allows extra keys
                                               under ``observability`` only): verdict, gate rules,
                                               elasticity, cost, goodput, per-phase figures,
                                               findings, the generator's own account, and which
                                               schema this export follows
=============================================  ===============================================

ITL in the schema is per token; tidegate's ITL is the gap between two streamed content chunks,
one token each with vLLM's streaming, so the two are the same figure in ms/token.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

LLMD_SCHEMA_VERSION = "0.2"
LLMD_SCHEMA_SOURCE = ("https://github.com/llm-d/llm-d-benchmark/blob/f0dd0ba6ad5c2e44b0e1e5952fa8673089601084/"
                      "llmdbenchmark/analysis/benchmark_report/br_v0_2_json_schema.json")
FORMATS = ("llmd",)
# the schema's Statistics fields, in its order: percentile -> key
_PERCENTILES = ((0.1, "p0p1"), (1, "p1"), (5, "p5"), (10, "p10"), (25, "p25"), (50, "p50"), (75, "p75"),
                (90, "p90"), (95, "p95"), (99, "p99"), (99.9, "p99p9"))


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def statistics(values: Any, units: str) -> dict[str, Any] | None:
    """The schema's ``Statistics`` of ``values`` (NaN dropped; percentiles as numpy's linear,
    as tidegate's own); None without a value."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return None
    out: dict[str, Any] = {"units": units, "mean": round(float(arr.mean()), 6),
                           "stddev": round(float(arr.std()), 6), "min": round(float(arr.min()), 6)}
    for q, key in _PERCENTILES:
        out[key] = round(float(np.percentile(arr, q)), 6)
    out["max"] = round(float(arr.max()), 6)
    return out


def _mean_only(value: Any, units: str) -> dict[str, Any] | None:
    v = _num(value)
    return None if v is None else {"units": units, "mean": v}


def _drop_none(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _drop_none(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_drop_none(v) for v in doc]
    return doc


def _cfg_id(doc: Any) -> str:
    return hashlib.md5(json.dumps(doc, sort_keys=True, default=str).encode(), usedforsecurity=False).hexdigest()


def _duration(start: str, end: str) -> str | None:
    import pandas as pd

    try:
        seconds = (pd.Timestamp(end) - pd.Timestamp(start)).total_seconds()
    except (ValueError, TypeError):
        return None
    return f"PT{seconds:.3f}S" if seconds >= 0 else None


def _generator_config(run: Any) -> dict[str, Any]:
    path = run.directory / "locust" / "locust-config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tidegate_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tidegate")
    except PackageNotFoundError:
        return "unknown"


def _pod_startup_times(timeline: Any) -> dict[str, Any] | None:
    if timeline is None or not len(timeline.df):
        return None
    df = timeline.df[timeline.df["kind"] == "Pod"]
    pods = []
    for name, part in df.groupby("object"):
        created = part.loc[part["reason"] == "PodCreated", "time"]
        ready = part.loc[part["reason"] == "PodReady", "time"]
        if not len(created) or not len(ready):
            continue
        c, r = created.min(), ready.min()
        node = part["node"].dropna()
        pods.append({"name": str(name), "node": str(node.iloc[-1]) if len(node) else None,
                     "creation_timestamp": c.isoformat(), "ready_timestamp": r.isoformat(),
                     "startup_seconds": round((r - c).total_seconds(), 3)})
    if not pods:
        return None
    return {"pods": pods, "aggregate": statistics([p["startup_seconds"] for p in pods], "s")}


def _time_series(load: Any) -> dict[str, Any] | None:
    ps = getattr(load, "per_second", None)
    if ps is None or not len(ps):
        return None

    def series(cols: dict[str, str]) -> list[dict[str, Any]]:
        points = []
        for row in ps.itertuples(index=False):
            point: dict[str, Any] = {"ts": row.second.isoformat()}
            for src, key in cols.items():
                v = _num(getattr(row, src))
                if v is not None:
                    point[key] = v
            if len(point) > 1:
                points.append(point)
        return points

    return {
        "latency": {
            "time_to_first_token": {"units": "ms", "series": series({"ttft_p50_ms": "p50", "ttft_p95_ms": "p95"})},
            "request_latency": {"units": "ms", "series": series({"e2e_p95_ms": "p95"})},
        },
        "throughput": {
            "request_rate": {"units": "queries/s", "series": series({"completed": "value"})},
            "output_token_rate": {"units": "tokens/s", "series": series({"output_tokens_per_s": "value"})},
        },
    }


def llmd_report(run: Any) -> dict[str, Any]:
    """The run as an llm-d Benchmark Report v0.2 document (a dict ready for ``json.dumps``)."""
    report = run.report
    lb = report.load
    s = lb.model_dump(mode="json") if lb is not None else {}
    gen = s.get("generator") or {}
    cfg = _generator_config(run)
    requests = getattr(run.load, "requests", None) if run.load is not None else None
    ok = None
    if requests is not None and len(requests):
        ok = requests[requests["ok"].astype(bool) & ~requests["cancelled"].astype(bool)]
    duration_s = _num(s.get("duration_s"))
    open_loop = (s.get("arrival") or gen.get("arrival") or "closed") != "closed"

    # -- scenario
    model = ((cfg.get("body") or {}).get("model") or ((cfg.get("requests") or {}).get("config") or {}).get("model"))
    pools = report.cost.pools if report.cost is not None else {}
    el = report.elasticity
    service = {"kind": "generic", "tool": "vllm", "tool_version": report.image or "unknown",
               "model": {"name": model} if model else None,
               "replicas_max": el.hpa_max_replicas if el is not None else None,
               "pools": pools or None, "served_by": "tidegate: an InferenceService with an HPA, spilling over "
                                                    "from the IDC pool to an elastic cloud pool"}
    stack = [{"metadata": {"schema_version": "0.0.1", "label": "service-0",
                           "cfg_id": _cfg_id([report.spec, report.image, model]),
                           "description": f"the service under test of spec {report.spec}"},
              "standardized": _drop_none(service), "native": {"config": {"spec": report.spec,
                                                                         "profile": report.profile}}}]
    prompt_tokens = ((cfg.get("requests") or {}).get("config") or {}).get("prompt_tokens")
    inputs = None
    if requests is not None and "input_tokens" in requests and (requests["input_tokens"] >= 0).any():
        inputs = requests.loc[requests["input_tokens"] >= 0, "input_tokens"].astype(float)
    if inputs is not None:
        isl = {"distribution": "fixed" if inputs.nunique() == 1 else "other", "value": round(float(inputs.mean()), 3),
               "min": int(inputs.min()), "max": max(1, int(inputs.max()))}
    else:
        isl = {"distribution": "fixed" if prompt_tokens else "other", "value": prompt_tokens or 0}
    req_cfg = (cfg.get("requests") or {}).get("config") or {}
    source = "random" if req_cfg.get("source", "synthetic") == "synthetic" else "sampled" if req_cfg else "unknown"
    standardized = {"tool": "tidegate-locust", "tool_version": _tidegate_version(),
                    "parallelism": max(1, int(gen.get("processes") or 1)), "source": source,
                    "input_seq_len": isl}
    if open_loop and _num(gen.get("requested_rps")):
        standardized["rate_qps"] = _num(gen.get("requested_rps"))
    elif not open_loop and s.get("users_max"):
        standardized["concurrency"] = int(s["users_max"])
    native_cfg = {"arrival": s.get("arrival"), "seed": gen.get("seed"), "phases": [p.model_dump() for p in report.phases],
                  "rate_steps": cfg.get("rate_steps"), "user_steps": cfg.get("steps"),
                  "max_tokens": (cfg.get("body") or {}).get("max_tokens"), "stream": cfg.get("stream")}
    native_cfg = _drop_none(native_cfg)
    load = {"metadata": {"schema_version": "0.0.1", "cfg_id": _cfg_id(native_cfg),
                         "description": "tidegate's load shape: baseline -> spike -> hold -> cool-down"},
            "standardized": standardized, "native": {"config": native_cfg}}

    # -- results
    def dist(col: str, units: str, fallback_mean: Any = None) -> dict[str, Any] | None:
        if ok is not None and col in ok:
            return statistics(ok[col], units)
        return _mean_only(fallback_mean, units)

    itl = None
    if ok is not None and "itl_mean_ms" in ok and "itl_count" in ok:
        counts = ok["itl_count"].astype(float)
        if counts.sum() > 0:
            mean = float((ok["itl_mean_ms"].fillna(0) * counts).sum() / counts.sum())
            itl = {"units": "ms/token", "mean": round(mean, 6)}
            for key in ("p50", "p95", "p99"):  # over every gap, as tidegate's own ITL percentiles
                v = _num(s.get(f"itl_{key}_ms"))
                if v is not None:
                    itl[key] = v
    aggregate = {
        "requests": {"total": int(s.get("requests") or 0), "failures": s.get("failures"),
                     "incomplete": s.get("cancelled"),
                     "input_length": statistics(inputs, "count") if inputs is not None else None,
                     "output_length": dist("output_tokens", "count")},
        "latency": {"time_to_first_token": dist("ttft_ms", "ms"),
                    "inter_token_latency": itl,
                    "time_per_output_token": dist("tpot_ms", "ms/token"),
                    "request_latency": dist("e2e_ms", "ms")},
        "throughput": {"request_rate": _mean_only(s.get("rps"), "queries/s"),
                       "output_token_rate": _mean_only(s.get("output_tokens_per_s"), "tokens/s")},
    }
    if inputs is not None and ok is not None and duration_s:
        in_rate = float(ok["input_tokens"].clip(lower=0).sum()) / duration_s
        aggregate["throughput"]["input_token_rate"] = {"units": "tokens/s", "mean": round(in_rate, 3)}
        out_rate = _num(s.get("output_tokens_per_s"))
        if out_rate is not None:
            aggregate["throughput"]["total_token_rate"] = {"units": "tokens/s", "mean": round(in_rate + out_rate, 3)}
    from tasks.report_model import SCHEMA_VERSION

    extension = {
        "export": {"format": "llm-d Benchmark Report", "version": LLMD_SCHEMA_VERSION, "schema": LLMD_SCHEMA_SOURCE,
                   "from": f"tidegate report.json schema {report.schema_version} (exporter written for "
                           f"{SCHEMA_VERSION})"},
        "run_id": report.run_id, "spec": report.spec, "profile": report.profile, "verdict": report.verdict,
        "inconclusive_reasons": report.inconclusive_reasons or None, "commit": report.commit,
        "gate": [r.model_dump(mode="json") for r in report.gate],
        "goodput": {k: s.get(k) for k in ("slo_attainment", "request_goodput_rps", "token_goodput_per_s", "goodput")}
        if lb is not None else None,
        "by_phase": s.get("by_phase") or None,
        "generator": gen or None,
        "elasticity": el.model_dump(mode="json") if el is not None else None,
        "cost": report.cost.model_dump(mode="json") if report.cost is not None else None,
        "findings": [f.model_dump(mode="json") for f in report.findings],
        "units": {"latency": "ms", "rates": "per second", "elasticity": "seconds from the spike's start"},
    }
    observability = {"pod_startup_times": _pod_startup_times(run.timeline), "tidegate": _drop_none(extension)}
    doc = {
        "version": LLMD_SCHEMA_VERSION,
        "run": {"uid": report.run_id, "eid": report.spec,
                "time": {"start": report.started_at or None, "end": report.finished_at or None,
                         "duration": _duration(report.started_at, report.finished_at)},
                "description": f"tidegate {report.profile} run of spec {report.spec}: {report.verdict}",
                "keywords": ["tidegate", report.profile, f"verdict:{report.verdict}",
                             f"arrival:{s.get('arrival') or 'unknown'}"]},
        "scenario": {"stack": stack, "load": load},
        "results": {"request_performance": {"aggregate": aggregate, "time_series": _time_series(run.load)},
                    "observability": observability},
    }
    return _drop_none(doc)  # unset optionals are left out, as the schema's defaults


def export_run(target: Any, fmt: str = "llmd") -> str:
    """The run directory (or run id) ``target`` in format ``fmt``, as text."""
    from tasks.errors import SpecError
    from tasks.report import read_run

    if fmt not in FORMATS:
        raise SpecError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    return json.dumps(llmd_report(read_run(target)), indent=2, ensure_ascii=False) + "\n"


__all__ = ["FORMATS", "LLMD_SCHEMA_SOURCE", "LLMD_SCHEMA_VERSION", "export_run", "llmd_report", "statistics"]
