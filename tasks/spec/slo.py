"""The ``slo`` section: the gate's rules, checked against the report.json keys they may name."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.report_model import OPEN_RULE_SECTIONS, rule_keys
from tasks.spec.base import _RULE, _FieldError, _show, _Strict

# report.json keys that gate rules may name: from the report model (``tasks.report_model``), so a
# rule can only name a key the report fills; ``stages.<name>.<field>`` is read as is
REPORT_KEYS = {section: set(keys) for section, keys in rule_keys().items()}
OPEN_REPORT_SECTIONS = OPEN_RULE_SECTIONS
# per-request figures a mann_whitney rule compares (the candidate's requests against the baselines')
SAMPLE_RULES = {"load.ttft_ms": "ttft_ms", "load.itl_ms": "itl_mean_ms", "load.e2e_ms": "e2e_ms",
                "load.tpot_ms": "tpot_ms"}


class SloRule(_Strict):
    """One gate rule: <rule> <op> <threshold>, e.g. load.error_rate <= 0.01."""

    rule: str = Field(
        "load.error_rate", title="Metric", max_length=128,
        description="Dotted report.json key, e.g. load.ttft_p95_ms, elasticity.cloud_pods_max, "
                    "elasticity.scale_in_back_to_idc.")
    op: Literal["<=", "<", ">=", ">", "=="] = Field("<=", title="Comparator",
                                                     description="How the value is compared.")
    threshold: bool | int | float = Field(
        0.01, title="Threshold",
        description="Number, or true/false for flags (with ==). With relative: a change in "
                    "percent against the last passing run (e.g. 20 = at most +20%).")
    relative: bool = Field(False, title="Relative",
                           description="Compare with the last passing run's value instead of absolutely.")
    severity: Literal["fail", "warn"] = Field("fail", title="Severity",
                                              description="What a violation makes the verdict.")
    critical: bool = Field(False, title="Critical",
                           description="A figure the release cannot go without: no data for it fails the run "
                                       "(on_no_data defaults to fail).")
    test: Literal["threshold", "mann_whitney", "baseline_distribution", "change_point"] = Field(
        "threshold", title="Test",
        description="threshold: value <op> threshold (or its change vs the last passing run with relative); "
                    "mann_whitney: the run's per-request samples (load.ttft_ms, load.itl_ms, load.e2e_ms, "
                    "load.tpot_ms) against the baseline runs' with a Mann-Whitney U test and a Hodges-Lehmann "
                    "shift beyond allowed_increase (Kayenta's canary judgement); baseline_distribution: a "
                    "per-run figure against the baseline runs' median and spread (>= 3 runs); change_point: the "
                    "run lands on a change point (E-divisive, as Apache Otava) of the figure's series over the "
                    "spec's earlier runs (>= 5; without such a rule a change point of a key figure warns). "
                    "op gives the direction: <= or < when higher is worse.")
    allowed_increase: float | None = Field(
        None, ge=0, le=1000, title="Allowed change (%)",
        description="Statistical tests: the change in percent of the baseline's median that is tolerated "
                    "(\"10%\" or 10).")
    confidence: float = Field(0.95, ge=0.5, le=0.9999, title="Confidence",
                              description="Statistical tests: the confidence of the significance test.")
    weight: int = Field(1, ge=1, le=100, title="Weight",
                        description="With a spec-level score: this rule's share of the total score (a "
                                    "critical rule is never scored: it decides alone).")
    on_no_data: Literal["fail", "inconclusive"] | None = Field(
        None, title="If no data",
        description="Outcome when the run produced no value for the metric (or a relative rule has no "
                    "comparable baseline): inconclusive (the run could not decide; the default) or fail "
                    "(the default for a critical rule). No data is never a pass.")

    @property
    def no_data_outcome(self) -> str:
        return self.on_no_data or ("fail" if self.critical else "inconclusive")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_type(cls, value: Any) -> Any:
        if not isinstance(value, (bool, int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"must be a finite number or true/false (got {_show(value)})")
        return value

    @field_validator("allowed_increase", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return float(value.strip()[:-1])
            except ValueError:
                raise ValueError(f"must be a percentage such as 10% (got {_show(value)})") from None
        return value

    @field_validator("rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        if not _RULE.match(value):
            raise ValueError(f"must be a dotted report key such as load.error_rate (got {_show(value)})")
        if value in SAMPLE_RULES:
            return value  # a per-request figure: a mann_whitney rule (checked below)
        section, key = value.split(".", 1)
        if section in REPORT_KEYS:
            if key not in REPORT_KEYS[section]:
                raise ValueError(f"{value!r} is not a report key (known {section} keys: "
                                 f"{', '.join(sorted(REPORT_KEYS[section]))})")
        elif section not in OPEN_REPORT_SECTIONS:
            raise ValueError(f"section {section!r} unknown (allowed: "
                             f"{', '.join([*REPORT_KEYS, *OPEN_REPORT_SECTIONS])})")
        return value

    @model_validator(mode="after")
    def _test(self) -> SloRule:
        if self.test == "mann_whitney" and self.rule not in SAMPLE_RULES:
            raise _FieldError("rule", f"a mann_whitney rule compares per-request samples: one of "
                                      f"{', '.join(sorted(SAMPLE_RULES))} (got {self.rule})")
        if self.test != "mann_whitney" and self.rule in SAMPLE_RULES:
            raise _FieldError("rule", f"{self.rule} is a per-request sample: use test: mann_whitney, or a "
                                      f"report figure such as load.{self.rule.split('.')[1].replace('_ms', '_p95_ms')}")
        if self.test != "threshold":
            if self.allowed_increase is None and self.test != "change_point":
                raise _FieldError("allowed_increase", f"is required with test {self.test} (e.g. 10%)")
            if self.relative:
                raise _FieldError("relative", f"does not apply to test {self.test} (it compares with baselines)")
            if self.op not in ("<=", "<", ">=", ">"):
                raise _FieldError("op", f"gives the direction of test {self.test}: <= when higher is worse, "
                                        ">= when lower is worse")
        return self

    @model_validator(mode="after")
    def _op(self) -> SloRule:
        if isinstance(self.threshold, bool):
            if self.op != "==":
                raise _FieldError("op", f"must be == for a true/false threshold (got {self.op!r})")
            if self.relative:
                raise _FieldError("relative", "cannot apply to a true/false threshold")
        return self


class ScoreSpec(_Strict):
    """Keptn's total score: the non-critical rules add up to a score in percent of their weights (a
    rule that passes gives its weight, one that warns half of it, one that fails nothing), and the
    score's band decides; a critical rule still fails the run alone. Without a score every rule
    decides alone."""

    pass_at: float = Field(90.0, ge=0, le=100, title="Pass at (%)",
                           description="A score at or above this passes (Keptn's default 90).")
    warn_at: float = Field(75.0, ge=0, le=100, title="Warn at (%)",
                           description="A score at or above this (and below pass_at) warns; below it fails "
                                       "(Keptn's default 75).")

    @model_validator(mode="after")
    def _bands(self) -> ScoreSpec:
        if self.warn_at > self.pass_at:
            raise _FieldError("warn_at", f"must be <= pass_at ({self.warn_at:g} > {self.pass_at:g})")
        return self


def _default_slo() -> list[SloRule]:
    return [
        SloRule(rule="load.error_rate", op="<=", threshold=0.01),
        SloRule(rule="load.ttft_p95_ms", op="<=", threshold=2000.0),
        SloRule(rule="elasticity.cloud_pods_max", op=">=", threshold=1),
        SloRule(rule="elasticity.scale_in_back_to_idc", op="==", threshold=True),
        SloRule(rule="elasticity.time_to_first_cloud_pod_ready_s", op="<=", threshold=180.0,
                severity="warn"),
    ]
