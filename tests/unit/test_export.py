"""``tidegate report export RUN --format llmd``: a run as an llm-d-benchmark Benchmark Report v0.2.

``BR_V0_2`` re-declares, as JSON Schema, the part of that format the export fills: the required
fields, the closed objects (``additionalProperties: false`` where the published schema has it), the
units vocabulary and ``Statistics`` (units and mean required). Written from the published schema
llm-d/llm-d-benchmark llmdbenchmark/analysis/benchmark_report/br_v0_2_json_schema.json (commit
f0dd0ba6ad5c2e44b0e1e5952fa8673089601084) and its example br_v0_2_example.yaml; the unit classes
per figure are the ones its pydantic model's validators accept (time for TTFT and request
latency, per-token time for ITL and TPOT, tokens/s and queries/s for rates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tasks.export import LLMD_SCHEMA_VERSION, export_run, llmd_report
from tasks.report import read_run
from tests.unit.test_dashboard import RECORDED, synthetic_run

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
UNITS = ["count", "percent", "fraction", "ms", "s", "MB", "GB", "TB", "MiB", "GiB", "TiB", "Mbit/s", "Gbit/s",
         "Tbit/s", "GiB/s", "MB/s", "GB/s", "TB/s", "ms/token", "s/token", "tokens/s", "queries/s", "Watts"]
_NUM = {"type": ["number", "null"]}
_STAT_KEYS = ("mode", "stddev", "min", "p0p1", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99",
              "p99p9", "max")


def _closed(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": props, "required": required or []}


def _opt(name: str) -> dict:
    return {"anyOf": [{"$ref": f"#/$defs/{name}"}, {"type": "null"}]}


BR_V0_2 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Benchmark Report v0.2 (the part tidegate fills)",
    "$defs": {
        "Units": {"enum": UNITS},
        "Statistics": {"type": "object", "required": ["units", "mean"],
                       "properties": {"units": {"$ref": "#/$defs/Units"}, "mean": {"type": "number"},
                                      **{k: _NUM for k in _STAT_KEYS}}},
        "SequenceLength": _closed({"distribution": {"enum": ["fixed", "gaussian", "uniform", "other"]},
                                   "value": {"type": "number", "minimum": 0}, "std_dev": _NUM,
                                   "min": {"type": ["integer", "null"], "minimum": 0},
                                   "max": {"type": ["integer", "null"], "minimum": 1}}, ["distribution", "value"]),
        "Run": _closed({"uid": {"type": "string"}, "eid": {"type": ["string", "null"]},
                        "cid": {"type": ["string", "null"]}, "pid": {"type": ["string", "null"]},
                        "time": _closed({"start": {"type": ["string", "null"], "format": "date-time"},
                                         "end": {"type": ["string", "null"], "format": "date-time"},
                                         "duration": {"type": ["string", "null"]}}),
                        "user": {"type": ["string", "null"]}, "description": {"type": ["string", "null"]},
                        "keywords": {"type": ["array", "null"], "items": {"type": "string"}}}, ["uid"]),
        "Component": _closed({
            "metadata": _closed({"schema_version": {"type": "string"}, "label": {"type": "string"},
                                 "cfg_id": {"type": "string"}, "description": {"type": ["string", "null"]}},
                                ["label", "cfg_id"]),
            # kind generic: kind, tool, tool_version required, anything else allowed
            "standardized": {"type": "object", "required": ["kind", "tool", "tool_version"],
                             "properties": {"kind": {"const": "generic"}, "tool": {"type": "string"},
                                            "tool_version": {"type": "string"}}},
            "native": _closed({"args": {"type": ["object", "null"]}, "envars": {"type": ["object", "null"]},
                               "config": {}})}, ["metadata", "standardized", "native"]),
        "Load": _closed({
            "metadata": _closed({"schema_version": {"type": "string"}, "cfg_id": {"type": "string"},
                                 "description": {"type": ["string", "null"]}}),
            "standardized": _closed({"tool": {"type": "string"}, "tool_version": {"type": "string"},
                                     "parallelism": {"type": "integer", "minimum": 1},
                                     "source": {"enum": ["random", "sampled", "unknown"]},
                                     "stage": {"type": "integer", "minimum": 0},
                                     "input_seq_len": {"$ref": "#/$defs/SequenceLength"},
                                     "output_seq_len": _opt("SequenceLength"),
                                     "prefix": {}, "multi_turn": {},
                                     "rate_qps": {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                                            {"type": "null"}]},
                                     "concurrency": {"type": ["number", "null"]}},
                                    ["tool", "tool_version", "source", "input_seq_len"]),
            "native": _closed({"args": {"type": ["object", "null"]}, "envars": {"type": ["object", "null"]},
                               "config": {}})}, ["metadata", "standardized", "native"]),
        "Series": _closed({"units": {"$ref": "#/$defs/Units"},
                           "series": {"type": "array", "items": _closed(
                               {"ts": {"type": "string"}, "value": _NUM, "mean": _NUM,
                                **{k: _NUM for k in _STAT_KEYS}}, ["ts"])}}, ["units", "series"]),
        "Aggregate": _closed({
            "requests": _closed({"total": {"type": "integer", "minimum": 0},
                                 "failures": {"type": ["integer", "null"], "minimum": 0},
                                 "incomplete": {"type": ["integer", "null"], "minimum": 0},
                                 "input_length": _opt("Statistics"), "output_length": _opt("Statistics")}, ["total"]),
            "latency": _closed({k: _opt("Statistics") for k in (
                "time_to_first_token", "normalized_time_per_output_token", "time_per_output_token",
                "inter_token_latency", "request_latency")}),
            "throughput": _closed({k: _opt("Statistics") for k in (
                "input_token_rate", "output_token_rate", "total_token_rate", "request_rate")})}),
        "Results": _closed({
            "request_performance": _closed({
                "aggregate": _opt("Aggregate"),
                "time_series": _closed({
                    "latency": _closed({k: _opt("Series") for k in (
                        "time_to_first_token", "normalized_time_per_output_token", "time_per_output_token",
                        "inter_token_latency", "request_latency")}),
                    "throughput": _closed({"units": {}, **{k: _opt("Series") for k in (
                        "input_token_rate", "output_token_rate", "total_token_rate", "request_rate")}})})}),
            "observability": {"type": ["object", "null"], "additionalProperties": True},  # open, as published
            "profiling": {}, "component_health": {"type": ["array", "null"]}}),
    },
    "type": "object", "additionalProperties": False, "required": ["run", "results"],
    "properties": {"version": {"type": "string"}, "run": {"$ref": "#/$defs/Run"},
                   "scenario": {"anyOf": [_closed({"stack": {"type": ["array", "null"],
                                                            "items": {"$ref": "#/$defs/Component"}},
                                                  "load": _opt("Load")}), {"type": "null"}]},
                   "results": {"$ref": "#/$defs/Results"}},
}


def _validate(doc: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(BR_V0_2)
    jsonschema.Draft202012Validator(BR_V0_2, format_checker=jsonschema.FormatChecker()).validate(doc)


def _runs(tmp_path: Path) -> list[Path]:
    return [synthetic_run(tmp_path)] + ([RECORDED] if (RECORDED / "report.json").is_file() else [])


def test_export_validates_against_the_v0_2_schema(tmp_path):
    for directory in _runs(tmp_path):
        doc = json.loads(export_run(directory, "llmd"))
        _validate(doc)
        assert doc["version"] == LLMD_SCHEMA_VERSION == "0.2"
        ext = doc["results"]["observability"]["tidegate"]
        assert ext["export"]["version"] == "0.2" and "br_v0_2_json_schema.json" in ext["export"]["schema"]


def test_the_schema_catches_what_it_should():
    """The re-declared schema is not vacuous: a wrong unit, a missing mean, a stray key fail."""
    good = {"run": {"uid": "r"}, "results": {"request_performance": {"aggregate": {
        "requests": {"total": 1}, "latency": {"time_to_first_token": {"units": "ms", "mean": 1.0}}}}}}
    _validate(good)
    for bad in ({**good, "tidegate": {}},
                {"run": {"uid": "r"}, "results": {"request_performance": {"aggregate": {
                    "latency": {"time_to_first_token": {"units": "msec", "mean": 1.0}}}}}},
                {"run": {"uid": "r"}, "results": {"request_performance": {"aggregate": {
                    "latency": {"time_to_first_token": {"units": "ms", "p95": 1.0}}}}}},
                {"results": {}}):
        with pytest.raises(jsonschema.ValidationError):
            _validate(bad)


def test_figures_map_with_their_units(tmp_path):
    for directory in _runs(tmp_path):
        run = read_run(directory)
        doc = llmd_report(run)
        load = run.report.load
        agg = doc["results"]["request_performance"]["aggregate"]
        assert agg["requests"] == {**agg["requests"], "total": load.requests, "failures": load.failures}
        lat = agg["latency"]
        assert lat["time_to_first_token"]["units"] == "ms" and lat["request_latency"]["units"] == "ms"
        assert lat["inter_token_latency"]["units"] == "ms/token" and lat["time_per_output_token"]["units"] == "ms/token"
        # the same percentiles as report.json's, over the same successful requests
        assert lat["time_to_first_token"]["p50"] == pytest.approx(load.ttft_p50_ms, abs=1e-2)
        assert lat["time_to_first_token"]["p95"] == pytest.approx(load.ttft_p95_ms, abs=1e-2)
        assert lat["request_latency"]["p95"] == pytest.approx(load.e2e_p95_ms, abs=1e-2)
        assert lat["inter_token_latency"]["p95"] == load.itl_p95_ms
        thr = agg["throughput"]
        assert thr["request_rate"] == {"units": "queries/s", "mean": load.rps}
        assert thr["output_token_rate"] == {"units": "tokens/s", "mean": load.output_tokens_per_s}
        std = doc["scenario"]["load"]["standardized"]
        assert std["rate_qps"] == load.generator["requested_rps"] and "concurrency" not in std
        assert doc["run"]["uid"] == run.report.run_id and doc["run"]["time"]["duration"].startswith("PT")
        ext = doc["results"]["observability"]["tidegate"]
        assert ext["verdict"] == run.report.verdict and ext["elasticity"]["cloud_pods_max"] == 1
        assert [g["rule"] for g in ext["gate"]] == [g.rule for g in run.report.gate]
        assert ext["goodput"]["slo_attainment"] == load.slo_attainment
        series = doc["results"]["request_performance"]["time_series"]["latency"]["time_to_first_token"]
        assert series["units"] == "ms" and series["series"][0]["ts"].startswith("2026-12-06T04:")


def test_export_without_requests_keeps_what_has_a_mean(tmp_path):
    directory = synthetic_run(tmp_path, timeline=False, cost=False)
    (directory / "requests.csv").unlink()
    doc = llmd_report(read_run(directory))
    _validate(doc)
    agg = doc["results"]["request_performance"]["aggregate"]
    assert "time_to_first_token" not in agg["latency"]  # percentiles alone are no Statistics (mean required)
    assert agg["throughput"]["request_rate"]["units"] == "queries/s"
    assert "pod_startup_times" not in doc["results"]["observability"]


def test_cli_exports_to_stdout_and_to_a_file(tmp_path):
    directory = synthetic_run(tmp_path)
    cmd = [sys.executable, "-m", "flows.cli", "report", "export", str(directory), "--format", "llmd"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    _validate(json.loads(done.stdout))
    out = tmp_path / "br.json"
    env_cmd = [sys.executable, "-m", "flows.cli", "report", "export", "synthetic-run", "--out", str(out)]
    import os

    done = subprocess.run(env_cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "TIDEGATE_REPORTS_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and json.loads(out.read_text())["run"]["uid"] == "synthetic-run"
    missing = subprocess.run([sys.executable, "-m", "flows.cli", "report", "export", str(tmp_path / "nope")],
                             check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert missing.returncode == 2 and "no report at" in missing.stderr and "Traceback" not in missing.stderr


def test_report_schema_still_works():
    done = subprocess.run([sys.executable, "-m", "flows.cli", "report", "schema", "--check",
                           "reports/schema/report.schema.json"], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
