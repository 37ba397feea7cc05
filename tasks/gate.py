"""The release gate: the spec's SLO rules against the report, pass / warn / fail per rule.

A rule reads a dotted key of report.json (``load.ttft_p95_ms``, ``elasticity.cloud_pods_max``,
``cost.cloud_cost_per_day``...). Absolute rules compare the value with the threshold;
relative rules compare the change in percent against the last *passing* run of the same spec
found under ``reports/`` (regression against the last good run). A rule whose value is
missing takes its ``no_data`` outcome, so a metric that silently disappeared cannot pass by
default. The overall verdict is fail if any rule with severity fail failed, warn if any rule
failed with severity warn (or warned), else pass.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.report_model import GateRuleResult

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


@dataclass
class RuleResult:
    rule: str
    status: str  # pass | warn | fail
    value: Any
    threshold: Any
    op: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self.report_block().model_dump(mode="json")

    def report_block(self) -> GateRuleResult:
        return GateRuleResult(rule=self.rule, status=self.status, value=self.value, threshold=self.threshold,
                              op=self.op, detail=self.detail)


def lookup(report: dict[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def last_passing_report(root: Path, spec_name: str, exclude_run: str | None = None) -> dict[str, Any] | None:
    """The newest report.json under ``root`` of the same spec whose verdict was pass."""
    best: tuple[str, dict] | None = None
    if not root.exists():
        return None
    for path in root.glob("*/report.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("spec") != spec_name or doc.get("verdict") != "pass" or doc.get("run_id") == exclude_run:
            continue
        key = doc.get("finished_at") or ""
        if best is None or key > best[0]:
            best = (key, doc)
    return best[1] if best else None


def evaluate(rules, report: dict[str, Any], *, baseline: dict[str, Any] | None = None) -> list[RuleResult]:
    out = []
    for r in rules:
        value = lookup(report, r.rule)
        if value is None:
            status = r.no_data if r.no_data != "pass" else "pass"
            out.append(RuleResult(r.rule, status if status != "fail" else r.severity, None, r.threshold, r.op,
                                  "no data for this metric in the run"))
            continue
        compared = value
        detail = ""
        if r.relative:
            base = lookup(baseline or {}, r.rule)
            if base in (None, 0) or isinstance(base, bool):
                out.append(RuleResult(r.rule, "pass", value, r.threshold, r.op,
                                      "no previous passing run to compare with"))
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


def verdict(results: list[RuleResult], *, failed: bool = False) -> str:
    """The run's verdict (the only place it is decided): fail if a stage failed (``failed``) or a
    rule failed, warn if a rule warned, else pass."""
    if failed or any(r.status == "fail" for r in results):
        return "fail"
    if any(r.status == "warn" for r in results):
        return "warn"
    return "pass"


def describe(results: list[RuleResult]) -> str:
    """One line: every rule with its value and status."""
    return ", ".join(f"{r.rule}={r.value} {r.status}" for r in results)


def failure_message(results: list[RuleResult], findings: list[str]) -> str:
    """Why the gate failed: the failed rules (value and threshold) and the missing findings."""
    bad = [f"{r.rule}={r.value} (want {r.op} {r.threshold})" for r in results if r.status == "fail"]
    why = f"; findings: {' | '.join(findings)}" if findings else ""
    return f"gate failed: {'; '.join(bad)}{why}"


__all__ = ["OPS", "RuleResult", "describe", "evaluate", "failure_message", "last_passing_report", "lookup",
           "verdict"]
