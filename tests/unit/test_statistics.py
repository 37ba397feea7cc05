"""The gate's statistics on synthetic samples with known answers: Mann-Whitney U (ties, exact,
power, false alarms), the Hodges-Lehmann shift and interval, the candidate-vs-baseline and
run-vs-distribution rules, Keptn's score bands, and E-divisive change points (known steps, flat
noise, and Apache Otava's published example series)."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.stats import (
    ChangePoint,
    ScoredRule,
    change_points,
    compare_samples,
    compare_to_distribution,
    hodges_lehmann,
    mann_whitney,
    score,
    score_rules,
)

pytestmark = pytest.mark.unit

OTAVA = Path(__file__).parent / "fixtures" / "otava"


def _ttft(rng: np.random.Generator, n: int, *, median_ms: float = 200.0, sigma: float = 0.5) -> np.ndarray:
    return rng.lognormal(math.log(median_ms), sigma, n)


# --------------------------------------------------------------------------- Mann-Whitney U

def test_mann_whitney_u_counts_pairs_with_half_ties():
    c, b = [1, 2, 3, 3, 7], [0, 3, 3, 5]
    pairs = sum((x > y) + 0.5 * (x == y) for x in c for y in b)
    u, p = mann_whitney(c, b)
    assert u == pairs
    assert 0 < p < 1


def test_mann_whitney_exact_matches_enumeration():
    c, b = [1.1, 2.5, 3.7, 0.2, 6.1], [0.5, 1.9, 2.2, 4.4, 5.0, 0.1]
    allv = np.array(c + b)
    u, _ = mann_whitney(c, b, alternative="greater", method="exact")
    us = []
    for comb in itertools.combinations(range(len(allv)), len(c)):
        x, y = allv[list(comb)], np.delete(allv, list(comb))
        us.append(int((x[:, None] > y[None, :]).sum()))
    us = np.array(us)
    for alt, expect in [("greater", np.mean(us >= u)), ("less", np.mean(us <= u)),
                        ("two-sided", min(1.0, 2 * min(np.mean(us >= u), np.mean(us <= u))))]:
        assert mann_whitney(c, b, alternative=alt)[1] == pytest.approx(expect, abs=1e-12), alt


def test_mann_whitney_ties_handled():
    # all values equal: no evidence at all
    assert mann_whitney([5] * 30, [5] * 30) == (450.0, 1.0)
    # heavily tied integer data: the tie-corrected normal approximation agrees with a
    # permutation test of the same statistic
    rng = np.random.default_rng(7)
    c, b = rng.integers(0, 4, 40) + (rng.random(40) < 0.3), rng.integers(0, 4, 45)
    u, p = mann_whitney(c, b, alternative="greater")
    pooled = np.concatenate([c, b]).astype(float)
    perm = np.empty(4000)
    for i in range(len(perm)):
        rng.shuffle(pooled)
        perm[i] = mann_whitney(pooled[:40], pooled[40:], method="asymptotic")[0]
    assert p == pytest.approx(np.mean(perm >= u), abs=0.03)
    # ties force the asymptotic method even for tiny samples
    assert mann_whitney([1, 2, 2], [2, 3])[1] == mann_whitney([1, 2, 2], [2, 3], method="asymptotic")[1]
    with pytest.raises(ValueError):
        mann_whitney([1, 2, 2], [2, 3], method="exact")


def test_mann_whitney_alternatives_mirror_and_drop_non_finite():
    rng = np.random.default_rng(3)
    c, b = rng.normal(1, 1, 60), rng.normal(0, 1, 70)
    u_g, p_g = mann_whitney(c, b, alternative="greater")
    u_l, p_l = mann_whitney(b, c, alternative="less")
    assert u_g + u_l == 60 * 70 and p_g == pytest.approx(p_l)
    assert mann_whitney(c, b, alternative="two-sided")[1] == pytest.approx(min(1.0, 2 * min(p_g, 1 - p_g)), abs=1e-3)
    assert mann_whitney(np.r_[c, np.nan, np.inf], b) == (u_g, p_g)
    with pytest.raises(ValueError):
        mann_whitney([], b)


def test_mann_whitney_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(11)
    cases = [(rng.normal(0.3, 1, 40), rng.normal(0, 1, 50)),
             (rng.integers(0, 5, 30), rng.integers(0, 5, 35)),
             (rng.normal(0, 1, 6), rng.normal(0.5, 1, 7)),
             (rng.normal(0, 1, 5), rng.normal(0.5, 1, 400))]
    for c, b in cases:
        for alt in ("greater", "less", "two-sided"):
            ref = stats.mannwhitneyu(c, b, alternative=alt)
            u, p = mann_whitney(c, b, alternative=alt)
            assert u == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


# --------------------------------------------------------------------------- power and false alarms

def test_statistic_power_20pct_ttft_shift_at_n500_is_found():
    """A 20% multiplicative TTFT shift at n=500 per side: Mann-Whitney finds it every time, and the
    rule with a 10% allowed increase fails it (at a spread typical of TTFT, lognormal sigma 0.3)."""
    significant = failed = 0
    trials = 50
    for seed in range(trials):
        rng = np.random.default_rng(1000 + seed)
        base = _ttft(rng, 500, sigma=0.5)
        cand = 1.2 * _ttft(rng, 500, sigma=0.5)
        significant += mann_whitney(cand, base)[1] < 0.05
        rng = np.random.default_rng(2000 + seed)
        base, cand = _ttft(rng, 500, sigma=0.3), 1.2 * _ttft(rng, 500, sigma=0.3)
        failed += compare_samples(cand, base, allowed_increase=0.10).verdict == "fail"
    assert significant == trials
    assert failed >= 0.9 * trials


def test_statistic_no_false_alarm_on_identical_distributions():
    """200 seeded trials of two samples from one distribution: the rule passes in >= 95% of them
    and the raw test keeps its nominal 5% level."""
    fails = rejections = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        base, cand = _ttft(rng, 500), _ttft(rng, 500)
        cmp = compare_samples(cand, base, allowed_increase=0.10)
        fails += cmp.verdict == "fail"
        rejections += cmp.p_value < 0.05
    assert fails <= 10
    assert 2 <= rejections <= 18


# --------------------------------------------------------------------------- Hodges-Lehmann

def test_statistic_hodges_lehmann_recovers_known_shift():
    rng = np.random.default_rng(5)
    base = rng.normal(100, 10, 300)
    shift, low, high = hodges_lehmann(base + 15.0, base)
    assert shift == pytest.approx(15.0) and low <= 15.0 <= high
    cand = rng.normal(115, 10, 250)
    shift, low, high = hodges_lehmann(cand, base)
    assert abs(shift - 15.0) < 2.5 and low < 15.0 < high and 1.0 < high - low < 6.0
    # the median of all pairwise differences, by brute force
    c, b = [3.0, 8.0, 1.0], [2.0, 2.5]
    assert hodges_lehmann(c, b)[0] == np.median([x - y for x in c for y in b])


def test_statistic_hodges_lehmann_interval_coverage():
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        cand, base = rng.exponential(1.0, 40) + 0.5, rng.exponential(1.0, 50)
        _, low, high = hodges_lehmann(cand, base, confidence=0.90)
        covered += low <= 0.5 <= high
    assert 0.84 * 200 <= covered <= 0.96 * 200


def test_statistic_hodges_lehmann_subsamples_deterministically():
    rng = np.random.default_rng(9)
    cand, base = _ttft(rng, 3000) * 1.1, _ttft(rng, 2500)
    full = hodges_lehmann(cand, base)
    thin = hodges_lehmann(cand, base, max_pairs=200_000)
    assert thin == hodges_lehmann(cand, base, max_pairs=200_000)
    width = full[2] - full[1]
    assert all(abs(a - b) < 0.25 * width for a, b in zip(full, thin))


def test_statistic_hodges_lehmann_with_ties():
    shift, low, high = hodges_lehmann([2, 2, 3, 3, 3, 4] * 5, [1, 2, 2, 2, 3, 3] * 5)
    assert shift == 1.0 and low <= 1.0 <= high


# --------------------------------------------------------------------------- rules

def test_statistic_compare_samples_fail_names_the_shift():
    rng = np.random.default_rng(21)
    base, cand = _ttft(rng, 400, sigma=0.3), 1.3 * _ttft(rng, 400, sigma=0.3)
    cmp = compare_samples(cand, base, allowed_increase=0.10)
    assert cmp.verdict == "fail" and cmp.n_c == 400 and cmp.n_b == 400
    assert cmp.shift_low > 0.10 * cmp.median_b and 0.2 < cmp.relative_shift < 0.4 and cmp.p_value < 1e-6
    assert "shift +" in cmp.reason and "\n" not in cmp.reason


def test_statistic_compare_samples_within_allowed_increase_passes():
    rng = np.random.default_rng(22)
    base = _ttft(rng, 2000, sigma=0.2)
    cand = 1.04 * _ttft(rng, 2000, sigma=0.2)
    cmp = compare_samples(cand, base, allowed_increase=0.10)
    assert cmp.p_value < 0.05 and cmp.verdict == "pass" and "within the allowed" in cmp.reason


def test_statistic_compare_samples_lower_is_worse():
    rng = np.random.default_rng(23)
    base = rng.normal(50, 5, 200)
    worse = compare_samples(base * 0.7, base, allowed_increase=0.10, higher_is_worse=False)
    better = compare_samples(base * 1.3, base, allowed_increase=0.10, higher_is_worse=False)
    assert worse.verdict == "fail" and worse.shift_high < -5
    assert better.verdict == "pass" and better.p_value > 0.5


def test_statistic_compare_samples_small_sample_inconclusive():
    rng = np.random.default_rng(24)
    cmp = compare_samples(_ttft(rng, 19) * 3, _ttft(rng, 500), allowed_increase=0.10)
    assert cmp.verdict == "inconclusive" and cmp.n_c == 19 and "too few" in cmp.reason
    assert math.isnan(cmp.p_value)
    # non-finite values do not count towards the minimum
    vals = list(_ttft(rng, 15)) + [math.nan] * 10
    assert compare_samples(vals, _ttft(rng, 50), allowed_increase=0.1).verdict == "inconclusive"
    assert compare_samples(_ttft(rng, 5), _ttft(rng, 5), allowed_increase=0.1, min_samples=5).verdict == "pass"


def test_statistic_compare_to_distribution():
    few = compare_to_distribution(90.0, [41.0, 43.0], allowed_increase=0.10)
    assert few.verdict == "inconclusive" and "too few baseline runs: 2" in few.reason
    runs = [41.0, 43.0, 40.0, 44.0, 42.0]
    bad = compare_to_distribution(63.0, runs, allowed_increase=0.10)
    assert bad.verdict == "fail" and bad.median_b == 42.0 and bad.limit < 63.0
    assert "63 vs baseline median 42 (+50.0%)" in bad.reason
    assert compare_to_distribution(45.0, runs, allowed_increase=0.10).verdict == "pass"
    # a noisy baseline widens the limit beyond the allowed increase (3 scaled MADs)
    noisy = compare_to_distribution(52.0, [30.0, 42.0, 55.0, 38.0, 47.0], allowed_increase=0.10)
    assert noisy.verdict == "pass" and noisy.limit > 42.0 * 1.1
    # lower is worse (attainment)
    att = [0.97, 0.98, 0.96, 0.97]
    assert compare_to_distribution(0.80, att, allowed_increase=0.05, higher_is_worse=False).verdict == "fail"
    assert compare_to_distribution(0.99, att, allowed_increase=0.05, higher_is_worse=False).verdict == "pass"
    assert compare_to_distribution(math.nan, runs, allowed_increase=0.1).verdict == "inconclusive"


def test_statistic_score_bands():
    def rules(*statuses):
        return [ScoredRule(f"r{i}", s) for i, s in enumerate(statuses)]
    assert score(rules(*["pass"] * 10)) == "pass"
    assert score(rules(*["pass"] * 9, "fail")) == "pass"              # 90%
    assert score(rules(*["pass"] * 8, "warn", "fail")) == "warn"      # 85%
    assert score(rules(*["pass"] * 3, "fail")) == "warn"              # 75%
    assert score(rules("pass", "pass", "fail")) == "fail"             # 66.7%
    assert score(rules("pass", "fail"), pass_band=50, warn_band=25) == "pass"
    weighted = [ScoredRule("ttft", "fail", weight=1), ScoredRule("cost", "pass", weight=9)]
    details = score_rules(weighted)
    assert details.verdict == "pass" and details.score_pct == pytest.approx(90.0)


def test_statistic_score_critical_fails_alone_and_inconclusive_is_not_scored():
    rules = [ScoredRule("ready_s", "fail", critical=True)] + [ScoredRule(f"r{i}", "pass", weight=10) for i in range(9)]
    details = score_rules(rules)
    assert details.verdict == "fail" and details.failed_critical == ("ready_s",) and details.score_pct > 90
    mixed = [ScoredRule("a", "pass"), ScoredRule("b", "inconclusive"), {"rule": "c", "status": "pass", "weight": 2}]
    details = score_rules(mixed)
    assert details.verdict == "pass" and details.inconclusive == ("b",) and "b" in details.reason
    assert score([ScoredRule("a", "inconclusive")]) == "warn"   # no evidence is never a pass
    with pytest.raises(ValueError):
        score([ScoredRule("a", "maybe")])


# --------------------------------------------------------------------------- change points

def _step(seed: int, n: int = 60, at: int = 37, before: float = 41.0, after: float = 63.0, noise: float = 2.0):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(before, noise, at), rng.normal(after, noise, n - at)]


def test_change_point_known_step_found_at_the_right_index():
    for seed in range(10):
        series = _step(seed)
        cps = change_points(series)
        assert len(cps) == 1 and abs(cps[0].index - 37) <= 1, (seed, cps)
        cp = cps[0]
        assert isinstance(cp, ChangePoint) and cp.p_value < 1e-6
        assert cp.mean_before == pytest.approx(41.0, abs=1.5) and cp.mean_after == pytest.approx(63.0, abs=1.5)
        assert cp.relative_change == pytest.approx(cp.mean_after / cp.mean_before - 1)
    # a smaller step (+15%, three noise sigmas) in a longer series, beyond one window
    rng = np.random.default_rng(99)
    series = np.r_[rng.normal(100, 5, 130), rng.normal(115, 5, 70)]
    assert [cp.index for cp in change_points(series, min_magnitude=0.05)] in ([129], [130], [131])


def test_change_point_none_on_flat_noisy_series():
    """Flat noise: no change point in a seeded series, and few false alarms over many series.
    Otava's t-test judges the split E-divisive chose as the most different, so its p-value is
    optimistic and the false-alarm rate per series grows with the length (about 2.5% per 30-run
    series at the default 0.001, about 10% per 120-run series; 2% at 0.0001)."""
    assert change_points(np.random.default_rng(0).normal(50.0, 3.0, 30)) == []
    nightly = sum(bool(change_points(np.random.default_rng(s).normal(50.0, 3.0, 30))) for s in range(200))
    assert nightly <= 10
    long = sum(bool(change_points(np.random.default_rng(s).normal(50.0, 3.0, 120), max_pvalue=1e-4))
               for s in range(100))
    assert long <= 5
    skewed = sum(bool(change_points(np.random.default_rng(s).lognormal(math.log(40), 0.2, 30), min_magnitude=0.05))
                 for s in range(100))
    assert skewed <= 5


def test_change_point_permutation_method_is_seeded():
    series = _step(3, n=50, at=20)
    first = change_points(series, method="permutation", permutations=99, seed=4)
    assert [abs(cp.index - 20) <= 1 for cp in first] == [True]
    assert first == change_points(series, method="permutation", permutations=99, seed=4)
    rng = np.random.default_rng(5)
    assert change_points(rng.normal(0, 1, 50), method="permutation", permutations=99, seed=1) == []


def test_change_point_min_size_bounds_the_segments():
    """A regression in the last two runs is a change point with Otava's min_size=1; with
    min_size=3 no segment may be shorter than three runs."""
    rng = np.random.default_rng(8)
    series = np.r_[rng.normal(41.0, 1.0, 30), [63.0, 62.5]]
    assert 30 in [cp.index for cp in change_points(series)]
    assert all(3 <= cp.index <= len(series) - 3 for cp in change_points(series, min_size=3))


def test_change_point_otava_published_small_examples():
    """Otava's tests/change_point_divisive_test.py and tests/analysis_test.py series."""
    seq = [0.3, 2.4, 1.5, -0.9, -0.5, 99.7, 98.3, 99.1, 149.0, 149.7, 149.5, 149.1, 148.8, 150.0]
    assert [cp.index for cp in change_points(seq, max_pvalue=0.01)] == [5, 8]
    assert [cp.index for cp in change_points(seq, method="permutation", max_pvalue=0.01, seed=1)] == [5, 8]
    single = [1.02, 0.95, 0.99, 1.00, 1.12, 1.00, 1.01, 0.98, 1.01, 0.96,
              0.50, 0.51, 0.48, 0.48, 0.55, 0.50, 0.49, 0.51, 0.50, 0.49]
    assert [cp.index for cp in change_points(single, window_len=10, max_pvalue=0.0001)] == [10]
    assert [cp.index for cp in change_points(single, method="permutation", seed=1)] == [10]


def test_change_point_otava_published_tigerbeetle_series():
    """The Tigerbeetle series and the ten expectations of Otava's tests/tigerbeetle_test.py."""
    doc = json.loads((OTAVA / "tigerbeetle.json").read_text())
    for case in doc["expected"]:
        got = change_points(doc["series"], window_len=case["window_len"], max_pvalue=case["max_pvalue"],
                            min_magnitude=case["min_magnitude"])
        assert [cp.index for cp in got] == case["indexes"], case
    # the textbook variant (sample variances, both neighbours re-judged) agrees at Otava's old defaults
    textbook = change_points(doc["series"], window_len=30, max_pvalue=0.01, min_magnitude=0.05, otava_compatible=False)
    assert [cp.index for cp in textbook] == [15, 71]
    up = textbook[1]
    assert up.mean_before == pytest.approx(23829, abs=1) and up.relative_change == pytest.approx(0.2124, abs=1e-3)


def test_change_point_bounded_time_and_input_checks():
    rng = np.random.default_rng(12)
    series = np.r_[rng.normal(10, 1, 150), rng.normal(13, 1, 150), rng.normal(9, 1, 100)]
    t0 = time.perf_counter()
    cps = change_points(series, max_pvalue=0.001)
    assert time.perf_counter() - t0 < 5.0
    assert [round(cp.index / 10) for cp in cps] == [15, 30]
    assert change_points([1.0]) == [] and change_points([]) == []
    with pytest.raises(ValueError):
        change_points([1.0, math.nan, 2.0])
    with pytest.raises(ValueError):
        change_points([1.0, 2.0], method="bogus")
