"""report.html's dashboard (issue 23): one figure of stacked panels over one time axis, on the
first screen, before the findings and the tables; a run without timeline or cost still renders.

``synthetic_run`` writes a small but complete report directory (report.json and the CSV tables a
run writes) so that these tests need no recorded run; ``RECORDED`` is a real test-bed run, used
when this checkout has it (reports/ is not in git)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.report import RunReport, dashboard_figure, read_run, render_html, render_run

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "reports" / "qwen-chat-local-20261206-044822-8970"
T0 = pd.Timestamp("2026-12-06T04:48:28+00:00")
PHASES = (("baseline", 0, 20), ("spike", 20, 60), ("hold", 60, 80), ("cooldown", 80, 120))


def _iso(seconds: float) -> str:
    return (T0 + pd.Timedelta(seconds=seconds)).isoformat()


def synthetic_run(root: Path, *, timeline: bool = True, cost: bool = True) -> Path:
    """A 120 s open-loop spike run: 1 -> 8 requests/s, the HPA 1 -> 3 replicas, one cloud node and
    pod, all written as tidegate writes them."""
    out = root / "synthetic-run"
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    rate = lambda t: 1.0 if t < 20 or t >= 80 else 8.0
    sends = np.sort(np.concatenate([t + rng.random(rng.poisson(rate(t))) for t in range(120)]))
    n = len(sends)
    ttft = np.where((sends > 30) & (sends < 50), 900.0, 120.0) + rng.random(n) * 30
    e2e = ttft + 63 * 30.0
    ok = np.ones(n, dtype=bool)
    ok[5] = False
    intended = [T0 + pd.Timedelta(seconds=float(s)) for s in sends]
    requests = pd.DataFrame({
        "id": range(n), "start": intended, "end": [t + pd.Timedelta(milliseconds=float(e)) for t, e in zip(intended, e2e)],
        "t_s": sends, "phase": [next(p for p, a, b in PHASES if a <= s < b) for s in sends], "users": 1, "worker": 0,
        "status": np.where(ok, 200, 500), "ok": ok, "cancelled": False, "error": np.where(ok, "", "HTTP 500"),
        "ttft_ms": np.where(ok, ttft, np.nan), "e2e_ms": e2e, "output_tokens": np.where(ok, 64, 0),
        "tokens_source": "usage", "chunks": 64, "done": ok, "itl_count": np.where(ok, 63, 0),
        "itl_mean_ms": np.where(ok, 30.0, np.nan), "itl_p95_ms": np.where(ok, 33.0, np.nan),
        "itl_max_ms": 40.0, "tpot_ms": np.where(ok, 30.0, np.nan), "intended": intended, "send_delay_ms": 1.0,
        "input_tokens": 14, "max_tokens": 64})
    requests.to_csv(out / "requests.csv", index=False)
    sec = np.floor(sends).astype(int)
    ends = np.floor(sends + e2e / 1000).astype(int)
    per_second = pd.DataFrame({"second": [T0 + pd.Timedelta(seconds=i) for i in range(122)], "t_s": range(122)})
    per_second["phase"] = [next((p for p, a, b in PHASES if a <= i < b), "cooldown") for i in range(122)]
    per_second["users"] = 0
    per_second["started"] = np.bincount(sec, minlength=122)[:122]
    per_second["completed"] = np.bincount(ends, minlength=122)[:122]
    per_second["failures"] = np.bincount(ends[~ok], minlength=122)[:122]
    good = requests[ok].assign(sec=sec[ok]).groupby("sec")
    for col, src, q in (("ttft_p50_ms", "ttft_ms", .5), ("ttft_p95_ms", "ttft_ms", .95), ("e2e_p95_ms", "e2e_ms", .95)):
        per_second[col] = per_second["t_s"].map(good[src].quantile(q))
    per_second["itl_p95_ms"] = 33.0
    per_second["output_tokens_per_s"] = per_second["completed"] * 64.0
    per_second.to_csv(out / "per_second.csv", index=False)

    report = RunReport(
        run_id="synthetic-run", spec="qwen-chat-local", profile="local", image="vllm/vllm-openai:v0.6.3",
        started_at=_iso(-6), finished_at=_iso(130), verdict="pass",
        stages={"spike": {"status": "passed", "seconds": 120.0, "detail": "ok"}},
        load={"requests": n, "failures": 1, "error_rate": round(1 / n, 6), "rps": round(n / 120, 3),
              "ttft_p50_ms": float(np.percentile(ttft[ok], 50)), "ttft_p95_ms": float(np.percentile(ttft[ok], 95)),
              "itl_p95_ms": 33.0, "e2e_p95_ms": float(np.percentile(e2e[ok], 95)),
              "output_tokens_per_s": round((n - 1) * 64 / 120, 3), "cancelled": 0, "duration_s": 120.0,
              "itl_p50_ms": 30.0, "itl_p99_ms": 38.0, "arrival": "poisson",
              "generator": {"arrival": "poisson", "processes": 1, "requested_rps": round(n / 120, 3)},
              "slo_attainment": 0.9, "goodput": {"slo": {"ttft_ms": 2000.0}}},
        gate=[{"rule": "load.ttft_p95_ms", "status": "pass", "value": 500.0, "threshold": 1500, "op": "<="},
              {"rule": "elasticity.cloud_pods_max", "status": "pass", "value": 1, "threshold": 1, "op": ">="}],
        findings=[{"name": "hpa_scaled_out", "ok": True, "detail": "the HPA scaled out",
                   "evidence": ["Event SuccessfulRescale default/qwen-chat-hpa 04:48:53: New size: 2"]}],
        phases=[{"name": p, "start": _iso(a), "end": _iso(b)} for p, a, b in PHASES],
        elasticity={"hpa_max_replicas": 3, "cloud_pods_max": 1, "idc_pods_max": 2},
        cost={"currency": "CNY", "pools": {"idc": "np-idc", "cloud": "np-elastic"}, "window_s": 125.0,
              "compression_factor": 1.0, "prices": {"np-idc": {"price_per_gpu_hour": 1.2, "gpus_per_node": 1},
                                                    "np-elastic": {"price_per_gpu_hour": 9.5, "gpus_per_node": 1}}})
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    if timeline:
        rows = []

        def row(t, kind, obj, reason, **kw):
            rows.append({"time": _iso(t), "observed_at": _iso(t), "kind": kind, "object": obj,
                         "object_kind": {"Pod": "Pod", "Node": "Node"}.get(kind, "HorizontalPodAutoscaler"),
                         "reason": reason, "message": kw.pop("message", reason), "uid": kw.pop("uid", obj), **kw})

        for node in ("idc-gpu-0", "idc-gpu-1"):
            row(-3600, "Node", node, "NodeCreated", pool="np-idc", node=node)
            row(-3600, "Node", node, "NodeReady", pool="np-idc", node=node)
        row(-100, "Pod", "default/p0", "PodReady", pool="np-idc", node="idc-gpu-0")
        for t, metric, desired in ((0, 20, 1), (10, 45, 1), (22, 80, 1), (25, 85, 3), (60, 90, 3), (90, 30, 3),
                                   (105, 20, 1)):
            row(t, "HPA", "default/qwen-chat-hpa", "HPAMetric", metric_value=metric, desired_replicas=desired,
                replicas=desired, message=f"current {desired}, desired {desired}; DCGM_CUSTOM_PROCESS_SM_UTIL "
                                          f"{metric} (target 50)")
        row(25, "Event", "default/qwen-chat-hpa", "SuccessfulRescale", replicas=3, uid="ev1")
        row(27, "Pod", "default/p1", "PodReady", pool="np-idc", node="idc-gpu-1")
        row(28, "Event", "default/p2", "TriggeredScaleUp", uid="ev2")
        row(40, "Node", "elastic-0", "NodeCreated", pool="np-elastic", node="elastic-0")
        row(42, "Node", "elastic-0", "NodeReady", pool="np-elastic", node="elastic-0")
        row(45, "Pod", "default/p2", "PodReady", pool="np-elastic", node="elastic-0")
        row(105, "Event", "default/qwen-chat-hpa", "SuccessfulRescale", replicas=1, uid="ev3")
        row(105, "Pod", "default/p2", "PodDeleted", pool="np-elastic", node="elastic-0")
        row(118, "Node", "elastic-0", "NodeDeleted", pool="np-elastic", node="elastic-0")
        pd.DataFrame(rows).to_csv(out / "timeline.csv", index=False)
    if cost:
        pd.DataFrame([
            {"kind": "node", "pool": "np-idc", "object": "idc-gpu-0", "node": "idc-gpu-0", "start_s": 0.0,
             "end_s": 125.0, "seconds": 125.0, "open_at_end": True},
            {"kind": "node", "pool": "np-idc", "object": "idc-gpu-1", "node": "idc-gpu-1", "start_s": 0.0,
             "end_s": 125.0, "seconds": 125.0, "open_at_end": True},
            {"kind": "node", "pool": "np-elastic", "object": "elastic-0", "node": "elastic-0", "start_s": 42.0,
             "end_s": 118.0, "seconds": 76.0, "open_at_end": False}]).to_csv(out / "cost_intervals.csv", index=False)
    return out


def _runs(tmp_path: Path) -> list[Path]:
    return [synthetic_run(tmp_path)] + ([RECORDED] if (RECORDED / "report.json").is_file() else [])


def test_dashboard_is_one_figure_of_stacked_panels_sharing_one_time_axis(tmp_path):
    for directory in _runs(tmp_path):
        run = read_run(directory)
        fig = dashboard_figure(run.report, load=run.load, timeline=run.timeline, cost=run.cost)
        assert fig.tidegate_panels == ["load", "latency", "hpa", "pods", "nodes", "cost"]
        main = fig.axes[:6]  # the stacked panels; twin axes (users, desired replicas) come after them
        assert [ax.get_subplotspec().rowspan.start for ax in main] == list(range(6))
        assert all(ax.get_shared_x_axes().joined(main[0], ax) for ax in main[1:])
        assert len({ax.get_xlim() for ax in main}) == 1 and main[0].get_xlim()[0] <= 0
        # every phase shaded on every panel, every scale event a line on every panel
        n_phases = len(run.report.phases)
        for ax in main:
            assert sum(p.get_gid() == "phase" for p in ax.patches) == n_phases
            assert sum(line.get_gid() == "scale-event" for line in ax.lines) == len(fig.tidegate_events)
        reasons = {r for _, r in fig.tidegate_events}
        assert {"SuccessfulRescale", "TriggeredScaleUp", "NodeReady", "NodeDeleted"} <= reasons
        # nothing from before the window (the IDC nodes created an hour earlier) is marked
        assert all(main[0].get_xlim()[0] <= x <= main[0].get_xlim()[1] for x, _ in fig.tidegate_events)


def test_latency_panel_draws_the_slo_and_the_gate_threshold(tmp_path):
    run = read_run(synthetic_run(tmp_path))
    fig = dashboard_figure(run.report, load=run.load, timeline=run.timeline, cost=run.cost)
    latency = fig.axes[1]
    labels = [line.get_label() for line in latency.lines]
    assert any("SLO ttft 2000 ms" in lab for lab in labels)
    assert any("gate load.ttft_p95_ms <= 1500" in lab for lab in labels)
    hpa = fig.axes[2]
    assert any(lab == "target 50" for lab in (line.get_label() for line in hpa.lines))
    assert any("DCGM_CUSTOM_PROCESS_SM_UTIL" == line.get_label() for line in hpa.lines)


def test_dashboard_comes_first_with_one_png_and_the_tables_after_it(tmp_path):
    doc = render_run(synthetic_run(tmp_path))
    body = doc.split("<body>", 1)[1]
    dash = body.index('id=\'dashboard\'')
    assert body.index("<h1>") < body.index("id='rules'") < dash
    assert dash < body.index("<h2>findings</h2>") < body.index("<h2>stages</h2>") < body.index("<h2>load</h2>")
    block = re.search(r"<div id='dashboard'>(.*?)</div>", body, re.DOTALL).group(1)
    assert block.count("data:image/png;base64,") == 1
    assert "http://" not in doc.replace("http://www.w3.org", "") and "https://" not in doc  # nothing fetched


def test_a_run_without_timeline_or_cost_still_renders(tmp_path):
    run = read_run(synthetic_run(tmp_path, timeline=False, cost=False))
    assert run.timeline is None and run.cost is None
    fig = dashboard_figure(run.report, load=run.load)
    assert fig.tidegate_panels == ["load", "latency"] and fig.tidegate_events == []
    doc = render_html(run.report, load=run.load)
    assert "id='dashboard'" in doc and "no data for: timeline, cost" in doc
    assert not any(w.startswith(("dashboard failed", "plots failed")) for w in run.report.warnings)


def test_a_report_with_no_data_at_all_says_so():
    report = RunReport(run_id="r0", spec="s", profile="local", started_at="2026-12-06T00:00:00+00:00")
    assert dashboard_figure(report) is None
    doc = render_html(report)
    assert "<div id='dashboard'><p class='note'>dashboard: no data" in doc
    assert "data:image/png" not in doc


def test_closed_loop_draws_users_on_the_load_panel(tmp_path):
    run = read_run(synthetic_run(tmp_path, cost=False))
    run.report.load.arrival = "closed"
    run.load.per_second["users"] = 5
    fig = dashboard_figure(run.report, load=run.load, timeline=run.timeline)
    twins = [ax for ax in fig.axes if ax.get_ylabel() == "users"]
    assert len(twins) == 1 and twins[0].lines[0].get_label() == "users"


# -- the critical path of each scale event (after the findings) -----------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "critical_path"


def _step(name: str, at: float | None, seconds: float | None, evidence: str = "row") -> dict:
    return {"step": name, "started_at": None if at is None else _iso(at), "seconds": seconds,
            "evidence": evidence if at is not None else f"unknown: {evidence}"}


HAND_EVENTS = [
    {"direction": "up", "replicas_from": 2, "replicas_to": 3, "pool": "np-elastic", "pod": "default/p2",
     "steps": [_step("load step", 20, 0.0), _step("metric above target", 22, 2.0),
               _step("HPA desired increase", 25, 3.0), _step("pod created", 25, 0.0),
               _step("autoscaler decision", None, None, "no TriggeredScaleUp names the pod"),
               _step("node created", 40, 15.0), _step("node Ready", 42, 2.0),
               _step("node GPU allocatable", None, None, "the timeline does not record a node's allocatable"),
               _step("pod Ready", 45, 3.0)],
     "not_needed": ["pod Pending on IDC"], "total_s": 25.0},
    {"direction": "down", "replicas_from": 3, "replicas_to": 1, "pool": "np-elastic", "pod": "default/p2",
     "steps": [_step("metric below target", 90, 0.0), _step("HPA desired decrease", 105, 15.0),
               _step("pod deleted", 105, 0.0), _step("node removed", 118, 13.0)],
     "not_needed": [], "total_s": 28.0},
]
HAND_BILL = [{"step": "waiting for the cloud node", "span": "autoscaler decision -> node Ready", "requests": 30,
              "share": 0.75, "phases": {"spike": 30}},
             {"step": "no scale event in progress", "span": "", "requests": 10, "share": 0.25, "phases": {"hold": 10}}]


def test_waterfall_draws_known_steps_in_causal_order_and_leaves_unknown_ones_out():
    from tasks.report import waterfall_figure

    fig = waterfall_figure(HAND_EVENTS)
    up, down = fig.tidegate_waterfall
    assert [b[0] for b in up] == ["load step", "metric above target", "HPA desired increase", "pod created",
                                  "node created", "node Ready", "pod Ready"]
    # each bar starts where the previous known step was reached and is as long as its seconds
    assert [(a, w) for _, a, w in up] == [(0, 0), (0, 2), (2, 3), (5, 0), (5, 15), (20, 2), (22, 3)]
    assert [b[0] for b in down] == ["metric below target", "HPA desired decrease", "pod deleted", "node removed"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [b[0] for b in up]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first step on top
    labels = [t.get_text() for t in ax.texts]
    assert "node created  15 s" in labels and not any("GPU allocatable" in t for t in labels)
    assert "scale-up 2 -> 3: p2 on np-elastic" in ax.get_title(loc="left")


def test_waterfall_section_follows_the_findings_with_unknown_steps_and_the_bill(tmp_path):
    from tasks.critical_path import bill_sentence

    run = read_run(synthetic_run(tmp_path))
    run.report.elasticity.scale_events = HAND_EVENTS
    run.report.elasticity.violation_bill = HAND_BILL
    body = render_html(run.report, load=run.load, timeline=run.timeline, cost=run.cost).split("<body>", 1)[1]
    section = re.search(r"<div id='critical-path'>(.*?)</div>", body, re.DOTALL).group(1)
    assert body.index("<h2>findings</h2>") < body.index("id='critical-path'") < body.index("<h2>stages</h2>")
    assert section.count("data:image/png;base64,") == 1
    assert "autoscaler decision: unknown: no TriggeredScaleUp names the pod" in section
    assert "node GPU allocatable: unknown: the timeline does not record" in section
    assert "node created: +15 s" not in section  # known steps are in the figure, not repeated in text
    assert html.escape(bill_sentence(HAND_BILL[0])) in section and "30 requests (75% of all violations)" in section
    assert section.index("waiting for the cloud node") < section.index("no scale event in progress")
    assert not any("waterfall" in w for w in run.report.warnings)


def test_waterfall_of_the_recorded_openloop_spike():
    from tasks.critical_path import scale_events
    from tasks.observe import Timeline
    from tasks.report import waterfall_figure

    meta = json.loads((FIXTURES / "spike-openloop.meta.json").read_text())
    events = scale_events(Timeline.read_csv(FIXTURES / "spike-openloop.timeline.csv"),
                          load_started_at=meta["load_started_at"], phases=meta["phases"], hpa_target=50.0,
                          elastic_pool="np-elastic", idc_pool="np-idc")
    blocks = json.loads(json.dumps([e.block() for e in events]))  # as report.json holds them
    fig = waterfall_figure(blocks)
    assert len(fig.tidegate_waterfall) == len(blocks) == 4
    for block, bars in zip(blocks, fig.tidegate_waterfall):
        assert [b[0] for b in bars] == [s["step"] for s in block["steps"] if s["seconds"] is not None]
        starts = [a for _, a, _ in bars]
        assert starts == sorted(starts) and starts[0] == 0
        assert abs(bars[-1][1] + bars[-1][2] - block["total_s"]) < 0.05


def test_no_scale_event_no_waterfall_and_no_crash(tmp_path):
    from tasks.report import waterfall_figure

    assert waterfall_figure([]) is None
    only_unknown = [{**HAND_EVENTS[0], "steps": [_step("pod Ready", None, None, "never Ready")], "total_s": None}]
    assert waterfall_figure(only_unknown) is None
    run = read_run(synthetic_run(tmp_path))
    doc = render_html(run.report, load=run.load, timeline=run.timeline, cost=run.cost)
    assert "no scale event was observed" in doc
    report = RunReport(run_id="r0", spec="s", profile="local", started_at="2026-12-06T00:00:00+00:00")
    assert "id='critical-path'" not in render_html(report)  # no elasticity block: no section
    run.report.elasticity.scale_events = only_unknown
    doc = render_html(run.report)
    assert "pod Ready: unknown: never Ready" in doc


# -- the Prefect artifact -----------------------------------------------------------------------------
def test_artifact_markdown_shows_verdict_rules_and_the_dashboard_image(tmp_path):
    import base64

    from tasks.report import artifact_markdown

    directory = synthetic_run(tmp_path)
    report = read_run(directory).report
    report.elasticity.violation_bill = HAND_BILL
    md = artifact_markdown(report, directory)
    assert md.startswith("# tidegate run `synthetic-run`: **PASS**")
    assert "- **pass** `load.ttft_p95_ms` = 500.0 (<= 1500)" in md
    assert "- **pass** `elasticity.cloud_pods_max` = 1 (>= 1)" in md
    image = re.search(r"!\[dashboard\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert image is not None
    png = base64.b64decode(image.group(1))
    assert png.startswith(b"\x89PNG") and len(image.group(0)) < 1_000_000
    assert f"report: `{directory / 'report.html'}`" in md
    assert "30 requests (75% of all violations)" in md


def test_artifact_markdown_links_the_report_when_the_image_is_too_large(tmp_path):
    from tasks.report import artifact_markdown

    directory = synthetic_run(tmp_path)
    report = read_run(directory).report
    md = artifact_markdown(report, directory, max_image_bytes=1000)
    assert "data:image" not in md
    assert "dashboard not shown here: its image" in md and "larger than the artifact's limit" in md
    assert str(directory / "report.html") in md
    md = artifact_markdown(report, tmp_path / "gone")  # the directory cannot be read: no crash, says so
    assert "dashboard not shown here: it could not be drawn" in md


def test_publish_artifacts_passes_the_redacted_markdown_to_prefect(tmp_path, monkeypatch):
    import prefect.artifacts

    from flows.validation import _publish_artifacts

    directory = synthetic_run(tmp_path)
    report = read_run(directory).report
    report.stages["spike"].detail = "token s3cr3t-value-123 leaked"
    seen = {}
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kw: seen.update(kw))
    _publish_artifacts(report, directory, True, ["s3cr3t-value-123"])
    assert "![dashboard](data:image/png;base64," in seen["markdown"]
    assert "s3cr3t-value-123" not in seen["markdown"] and "token *** leaked" in seen["markdown"]
    assert seen["key"] == "tidegate-qwen-chat-local"
