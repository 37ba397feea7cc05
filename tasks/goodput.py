"""Goodput: the share of requests that succeeded and met every per-request SLO (``load.slo``).

A request is *good* when it succeeded (``ok``) and, for each SLO the spec sets, its figure is
known and within it: TTFT and end-to-end latency (both from the intended send time under
open-loop arrivals), its own ITL p95, its TPOT. With no SLO set, every successful request is
good (the report says so). Requests the generator cancelled at ramp-down count nowhere.

- ``slo_attainment``: good / finished requests (failures count against it);
- ``request_goodput_rps``: good requests per second of the episode;
- ``token_goodput_per_s``: output tokens of good requests per second of the episode.

The episode is the whole load shape *including the drain*: from the shape's start until the
later of its end and the last request's end (GuideLLM's ``request_goodput``, inference-perf's
goodput and AIPerf's ``good_request_fraction`` are the same idea; llm-d's SLO-aware autoscaling
benchmark scores attainment over the whole episode, drain included). Per phase, a request
belongs to the phase it was sent in (intended), and the denominator is the phase's length.

Example::

    figures = goodput(requests, slo, duration_s=210.0, phases=[("baseline", 0, 20), ...])
    figures["slo_attainment"], figures["by_phase"]["spike"]["request_goodput_rps"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# (SLO field of load.slo, column of the requests table)
SLO_COLUMNS = (("ttft_ms", "ttft_ms"), ("itl_ms", "itl_p95_ms"), ("tpot_ms", "tpot_ms"), ("e2e_ms", "e2e_ms"))
KEYS = ("slo_attainment", "request_goodput_rps", "token_goodput_per_s")


def slo_limits(slo: Any) -> dict[str, float]:
    """The SLOs the spec sets: {column: limit in ms}."""
    return {col: float(getattr(slo, name)) for name, col in SLO_COLUMNS if getattr(slo, name, None) is not None}


def good_mask(requests: pd.DataFrame, limits: dict[str, float]) -> pd.Series:
    """True for each finished request that succeeded and met every limit (an unknown figure misses)."""
    good = requests["ok"].astype(bool).copy()
    for col, limit in limits.items():
        values = pd.to_numeric(requests[col], errors="coerce") if col in requests else pd.Series(np.nan, requests.index)
        good &= values.le(limit).fillna(False)
    return good


def _figures(reqs: pd.DataFrame, good: pd.Series, seconds: float) -> dict[str, float | None]:
    n = len(reqs)
    tokens = pd.to_numeric(reqs.loc[good, "output_tokens"], errors="coerce").fillna(0).sum() if n else 0
    return {
        "slo_attainment": round(float(good.sum()) / n, 4) if n else None,
        "request_goodput_rps": round(float(good.sum()) / seconds, 3) if seconds > 0 and n else None,
        "token_goodput_per_s": round(float(tokens) / seconds, 2) if seconds > 0 and n else None,
    }


def goodput(requests: pd.DataFrame, slo: Any, *, duration_s: float,
            phases: Sequence[tuple[str, float, float]] = ()) -> dict[str, Any]:
    """Goodput over the episode and per phase (see the module's docstring).

    ``requests`` needs the columns ok, cancelled, t_s (send time, seconds since the shape started,
    the intended one under open loop), output_tokens and the latency columns of ``SLO_COLUMNS``;
    ``phases`` are (name, start_s, end_s). Figures are None without finished requests."""
    limits = slo_limits(slo)
    reqs = requests[~requests["cancelled"].astype(bool)] if len(requests) else requests
    good = good_mask(reqs, limits) if len(reqs) else pd.Series(dtype=bool)
    if len(reqs) and "end_t_s" in reqs:
        episode = max(duration_s, float(pd.to_numeric(reqs["end_t_s"], errors="coerce").max()))
    else:
        episode = duration_s
    out: dict[str, Any] = {**_figures(reqs, good, episode), "episode_s": round(episode, 2),
                           "slo": {k: v for k, v in limits.items()},
                           "good_requests": int(good.sum()) if len(reqs) else 0}
    by_phase: dict[str, dict[str, float | None]] = {}
    for name, start, end in phases:
        if not len(reqs):
            by_phase[name] = {k: None for k in KEYS}
            continue
        t = pd.to_numeric(reqs["t_s"], errors="coerce")
        inside = (t >= start) & (t < end)
        by_phase[name] = _figures(reqs[inside], good[inside], end - start)
    out["by_phase"] = by_phase
    return out


def describe_slo(limits: dict[str, float]) -> str:
    if not limits:
        return "no per-request SLO set: a request is good when it succeeded"
    names = {"ttft_ms": "TTFT", "itl_p95_ms": "ITL p95", "tpot_ms": "TPOT", "e2e_ms": "e2e"}
    return "good = succeeded and " + ", ".join(f"{names[c]} <= {v:g} ms" for c, v in limits.items())


__all__ = ["KEYS", "SLO_COLUMNS", "describe_slo", "good_mask", "goodput", "slo_limits"]
