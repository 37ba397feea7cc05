"""The console's progress line during the spike (issue 23): read from the records the generator's
processes flush, one line per interval, naming the phase, the offered rate, what completed, TTFT
and (from the observer) replicas and nodes per pool; a half-written record waits for the next tick."""

from __future__ import annotations

import json

import pytest

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
