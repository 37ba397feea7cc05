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
        cases.append(JUnitCase("tidegate.gate", rule.rule, 0.0, outcome, message,
                               output=f"warn: {msg}" if rule.status == "warn" else ""))
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
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_cell(v) for v in value)
    return str(value)


def basic_html(report: RunReport, figures: list[tuple[str, str]] | None = None) -> str:
    """The report page; ``figures`` are (title, PNG data URI) pairs."""
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
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tidegate {html.escape(report.run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px}} .passed,.pass{{background:#d4f7d4}} .failed,.fail,.error{{background:#f7d4d4}}
.warn,.skipped,.not_run,.inconclusive{{background:#f7f0d4}} img{{max-width:100%}}</style></head><body>
<h1>tidegate run {html.escape(report.run_id)}: <span class="{html.escape(report.verdict)}">{html.escape(report.verdict.upper())}</span></h1>
<p>spec {html.escape(report.spec)} &middot; profile {html.escape(report.profile)} &middot; {html.escape(report.started_at)} &rarr; {html.escape(report.finished_at)}</p>
<h2>stages</h2><table><tr><th>stage</th><th>status</th><th>s</th><th>detail</th></tr>{rows}</table>
{"<h2>gate</h2><table><tr><th>rule</th><th>status</th><th>value</th><th>threshold</th></tr>" + gate + "</table>" if gate else ""}
{blocks}{figs}
<!-- markdown summary
{html.escape(md)}
--></body></html>
"""


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


def _png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
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
            ax.legend(fontsize=8)
        seen = set()
        for _, ev in frame[frame["reason"].isin(list(MARKERS))].iterrows():
            label, color = MARKERS[ev["reason"]]
            xs = (ev["time"] - t0).total_seconds()
            for ax in axes:
                ax.axvline(xs, color=color, alpha=0.5, linestyle="--",
                           label=label if label not in seen and ax is axes[0] else None)
            seen.add(label)
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


def render_html(report: RunReport, *, load=None, timeline=None, spec=None, cost=None, history=None) -> str:
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
    doc = basic_html(report, figures)
    if report.findings:
        rows = "".join(
            f"<tr><td>{html.escape(f.name)}</td><td class='{'pass' if f.ok else 'fail'}'>"
            f"{'ok' if f.ok else 'missing'}</td><td>{html.escape(f.detail)}"
            f"<ul>{''.join('<li>' + html.escape(e) + '</li>' for e in f.evidence[:6])}</ul></td></tr>"
            for f in report.findings)
        doc = doc.replace("<h2>stages</h2>", f"<h2>findings</h2><table>{rows}</table><h2>stages</h2>", 1)
    if report.definitions:
        dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in report.definitions.items())
        doc = doc.replace("</body>", f"<h2>definitions</h2><dl>{dl}</dl></body>", 1)
    return doc
