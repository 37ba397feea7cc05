"""The release gate: the spec's SLO rules against the report, and the run's one verdict.

A rule reads a dotted key of report.json (``load.ttft_p95_ms``, ``elasticity.cloud_pods_max``,
``cost.cloud_cost_per_day``...). Absolute rules compare the value with the threshold;
relative rules compare the change in percent against the baseline: the last run of the same
spec that passed the *full* chain (a partial or unjudged run never becomes a baseline). A rule
whose value is missing, or a relative rule without a comparable baseline, takes its
``on_no_data`` outcome (inconclusive by default, fail for a critical rule): no evidence is
never a pass.

The verdict (``verdict``, the only place it is decided; Argo Rollouts' four outcomes):
``fail`` if a stage failed or a rule failed; ``inconclusive`` if the run could not decide (the
gate did not run, no rule was evaluated, a rule had no data, the observer lost events, the
load generator could not hold the load); ``warn`` if a rule warned; else ``pass``.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.names import STAGE_NAMES
from tasks.report_model import GateRuleResult

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


@dataclass
class RuleResult:
    rule: str
    status: str  # pass | warn | fail | inconclusive
    value: Any
    threshold: Any
    op: str
    detail: str = ""
    critical: bool = False
    weight: int = 1
    scored: bool = False   # counted in the spec's score: its own status then does not decide alone

    def to_dict(self) -> dict[str, Any]:
        return self.report_block().model_dump(mode="json")

    def report_block(self) -> GateRuleResult:
        return GateRuleResult(rule=self.rule, status=self.status, value=self.value, threshold=self.threshold,
                              op=self.op, detail=self.detail, critical=self.critical, weight=self.weight,
                              scored=self.scored)


def lookup(report: dict[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def full_chain_passed(doc: dict[str, Any]) -> bool:
    """The run passed and every stage of the chain ran and passed (a baseline may be made of it)."""
    stages = doc.get("stages") or {}
    return doc.get("verdict") == "pass" and all((stages.get(n) or {}).get("status") == "passed"
                                                for n in STAGE_NAMES)


def last_passing_report(root: Path, spec_name: str, exclude_run: str | None = None) -> dict[str, Any] | None:
    """The newest report.json under ``root`` of the same spec that passed the full chain."""
    best: tuple[str, dict] | None = None
    if not root.exists():
        return None
    for path in root.glob("*/report.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("spec") != spec_name or not full_chain_passed(doc) or doc.get("run_id") == exclude_run:
            continue
        key = doc.get("finished_at") or ""
        if best is None or key > best[0]:
            best = (key, doc)
    return best[1] if best else None


@dataclass
class Baselines:
    """What statistical rules compare with: the candidate's per-request samples (``requests``
    table) and the baseline runs (report.json and requests table each; newest first)."""

    candidate_requests: Any = None                       # pandas DataFrame or None
    runs: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    source: str = ""
    series: list[dict[str, Any]] = field(default_factory=list)   # earlier runs' reports, oldest first

    def samples(self, table: Any, column: str) -> list[float]:
        if table is None or column not in getattr(table, "columns", ()):
            return []
        ok = table[table["ok"].astype(str).str.lower().isin(("true", "1"))] if "ok" in table else table
        return [float(v) for v in ok[column].dropna().tolist()]


def _statistical(r, report: dict[str, Any], history: Baselines | None) -> RuleResult:
    from tasks import stats
    from tasks.spec.slo import SAMPLE_RULES

    higher_is_worse = r.op in ("<=", "<")
    allowed = float(r.allowed_increase or 0) / 100
    threshold = f"{'+' if higher_is_worse else '-'}{r.allowed_increase:g}% vs baseline"
    runs = history.runs if history is not None else []
    if not runs:
        return RuleResult(r.rule, _no_data_status(r), None, threshold, r.op,
                          "no baseline: no earlier run of this spec passed the full chain (results store)")
    ids = ", ".join(str(doc.get("run_id")) for doc, _ in runs)
    if r.test == "mann_whitney":
        column = SAMPLE_RULES[r.rule]
        cand = history.samples(history.candidate_requests, column)
        base = [v for _, table in runs for v in history.samples(table, column)]
        c = stats.compare_samples(cand, base, allowed_increase=allowed, confidence=r.confidence,
                                  higher_is_worse=higher_is_worse)
        value = round(c.median_c, 2) if c.n_c and math.isfinite(c.median_c) else None
        detail = f"{c.reason} (baseline runs {ids})"
    else:
        value = lookup(report, r.rule)
        vals = [v for v in (lookup(doc, r.rule) for doc, _ in runs) if isinstance(v, (int, float))
                and not isinstance(v, bool)]
        c = stats.compare_to_distribution(value if isinstance(value, (int, float)) else None, vals,
                                          allowed_increase=allowed, higher_is_worse=higher_is_worse)
        detail = f"{c.reason} (baseline runs {ids})"
    status = {"pass": "pass", "fail": r.severity}.get(c.verdict, _no_data_status(r))
    return RuleResult(r.rule, status, value, threshold, r.op, detail)


# key figures watched for change points without a rule (warn), and whether higher is worse
CHANGE_POINT_FIGURES = {"load.ttft_p95_ms": True, "load.e2e_p95_ms": True, "load.error_rate": True,
                        "load.slo_attainment": False, "elasticity.time_to_first_cloud_pod_ready_s": True,
                        "elasticity.time_to_cloud_node_s": True, "cost.hybrid_cost_per_day": True}
MIN_SERIES = 5


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def change_point_at_run(report: dict[str, Any], history: Baselines | None, figure: str, *,
                        higher_is_worse: bool, min_magnitude: float = 0.0) -> tuple[str, str]:
    """(pass | regressed | inconclusive, one line): does this run land on a change point of
    ``figure``'s series over the spec's earlier runs (E-divisive means, ``tasks.stats``)."""
    from tasks import stats

    value = _number(lookup(report, figure))
    earlier = [(doc, _number(lookup(doc, figure))) for doc in (history.series if history else [])]
    earlier = [(doc, v) for doc, v in earlier if v is not None]
    if value is None or len(earlier) < MIN_SERIES:
        return "inconclusive", f"{len(earlier)} earlier runs with {figure} (a change point needs {MIN_SERIES})"
    series = [v for _, v in earlier] + [value]
    found = [c for c in stats.change_points(series, min_magnitude=min_magnitude) if c.index == len(series) - 1]
    if not found:
        return "pass", f"no change point at this run over {len(series)} runs"
    c = found[0]
    worse = c.mean_after > c.mean_before if higher_is_worse else c.mean_after < c.mean_before
    verb = "regressed" if worse else "improved"
    run = report.get("run_id")
    image = f" (image {report['image']})" if report.get("image") else ""
    text = (f"{figure} {verb} from {c.mean_before:.3g} to {c.mean_after:.3g} ({c.relative_change:+.0%}) at run "
            f"{run}{image}, over {len(series)} runs (p {c.p_value:.2g})")
    return ("regressed" if worse else "pass"), text


def change_point_warnings(rules, report: dict[str, Any], history: Baselines | None) -> list[RuleResult]:
    """A warning for each key figure (``CHANGE_POINT_FIGURES``) that regressed at this run, unless a
    change_point rule names it (that rule decides)."""
    named = {r.rule for r in rules if getattr(r, "test", "") == "change_point"}
    out = []
    for figure, higher in CHANGE_POINT_FIGURES.items():
        if figure in named:
            continue
        status, text = change_point_at_run(report, history, figure, higher_is_worse=higher)
        if status == "regressed":
            out.append(RuleResult(f"change_point:{figure}", "warn", _number(lookup(report, figure)),
                                  "no change point", "==", text))
    return out


def evaluate(rules, report: dict[str, Any], *, baseline: dict[str, Any] | None = None,
             history: Baselines | None = None, score=None) -> list[RuleResult]:
    """Every rule judged (``_evaluate``), each result carrying its rule's critical flag and weight;
    with ``score`` (a spec's ``ScoreSpec``) the non-critical ones are scored and one ``gate.score``
    result (``score_result``) decides for them."""
    out = _evaluate(rules, report, baseline=baseline, history=history)
    for r, res in zip(rules, out):
        res.critical, res.weight = bool(getattr(r, "critical", False)), int(getattr(r, "weight", 1))
    if score is not None:
        total = score_result(out, score)
        if total is not None:
            out.append(total)
    return out


SCORE_RULE = "gate.score"


def score_result(results: list[RuleResult], score) -> RuleResult | None:
    """Keptn's total score (``tasks.stats.score_rules``) over the non-critical rules (they are
    marked ``scored``): the share of their weights earned (pass: all, warn: half, fail: none),
    judged by the bands ``score.pass_at`` and ``score.warn_at``. A scored rule without data leaves
    the score undecided (inconclusive), never a pass. None when every rule is critical."""
    from tasks.stats import score_rules

    scored = [r for r in results if not r.critical and not r.rule.startswith("change_point:")]
    if not scored:
        return None
    for r in scored:
        r.scored = True
    bands = f"pass >= {score.pass_at:g}, warn >= {score.warn_at:g}"
    undecided = [r.rule for r in scored if r.status == "inconclusive"]
    if undecided:
        return RuleResult(SCORE_RULE, "inconclusive", None, score.pass_at, ">=",
                          f"score undecided: {', '.join(undecided)} had no data or no baseline "
                          f"({len(scored)} scored rules, {bands})")
    s = score_rules(scored, pass_band=score.pass_at, warn_band=score.warn_at)
    lost = [f"{r.rule} {r.status}" for r in scored if r.status != "pass"]
    why = f"; lost: {', '.join(lost)}" if lost else ""
    return RuleResult(SCORE_RULE, s.verdict, round(s.score_pct, 1), score.pass_at, ">=",
                      f"{s.reason} over {len(scored)} non-critical rules (weights "
                      f"{'+'.join(str(r.weight) for r in scored)}){why}")


def _evaluate(rules, report: dict[str, Any], *, baseline: dict[str, Any] | None = None,
              history: Baselines | None = None) -> list[RuleResult]:
    out = []
    for r in rules:
        if getattr(r, "test", "threshold") == "change_point":
            status, text = change_point_at_run(report, history, r.rule, higher_is_worse=r.op in ("<=", "<"),
                                               min_magnitude=float(r.allowed_increase or 0) / 100)
            out.append(RuleResult(r.rule, {"pass": "pass", "regressed": r.severity}.get(status, _no_data_status(r)),
                                  _number(lookup(report, r.rule)), "no change point", r.op, text))
            continue
        if getattr(r, "test", "threshold") != "threshold":
            out.append(_statistical(r, report, history))
            continue
        value = lookup(report, r.rule)
        if value is None:
            out.append(RuleResult(r.rule, _no_data_status(r), None, r.threshold, r.op,
                                  "no data for this metric in the run"))
            continue
        compared = value
        detail = ""
        if r.relative:
            base = lookup(baseline or {}, r.rule)
            if base in (None, 0) or isinstance(base, bool):
                why = "no baseline: no earlier run of this spec passed the full chain" if base is None \
                    else f"no comparable baseline (the baseline's value is {base!r})"
                out.append(RuleResult(r.rule, _no_data_status(r), value, r.threshold, r.op, why))
                continue
            compared = round((float(value) - float(base)) / abs(float(base)) * 100, 2)
            detail = f"{compared:+.1f}% vs last passing run ({base})"
        try:
            ok = bool(OPS[r.op](compared, r.threshold))
        except TypeError:
            ok = False
            detail = f"cannot compare {value!r} with {r.threshold!r}"
        out.append(RuleResult(r.rule, "pass" if ok else r.severity, value, r.threshold, r.op, detail))
    return out


def _no_data_status(rule) -> str:
    return rule.severity if rule.no_data_outcome == "fail" else "inconclusive"


def inconclusive_reasons(results: list[RuleResult], *, gate_ran: bool,
                         evidence_gaps: list[str] = ()) -> list[str]:
    """Why the run could not decide (empty: it could)."""
    reasons = []
    if not gate_ran:
        reasons.append("the gate did not run (select the gate stage to judge the run)")
    elif not results:
        reasons.append("no gate rule was evaluated (the spec's slo is empty)")
    reasons += [f"{r.rule}: {r.detail}" for r in results if r.status == "inconclusive"
                and not (r.rule == SCORE_RULE and any(x.scored and x.status == "inconclusive" for x in results))]
    reasons += list(evidence_gaps)
    return reasons


def verdict(results: list[RuleResult], *, failed: bool = False, gate_ran: bool = True,
            evidence_gaps: list[str] = ()) -> str:
    """The run's verdict (the only place it is decided): fail if a stage failed (``failed``) or a
    rule failed; inconclusive if the run could not decide (``inconclusive_reasons``); warn if a
    rule warned; else pass. A ``scored`` rule (under a spec's score) decides only through the
    ``gate.score`` result, not alone."""
    if failed or any(r.status == "fail" and not r.scored for r in results):
        return "fail"
    if inconclusive_reasons(results, gate_ran=gate_ran, evidence_gaps=evidence_gaps):
        return "inconclusive"
    if any(r.status == "warn" and not r.scored for r in results):
        return "warn"
    return "pass"


def describe(results: list[RuleResult]) -> str:
    """One line: every rule with its value and status."""
    return ", ".join(f"{r.rule}={r.value} {r.status}" for r in results)


def failure_message(results: list[RuleResult], findings: list[str]) -> str:
    """Why the gate failed: the failed rules (value and threshold) and the missing findings."""
    bad = [f"{r.rule}={r.value} (want {r.op} {r.threshold})" + (f": {r.detail}" if r.rule == SCORE_RULE else "")
           for r in results if r.status == "fail" and not r.scored]
    why = f"; findings: {' | '.join(findings)}" if findings else ""
    return f"gate failed: {'; '.join(bad)}{why}"


__all__ = ["CHANGE_POINT_FIGURES", "OPS", "SCORE_RULE", "Baselines", "RuleResult", "score_result", "change_point_at_run", "change_point_warnings", "describe", "evaluate", "failure_message", "full_chain_passed",
           "inconclusive_reasons", "last_passing_report", "lookup", "verdict"]
