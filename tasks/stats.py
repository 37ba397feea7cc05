"""The statistics of the release gate and the nightly history: pure functions on numbers.

This module owns the tests that compare a candidate with a baseline and the change-point search
over a series of runs. It does no I/O and imports no stage; numpy is its only dependency (scipy
is deliberately not required: the distributions needed are the normal, Student's t and the exact
Mann-Whitney null, written out below).

- ``mann_whitney``: the Mann-Whitney U test (midranks for ties, tie-corrected variance, normal
  approximation with continuity correction; exact null distribution for small samples without
  ties, as scipy's ``method="auto"`` does).
- ``hodges_lehmann``: the Hodges-Lehmann shift (median of the pairwise differences) with its
  distribution-free confidence interval from the U distribution.
- ``compare_samples``: a per-request figure (TTFT, ITL...) of a candidate against a baseline,
  Kayenta's judge: significant by Mann-Whitney *and* a Hodges-Lehmann shift beyond an allowed
  effect; ``inconclusive`` on too few values.
- ``compare_to_distribution``: a per-run figure (time to first cloud pod Ready, cost...) against
  the distribution of the baseline runs (median and scaled MAD); ``inconclusive`` on too few runs.
- ``score`` / ``score_rules``: Keptn's total score (pass = full weight, warn = half, fail = 0;
  pass/warn bands; a critical rule that fails fails alone).
- ``change_points``: E-divisive means change points in a series, the way Apache Otava (formerly
  Hunter) finds them.

Invariants: every function is deterministic (a seed where randomness is used); non-finite values
are dropped before a test and the counts reported are of the values actually used; a verdict is
never ``pass`` for lack of evidence (too few values give ``inconclusive``).

Example::

    cmp = compare_samples(candidate_ttft_ms, baseline_ttft_ms, allowed_increase=0.10)
    cmp.verdict   # "fail"
    cmp.reason    # "candidate significantly higher beyond the allowed 10%: median 240 vs 200
                  #  (+20.0%), shift +39.8 [+35.1, +44.6] at 95%, allowed +20, p=1e-12"
    for cp in change_points(nightly_ready_s, min_magnitude=0.05):
        print(f"regressed from {cp.mean_before:.0f} s to {cp.mean_after:.0f} s at run {cp.index}")
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Alternative = Literal["greater", "less", "two-sided"]
Verdict = Literal["pass", "fail", "inconclusive"]
ScoreVerdict = Literal["pass", "warn", "fail"]

#: Pairs beyond which ``hodges_lehmann`` subsamples (4e6 float64 differences = 32 MB).
HL_MAX_PAIRS = 4_000_000
#: 1 / Phi^-1(3/4): the MAD of a normal sample times this estimates its standard deviation.
MAD_TO_SIGMA = 1.482602218505602


# --------------------------------------------------------------------------- distributions

def _norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _norm_ppf(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation refined by one Halley step;
    absolute error far below 1e-9 on (0, 1))."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p <= 1 - lo:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    else:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = tiny if abs(d) < tiny else d
        d = 1.0 / d
        c = 1.0 + num / c
        c = tiny if abs(c) < tiny else c
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return math.exp(log_front) * (f - 1.0) / a


def _t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return 1.0
    if math.isinf(t):
        return 0.0
    return min(1.0, _betainc(df / 2.0, 0.5, df / (df + t * t)))


# --------------------------------------------------------------------------- Mann-Whitney U

def _clean(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def _midranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..N with ties given their mean rank, and the size of every tie group."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    counts = np.diff(np.r_[starts, len(values)])
    mean_rank = starts + (counts + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks, counts


def _exact_u_counts(n: int, m: int) -> np.ndarray:
    """How many of the C(n+m, n) arrangements give each U in 0..n*m (no ties), exactly (Python
    integers): the coefficients of the Gaussian binomial prod_{i=1..k} (1 - q^(j+i)) / (1 - q^i)
    with k = min(n, m), j = max(n, m); dividing by (1 - q^i) is a cumulative sum with stride i."""
    k, j = min(n, m), max(n, m)
    size = n * m + 1
    poly = np.zeros(size, dtype=object)
    poly[0] = 1
    for i in range(1, k + 1):
        if j + i < size:
            poly[j + i:] = poly[j + i:] - poly[:size - j - i]
        for r in range(i):
            poly[r::i] = np.cumsum(poly[r::i])
    return poly


#: The exact null distribution is used up to this many pairs (above, the normal approximation).
EXACT_MAX_PAIRS = 20_000


def mann_whitney(candidate: Sequence[float], baseline: Sequence[float], *,
                 alternative: Alternative = "greater",
                 method: Literal["auto", "exact", "asymptotic"] = "auto") -> tuple[float, float]:
    """The Mann-Whitney U test of ``candidate`` against ``baseline``: ``(U, p_value)``.

    ``U`` is the candidate's statistic: the number of (candidate, baseline) pairs in which the
    candidate is larger, ties counting one half (scipy's ``U1``). ``alternative="greater"``
    tests whether the candidate tends to be larger (stochastically greater), ``"less"`` smaller,
    ``"two-sided"`` either.

    ``method="asymptotic"``: the normal approximation with the tie-corrected variance
    ``n m / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1)))`` and a continuity correction of 0.5.
    ``method="exact"``: the exact null distribution of U (only without ties, and up to
    ``EXACT_MAX_PAIRS`` pairs). ``"auto"`` (the default) is exact when one sample has at most 8
    values and there are no ties, asymptotic otherwise (scipy's rule, except that beyond
    ``EXACT_MAX_PAIRS`` pairs the normal approximation is used; otherwise U and the p-values
    agree with ``scipy.stats.mannwhitneyu``, checked by the unit tests when scipy is importable).
    Non-finite values are dropped. All values identical: ``p_value`` is 1.
    """
    c, b = _clean(candidate), _clean(baseline)
    n, m = len(c), len(b)
    if n == 0 or m == 0:
        raise ValueError("mann_whitney needs at least one finite value in each sample")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    ranks, ties = _midranks(np.concatenate([c, b]))
    u = float(ranks[:n].sum() - n * (n + 1) / 2.0)
    has_ties = bool((ties > 1).any())
    if method == "auto":
        exact = min(n, m) <= 8 and not has_ties and n * m <= EXACT_MAX_PAIRS
        method = "exact" if exact else "asymptotic"
    if method == "exact":
        if has_ties or n * m > EXACT_MAX_PAIRS:
            raise ValueError(f"the exact Mann-Whitney test needs samples without ties and at most "
                             f"{EXACT_MAX_PAIRS} pairs")
        counts = _exact_u_counts(n, m)
        total = int(counts.sum())
        k = round(u)
        p_ge = int(counts[k:].sum()) / total
        p_le = int(counts[:k + 1].sum()) / total
        p = {"greater": p_ge, "less": p_le, "two-sided": min(1.0, 2 * min(p_ge, p_le))}[alternative]
        return u, float(p)
    if method != "asymptotic":
        raise ValueError(f"method must be auto, exact or asymptotic, got {method!r}")
    big_n = n + m
    mu = n * m / 2.0
    var = n * m / 12.0 * ((big_n + 1) - float((ties ** 3 - ties).sum()) / (big_n * (big_n - 1)))
    if var <= 0:
        return u, 1.0
    sigma = math.sqrt(var)
    if alternative == "greater":
        p = _norm_sf((u - mu - 0.5) / sigma)
    elif alternative == "less":
        p = _norm_sf((mu - u - 0.5) / sigma)
    else:
        p = min(1.0, 2 * _norm_sf((abs(u - mu) - 0.5) / sigma))
    return u, float(p)


# --------------------------------------------------------------------------- Hodges-Lehmann

def _thin(sorted_values: np.ndarray, k: int) -> np.ndarray:
    """``k`` order statistics spread evenly over a sorted sample (at the midpoints of k equal
    slices): a deterministic subsample that keeps the sample's shape."""
    if k >= len(sorted_values):
        return sorted_values
    positions = ((np.arange(k) + 0.5) * len(sorted_values) / k).astype(int)
    return sorted_values[positions]


def hodges_lehmann(candidate: Sequence[float], baseline: Sequence[float], *,
                   confidence: float = 0.95, max_pairs: int = HL_MAX_PAIRS) -> tuple[float, float, float]:
    """The Hodges-Lehmann shift of ``candidate`` over ``baseline``: ``(shift, low, high)``.

    ``shift`` is the median of all n*m differences ``candidate_i - baseline_j``; ``[low, high]``
    is the distribution-free confidence interval of the shift at ``confidence`` (two-sided)
    from the U distribution (Hollander & Wolfe, Nonparametric Statistical Methods): with
    ``C = floor(n m / 2 - z sqrt(var U))`` (normal approximation, tie-corrected variance),
    ``low`` is the C-th smallest difference and ``high`` the C-th largest.

    Subsampling: when ``n * m > max_pairs`` (4e6 by default) the differences are taken between
    evenly spaced order statistics of each sample (``k_c * k_b <= max_pairs``, the same share
    of each), deterministically; the shift and the interval are then the same *quantiles* of
    those differences as they would be of the full set, so the interval keeps the width that the
    full sample sizes give. Non-finite values are dropped.
    """
    c, b = np.sort(_clean(candidate)), np.sort(_clean(baseline))
    n, m = len(c), len(b)
    if n == 0 or m == 0:
        raise ValueError("hodges_lehmann needs at least one finite value in each sample")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    pairs = n * m
    if pairs > max_pairs:
        scale = math.sqrt(max_pairs / pairs)
        c, b = _thin(c, max(1, int(n * scale))), _thin(b, max(1, int(m * scale)))
    diffs = (c[:, None] - b[None, :]).ravel()
    k = len(diffs)

    big_n = n + m
    _, ties = _midranks(np.concatenate([_clean(candidate), _clean(baseline)]))
    var = n * m / 12.0 * ((big_n + 1) - float((ties ** 3 - ties).sum()) / max(1, big_n * (big_n - 1)))
    z = _norm_ppf(0.5 + confidence / 2.0)
    c_alpha = math.floor(pairs / 2.0 - z * math.sqrt(max(var, 0.0)))
    c_alpha = min(max(c_alpha, 1), (pairs + 1) // 2)
    lo_rank, hi_rank = c_alpha - 1, pairs - c_alpha      # 0-based ranks among the n*m differences
    if k == pairs:
        positions = [lo_rank, hi_rank]
    else:
        positions = [round(r * (k - 1) / max(1, pairs - 1)) for r in (lo_rank, hi_rank)]
    mid = [(k - 1) // 2, k // 2]
    part = np.partition(diffs, sorted(set(positions + mid)))
    shift = 0.5 * (part[mid[0]] + part[mid[1]])
    return float(shift), float(part[positions[0]]), float(part[positions[1]])


# --------------------------------------------------------------------------- rule helpers

@dataclass(frozen=True)
class SampleComparison:
    """A per-request figure of a candidate against a baseline (``compare_samples``).

    ``shift`` and its interval are in the figure's unit (candidate minus baseline);
    ``relative_shift`` is ``shift / |median_b|``; ``p_value`` is one-sided in the "worse"
    direction."""
    n_c: int
    n_b: int
    median_c: float
    median_b: float
    shift: float
    shift_low: float
    shift_high: float
    relative_shift: float
    p_value: float
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class DistributionComparison:
    """A per-run figure against the baseline runs' distribution (``compare_to_distribution``).

    ``spread`` is the scaled MAD of the baseline runs; ``limit`` the value beyond which the
    figure fails (``nan`` when inconclusive)."""
    value: float
    n_b: int
    median_b: float
    spread: float
    limit: float
    relative_change: float
    verdict: Verdict
    reason: str


def _rel(x: float, ref: float) -> float:
    return x / abs(ref) if ref != 0 else (0.0 if x == 0 else math.copysign(math.inf, x))


def compare_samples(candidate: Sequence[float], baseline: Sequence[float], *, allowed_increase: float,
                    confidence: float = 0.95, higher_is_worse: bool = True,
                    min_samples: int = 20) -> SampleComparison:
    """Judge a per-request figure of the candidate against the baseline (Kayenta's judge).

    ``fail`` when the candidate is significantly worse (one-sided Mann-Whitney
    ``p < 1 - confidence``) *and* the whole Hodges-Lehmann interval lies beyond the allowed
    effect: ``shift_low > allowed_increase * |median_b|`` when higher is worse (``shift_high <
    -allowed_increase * |median_b|`` when lower is worse). The interval is two-sided at
    ``confidence``, so its bound is a one-sided ``(1 + confidence) / 2`` bound: a shift must be
    clearly beyond the tolerance, not merely estimated beyond it. ``inconclusive`` when either
    sample has fewer than ``min_samples`` finite values; ``pass`` otherwise.
    ``allowed_increase`` is relative (0.10 = 10% of the baseline median).
    """
    if allowed_increase < 0:
        raise ValueError(f"allowed_increase must be >= 0, got {allowed_increase}")
    c, b = _clean(candidate), _clean(baseline)
    n_c, n_b = len(c), len(b)
    if n_c < min_samples or n_b < min_samples:
        med_c = float(np.median(c)) if n_c else math.nan
        med_b = float(np.median(b)) if n_b else math.nan
        return SampleComparison(n_c, n_b, med_c, med_b, math.nan, math.nan, math.nan, math.nan, math.nan,
                                "inconclusive",
                                f"too few values to judge: candidate {n_c}, baseline {n_b} (need {min_samples} each)")
    med_c, med_b = float(np.median(c)), float(np.median(b))
    _, p = mann_whitney(c, b, alternative="greater" if higher_is_worse else "less")
    shift, low, high = hodges_lehmann(c, b, confidence=confidence)
    tolerance = allowed_increase * abs(med_b)
    significant = p < 1.0 - confidence
    beyond = low > tolerance if higher_is_worse else high < -tolerance
    worse = "higher" if higher_is_worse else "lower"
    figures = (f"median {med_c:.4g} vs {med_b:.4g} ({_rel(med_c - med_b, med_b):+.1%}), "
               f"shift {shift:+.4g} [{low:+.4g}, {high:+.4g}] at {confidence:.0%}, "
               f"allowed {'+' if higher_is_worse else '-'}{tolerance:.4g}, p={p:.2g}")
    if significant and beyond:
        verdict: Verdict = "fail"
        reason = f"candidate significantly {worse} beyond the allowed {allowed_increase:.0%}: {figures}"
    elif significant:
        verdict, reason = "pass", f"{worse} but within the allowed {allowed_increase:.0%}: {figures}"
    else:
        verdict, reason = "pass", f"not significantly {worse}: {figures}"
    return SampleComparison(n_c, n_b, med_c, med_b, shift, low, high, _rel(shift, med_b), float(p),
                            verdict, reason)


def compare_to_distribution(value: float, baseline_values: Sequence[float], *, allowed_increase: float,
                            higher_is_worse: bool = True, min_runs: int = 3,
                            mad_k: float = 3.0) -> DistributionComparison:
    """Judge one per-run figure against the baseline runs' distribution.

    ``fail`` when ``value`` lies beyond ``median + max(allowed_increase * |median|, mad_k *
    spread)`` (``median - ...`` when lower is worse), where ``spread`` is the scaled median
    absolute deviation of the baseline runs (MAD * 1.4826, a standard deviation for normal
    data): with the default ``mad_k = 3`` a run must be both beyond the allowed change and
    about three standard deviations out of the baseline's own noise. ``inconclusive`` with
    fewer than ``min_runs`` finite baseline runs or a non-finite value; ``pass`` otherwise.
    """
    if allowed_increase < 0:
        raise ValueError(f"allowed_increase must be >= 0, got {allowed_increase}")
    b = _clean(baseline_values)
    n_b = len(b)
    value = float(value) if value is not None else math.nan
    if n_b < min_runs or not math.isfinite(value):
        med = float(np.median(b)) if n_b else math.nan
        why = (f"too few baseline runs: {n_b} (need {min_runs})" if n_b < min_runs
               else f"no finite value to judge ({value})")
        return DistributionComparison(value, n_b, med, math.nan, math.nan, math.nan, "inconclusive", why)
    med = float(np.median(b))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(b - med)))
    margin = max(allowed_increase * abs(med), mad_k * spread)
    limit = med + margin if higher_is_worse else med - margin
    bad = value > limit if higher_is_worse else value < limit
    rel = _rel(value - med, med)
    figures = (f"{value:.4g} vs baseline median {med:.4g} ({rel:+.1%}) of {n_b} runs, "
               f"limit {limit:.4g} (max of {allowed_increase:.0%} and {mad_k:g} x spread {spread:.3g})")
    reason = f"{'beyond' if bad else 'within'} the baseline's distribution: {figures}"
    return DistributionComparison(value, n_b, med, spread, limit, rel, "fail" if bad else "pass", reason)


# --------------------------------------------------------------------------- total score

@dataclass(frozen=True)
class ScoredRule:
    """A rule's outcome as the score sees it. ``score`` also accepts any object with a
    ``status`` (or ``verdict``) attribute and optional ``weight``, ``critical`` and ``rule``
    (or ``name``) attributes, such as ``tasks.gate.RuleResult``."""
    name: str
    status: str  # pass | warn | fail | inconclusive
    weight: float = 1.0
    critical: bool = False


@dataclass(frozen=True)
class GateScore:
    """Keptn's total score: ``score_pct`` of the concluded weight, the verdict, and why."""
    verdict: ScoreVerdict
    score_pct: float
    failed_critical: tuple[str, ...]
    inconclusive: tuple[str, ...]
    reason: str


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return default


def score_rules(results: Iterable[Any], *, pass_band: float = 90, warn_band: float = 75) -> GateScore:
    """Keptn's total score over rule outcomes (lighthouse-service's scoring).

    A passing rule earns its full weight, a warning half, a failure nothing; the score is the
    earned share of the weight of the rules that concluded, in percent. ``pass`` at or above
    ``pass_band``, ``warn`` at or above ``warn_band``, else ``fail``; a critical rule (Keptn's
    ``key_sli``, Kayenta's ``critical``) that fails makes the result ``fail`` whatever the
    score. Inconclusive rules are left out of the score (neither earned nor owed) and listed:
    deciding what an inconclusive rule means for the run is the gate's verdict's job. When no
    rule concluded the result is ``warn`` (no evidence is never a pass).
    """
    if not 0 <= warn_band <= pass_band <= 100:
        raise ValueError(f"bands must satisfy 0 <= warn_band <= pass_band <= 100, got {warn_band}, {pass_band}")
    earned = owed = 0.0
    failed_critical: list[str] = []
    inconclusive: list[str] = []
    for i, r in enumerate(results):
        status = _attr(r, "status", "verdict")
        name = str(_attr(r, "name", "rule", default=f"rule {i + 1}"))
        weight = float(_attr(r, "weight", default=1.0) or 0.0)
        if status not in ("pass", "warn", "fail", "inconclusive"):
            raise ValueError(f"{name}: status must be pass, warn, fail or inconclusive, got {status!r}")
        if status == "inconclusive":
            inconclusive.append(name)
            continue
        owed += weight
        earned += {"pass": weight, "warn": 0.5 * weight, "fail": 0.0}[status]
        if status == "fail" and bool(_attr(r, "critical", "key_sli", default=False)):
            failed_critical.append(name)
    pct = 100.0 * earned / owed if owed > 0 else math.nan
    left_out = f"; inconclusive, not scored: {', '.join(inconclusive)}" if inconclusive else ""
    if failed_critical:
        return GateScore("fail", pct, tuple(failed_critical), tuple(inconclusive),
                         f"critical rule failed: {', '.join(failed_critical)}{left_out}")
    if owed <= 0:
        return GateScore("warn", pct, (), tuple(inconclusive), f"no rule concluded{left_out}")
    verdict: ScoreVerdict = "pass" if pct >= pass_band else ("warn" if pct >= warn_band else "fail")
    return GateScore(verdict, pct, (), tuple(inconclusive),
                     f"score {pct:.1f}% (pass >= {pass_band:g}%, warn >= {warn_band:g}%){left_out}")


def score(results: Iterable[Any], *, pass_band: float = 90, warn_band: float = 75) -> ScoreVerdict:
    """Keptn's total score as a verdict: ``"pass"``, ``"warn"`` or ``"fail"`` (see ``score_rules``
    for the rules and for the score and reason behind it)."""
    return score_rules(results, pass_band=pass_band, warn_band=warn_band).verdict


# --------------------------------------------------------------------------- change points

@dataclass(frozen=True)
class ChangePoint:
    """A change in a series at ``index``: the first point of the new regime (Otava's convention).

    The means and standard deviations are of the segments between the neighbouring change
    points; ``relative_change`` is ``mean_after / mean_before - 1`` (0 when ``mean_before`` is
    0); ``p_value`` is the significance test's (Student's t or permutation); ``qhat`` the
    E-divisive divergence that proposed the split."""
    index: int
    mean_before: float
    mean_after: float
    stddev_before: float
    stddev_after: float
    relative_change: float
    p_value: float
    qhat: float

    @property
    def magnitude(self) -> float:
        """Otava's change magnitude: the larger of the forward and the backward relative change."""
        fwd = self.mean_after / self.mean_before - 1 if self.mean_before else 0.0
        bwd = self.mean_before / self.mean_after - 1 if self.mean_after else 0.0
        return max(abs(fwd), abs(bwd))


def _divergence(seg: np.ndarray, power: float, min_size: int) -> tuple[int, float] | None:
    """The E-divisive candidate in one segment: ``(tau, qhat)`` maximising Matteson & James's
    Q(X, Y) over ``X = seg[:tau]``, ``Y = seg[tau:kappa]`` with both at least ``min_size`` long
    (``tau`` local to the segment), or None when the segment cannot be split.

    Q(X, Y) = 2/(n+m) sum|X-Y|^a - 2m/((n+m)(n-1)) sum_{i<k}|X_i-X_k|^a
              - 2n/((n+m)(m-1)) sum_{j<k}|Y_j-Y_k|^a,  n = |X|, m = |Y|,
    evaluated for every (tau, kappa) at once from a 2-D prefix sum of the distance matrix."""
    size = len(seg)
    if size < 2 * min_size:
        return None
    dist = np.abs(seg[:, None] - seg[None, :]) ** power
    pre = np.zeros((size + 1, size + 1))
    pre[1:, 1:] = dist.cumsum(axis=0).cumsum(axis=1)
    tau = np.arange(size + 1)[:, None]
    kappa = np.arange(size + 1)[None, :]
    n = tau.astype(float)
    m = (kappa - tau).astype(float)
    diag = np.diag(pre)
    between = pre[tau, kappa] - diag[tau] - pre[0, kappa] + pre[0, tau]
    within_x = diag[tau] / 2.0
    within_y = (diag[kappa] - pre[tau, kappa] - pre[kappa, tau] + diag[tau]) / 2.0
    valid = (n >= min_size) & (m >= min_size) & (n >= 1) & (m >= 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = n + m
        q = (2.0 / total * between
             - np.where(n > 1, 2.0 * m / (total * (n - 1)), 0.0) * within_x
             - np.where(m > 1, 2.0 * n / (total * (m - 1)), 0.0) * within_y)
    q = np.where(valid, q, -np.inf)
    i, _ = np.unravel_index(int(np.argmax(q)), q.shape)
    best = float(q.max())
    return (int(i), best) if math.isfinite(best) else None


def _next_candidate(series: np.ndarray, bounds: list[int], power: float, min_size: int) -> tuple[int, float] | None:
    """The best candidate over all segments ``series[bounds[k]:bounds[k+1]]`` (absolute index)."""
    best: tuple[int, float] | None = None
    for lo, hi in itertools.pairwise(bounds):
        found = _divergence(series[lo:hi], power, min_size)
        if found is not None and (best is None or found[1] > best[1]):
            best = (lo + found[0], found[1])
    return best


def _ttest(left: np.ndarray, right: np.ndarray, *, otava_compatible: bool = False) -> float:
    """Two-sided two-sample Student's t-test (pooled variance), Otava's significance test.

    ``otava_compatible``: pool the *population* variances (ddof=0), as Otava does by passing
    ``np.std`` to scipy's ``ttest_ind_from_stats``; otherwise the textbook sample variances."""
    n1, n2 = len(left), len(right)
    if n1 == 0 or n2 == 0 or n1 + n2 <= 2:
        return 1.0
    m1, m2 = float(left.mean()), float(right.mean())
    df = n1 + n2 - 2
    if otava_compatible:
        ss = (n1 - 1) * float(left.var()) + (n2 - 1) * float(right.var())
    else:
        ss = float(((left - m1) ** 2).sum() + ((right - m2) ** 2).sum())
    denom = math.sqrt(ss / df * (1.0 / n1 + 1.0 / n2))
    if denom == 0:
        return 1.0 if m1 == m2 else 0.0
    return _t_two_sided_p((m1 - m2) / denom, df)


def _stats_at(series: np.ndarray, index: int, lo: int, hi: int, p: float, qhat: float) -> ChangePoint:
    left, right = series[lo:index], series[index:hi]
    mb, ma = float(left.mean()), float(right.mean())
    return ChangePoint(index, mb, ma, float(left.std()), float(right.std()),
                       ma / mb - 1.0 if mb else 0.0, float(p), float(qhat))


def _with_ttest(series: np.ndarray, indexes: list[int], qhats: dict[int, float],
                compat: bool) -> list[ChangePoint]:
    """Every change point judged between its neighbours (segments end at the adjacent points)."""
    bounds = [0, *indexes, len(series)]
    out = []
    for k, idx in enumerate(indexes):
        lo, hi = bounds[k], bounds[k + 2]
        out.append(_stats_at(series, idx, lo, hi, _ttest(series[lo:idx], series[idx:hi], otava_compatible=compat),
                             qhats.get(idx, math.nan)))
    return out


def _divisive_ttest(series: np.ndarray, max_pvalue: float, power: float, min_size: int,
                    compat: bool) -> dict[int, float]:
    """E-divisive in one window, each split judged by the t-test on the segment it splits; stops
    at the first candidate that is not significant (Otava's detector)."""
    found: dict[int, float] = {}
    while True:
        bounds = [0, *sorted(found), len(series)]
        cand = _next_candidate(series, bounds, power, min_size)
        if cand is None:
            return found
        idx, qhat = cand
        lo = max(b for b in bounds if b < idx)
        hi = min(b for b in bounds if b > idx)
        if _ttest(series[lo:idx], series[idx:hi], otava_compatible=compat) > max_pvalue:
            return found
        found[idx] = qhat


def _otava(series: np.ndarray, window_len: int, max_pvalue: float, min_magnitude: float,
           power: float, min_size: int, compat: bool) -> list[ChangePoint]:
    # Split: windows of window_len overlapping by half, each searched at a relaxed threshold
    # ("weak" change points, 10x the final p-value as in Otava).
    first_pass = max_pvalue * 10 if max_pvalue < 0.05 else (max_pvalue * 2 if max_pvalue < 0.5 else max_pvalue)
    step = max(1, window_len // 2)
    weak: dict[int, float] = {}
    start = 0
    while start < len(series):
        end = min(start + window_len, len(series))
        local = _divisive_ttest(series[start:end], first_pass, power, min_size, compat)
        for idx, qhat in local.items():
            weak.setdefault(start + idx, qhat)
        last = start + max(local) if local else 0
        start = max(last, start + step)
    # Merge: drop the weakest point (highest p-value above the threshold, else the smallest
    # change at or below min_magnitude) and re-judge its neighbours, until every point holds.
    points = _with_ttest(series, sorted(weak), weak, compat)
    while points:
        weakest = max(points, key=lambda cp: cp.p_value)
        if weakest.p_value < max_pvalue:
            weakest = min(points, key=lambda cp: cp.magnitude)
            if weakest.magnitude > min_magnitude:
                break
        k = points.index(weakest)
        del points[k]
        fresh = _with_ttest(series, [cp.index for cp in points], weak, compat)
        # Otava re-judges the point after the removed one and the next; the one before it,
        # whose right segment grew, keeps its old figures. The textbook way re-judges both sides.
        for j in ((k, k + 1) if compat else (k - 1, k)):
            if 0 <= j < len(points):
                points[j] = fresh[j]
    # The figures reported are always those against the final neighbours.
    return _with_ttest(series, [cp.index for cp in points], weak, compat)


def _permutation(series: np.ndarray, max_pvalue: float, permutations: int, seed: int,
                 power: float, min_size: int) -> list[ChangePoint]:
    rng = np.random.default_rng(seed)
    found: dict[int, tuple[float, float]] = {}
    while True:
        bounds = [0, *sorted(found), len(series)]
        cand = _next_candidate(series, bounds, power, min_size)
        if cand is None:
            break
        idx, qhat = cand
        exceed = 0
        for _ in range(permutations):
            shuffled = series.copy()
            for lo, hi in itertools.pairwise(bounds):
                rng.shuffle(shuffled[lo:hi])
            perm = _next_candidate(shuffled, bounds, power, min_size)
            exceed += perm is not None and perm[1] >= qhat
        p = (exceed + 1) / (permutations + 1)
        if p > max_pvalue:
            break
        found[idx] = (p, qhat)
    indexes = sorted(found)
    bounds = [0, *indexes, len(series)]
    return [_stats_at(series, idx, bounds[k], bounds[k + 2], found[idx][0], found[idx][1])
            for k, idx in enumerate(indexes)]


def change_points(series: Sequence[float], *, method: Literal["otava", "permutation"] = "otava",
                  max_pvalue: float | None = None, min_magnitude: float = 0.0, window_len: int = 50,
                  min_size: int = 1, power: float = 1.0, permutations: int = 199,
                  seed: int = 0, otava_compatible: bool = True) -> list[ChangePoint]:
    """Change points in a series by E-divisive means, as Apache Otava (formerly Hunter) finds them.

    Sources followed (read, not copied): Apache Otava ``docs/MATH.md`` and
    ``otava/analysis.py`` / ``otava/change_point_divisive/`` (github.com/apache/otava, commit
    1ceb153); Matteson & James, "A Nonparametric Approach for Multiple Change Point Analysis of
    Multivariate Data" (arXiv:1306.4933); Fleming et al., "Hunter: Using Change Point Detection
    to Hunt for Performance Regressions" (arXiv:2301.03034).

    The candidate split of a segment is the ``tau`` (with some ``kappa``) maximising Matteson &
    James's divergence Q between ``segment[:tau]`` and ``segment[tau:kappa]`` (distances
    ``|x - y| ** power``, ``power`` in (0, 2), 1 by default); among several segments the one
    with the largest Q is split first. Two ways to decide whether a candidate is real:

    - ``method="otava"`` (default; Otava's ``compute_change_points``, the Hunter paper): the
      series is searched in windows of ``window_len`` points overlapping by half, each candidate
      judged by a two-sided Student's t-test between the segments either side, at a relaxed
      threshold (10x ``max_pvalue``, default 0.001) to collect "weak" change points; then the
      weakest are merged away one at a time (highest p-value above ``max_pvalue``, else the
      smallest change at or below ``min_magnitude``, Otava's relative magnitude) and the
      neighbours re-judged. Deterministic, O(window_len^2) per window.
    - ``method="permutation"`` (Matteson & James's original, Otava's
      ``compute_change_points_orig``): the whole series is split recursively while the
      candidate's Q beats the Q of ``permutations`` shuffles (within the current segments,
      generator seeded by ``seed``): p = (1 + #{Q_perm >= Q}) / (permutations + 1), default
      threshold 0.01. Cost O(permutations * changes * n^2): a few seconds at a few hundred points.

    ``otava_compatible`` (default True) keeps two details of Otava's code so that results match
    Otava's on its published examples (all ten Tigerbeetle expectations of
    ``tests/tigerbeetle_test.py`` are reproduced, see the unit tests): the t-test pools the
    *population* variances (ddof=0: Otava passes ``np.std`` to ``ttest_ind_from_stats``, which
    overstates significance on short segments), and the merge step, after removing a point,
    re-judges the point after it and the next one but not the point before it (whose right
    segment grew). ``False`` uses the sample variances and re-judges both neighbours.

    ``min_size`` is the shortest segment a split may leave (1, as Otava; raise it to ignore
    single-run outliers). A change point's ``index`` is the first point after the change; the
    first point of the series is never one. Non-finite values are not allowed (fill gaps first).
    """
    arr = np.asarray(series, dtype=float).ravel()
    if not np.isfinite(arr).all():
        raise ValueError("change_points needs finite values (fill or drop missing runs first)")
    if not 0 < power < 2:
        raise ValueError(f"power must be in (0, 2), got {power}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if len(arr) < 2 * min_size:
        return []
    if method == "otava":
        if window_len < 2:
            raise ValueError(f"window_len must be >= 2, got {window_len}")
        return _otava(arr, window_len, 0.001 if max_pvalue is None else max_pvalue, min_magnitude, power,
                      min_size, otava_compatible)
    if method == "permutation":
        if permutations < 1:
            raise ValueError(f"permutations must be >= 1, got {permutations}")
        points = _permutation(arr, 0.01 if max_pvalue is None else max_pvalue, permutations, seed, power, min_size)
        return [cp for cp in points if min_magnitude <= 0 or cp.magnitude > min_magnitude]
    raise ValueError(f"method must be otava or permutation, got {method!r}")


__all__ = [
    "EXACT_MAX_PAIRS",
    "HL_MAX_PAIRS",
    "ChangePoint",
    "DistributionComparison",
    "GateScore",
    "SampleComparison",
    "ScoredRule",
    "change_points",
    "compare_samples",
    "compare_to_distribution",
    "hodges_lehmann",
    "mann_whitney",
    "score",
    "score_rules",
]
