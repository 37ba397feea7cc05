"""The console during the spike and staging (issue 23): read from the records the generator's
processes flush, one line per interval, naming the phase, the offered rate, what completed, TTFT
and (from the observer) replicas and nodes per pool; a half-written record waits for the next tick.
On a terminal a live bar instead (tasks/console.py), with the log handlers that write to the
terminal routed above it; staging: bytes, rate and ETA, a line every 10 s off a terminal."""

from __future__ import annotations

import io
import json
import logging
import sys
from types import SimpleNamespace

import pytest

from tasks import console
from tasks.load import Progress, constant_rate_spec, shape_for

pytestmark = pytest.mark.unit


def _rec(ttft: float, error: str = "", in_flight: int = 3) -> str:
    return json.dumps({"ttft_ms": ttft, "error": error, "in_flight": in_flight, "cancelled": False})


def test_progress_line_names_phase_rate_ttft_and_pools(tmp_path):
    shape = shape_for(constant_rate_spec(12, 60))
    p = Progress(tmp_path, shape.duration_s, began=1000.0, interval_s=10, shape=shape,
                 extra=lambda: "replicas IDC 2 / cloud 1, nodes IDC 2 / cloud 1")
    (tmp_path / "records-local0.jsonl").write_text(
        "\n".join(_rec(t) for t in (100, 110, 120, 130)) + "\n" + _rec(900, "HTTP 503") + "\n" + '{"ttft_ms": 1')
    assert p.tick(1005.0) is None            # not yet: one line per interval
    line = p.tick(1010.0)
    assert line.startswith("load: spike, offered 12.0/s, elapsed 10/60 s, 0.5 rps completed (1 failed)")
    assert "TTFT p50 120 ms p95 130 ms" in line and "3 in flight" in line
    assert line.endswith("; replicas IDC 2 / cloud 1, nodes IDC 2 / cloud 1")
    with open(tmp_path / "records-local0.jsonl", "a") as fh:   # the half-written line completes
        fh.write(', "error": "", "cancelled": false}\n')
    line = p.tick(1020.0)
    assert "0.1 rps completed (0 failed)" in line and p.lines == 2


def test_progress_survives_a_failing_extra_and_no_records(tmp_path):
    def broken() -> str:
        raise RuntimeError("watch gone")

    p = Progress(tmp_path, 30, began=0.0, interval_s=10, extra=broken)
    line = p.tick(10.0)
    assert line.startswith("load: elapsed 10/30 s, 0.0 rps completed (0 failed), TTFT p50 - ms")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_bar_lines_show_offer_achieved_errors_ttft_so_far_and_pools(tmp_path):
    shape = shape_for(constant_rate_spec(12, 60))
    p = Progress(tmp_path, shape.duration_s, began=1000.0, interval_s=10, shape=shape, bar=True,
                 extra=lambda: "replicas IDC 2 / cloud 1, nodes IDC 2 / cloud 1")
    (tmp_path / "records-local0.jsonl").write_text(
        "\n".join(_rec(t) for t in range(100, 120)) + "\n" + _rec(900, "HTTP 503") + "\n")
    p.bar = SimpleNamespace(update=lambda done: None)  # as if shown: its figures are kept up to date
    p._refresh_bar(1004.0)
    assert p._bar_title() == "load: spike"
    first, pools = p._bar_lines()
    assert first == ("offered 12.0/s, achieved 5.2/s, 21 done, errors 1 (4.8%), TTFT p95 119 ms so far, "
                     "3 in flight")
    assert pools == "replicas IDC 2 / cloud 1, nodes IDC 2 / cloud 1"
    p._refresh_bar(1004.5)                    # not yet due: nothing read
    p._refresh_bar(1061.0)
    assert p._bar_title() == "load: requests in flight end"
    assert p._bar_lines()[0].startswith("offered 12.0/s, achieved 0.0/s, 21 done")
    p.bar = None


def test_console_live_bar_routes_log_handlers_above_it_and_restores_them(monkeypatch):
    term = _Tty()
    monkeypatch.setattr(sys, "stderr", term)
    handler = logging.StreamHandler(term)
    logger = logging.getLogger("tidegate.test-console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        bar = console.LiveBar(lambda: "staging", 100, lambda done: f"{done:.0f}/100", lambda: ["1.0 MB/s"])
        with bar:
            assert bar.shown and handler.stream is sys.stderr and sys.stderr is not term  # rich's proxy
            bar.update(40)
            logger.warning("a retry, on its own line")
            print("tidegate: a printed line", file=sys.stderr)
        assert not bar.shown and handler.stream is term and sys.stderr is term
    finally:
        logger.removeHandler(handler)
    out = term.getvalue()
    assert "a retry, on its own line\n" in out and "tidegate: a printed line\n" in out
    assert "━" in out and "40/100" in out and "1.0 MB/s" in out


def test_console_transfer_prints_a_line_every_interval_without_a_terminal(capsys):
    tc = console.TransferConsole("staging oss://b/p/", 50_000_000, bar=False, lines=True, began=0.0)
    assert tc.update(5_000_000, 5.0) is None
    line = tc.update(20_000_000, 10.0)
    assert line == "staging oss://b/p/: 20.0 MB of 50.0 MB (40.0%), 2.0 MB/s, elapsed 10 s, ETA 15 s"
    assert tc.update(30_000_000, 15.0) is None
    assert tc.update(50_000_000, 17.0, final=True).startswith("staging oss://b/p/: 50.0 MB of 50.0 MB (100.0%)")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("tidegate: staging oss://b/p/: ") for e in err)
    quiet = console.TransferConsole("staging x", 10, bar=False, lines=True, began=0.0)
    assert quiet.update(10, 1.0, final=True) is None  # a transfer shorter than an interval prints nothing


def test_console_staging_progress_is_lines_off_a_terminal_and_no_artifact_outside_a_prefect_run(capsys):
    import warnings

    import prefect  # noqa: F401 - imported, as under `tidegate validate --no-prefect`

    from tasks.staging import _Progress

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Artifact creation outside of a flow or task run is deprecated"
        p = _Progress(30_000_000, "oss://b/p/", None)
        assert not p._prefect
        p.console.began -= 10
        p.console._next_line -= 10
        p.tick(10_000_000)
        p.close(30_000_000)
    err = capsys.readouterr().err
    assert "tidegate: staging oss://b/p/: 10.0 MB of 30.0 MB" in err and "30.0 MB of 30.0 MB (100.0%)" in err
    off = _Progress(30_000_000, "oss://b/p/", False)
    off.tick(10_000_000)
    off.close(30_000_000)
    assert capsys.readouterr().err == ""
