"""report.html: every block of report.json a reader needs, figures with their titles."""

from __future__ import annotations

import pytest

from tasks.report import RunReport, basic_html

pytestmark = pytest.mark.unit


def test_cost_block_and_figure_titles_are_on_the_page():
    report = RunReport(run_id="r1", spec="s", profile="local", started_at="2026-11-29T00:00:00+00:00",
                       elasticity={"cloud_pods_max": 1, "spill_over_traffic_time": "21:51"})
    report.cost = {"currency": "CNY", "cloud_cost_per_day": 51.41,
                   "node_seconds": {"np-idc": 725.4, "np-elastic": 81.2}, "notes": []}
    page = basic_html(report, [("Cost accumulated over the run per pool", "data:image/png;base64,AAAA")])
    assert "<h2>cost</h2>" in page and "<td>cloud_cost_per_day</td><td>51.41</td>" in page
    assert "<td>node_seconds</td><td>np-idc: 725.4, np-elastic: 81.2</td>" in page
    assert "<td>spill_over_traffic_time</td><td>21:51</td>" in page
    assert "alt='Cost accumulated over the run per pool'" in page
    assert "<figcaption>Cost accumulated over the run per pool</figcaption>" in page


def test_no_cost_section_without_a_cost_block():
    report = RunReport(run_id="r2", spec="s", profile="local", started_at="2026-11-29T00:00:00+00:00")
    assert "<h2>cost</h2>" not in basic_html(report)


@pytest.mark.filterwarnings("ignore:Logger 'tidegate' attempted to send logs to the API")  # Prefect's handler
def test_log_records_are_redacted_while_a_run_holds_secrets(monkeypatch):
    """Secrets a run learns (the OSS key it resolved) never reach a log handler: the message, its
    arguments and an exception's text are redacted; outside the block nothing is filtered."""
    import io
    import logging

    from tasks.report import redacting_logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("tidegate")
    log.addHandler(handler)
    monkeypatch.setenv("TIDEGATE_TEST_TOKEN", "tok-from-env-123")
    known: list[str] = []
    try:
        with redacting_logs(known):
            known.append("LTAIsecretkeyvalue")  # learned mid-run
            log.warning("staging with %s and %s", "LTAIsecretkeyvalue", "tok-from-env-123")
            try:
                raise RuntimeError("rejected key LTAIsecretkeyvalue")
            except RuntimeError:
                log.exception("upload failed")
        log.warning("after the run: %s", "LTAIsecretkeyvalue")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "staging with *** and ***"
    assert lines[1] == "upload failed (RuntimeError: rejected key ***)" and len(lines) == 3
    assert lines[2] == "after the run: LTAIsecretkeyvalue"  # the filter is gone with the run
