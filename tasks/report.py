"""The run's report: ``reports/<run-id>/`` with report.json (``RunReport``, the report model of
``tasks.report_model``, dumped), junit.xml (one test case per stage and per gate rule), report.html, the CSV
tables, and ``reports/latest`` pointing at the newest run.

Secrets never reach a report: every string written passes ``redact`` (known secret values
from the environment and the spec's credentials are replaced by ``***``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import html
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.report_model import RunReport


def reports_root() -> Path:
    return Path(os.environ.get("TIDEGATE_REPORTS_DIR", "reports"))


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_SECRET_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|PRIVATE)", re.I)


def secret_values(extra: list[str] | None = None) -> list[str]:
    values = [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and v and len(v) >= 6]
    values += [v for v in extra or [] if v and len(v) >= 6]
    return sorted(set(values), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    """Replaces every secret value (``secret_values(known)``, read at each record, so values a run
    learns later count too) in a log record's text: installed on the handlers of tidegate's and
    Prefect's loggers for the length of a run (``redacting_logs``)."""

    def __init__(self, known: list[str]):
        super().__init__()
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values(self.known)
        text = record.getMessage()
        clean = redact(text, secrets)
        if clean != text:
            record.msg, record.args = clean, None
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            shown = redact(str(exc), secrets)
            if shown != str(exc):  # the traceback would print the secret: keep only the redacted text
                record.msg, record.args = f"{record.msg} ({type(exc).__name__}: {shown})", None
                record.exc_info, record.exc_text = None, None
        return True


LOGGERS_REDACTED = ("", "tidegate", "prefect", "prefect.flow_runs", "prefect.task_runs")


@contextlib.contextmanager
def redacting_logs(known: list[str]):
    """Redact secrets from everything logged through the handlers of tidegate's, Prefect's and the
    root logger while the block runs (the Prefect API handler included: what reaches its database)."""
    filt = RedactingFilter(known)
    handlers = {h for name in LOGGERS_REDACTED for h in logging.getLogger(name).handlers}
    for h in handlers:
        h.addFilter(filt)
    try:
        yield filt
    finally:
        for h in handlers:
            h.removeFilter(filt)


@dataclass(frozen=True)
class JUnitCase:
    """One test case of a JUnit document: ``outcome`` passed, failure, error or skipped."""

    classname: str
    name: str
    seconds: float = 0.0
    outcome: str = "passed"
    message: str = ""
    kind: str = ""
    output: str = ""


def junit_document(suite: str, cases: list[JUnitCase], timestamp: str) -> str:
    """The one JUnit writer: a ``<testsuites>`` with one suite of ``cases`` (the run's stages and
    gate rules, or the one case ``tidegate gate`` writes for a flow run without a report)."""
    root = ET.Element("testsuites")
    count = {o: sum(c.outcome == o for c in cases) for o in ("failure", "error", "skipped")}
    el = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(count["failure"]),
                       errors=str(count["error"]), skipped=str(count["skipped"]), timestamp=timestamp)
    for c in cases:
        case = ET.SubElement(el, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.3f}")
        if c.outcome != "passed":
            attrs = {"message": c.message, **({"type": c.kind} if c.kind else {})}
            ET.SubElement(case, c.outcome, **attrs)
        if c.output:
            ET.SubElement(case, "system-out").text = c.output
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_STAGE_OUTCOME = {"failed": "failure", "error": "error", "skipped": "skipped", "not_run": "skipped"}


def junit_xml(report: RunReport) -> str:
    """junit.xml of a run: one case per stage, then one per gate rule."""
    cases = [JUnitCase("tidegate.stage", name, st.seconds, _STAGE_OUTCOME.get(st.status, "passed"),
                       st.detail or (st.status if st.status in ("skipped", "not_run") else ""))
             for name, st in report.stages.items()]
    for rule in report.gate:
        msg = f"{rule.rule} = {rule.value} (threshold {rule.op} {rule.threshold})"
        outcome = {"fail": "failure", "inconclusive": "skipped"}.get(rule.status, "passed")
        message = {"fail": msg, "inconclusive": f"inconclusive: {rule.detail}"}.get(rule.status, "")
        output = f"warn: {msg}" if rule.status == "warn" else ""
        if rule.scored and rule.status in ("fail", "warn"):  # decided through gate.score, its own case
            outcome, message, output = "passed", "", f"scored {rule.status} (weight {rule.weight}): {msg}"
        cases.append(JUnitCase("tidegate.gate", rule.rule, 0.0, outcome, message, output=output))
    return junit_document(f"tidegate.{report.run_id}", cases, report.started_at)


def markdown_summary(report: RunReport) -> str:
    lines = [f"# tidegate run `{report.run_id}`: **{report.verdict.upper()}**", "",
             f"spec `{report.spec}`, profile `{report.profile}`, {report.started_at} -> {report.finished_at}", "",
             "| stage | status | seconds | detail |", "|---|---|---|---|"]
    for name, st in report.stages.items():
        detail = st.detail.replace("|", "\\|")[:200]
        lines.append(f"| {name} | {st.status} | {st.seconds:.1f} | {detail} |")
    if report.gate:
        lines += ["", "| gate rule | status | value | threshold |", "|---|---|---|---|"]
        for r in report.gate:
            lines.append(f"| {r.rule} | {r.status} | {r.value} | {r.op} {r.threshold} |")
    for block in ("elasticity", "load", "staging"):
        data = getattr(report, block)
        if data is not None:
            lines += ["", f"**{block}**: " + ", ".join(f"`{k}`={v}" for k, v in data.model_dump(mode="json").items())]
    if report.realism is not None:
        r, p = report.realism, report.realism.projection
        lines += ["", f"**realism**: profile `{r.profile}`"
                  + (f" (set by the user: {', '.join(r.overridden)})" if r.overridden else "")
                  + (f"; PROJECTION onto {p.onto} (not measured): " + ", ".join(
                      f"`{f.figure}` {f.measured_s} -> {f.projected_s}" for f in p.figures) if p else "")]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_cell(v) for v in value)
    return str(value)


def _rule_line(r: Any) -> str:
    shown = {"<=": "&le;", ">=": "&ge;", "<": "&lt;", ">": "&gt;", "==": "="}.get(r.op, html.escape(r.op))
    value = "no data" if r.value is None else html.escape(_cell(r.value))
    title = f" title='{html.escape(r.detail)}'" if r.detail else ""
    scored = f" <i>scored, weight {r.weight}</i>" if getattr(r, "scored", False) else ""
    critical = " <i>critical</i>" if getattr(r, "critical", False) else ""
    return (f"<li class='{html.escape(r.status)}'{title}><b>{html.escape(r.status)}</b> {html.escape(r.rule)} = "
            f"{value} ({shown} {html.escape(str(r.threshold))}){critical}{scored}</li>")


def _findings_html(report: RunReport) -> str:
    if not report.findings:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(f.name)}</td><td class='{'pass' if f.ok else 'fail'}'>"
        f"{'ok' if f.ok else 'missing'}</td><td>{html.escape(f.detail)}"
        f"<ul>{''.join('<li>' + html.escape(e) + '</li>' for e in f.evidence[:6])}</ul></td></tr>"
        for f in report.findings)
    return f"<h2>findings</h2><table>{rows}</table>"


def _direction_word(event: dict[str, Any]) -> str:
    return {"up": "scale-up", "down": "scale-down"}.get(str(event.get("direction")), str(event.get("direction")))


def scale_event_title(event: dict[str, Any]) -> str:
    """One line naming a scale event of ``elasticity.scale_events``: direction, replicas, pod, pool
    and its total."""
    total = event.get("total_s")
    pod = str(event.get("pod") or "pod unknown").rsplit("/", 1)[-1]
    return (f"{_direction_word(event)} {event.get('replicas_from')} -> {event.get('replicas_to')}: {pod} on "
            f"{event.get('pool') or 'pool unknown'}, "
            + (f"{total:g} s first to last known step" if isinstance(total, (int, float)) else "no step known"))


def _critical_path_html(report: RunReport, waterfall: str | None = None) -> str:
    """The critical path of each scale event (the waterfall figure when drawn, then per event its
    unknown steps in words, with why) and the violation bill: its largest entry as a sentence, then
    the table. Empty when the run has no elasticity block."""
    el = report.elasticity
    if el is None:
        return ""
    events, bill = list(el.scale_events or []), list(el.violation_bill or [])
    if not events and not bill:
        return ("<div id='critical-path'><h2>critical path per scale event</h2>"
                "<p class='note'>no scale event was observed</p></div>")
    parts = ["<div id='critical-path'><h2>critical path per scale event</h2>"]
    if waterfall:
        parts.append(f"<img src='{html.escape(waterfall)}' alt='critical path of each scale event: one "
                     f"waterfall per event, each known step a bar of its seconds'>")
    items = []
    for i, ev in enumerate(events, 1):
        unknown = [s for s in ev.get("steps") or [] if s.get("seconds") is None]
        notes = "".join(f"<li>{html.escape(str(s.get('step')))}: {html.escape(str(s.get('evidence') or 'unknown'))}"
                        f"</li>" for s in unknown)
        if not waterfall:  # the known steps in words when the figure is missing
            notes = "".join(f"<li>{html.escape(str(s.get('step')))}: +{s['seconds']:g} s</li>"
                            for s in ev.get("steps") or [] if s.get("seconds") is not None) + notes
        skipped = ev.get("not_needed") or []
        extra = (f"<br><span class='note'>not needed: {html.escape(', '.join(map(str, skipped)))}</span>"
                 if skipped else "")
        items.append(f"<li class='scale-event'><b>{i}. {html.escape(scale_event_title(ev))}</b>{extra}"
                     + (f"<ul>{notes}</ul>" if notes else "") + "</li>")
    if items:
        parts.append("<ol class='scale-events' style='list-style:none;padding:0'>" + "".join(items) + "</ol>")
    if bill:
        from tasks.critical_path import bill_sentence

        rows = "".join(
            f"<tr><td>{html.escape(str(b.get('step')))}</td><td>{html.escape(str(b.get('span') or ''))}</td>"
            f"<td>{int(b.get('requests') or 0)}</td><td>{100 * float(b.get('share') or 0):.0f}%</td>"
            f"<td>{html.escape(_cell(b.get('phases') or {}))}</td></tr>" for b in bill)
        parts.append(f"<h3>violation bill</h3><p id='bill-sentence'>{html.escape(bill_sentence(bill[0]))}</p>"
                     f"<table id='violation-bill'><tr><th>what the service waited for</th><th>span</th>"
                     f"<th>requests</th><th>share</th><th>per phase</th></tr>{rows}</table>")
    parts.append("</div>")
    return "".join(parts)


def _realism_html(report: RunReport) -> str:
    """The timings the run's cluster assumed (the test bed's realism profile, every figure with its
    source) and, for a ``fast`` test bed, the critical path projected onto ``ack-gpu``."""
    r = report.realism
    if r is None:
        return ""
    parts = [f"<div id='realism'><h2>realism: profile {html.escape(r.profile)}</h2>"]
    if r.source:
        parts.append(f"<p class='note'>read from {html.escape(r.source)}"
                     + (f"; set by the user: {html.escape(', '.join(r.overridden))}" if r.overridden else "")
                     + "</p>")
    p = r.projection
    if p is not None:
        def num(v: float | None) -> str:
            return "not observed" if v is None else f"{v:g}"

        rows = "".join(f"<tr><td>{html.escape(f.figure)}</td><td>{num(f.measured_s)}</td><td>{num(f.projected_s)}"
                       f"</td><td>{f.added_s:+g}</td></tr>" for f in [*p.figures, *p.scale_events])
        parts.append(f"<h3>projection onto {html.escape(p.onto)}</h3><p class='note'>{html.escape(p.statement)}</p>"
                     f"<table id='realism-projection'><tr><th>figure</th><th>measured s</th><th>projected s "
                     f"(projection)</th><th>added s</th></tr>{rows}</table>"
                     + "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in p.notes))
    if r.figures:
        rows = "".join(f"<tr><td>{html.escape(f.name)}</td><td>{html.escape(str(f.value))}</td>"
                       f"<td>{html.escape(f.unit)}</td><td>{html.escape(f.source)}</td></tr>" for f in r.figures)
        parts.append(f"<table id='realism-figures'><tr><th>timing assumed</th><th>value</th><th>unit</th>"
                     f"<th>source</th></tr>{rows}</table>")
    parts.append("</div>")
    return "".join(parts)


def basic_html(report: RunReport, figures: list[tuple[str, str]] | None = None,
               dashboard: str | None = None, dashboard_note: str = "", waterfall: str | None = None) -> str:
    """The report page; ``figures`` are (title, PNG data URI) pairs, ``dashboard`` the dashboard's
    PNG data URI (``dashboard_figure``), ``waterfall`` the critical paths' (``waterfall_figure``).
    Order: the verdict, the gate's rules in one compact list and the dashboard (the first screen),
    then the findings, the critical path of each scale event with the violation bill, the detailed
    figures, the tables."""
    md = markdown_summary(report)
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td class='{html.escape(s.status)}'>{html.escape(s.status)}</td>"
                   f"<td>{s.seconds:.1f}</td><td>{html.escape(s.detail)}</td></tr>" for n, s in report.stages.items())
    gate = "".join(f"<tr><td>{html.escape(r.rule)}</td><td class='{html.escape(r.status)}'>"
                   f"{html.escape(r.status)}</td><td>{html.escape(str(r.value))}</td>"
                   f"<td>{html.escape(r.op)} {html.escape(str(r.threshold))}</td></tr>"
                   for r in report.gate)
    sections = {b: getattr(report, b).model_dump(mode="json") if getattr(report, b) is not None else {}
                for b in ("elasticity", "load", "staging", "smoke", "cost")}
    blocks = "".join(f"<h2>{b}</h2><table>" + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_cell(v))}</td></tr>" for k, v in block.items())
        + "</table>" for b, block in sections.items() if block)
    figs = "".join(f"<figure><img src='{html.escape(uri)}' alt='{html.escape(title)}'>"
                   f"<figcaption>{html.escape(title)}</figcaption></figure>" for title, uri in figures or [])
    rules = ("<ul id='rules' class='rules'>" + "".join(_rule_line(r) for r in report.gate) + "</ul>"
             if report.gate else "<p id='rules' class='rules'>no gate rule was judged</p>")
    reasons = ("<p class='inconclusive'>inconclusive: " + html.escape("; ".join(report.inconclusive_reasons))
               + "</p>" if report.inconclusive_reasons else "")
    if dashboard:
        dash = (f"<div id='dashboard'><img src='{html.escape(dashboard)}' alt='dashboard: load, latency, HPA, "
                f"pods, nodes and cost over one time axis'>"
                + (f"<p class='note'>{html.escape(dashboard_note)}</p>" if dashboard_note else "") + "</div>")
    else:
        dash = f"<div id='dashboard'><p class='note'>dashboard: no data{(': ' + html.escape(dashboard_note)) if dashboard_note else ''}</p></div>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tidegate {html.escape(report.run_id)}</title>
<style>body{{font-family:sans-serif;margin:1em 2em;max-width:86em}} h1{{font-size:1.4em;margin:.2em 0}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:4px 8px}}
.passed,.pass{{background:#d4f7d4}} .failed,.fail,.error{{background:#f7d4d4}}
.warn,.skipped,.not_run,.inconclusive{{background:#f7f0d4}} img{{max-width:100%}} .meta{{margin:.2em 0;color:#444}}
ul.rules{{list-style:none;padding:0;margin:.3em 0;font-size:.85em}} ul.rules li{{display:inline-block;margin:2px 4px 2px 0;
padding:1px 6px;border-radius:3px}} #dashboard img{{display:block;width:100%;height:auto}} #critical-path img{{max-width:60em}} .note{{color:#666;font-size:.85em}}
@media print{{body{{max-width:none;margin:0}} #dashboard img{{page-break-inside:avoid}}}}</style></head><body>
<h1>tidegate run {html.escape(report.run_id)}: <span class="{html.escape(report.verdict)}">{html.escape(report.verdict.upper())}</span></h1>
<p class="meta">spec {html.escape(report.spec)} &middot; profile {html.escape(report.profile)} &middot; {html.escape(report.started_at)} &rarr; {html.escape(report.finished_at)}</p>
{rules}{reasons}
{dash}
{_findings_html(report)}
{_critical_path_html(report, waterfall)}
{_repeats_html(report)}
{_realism_html(report)}
{figs}
<h2>stages</h2><table><tr><th>stage</th><th>status</th><th>s</th><th>detail</th></tr>{rows}</table>
{"<h2>gate</h2><table><tr><th>rule</th><th>status</th><th>value</th><th>threshold</th></tr>" + gate + "</table>" if gate else ""}
{blocks}
<!-- markdown summary
{html.escape(md)}
--></body></html>
"""


def _repeats_html(report: RunReport) -> str:
    """load.repeat > 1: each per-run figure's value per repetition and its 95 % interval."""
    rep = report.repeats
    if rep is None:
        return ""
    head = "".join(f"<th>#{r.index}{'' if r.settled is not False else ' (not settled)'}</th>" for r in rep.runs)
    rows = []
    for key, ci in rep.intervals.items():
        vals = "".join(f"<td>{html.escape(_cell(r.figures.get(key)))}</td>" for r in rep.runs)
        band = (f"{ci.mean:.4g} [{ci.ci_low:.4g}, {ci.ci_high:.4g}]" if ci.ci_low is not None
                else html.escape(ci.note or "no interval"))
        rows.append(f"<tr><td>{html.escape(key)}</td>{vals}<td>{band}</td></tr>")
    return (f"<section id='repeats'><h2>repeated spikes ({rep.n}, measured one after the other)</h2>"
            f"<p class='note'>{html.escape(rep.method)}; the figures above are repetition #1's.</p>"
            f"<table><tr><th>figure</th>{head}<th>mean [95% CI]</th></tr>{''.join(rows)}</table></section>")


def write(report: RunReport, *, secrets: list[str] | None = None, tables: dict[str, Any] | None = None,
          html_doc: str | None = None, root: Path | None = None) -> Path:
    """Write the report directory and point ``latest`` at it; return the directory."""
    root = root or reports_root()
    out = root / report.run_id
    out.mkdir(parents=True, exist_ok=True)
    secrets = secret_values(secrets)
    doc = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
    (out / "report.json").write_text(redact(doc, secrets) + "\n")
    (out / "junit.xml").write_text(redact(junit_xml(report), secrets))
    (out / "summary.md").write_text(redact(markdown_summary(report), secrets))
    for name, frame in (tables or {}).items():
        if frame is not None and hasattr(frame, "to_csv"):
            (out / f"{name}.csv").write_text(redact(frame.to_csv(index=False), secrets))
    (out / "report.html").write_text(redact(html_doc or basic_html(report), secrets))
    latest = root / "latest"
    tmp = root / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(report.run_id)
    os.replace(tmp, latest)
    return out


# -- the HTML report with plots ----------------------------------------------------------------
MARKERS = {"SuccessfulRescale": ("HPA rescale", "tab:purple"), "TriggeredScaleUp": ("scale-up", "tab:red"),
           "ScaledUpGroup": ("scale-up", "tab:red"), "ScaleDown": ("scale-down", "tab:green"),
           "ScaleDownEmpty": ("scale-down", "tab:green")}


def _png(fig, dpi: int = 90) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(load=None, timeline=None, spec=None) -> list[tuple[str, str]]:
    """(title, PNG data URI): load over time, latency over time, pods and nodes per pool with events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    figs: list[tuple[str, str]] = []
    start = None
    if load is not None and len(load.per_second):
        ps = load.per_second
        start = pd.Timestamp(load.started_at)
        x = ps["t_s"]
        fig, ax = plt.subplots(figsize=(10, 3.2))
        ax.plot(x, ps["users"], label="users", color="tab:blue")
        ax.set_ylabel("users")
        ax2 = ax.twinx()
        ax2.plot(x, ps["completed"], label="requests/s", color="tab:orange")
        ax2.plot(x, ps["failures"], label="failures/s", color="tab:red")
        ax2.set_ylabel("per second")
        for p in load.phases:
            ax.axvspan((pd.Timestamp(p.start) - start).total_seconds(), (pd.Timestamp(p.end) - start).total_seconds(),
                       alpha=0.06 if p.name != "spike" else 0.15, color="grey")
            ax.text((pd.Timestamp(p.start) - start).total_seconds(), ax.get_ylim()[1] * 0.92, p.name, fontsize=8)
        ax.set_xlabel("seconds since load start")
        fig.legend(loc="upper right", fontsize=8)
        ax.set_title("Load shape: users, throughput, failures")
        figs.append(("Load shape: users, throughput, failures", _png(fig)))
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(10, 3.0))
        for col in ("ttft_p50_ms", "ttft_p95_ms", "e2e_p95_ms", "itl_p95_ms"):
            if col in ps:
                ax.plot(x, ps[col], label=col)
        ax.set_ylabel("ms")
        ax.set_xlabel("seconds since load start")
        ax.legend(fontsize=8)
        ax.set_title("Latency per second")
        figs.append(("Latency per second", _png(fig)))
        plt.close(fig)
    if timeline is not None and len(timeline.df):
        frame = timeline.df
        observed_from = getattr(timeline, "started_at", None)
        t0 = start if start is not None else (observed_from if observed_from is not None else frame["time"].min())
        fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
        t_end = timeline.stopped_at if getattr(timeline, "stopped_at", None) is not None else frame["time"].max()
        span_start = t0 - pd.Timedelta(seconds=15)
        for ax, series, col, title in ((axes[0], timeline.pods_per_pool(), "pods", "Ready pods per pool"),
                                       (axes[1], timeline.nodes_per_pool(), "nodes", "Nodes per pool")):
            for pool, part in series.groupby("pool"):
                part = part.sort_values("time")
                before = part[part["time"] <= span_start]
                value0 = int(before[col].iloc[-1]) if len(before) else 0
                inside = part[(part["time"] > span_start) & (part["time"] <= t_end)]
                times = [span_start, *inside["time"].tolist(), t_end]
                values = [value0, *inside[col].tolist()]
                values.append(values[-1])
                xs = [(t - t0).total_seconds() for t in times]
                ax.step(xs, values, where="post", label=str(pool))
            ax.set_ylabel(col)
            ax.set_title(title)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        seen = set()
        for _, ev in frame[frame["reason"].isin(list(MARKERS))].iterrows():
            label, color = MARKERS[ev["reason"]]
            xs = (ev["time"] - t0).total_seconds()
            for ax in axes:
                ax.axvline(xs, color=color, alpha=0.5, linestyle="--",
                           label=label if label not in seen and ax is axes[0] else None)
            seen.add(label)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)
        axes[1].set_xlabel("seconds since load start")
        figs.append(("Ready pods and nodes per pool, with scaling events", _png(fig)))
        plt.close(fig)
    return figs


def trend_plot(series: list[dict], candidate: dict, figures: dict[str, bool]):
    """Small multiples: each key figure over the spec's earlier runs (oldest first) and this run,
    highlighted; None when fewer than two earlier runs have any of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.gate import lookup

    def num(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    shown = [f for f in figures if sum(num(lookup(d, f)) is not None for d in series) >= 2]
    if not shown:
        return None
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), squeeze=False)
    for ax, f in zip(axes.flat, shown):
        xs = [i for i, d in enumerate(series) if num(lookup(d, f)) is not None]
        ax.plot(xs, [num(lookup(series[i], f)) for i in xs], marker=".", color="tab:grey", lw=1)
        value = num(lookup(candidate, f))
        if value is not None:
            ax.plot([len(series)], [value], marker="o", color="tab:red", ms=7, label="this run")
        ax.set_title(f, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"key figures over the last {len(series)} full-chain passes of this spec (red: this run)",
                 fontsize=9)
    fig.tight_layout()
    return fig


# -- the dashboard: one figure, stacked panels over one time axis ------------------------------
# what marks a scale event on every panel: reason -> (legend label, colour, line style)
SCALE_EVENTS = {"SuccessfulRescale": ("HPA rescale", "tab:purple", "-"),
                "TriggeredScaleUp": ("autoscaler scale-up", "tab:red", "--"),
                "NodeReady": ("node Ready", "tab:green", ":"),
                "NodeDeleted": ("node deleted", "tab:brown", ":")}
PHASE_COLOURS = {"baseline": "#eeeeee", "ramp": "#fde2c4", "spike": "#f9c9c9", "hold": "#fbd9b0",
                 "cooldown": "#d6e6f5"}
POOL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:grey")
_TARGET = re.compile(r"\(target ([0-9.]+)\)")
_METRIC_NAME = re.compile(r"(?:^|; )([A-Za-z_][\w.:/-]*) [-0-9.e+]+ \(target ")


def _stamp(value: Any):
    import pandas as pd

    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _pool_order(pools: list[str], idc: str | None, cloud: str | None) -> list[str]:
    return sorted(set(pools), key=lambda p: (p != idc, p != cloud, p))


def _pool_label(pool: str, idc: str | None, cloud: str | None) -> str:
    return f"{pool} (IDC)" if pool == idc else f"{pool} (cloud)" if pool == cloud else pool


def _steps_over(series, col: str, t0, x_from: float, x_to: float) -> dict[str, tuple[list[float], list[float]]]:
    """A ``time, pool, <col>`` step series as (xs, ys) per pool over [x_from, x_to] seconds from t0."""
    import pandas as pd

    out: dict[str, tuple[list[float], list[float]]] = {}
    lo, hi = t0 + pd.Timedelta(seconds=x_from), t0 + pd.Timedelta(seconds=x_to)
    for pool, part in series.groupby("pool"):
        part = part.sort_values("time")
        before = part[part["time"] <= lo]
        inside = part[(part["time"] > lo) & (part["time"] <= hi)]
        xs = [x_from, *((t - t0).total_seconds() for t in inside["time"]), x_to]
        ys = [int(before[col].iloc[-1]) if len(before) else 0, *inside[col].astype(int).tolist()]
        ys.append(ys[-1])
        out[str(pool)] = (xs, ys)
    return out


def _legend(ax, *extra_axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for other in extra_axes:
        h, lab = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.04 if extra_axes else 1.01, 1.0),
                  fontsize=7, frameon=False, borderaxespad=0.0)


def _slo_lines(report: RunReport | None, spec: Any) -> list[tuple[float, str, str]]:
    """(ms, label, colour): the spec's per-request SLOs and the gate's threshold rules on latency."""
    lines: list[tuple[float, str, str]] = []
    slo = getattr(getattr(spec, "load", None), "slo", None)
    if slo is None and report is not None and report.load is not None:
        slo = type("Slo", (), (report.load.goodput or {}).get("slo") or {})
    for key, colour in (("ttft_ms", "tab:blue"), ("e2e_ms", "tab:green")):
        value = getattr(slo, key, None)
        if isinstance(value, (int, float)) and value > 0:
            lines.append((float(value), f"SLO {key.replace('_ms', '')} {value:g} ms (load.slo)", colour))
    for r in report.gate if report is not None else []:
        if (r.rule.startswith(("load.ttft_", "load.e2e_")) and r.rule.endswith("_ms")
                and isinstance(r.threshold, (int, float))
                and not isinstance(r.threshold, bool) and r.op in ("<=", "<") and r.threshold > 0):
            colour = "tab:green" if "e2e" in r.rule else "tab:blue"
            lines.append((float(r.threshold), f"gate {r.rule} {r.op} {r.threshold:g}", colour))
    return lines


def dashboard_figure(report: RunReport | None = None, *, load=None, timeline=None, spec=None, cost=None):
    """The dashboard: one matplotlib Figure of stacked panels sharing one x axis (seconds since the
    load started): offered vs achieved load, latency percentiles against the SLO lines, the HPA's
    metric against its target with desired replicas, Ready pods per pool, nodes per pool, cost
    accumulated per pool. Load phases are shaded and scale events (SCALE_EVENTS) drawn as vertical
    lines on every panel. A panel without data is left out; None when no panel has data.

    The figure carries ``tidegate_panels`` (the panels' names, top to bottom) and
    ``tidegate_events`` (the scale events drawn, (x, reason)); phase spans have gid ``phase``, event
    lines gid ``scale-event``, so that tests can read what was drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ps = getattr(load, "per_second", None)
    has_load = ps is not None and len(ps) > 0
    frame = getattr(timeline, "df", None)
    has_tl = frame is not None and len(frame) > 0
    t0 = _stamp(getattr(load, "started_at", None)) if load is not None else None
    if t0 is None and has_tl:
        t0 = _stamp(getattr(timeline, "started_at", None)) or frame["time"].min()
    if t0 is None and report is not None and report.phases:
        t0 = _stamp(report.phases[0].start)
    if t0 is None:
        return None
    # x range: the load, the observed window, the cost window
    x_to = 0.0
    if has_load:
        x_to = max(x_to, float(ps["t_s"].max()) + 1)
    end = _stamp(getattr(load, "ended_at", None)) if load is not None else None
    if end is not None:
        x_to = max(x_to, (end - t0).total_seconds())
    x_from = 0.0
    if has_tl:
        started = _stamp(getattr(timeline, "started_at", None))
        stopped = _stamp(getattr(timeline, "stopped_at", None))
        if started is not None:
            x_from = min(x_from, (started - t0).total_seconds())
        last = stopped if stopped is not None else frame["time"].max()
        x_to = max(x_to, (last - t0).total_seconds())
    cost_ok = cost is not None and getattr(cost, "status", "") == "ok" and (getattr(cost, "window_s", 0) or 0) > 0
    cost_offset = 0.0
    if cost_ok:
        cstart = _stamp(getattr(cost, "started_at", None))
        cost_offset = (cstart - t0).total_seconds() if cstart is not None else 0.0
        x_to = max(x_to, cost_offset + float(cost.window_s))
    if x_to <= x_from:
        return None

    idc = getattr(timeline, "idc_pool_id", None) or getattr(getattr(spec, "cluster", None), "idc_pool_id", None)
    cloud = (getattr(timeline, "elastic_pool_id", None)
             or getattr(getattr(spec, "cluster", None), "elastic_pool_id", None))
    if report is not None and report.cost is not None:
        idc = idc or report.cost.pools.get("idc")
        cloud = cloud or report.cost.pools.get("cloud")

    panels: list[tuple[str, Any]] = []   # (name, draw(ax))
    if has_load:
        open_loop = bool(getattr(getattr(load, "shape", None), "open_loop", False)) or (
            report is not None and report.load is not None and report.load.arrival not in (None, "closed"))

        def draw_load(ax):
            x = ps["t_s"].astype(float)
            mean = lambda col: ps[col].astype(float).rolling(5, min_periods=1, center=True).mean()
            ax.plot(x, mean("started"), color="tab:blue", lw=1.4,
                    label="requested/s (intended send times)" if open_loop else "sent/s")
            ax.plot(x, mean("completed"), color="tab:orange", lw=1.4, label="completed/s")
            if float(ps["failures"].sum()) > 0:
                ax.plot(x, mean("failures"), color="tab:red", lw=1.2, label="failed/s")
            ax.set_ylabel("req/s (5 s mean)", fontsize=8)
            ax.set_ylim(bottom=0)
            twin = []
            if not open_loop and "users" in ps:
                ax2 = ax.twinx()
                ax2.step(x, ps["users"], where="post", color="tab:grey", lw=1, label="users")
                ax2.set_ylabel("users", fontsize=8)
                ax2.set_ylim(bottom=0)
                ax2.tick_params(labelsize=7)
                twin = [ax2]
            _legend(ax, *twin)
        panels.append(("load", draw_load))
        lat_cols = [c for c in ("ttft_p50_ms", "ttft_p95_ms", "e2e_p95_ms") if c in ps and ps[c].notna().any()]
        if lat_cols:
            def draw_latency(ax):
                x = ps["t_s"].astype(float)
                style = {"ttft_p50_ms": ("tab:blue", ":"), "ttft_p95_ms": ("tab:blue", "-"),
                         "e2e_p95_ms": ("tab:green", "-")}
                values = []
                for col in lat_cols:
                    colour, ls = style[col]
                    ax.plot(x, ps[col], color=colour, ls=ls, lw=1.2, label=col.replace("_ms", "").replace("_", " "))
                    values += [v for v in ps[col].dropna().tolist() if v > 0]
                merged: dict[tuple[float, str], list[str]] = {}
                for value, label, colour in _slo_lines(report, spec):
                    merged.setdefault((value, colour), []).append(label)
                for (value, colour), labels in merged.items():
                    ax.axhline(value, color=colour, ls="--", lw=1, alpha=0.8, label="; ".join(labels))
                    values.append(value)
                if values and min(values) > 0:
                    ax.set_yscale("log")
                ax.set_ylabel("ms", fontsize=8)
                _legend(ax)
            panels.append(("latency", draw_latency))
    if has_tl:
        hpa = frame[(frame["kind"] == "HPA") & frame["metric_value"].notna()].sort_values("time")
        desired = frame[(frame["kind"] == "HPA") & frame["desired_replicas"].notna()].sort_values("time")
        if len(hpa) or len(desired):
            def draw_hpa(ax):
                metric = getattr(getattr(spec, "service", None), "scale_metric", None)
                if metric is None and len(hpa):
                    named = hpa["message"].astype(str).str.extract(_METRIC_NAME)[0].dropna()
                    metric = str(named.iloc[-1]) if len(named) else None
                metric = metric or "HPA metric"
                target = getattr(getattr(spec, "service", None), "scale_target", None)
                if target is None and len(hpa):
                    found = hpa["message"].astype(str).str.extract(_TARGET)[0].dropna()
                    target = float(found.iloc[-1]) if len(found) else None
                if len(hpa):
                    xs = [(t - t0).total_seconds() for t in hpa["time"]]
                    ys = hpa["metric_value"].astype(float).tolist()
                    ax.step([*xs, x_to], [*ys, ys[-1]], where="post", color="tab:purple", lw=1.2, label=metric)
                if target is not None:
                    ax.axhline(float(target), color="tab:purple", ls="--", lw=1, alpha=0.7,
                               label=f"target {float(target):g}")
                ax.set_ylabel("metric", fontsize=8)
                ax.set_ylim(bottom=0)
                twin = []
                if len(desired):
                    ax2 = ax.twinx()
                    xs = [(t - t0).total_seconds() for t in desired["time"]]
                    ys = desired["desired_replicas"].astype(float).tolist()
                    ax2.step([*xs, x_to], [*ys, ys[-1]], where="post", color="black", lw=1, label="desired replicas")
                    ax2.set_ylabel("replicas", fontsize=8)
                    ax2.set_ylim(0, max(ys) + 1)
                    ax2.yaxis.get_major_locator().set_params(integer=True)
                    ax2.tick_params(labelsize=7)
                    twin = [ax2]
                _legend(ax, *twin)
            panels.append(("hpa", draw_hpa))
        for name, series, col, ylabel in (("pods", timeline.pods_per_pool(), "pods", "Ready pods"),
                                          ("nodes", timeline.nodes_per_pool(), "nodes", "nodes")):
            if not len(series):
                continue

            def draw_steps(ax, series=series, col=col, ylabel=ylabel):
                steps = _steps_over(series, col, t0, x_from, x_to)
                top = 0
                for i, pool in enumerate(_pool_order(list(steps), idc, cloud)):
                    xs, ys = steps[pool]
                    ax.step(xs, ys, where="post", color=POOL_COLOURS[min(i, len(POOL_COLOURS) - 1)], lw=1.4,
                            label=_pool_label(pool, idc, cloud))
                    top = max(top, max(ys))
                ax.set_ylim(0, top + 1)
                ax.yaxis.get_major_locator().set_params(integer=True)
                ax.set_ylabel(ylabel, fontsize=8)
                _legend(ax)
            panels.append((name, draw_steps))
    if cost_ok and getattr(cost, "nodes", None):
        def draw_cost(ax):
            n = 300
            xs = sorted({float(cost.window_s) * i / n for i in range(n + 1)}
                        | {iv.start_s for iv in cost.nodes} | {iv.end_s for iv in cost.nodes})
            unit = getattr(cost, "currency", "")
            pools = _pool_order([iv.pool for iv in cost.nodes], idc, cloud)
            total = [0.0] * len(xs)
            priced = True
            for i, pool in enumerate(pools):
                price = (getattr(cost, "prices", {}) or {}).get(pool)
                node_h = price.node_hour() if price is not None and hasattr(price, "node_hour") else None
                ivs = [iv for iv in cost.nodes if iv.pool == pool]
                per_s = (node_h if node_h is not None else float(getattr(price, "gpus_per_node", 1) or 1)) / 3600.0
                priced = priced and node_h is not None
                ys = [per_s * sum(max(0.0, min(x, iv.end_s) - iv.start_s) for iv in ivs) for x in xs]
                total = [a + b for a, b in zip(total, ys)]
                ax.plot([x + cost_offset for x in xs], ys, color=POOL_COLOURS[min(i, len(POOL_COLOURS) - 1)],
                        lw=1.4, label=_pool_label(pool, idc, cloud) + ("" if node_h is not None else " (GPU-h)"))
            if priced and len(pools) > 1:
                ax.plot([x + cost_offset for x in xs], total, color="black", lw=1, ls="--", label=f"total ({unit})")
            ax.set_ylabel(f"cost ({unit})" if priced else "cost / GPU-h", fontsize=8)
            ax.set_ylim(bottom=0)
            _legend(ax)
        panels.append(("cost", draw_cost))
    if not panels:
        return None

    fig = Figure(figsize=(13.0, 1.2 * len(panels) + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    titles = {"load": "offered vs achieved load", "latency": "latency per second (by send time) vs SLO",
              "hpa": "HPA metric vs target, desired replicas", "pods": "Ready pods per pool",
              "nodes": "nodes per pool", "cost": "cost accumulated per pool (node time x price)"}
    phases = [(p.name, (_stamp(p.start) - t0).total_seconds(), (_stamp(p.end) - t0).total_seconds())
              for p in (getattr(load, "phases", None) or (report.phases if report is not None else []))]
    events: list[tuple[float, str]] = []
    if has_tl:
        for row in frame[frame["reason"].isin(list(SCALE_EVENTS))].itertuples(index=False):
            x = (row.time - t0).total_seconds()
            if x_from <= x <= x_to:
                events.append((x, row.reason))
    for ax, (name, draw) in zip(axes, panels):
        for pname, a, b in phases:
            ax.axvspan(a, b, color=PHASE_COLOURS.get(pname, "#eeeeee"), alpha=0.6, lw=0, zorder=0, gid="phase")
        draw(ax)
        for x, reason in events:
            _, colour, ls = SCALE_EVENTS[reason]
            ax.axvline(x, color=colour, ls=ls, lw=0.9, alpha=0.75, gid="scale-event")
        ax.set_title(titles[name], fontsize=8, loc="left", pad=2)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_xlim(x_from, x_to)
    axes[-1].set_xlabel("seconds since the load started" + (f" ({t0.strftime('%Y-%m-%d %H:%M:%S')} UTC)"), fontsize=8)
    handles = [Patch(color=PHASE_COLOURS.get(n, "#eeeeee"), label=n) for n in dict.fromkeys(p[0] for p in phases)]
    handles += [Line2D([], [], color=SCALE_EVENTS[r][1], ls=SCALE_EVENTS[r][2], label=SCALE_EVENTS[r][0])
                for r in dict.fromkeys(r for _, r in events)]
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.06, 1.0), ncol=len(handles), fontsize=7,
                   frameon=False)
    fig.subplots_adjust(left=0.06, right=0.80, top=1 - 0.55 / fig.get_figheight(), bottom=0.45 / fig.get_figheight(),
                        hspace=0.32)
    fig.tidegate_panels = [name for name, _ in panels]
    fig.tidegate_events = events
    return fig


def waterfall_figure(events: list[dict[str, Any]]):
    """The critical path of each scale event (``elasticity.scale_events``) as one matplotlib Figure:
    one horizontal waterfall per event, stacked, each known step a bar from the previous known step
    to the moment it was reached (its ``seconds``), labelled with the step and its seconds, on an
    axis of seconds since the event's first known step; steps top to bottom in causal order.
    Unknown steps are not drawn (their ``unknown: why`` goes beside the figure, in text). None when
    no event has a known step.

    The figure carries ``tidegate_waterfall``: per drawn event, its bars as (step, start_s,
    seconds), top to bottom, so that tests can read what was drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn: list[tuple[dict[str, Any], list[tuple[str, float, float]]]] = []
    for ev in events:
        t_first, bars, prev_end = None, [], 0.0
        for s in ev.get("steps") or []:
            if s.get("seconds") is None or s.get("started_at") is None:
                continue
            at = _stamp(s["started_at"])
            t_first = at if t_first is None else t_first
            end = max((at - t_first).total_seconds(), prev_end)
            # the bar runs from the previous known step to this one (``seconds`` is that gap, rounded)
            bars.append((str(s["step"]), round(prev_end, 3), float(s["seconds"])))
            prev_end = end
        if bars:
            drawn.append((ev, bars))
    if not drawn:
        return None
    heights = [0.24 * len(bars) + 0.55 for _, bars in drawn]
    fig = Figure(figsize=(10.0, sum(heights) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(drawn), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (ev, bars) in zip(axes, drawn):
        colour = "tab:red" if ev.get("direction") == "up" else "tab:blue"
        ys = list(range(len(bars)))
        span = max(max(a + w for _, a, w in bars), 1.0)
        for y, (step, start, seconds) in zip(ys, bars):
            ax.barh(y, max(seconds, span * 0.004), left=start, height=0.6, color=colour,
                    alpha=0.85 if seconds > 0 else 0.4, gid="step")
            ax.text(start + seconds + span * 0.01, y, f"{step}  {seconds:g} s", va="center", fontsize=7)
        ax.set_yticks(ys, [b[0] for b in bars], fontsize=7)
        ax.set_ylim(len(bars) - 0.4, -0.6)  # the first step on top
        ax.set_xlim(0, span * 1.35)  # room for the last bar's label
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(scale_event_title(ev), fontsize=8, loc="left", pad=2)
    axes[-1].set_xlabel("seconds since the event's first known step", fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.97, top=1 - 0.3 / fig.get_figheight(), bottom=0.45 / fig.get_figheight(),
                        hspace=0.6 if len(drawn) > 1 else 0.2)
    fig.tidegate_waterfall = [bars for _, bars in drawn]
    return fig


def render_html(report: RunReport, *, load=None, timeline=None, spec=None, cost=None, history=None) -> str:
    dashboard, note = None, ""
    try:
        fig = dashboard_figure(report, load=load, timeline=timeline, spec=spec, cost=cost)
        if fig is not None:
            dashboard = _png(fig)
            missing = [n for n, ok in (("timeline", timeline is not None and len(getattr(timeline, "df", ())) > 0),
                                       ("cost", cost is not None and getattr(cost, "status", "") == "ok"))
                       if not ok]
            note = f"no data for: {', '.join(missing)} (panels left out)" if missing else ""
        else:
            note = "neither load nor timeline was recorded"
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the report
        report.warnings = [*report.warnings, f"dashboard failed: {type(exc).__name__}: {exc}"]
        note = f"the dashboard could not be drawn ({type(exc).__name__})"
    try:
        figures = plots(load, timeline, spec)
        if cost is not None:
            from tasks.cost import cost_plot

            figures.append(("Cost accumulated over the run per pool", _png(cost_plot(cost))))
        if history is not None and history.series:
            from tasks.gate import CHANGE_POINT_FIGURES

            trend = trend_plot(history.series, report.to_dict(), CHANGE_POINT_FIGURES)
            if trend is not None:
                figures.append(("Trends: the key figures of this spec's earlier runs and this run", _png(trend)))
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the report
        report.warnings = [*report.warnings, f"plots failed: {type(exc).__name__}: {exc}"]
        figures = []
    waterfall = None
    if report.elasticity is not None and report.elasticity.scale_events:
        try:
            fig = waterfall_figure(report.elasticity.scale_events)
            waterfall = _png(fig) if fig is not None else None
        except Exception as exc:  # noqa: BLE001 - a plot must never cost the report
            report.warnings = [*report.warnings, f"critical-path waterfall failed: {type(exc).__name__}: {exc}"]
    doc = basic_html(report, figures, dashboard=dashboard, dashboard_note=note, waterfall=waterfall)
    if report.definitions:
        dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in report.definitions.items())
        doc = doc.replace("</body>", f"<h2>definitions</h2><dl>{dl}</dl></body>", 1)
    return doc


# -- a recorded run, read back from its directory -------------------------------------------------
@dataclass
class RecordedLoad:
    """What the dashboard and the exports read of a ``LoadResult``, rebuilt from a report directory's
    per_second.csv and requests.csv (columns: tasks/load.py's docstring)."""

    per_second: Any
    requests: Any
    phases: list[Any]
    started_at: Any
    ended_at: Any
    summary: dict[str, Any]
    shape: Any = None


@dataclass
class RecordedRun:
    """A run read back from ``reports/<run-id>/``: report.json and whatever tables it wrote
    (None where a table is missing)."""

    directory: Path
    report: RunReport
    load: RecordedLoad | None
    timeline: Any
    cost: Any


def resolve_run_dir(target: str | Path) -> Path:
    """A report directory, or a run id under ``reports_root()`` (``latest`` included)."""
    path = Path(target)
    if (path / "report.json").is_file():
        return path
    under = reports_root() / str(target)
    if (under / "report.json").is_file():
        return under
    from tasks.errors import SpecError

    raise SpecError(f"no report at {target}: neither a directory with report.json nor a run id under "
                    f"{reports_root()}", hint="give a report directory or a run id (TIDEGATE_REPORTS_DIR)")


def read_run(target: str | Path) -> RecordedRun:
    """report.json and the CSV tables of a run directory (or run id), as render_html takes them."""
    import pandas as pd

    from tasks.observe import Timeline

    directory = resolve_run_dir(target)
    try:
        report = RunReport.model_validate(json.loads((directory / "report.json").read_text()))
    except (OSError, ValueError) as exc:  # unreadable, not JSON, or not a report (ValidationError)
        from tasks.errors import SpecError

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SpecError(f"cannot read run {target}: {directory / 'report.json'}: {first}",
                        hint="a report directory written by tidegate (report.json of tasks/report_model.py)") from None
    load = None
    if (directory / "per_second.csv").is_file():
        ps = pd.read_csv(directory / "per_second.csv")
        ps["second"] = pd.to_datetime(ps["second"], utc=True, format="ISO8601")
        req = None
        if (directory / "requests.csv").is_file():
            req = pd.read_csv(directory / "requests.csv", keep_default_na=True)
            for col in ("start", "end", "intended"):
                if col in req:
                    req[col] = pd.to_datetime(req[col], utc=True, format="ISO8601")
            if "error" in req:
                req["error"] = req["error"].astype(object).where(req["error"].notna(), "")
        phases = [type("Phase", (), {"name": p.name, "start": _stamp(p.start), "end": _stamp(p.end)})()
                  for p in report.phases]
        started = phases[0].start if phases else (ps["second"].iloc[0] if len(ps) else None)
        ended = phases[-1].end if phases else None
        summary = report.load.model_dump(mode="json") if report.load is not None else {}
        load = RecordedLoad(per_second=ps, requests=req, phases=phases, started_at=started, ended_at=ended,
                            summary=summary)
    timeline = None
    if (directory / "timeline.csv").is_file():
        pools = report.cost.pools if report.cost is not None else {}
        timeline = Timeline.read_csv(directory / "timeline.csv", started_at=load.started_at if load else None,
                                     idc_pool_id=pools.get("idc"), elastic_pool_id=pools.get("cloud"))
    cost = None
    if (directory / "cost_intervals.csv").is_file() and report.cost is not None and report.cost.status == "ok":
        from tasks.cost import CostReport, Interval
        from tasks.spec.cost import PoolPrice

        iv = pd.read_csv(directory / "cost_intervals.csv")
        intervals = [Interval(kind=r.kind, key=str(r.object), object=str(r.object), pool=str(r.pool),
                              node=None if pd.isna(r.node) else str(r.node), start_s=float(r.start_s),
                              end_s=float(r.end_s), open_at_end=bool(r.open_at_end)) for r in iv.itertuples()]
        c = report.cost
        cost = CostReport(status=c.status, currency=c.currency, idc_pool=c.pools.get("idc", ""),
                          cloud_pool=c.pools.get("cloud", ""), compression_factor=c.compression_factor,
                          billing_granularity=c.billing_granularity, minimum_charge_s=c.minimum_charge_s,
                          prices={k: PoolPrice.model_validate(v) for k, v in c.prices.items()},
                          started_at=load.started_at if load else None, window_s=c.window_s,
                          nodes=[i for i in intervals if i.kind == "node"],
                          pods=[i for i in intervals if i.kind == "pod"],
                          cloud_cost_run=c.cloud_cost_run,
                          phases=[(p.name, (p.start - load.started_at).total_seconds(),
                                   (p.end - load.started_at).total_seconds()) for p in load.phases] if load else [])
    return RecordedRun(directory=directory, report=report, load=load, timeline=timeline, cost=cost)


def render_run(target: str | Path) -> str:
    """report.html of a recorded run, rendered again from its directory."""
    run = read_run(target)
    return render_html(run.report, load=run.load, timeline=run.timeline, cost=run.cost)


def open_run(target: str | Path) -> Path:
    """``tidegate report open``: report.html of a recorded run rendered again from its report.json and
    CSV tables (``render_run``) into the run's directory, secrets redacted as ``write`` does; its path."""
    directory = resolve_run_dir(target)
    doc = render_run(directory)
    out = directory / "report.html"
    out.write_text(redact(doc, secret_values()))
    return out


# -- the Prefect artifact ---------------------------------------------------------------------------
# a markdown artifact is stored in Prefect's database and sent whole to the UI: the dashboard goes in
# as a data URI only below this size, else the artifact links the report instead
ARTIFACT_IMAGE_MAX_BYTES = 1_000_000
ARTIFACT_DASHBOARD_DPI = 55


def dashboard_data_uri(run: RecordedRun, dpi: int = ARTIFACT_DASHBOARD_DPI) -> str | None:
    """The dashboard of a recorded run as a PNG data URI (None without data)."""
    fig = dashboard_figure(run.report, load=run.load, timeline=run.timeline, cost=run.cost)
    return _png(fig, dpi=dpi) if fig is not None else None


def artifact_markdown(report: RunReport, out_dir: Path | None = None, *,
                      max_image_bytes: int = ARTIFACT_IMAGE_MAX_BYTES, dpi: int = ARTIFACT_DASHBOARD_DPI) -> str:
    """The run's Prefect markdown artifact: what the first screen of report.html shows. The verdict,
    the gate's rules one per line, the dashboard as an image (``![dashboard](data:image/png;base64,
    ...)``, drawn from the report directory ``out_dir`` at a lower dpi; Prefect's UI renders data:image
    URIs in markdown images), the largest entry of the violation bill, the report's path, then the
    stages. A dashboard whose data URI exceeds ``max_image_bytes`` is left out, and the markdown says
    so and names report.html instead. The caller redacts secrets."""
    lines = [f"# tidegate run `{report.run_id}`: **{report.verdict.upper()}**", "",
             f"spec `{report.spec}`, profile `{report.profile}`, {report.started_at} -> {report.finished_at}", ""]
    if report.gate:
        lines += ["**gate rules**", ""]
        for r in report.gate:
            value = "no data" if r.value is None else _cell(r.value)
            lines.append(f"- **{r.status}** `{r.rule}` = {value} ({r.op} {r.threshold})")
    else:
        lines.append("no gate rule was judged")
    lines += [f"- inconclusive: {reason}" for reason in report.inconclusive_reasons]
    lines.append("")
    page = f"{out_dir / 'report.html'}" if out_dir is not None else "report.html"
    uri, why = None, ""
    if out_dir is not None:
        try:
            uri = dashboard_data_uri(read_run(out_dir), dpi=dpi)
            why = "" if uri else "no load or timeline was recorded"
        except Exception as exc:  # noqa: BLE001 - the artifact must never cost the run
            why = f"it could not be drawn ({type(exc).__name__}: {exc})"
    else:
        why = "the report directory was not given"
    if uri is not None and len(uri) > max_image_bytes:
        why, uri = (f"its image ({len(uri) / 1e6:.1f} MB as a data URI) is larger than the artifact's limit of "
                    f"{max_image_bytes / 1e6:.1f} MB"), None
    if uri is not None:
        lines += ["![dashboard](" + uri + ")", ""]
    else:
        lines += [f"dashboard not shown here: {why}; see `{page}`", ""]
    el = report.elasticity
    if el is not None and el.violation_bill:
        from tasks.critical_path import bill_sentence

        lines += [f"SLO violations: {bill_sentence(el.violation_bill[0])}.", ""]
    lines += [f"report: `{page}`", "", "| stage | status | seconds | detail |", "|---|---|---|---|"]
    for name, st in report.stages.items():
        detail = st.detail.replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {name} | {st.status} | {st.seconds:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


# -- two recorded runs side by side -----------------------------------------------------------------
# (dotted key in report.json, label); elasticity.scale_up_total_s is derived (compare_runs)
COMPARE_FIGURES: tuple[tuple[str, str], ...] = (
    ("load.requests", "requests"), ("load.error_rate", "error rate"),
    ("load.ttft_p50_ms", "TTFT p50 (ms)"), ("load.ttft_p95_ms", "TTFT p95 (ms)"), ("load.e2e_p95_ms", "e2e p95 (ms)"),
    ("load.slo_attainment", "SLO attainment"), ("load.request_goodput_rps", "request goodput (req/s)"),
    ("elasticity.hpa_max_replicas", "HPA max replicas"), ("elasticity.cloud_pods_max", "cloud pods max"),
    ("elasticity.time_to_first_cloud_pod_ready_s", "first cloud pod Ready (s)"),
    ("elasticity.scale_up_total_s", "longest scale-up critical path (s)"),
    ("cost.cost_run", "cost of the run"),
    ("cost.cost_per_million_good_output_tokens", "cost per million good output tokens"),
    ("cost.hybrid_cost_per_day", "hybrid cost per day"),
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def scale_up_total_s(doc: dict[str, Any]) -> float | None:
    """The longest ``total_s`` of the run's scale-up events (the slowest critical path); None without one."""
    totals = [_number(e.get("total_s")) for e in ((doc.get("elasticity") or {}).get("scale_events") or [])
              if e.get("direction") == "up"]
    totals = [t for t in totals if t is not None]
    return max(totals) if totals else None


def change_pct(before: Any, after: Any) -> float | None:
    """(after - before) / |before| in percent, to 0.1; None when either is not a number or before is 0."""
    a, b = _number(before), _number(after)
    if a is None or b is None or a == 0:
        return None
    return round(100.0 * (b - a) / abs(a), 1)


def compare_runs(first: RecordedRun, second: RecordedRun) -> dict[str, Any]:
    """Two recorded runs' key figures (``COMPARE_FIGURES``) side by side with the change from the first
    to the second in percent, and both verdicts with their gate rules: what ``tidegate report compare
    --json`` prints and the comparison page shows."""
    from tasks.gate import lookup

    docs = [r.report.to_dict() for r in (first, second)]
    for doc in docs:
        doc.setdefault("elasticity", {})
        if isinstance(doc["elasticity"], dict):
            doc["elasticity"]["scale_up_total_s"] = scale_up_total_s(doc)
    figures = []
    for key, label in COMPARE_FIGURES:
        a, b = (lookup(d, key) for d in docs)
        figures.append({"key": key, "label": label, "first": a, "second": b, "change_pct": change_pct(a, b)})
    runs = [{"run_id": r.report.run_id, "directory": str(r.directory), "spec": r.report.spec,
             "profile": r.report.profile, "started_at": r.report.started_at, "verdict": r.report.verdict,
             "inconclusive_reasons": list(r.report.inconclusive_reasons),
             "gate": [g.model_dump(mode="json") for g in r.report.gate]} for r in (first, second)]
    return {"runs": runs, "figures": figures}


def _fmt(value: Any) -> str:
    n = _number(value)
    if n is None:
        return "-" if value is None else html.escape(str(value))
    return f"{n:,.0f}" if n == int(n) and abs(n) >= 100 else f"{n:.4g}"


def compare_html(first: RecordedRun, second: RecordedRun, comparison: dict[str, Any] | None = None) -> str:
    """The comparison page of two recorded runs, self-contained (images as data URIs): both verdicts
    and their rules, the key figures side by side with the change in percent, then both dashboards."""
    comparison = comparison or compare_runs(first, second)
    runs = comparison["runs"]
    head = "".join(
        f"<th>{'AB'[i]}: {html.escape(r['run_id'])}<br><span class='meta'>{html.escape(r['spec'])} &middot; "
        f"{html.escape(r['started_at'])}</span></th>" for i, r in enumerate(runs))
    verdicts = "".join(f"<td class='{html.escape(r['verdict'])}'><b>{html.escape(r['verdict'].upper())}</b></td>"
                       for r in runs)
    rules = "".join(
        "<td><ul class='rules'>" + "".join(_rule_line(g) for g in run.report.gate) + "</ul>"
        + "".join(f"<p class='inconclusive'>inconclusive: {html.escape(x)}</p>" for x in run.report.inconclusive_reasons)
        + "</td>" for run in (first, second))
    rows = []
    for f in comparison["figures"]:
        if f["first"] is None and f["second"] is None:
            continue
        pct = f["change_pct"]
        shown = "" if pct is None else f"{pct:+.1f}%"
        rows.append(f"<tr><td>{html.escape(f['label'])}<br><span class='note'>{html.escape(f['key'])}</span></td>"
                    f"<td>{_fmt(f['first'])}</td><td>{_fmt(f['second'])}</td><td class='change'>{shown}</td></tr>")
    dashboards = []
    for i, run in enumerate((first, second)):
        try:
            uri = dashboard_data_uri(run, dpi=80)
        except Exception as exc:  # noqa: BLE001 - a plot must never cost the page
            uri, why = None, f"could not be drawn ({type(exc).__name__})"
        else:
            why = "no data"
        img = (f"<img src='{html.escape(uri)}' alt='dashboard of {html.escape(run.report.run_id)}'>" if uri
               else f"<p class='note'>dashboard: {why}</p>")
        dashboards.append(f"<figure class='dashboard'>{img}<figcaption>{'AB'[i]}: "
                          f"{html.escape(run.report.run_id)}</figcaption></figure>")
    title = f"tidegate: {runs[0]['run_id']} vs {runs[1]['run_id']}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em 2em;max-width:100em}} h1{{font-size:1.3em}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
.passed,.pass{{background:#d4f7d4}} .failed,.fail,.error{{background:#f7d4d4}} .warn,.skipped,.inconclusive{{background:#f7f0d4}}
ul.rules{{list-style:none;padding:0;margin:0;font-size:.85em}} ul.rules li{{margin:2px 0;padding:1px 6px;border-radius:3px}}
.meta,.note{{color:#666;font-size:.85em}} td.change{{text-align:right;font-variant-numeric:tabular-nums}}
#dashboards{{display:grid;grid-template-columns:1fr;gap:1em}} #dashboards img{{width:100%;height:auto}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table id='verdicts'><tr><th></th>{head}</tr><tr><td>verdict</td>{verdicts}</tr><tr><td>gate rules</td>{rules}</tr></table>
<h2>key figures</h2><p class='note'>change: (B - A) / |A|</p>
<table id='figures'><tr><th>figure</th><th>A</th><th>B</th><th>change</th></tr>{''.join(rows)}</table>
<h2>dashboards</h2><div id='dashboards'>{''.join(dashboards)}</div>
</body></html>
"""
