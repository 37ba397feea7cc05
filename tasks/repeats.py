"""``load.repeat: N``: the spike shape run N times in one validation, and the confidence intervals
of the per-run figures over the repetitions (issue 22).

A per-run figure (time to the first cloud pod Ready, SLO attainment, the run's cost...) is one
number per spike: one run cannot say how much it varies. With ``repeat: N`` the spike stage runs
the shape N times back to back, each after the elastic pool went back to its minimum (bounded by
the cool-down, as the first); the verify stage judges every repetition the same way, and this
module puts the figures side by side with a Student-t interval of their mean (AIPerf reports
confidence intervals over repeated runs the same way). The first repetition stays the run's main
figures (load, elasticity, cost), so that a repeated run compares with a single one.

Pure functions; no I/O. ``interval`` is exact for n <= 30 (the t table below) and uses the normal
quantile beyond (the error is < 1 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tasks.gate import lookup

# the per-run figures a repetition yields: dotted report keys, and whether a repetition's value is a
# count (kept as a number like the others)
REPEAT_FIGURES = (
    "elasticity.time_to_hpa_rescale_s",
    "elasticity.time_to_cloud_node_s",
    "elasticity.time_to_first_cloud_pod_ready_s",
    "elasticity.cloud_pods_max",
    "load.ttft_p95_ms",
    "load.e2e_p95_ms",
    "load.error_rate",
    "load.slo_attainment",
    "cost.cost_run",
)
CONFIDENCE = 0.95
# two-sided 95 % quantiles of Student's t, degrees of freedom 1..30
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
_Z95 = 1.960


def t_quantile(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be >= 1")
    return _T95[df - 1] if df <= len(_T95) else _Z95


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float | None
    median: float | None
    stdev: float | None
    low: float | None
    high: float | None
    note: str = ""

    def block(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)
        return {"n": self.n, "mean": r(self.mean), "median": r(self.median), "stdev": r(self.stdev),
                "ci_low": r(self.low), "ci_high": r(self.high), "confidence": CONFIDENCE, "note": self.note}


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def interval(values: list[Any]) -> Interval:
    """The mean of the repetitions' values with its 95 % Student-t interval (repetitions without a
    value are left out and counted in ``note``); fewer than two values: no interval."""
    nums = [x for x in (_number(v) for v in values) if x is not None]
    missing = len(values) - len(nums)
    gap = f"{missing} of {len(values)} repetitions had no value" if missing else ""
    n = len(nums)
    if n == 0:
        return Interval(0, None, None, None, None, None, gap or "no repetition")
    ordered = sorted(nums)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    mean = sum(nums) / n
    if n < 2:
        return Interval(n, mean, median, None, None, None,
                        "; ".join(x for x in (gap, "one value: no interval") if x))
    sd = math.sqrt(sum((x - mean) ** 2 for x in nums) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, median, sd, mean - half, mean + half, gap)


def repeats_block(repetitions: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``repeats`` block from each repetition's ``{"index", "started_at", "ended_at",
    "settled", "missing", "figures": {section: {...}}}`` (``figures`` holds the load, elasticity and
    cost blocks as report.json has them)."""
    figures = {key: [_number(lookup(rep["figures"], key)) for rep in repetitions] for key in REPEAT_FIGURES}
    runs = [{"index": rep["index"], "started_at": rep.get("started_at"), "ended_at": rep.get("ended_at"),
             "settled": rep.get("settled"), "missing": list(rep.get("missing") or []),
             "figures": {key: figures[key][i] for key in REPEAT_FIGURES}} for i, rep in enumerate(repetitions)]
    return {"n": len(repetitions), "confidence": CONFIDENCE,
            "method": "mean of the repetitions with a two-sided Student-t interval (measured: every "
                      "repetition is a full spike on the same deployment, one after the other)",
            "intervals": {key: interval(vals).block() for key, vals in figures.items()},
            "runs": runs}


def describe(block: dict[str, Any]) -> str:
    """One line: the repetitions and the interval of the time to the first cloud pod Ready."""
    ci = block["intervals"].get("elasticity.time_to_first_cloud_pod_ready_s") or {}
    if ci.get("ci_low") is None:
        return f"{block['n']} repetitions"
    return (f"{block['n']} repetitions; first cloud pod Ready {ci['mean']:.1f}s "
            f"(95% CI {ci['ci_low']:.1f}-{ci['ci_high']:.1f}s)")


__all__ = ["CONFIDENCE", "REPEAT_FIGURES", "Interval", "describe", "interval", "repeats_block", "t_quantile"]
