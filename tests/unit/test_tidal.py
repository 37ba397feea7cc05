"""The tidal load shape: the built-in day, traffic CSVs (good and bad), compression, scaling, phases."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks import tidal
from tasks.errors import SpecError
from tasks.load import LoadShape, shape_for
from tasks.spec import LoadSpec, TidalSpec, load_spec
from tasks.tidal import plan_tidal, read_traffic_csv

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "qwen-chat.tidal.local.yaml"
SAMPLE = ROOT / "examples" / "traffic" / "diurnal-sample.csv"


def tidal_load(csv: Path | str | None = None, minutes: float = 6, **kw) -> LoadSpec:
    params = {"shape": "tidal", "baseline_users": 2, "spike_users": 24, "spawn_rate": 12.0, **kw}
    return LoadSpec(**params, tidal=TidalSpec(csv_path=str(csv) if csv else None, compress_to_minutes=minutes))


def write(tmp_path: Path, text: str, name: str = "traffic.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def hourly(values: list[float], column: str = "rps", start_hour: int = 0) -> str:
    rows = [f"2025-03-10T{(start_hour + i) % 24:02d}:00:00+08:00,{v}" for i, v in enumerate(values)]
    return f"timestamp,{column}\n" + "\n".join(rows) + "\n"


# a small day: trough, ramp, peak at row 6 (line 7), final trough
DAY = [2, 2, 4, 6, 8, 9, 10, 7, 3, 2]


# -- the built-in day -------------------------------------------------------------------------
def test_built_in_day_peaks_at_spike_users_and_troughs_at_baseline():
    plan = plan_tidal(tidal_load())
    shape = plan.shape
    users = [s.users for s in shape.steps]
    assert shape.kind == "tidal"
    assert len(shape.steps) == 24
    assert max(users) == 24 and min(users) == 2
    assert users[0] == 2 and users[-1] == 2          # starts and ends in the night trough
    assert shape.duration_s == 360.0
    assert plan.compression_factor == 240.0           # 24 h into 6 min
    assert plan.curve.source == tidal.BUILT_IN


def test_built_in_day_phases_name_the_spike_and_the_final_trough():
    shape = plan_tidal(tidal_load()).shape
    names = [p[0] for p in shape.phases()]
    assert names == ["baseline", "ramp", "spike", "cooldown"]
    spike = next(p for p in shape.phases() if p[0] == "spike")
    peak_step = max(range(len(shape.steps)), key=lambda i: shape.steps[i].users)
    peak_start = shape.steps[peak_step - 1].t_end_s if peak_step else 0.0
    assert spike[1] <= peak_start < spike[2]          # the peak lies in the spike phase
    assert shape.phases()[-1][0] == "cooldown"
    assert shape.phase_at(shape.duration_s - 0.5) == "cooldown"
    # the evening (18:00-23:00) is the spike: 14 hours after 04:00 at 15 s per hour
    assert spike[1:] == (210.0, 285.0)


def test_tidal_shape_is_registered_with_the_load_runner():
    shape = shape_for(tidal_load())
    assert isinstance(shape, LoadShape) and shape.kind == "tidal"
    assert shape == tidal.tidal_shape(tidal_load())


def test_spec_with_shape_tidal_and_no_tidal_section_uses_the_built_in_day():
    spec = LoadSpec(shape="tidal", baseline_users=1, spike_users=10)
    assert shape_for(spec).max_users == 10
    assert tidal.compression_factor(spec) == 86400 / (30 * 60)     # default 30 minutes


def test_compression_factor_is_real_span_over_run_length():
    assert tidal.compression_factor(tidal_load(minutes=12)) == 120.0
    assert tidal.compression_factor(LoadSpec()) == 1.0               # the spike shape


# -- CSVs ---------------------------------------------------------------------------------------
def test_sample_csv_and_example_spec():
    curve = read_traffic_csv(SAMPLE)
    assert (curve.column, len(curve.values), curve.interval_s) == ("rps", 24, 3600.0)
    spec = load_spec(EXAMPLE)
    assert spec.load.shape == "tidal" and spec.load.tidal.compress_to_minutes == 6
    plan = plan_tidal(spec.load)
    assert plan.compression_factor == 240.0 and plan.shape.max_users == spec.load.spike_users
    with_csv = load_spec(EXAMPLE, [f"load.tidal.csv_path={SAMPLE}"])
    plan = plan_tidal(with_csv.load)
    assert [p[0] for p in plan.shape.phases()] == ["baseline", "ramp", "spike", "cooldown"]
    assert plan.shape.max_users == 24 and min(s.users for s in plan.shape.steps) == 2


def test_csv_rps_scaled_affinely_and_latency_only_sets_the_real_peak(tmp_path: Path):
    path = write(tmp_path, hourly(DAY))
    plan = plan_tidal(tidal_load(path, minutes=10), e2e_latency_s=2.0)
    # (v - 2) / (10 - 2) * (24 - 2) + 2, rounded half up
    assert [s.users for s in plan.shape.steps] == [2, 2, 8, 13, 19, 21, 24, 16, 5, 2]
    assert plan.real_peak_users == 20.0                          # 10 rps x 2 s (Little's law)
    other = plan_tidal(tidal_load(path, minutes=10), e2e_latency_s=8.0)
    assert other.shape == plan.shape                             # the latency cancels
    assert plan.compression_factor == 10 * 3600 / 600            # 10 h into 10 min: 60
    assert [s.t_end_s for s in plan.shape.steps] == [60.0 * (i + 1) for i in range(10)]
    names = [s.phase for s in plan.shape.steps]
    # levels 0,0,.25,.5,.75,.875,1,.625,.125,0: baseline while <= .25, spike from first to last >= .5
    assert names == ["baseline"] * 3 + ["spike"] * 5 + ["cooldown"] * 2


def test_csv_users_column_time_of_day_comments_and_bom(tmp_path: Path):
    text = "\ufeff# exported from the gateway\nTimestamp , Users,host\n" + "\n".join(
        f"{h:02d}:00,{v},gw-1" for h, v in enumerate(DAY)) + "\n\n"
    curve = read_traffic_csv(write(tmp_path, text))
    assert curve.column == "users" and curve.values == tuple(float(v) for v in DAY)
    assert curve.rows[0] == 3 and curve.labels[0] == "00:00"
    plan = plan_tidal(tidal_load(write(tmp_path, text, "b.csv"), minutes=10))
    assert plan.real_peak_users == 10.0


def test_csv_unix_seconds_per_minute(tmp_path: Path):
    rows = "\n".join(f"{1741564800 + 60 * i},{v}" for i, v in enumerate(DAY))
    curve = read_traffic_csv(write(tmp_path, "timestamp,rps\n" + rows))
    assert curve.interval_s == 60.0 and curve.span_s == 600.0
    assert tidal.compression_factor(tidal_load(write(tmp_path, "timestamp,rps\n" + rows, "c.csv"), minutes=5)) == 2.0


def test_fine_curve_is_averaged_into_one_second_steps(tmp_path: Path):
    # a day at one minute: 1440 rows into 6 minutes is 0.25 s per row: 4 rows a step
    values = [10 + 90 * max(0.0, 1 - abs(i - 1200) / 200) for i in range(1440)]
    rows = "\n".join(f"{60 * i},{v:.3f}" for i, v in enumerate(values))
    plan = plan_tidal(tidal_load(write(tmp_path, "timestamp,rps\n" + rows), minutes=6, spawn_rate=50))
    assert plan.rows_per_step == 4 and len(plan.shape.steps) == 360
    assert plan.compression_factor == 240.0 and plan.shape.duration_s == 360.0
    assert all(b.t_end_s - a.t_end_s >= 1.0 - 1e-9 for a, b in zip(plan.shape.steps, plan.shape.steps[1:]))
    assert plan.shape.max_users == 24


# -- bad input ----------------------------------------------------------------------------------
BAD = [
    ("missing_column", "timestamp,qps\n00:00,1\n01:00,2\n", "row 1: header must have a timestamp column and an rps "
                                                             "or users column (got 'timestamp', 'qps')"),
    ("no_timestamp", "time,rps\n00:00,1\n01:00,2\n", "row 1: header must have a timestamp column"),
    ("both_columns", "timestamp,rps,users\n00:00,1,1\n01:00,2,2\n", "one of rps or users, not both"),
    ("unsorted", hourly([1, 2, 3, 4]).replace("T03:00", "T01:00"),
     "row 5, column timestamp: '2025-03-10T01:00:00+08:00' is not after the previous row's "
     "'2025-03-10T02:00:00+08:00' (timestamps must be strictly increasing)"),
    ("duplicate_time", "timestamp,rps\n00:00,1\n00:00,2\n", "row 3, column timestamp: '00:00' is not after"),
    ("gap", "timestamp,rps\n00:00,1\n01:00,2\n03:00,3\n", "row 4, column timestamp: 7200s after the previous row "
                                                          "where the curve is every 3600s (a gap)"),
    ("irregular", "timestamp,rps\n00:00,1\n01:00,2\n01:30,3\n", "row 4, column timestamp: 1800s after the previous "
                                                                "row where the curve is every 3600s (an irregular"),
    ("coarser_than_hourly", "timestamp,rps\n00:00,1\n02:00,2\n", "row 3, column timestamp: rows are 7200s apart; "
                                                                 "the curve must be hourly or finer"),
    ("bad_timestamp", "timestamp,rps\n00:00,1\nyesterday,2\n", "row 3, column timestamp: not an ISO 8601 date-time"),
    ("bad_hour", "timestamp,rps\n23:00,1\n24:00,2\n", "row 3, column timestamp: not a time of day ('24:00')"),
    ("mixed_forms", "timestamp,rps\n00:00,1\n2025-03-10T01:00:00,2\n", "row 3, column timestamp: a date-time "
                                                                       "without offset after rows of time of day"),
    ("negative", hourly([1, -3, 2]), "row 3, column rps: must be >= 0 (got -3)"),
    ("not_a_number", hourly([1, "many", 2]), "row 3, column rps: not a number ('many')"),
    ("nan", hourly([1, "nan", 2]), "row 3, column rps: not a finite number ('nan')"),
    ("absurd_rps", hourly([1, 5e9, 2]), "row 3, column rps: absurd value 5e+09 (more than 1e+06 rps"),
    ("absurd_users", hourly([1, 2e8, 2], column="users"), "row 3, column users: absurd value 2e+08"),
    ("short_row", "timestamp,rps\n00:00,1\n01:00\n", "row 3: 1 fields, the header has 2"),
    ("empty", "", "file is empty"),
    ("blank", "\n  \n", "file is empty"),
    ("header_only", "timestamp,rps\n", "0 data row(s); a curve needs at least 2"),
    ("one_row", "timestamp,rps\n00:00,4\n", "1 data row(s); a curve needs at least 2"),
    ("flat", hourly([5, 5, 5]), "the curve is flat (rps 5 in every row)"),
    ("ends_high", hourly([1, 2, 5, 9, 10]), "the curve ends high (100% of its range at row 6 "
                                            "('2025-03-10T04:00:00+08:00')); a tidal run needs a final trough"),
]


@pytest.mark.parametrize("name,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_csv_is_one_line_naming_file_row_and_column(tmp_path: Path, name: str, text: str, expected: str):
    path = write(tmp_path, text, f"{name}.csv")
    with pytest.raises(SpecError) as info:
        plan_tidal(tidal_load(path))
    message = info.value.one_line()
    assert message == str(info.value), "the message must already be one line"
    assert message.startswith(f"traffic CSV {path} (load.tidal.csv_path): "), message
    assert expected in message, message
    assert info.value.exit_code == 2


def test_missing_file_and_not_utf8(tmp_path: Path):
    with pytest.raises(SpecError, match=r"traffic CSV .*nope.csv \(load.tidal.csv_path\): cannot read"):
        plan_tidal(tidal_load(tmp_path / "nope.csv"))
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"timestamp,rps\n00:00,1\n01:00,\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        read_traffic_csv(path)


def test_huge_file_refused_quickly_without_reading_it_all(tmp_path: Path):
    path = tmp_path / "huge.csv"
    line = b"2025-03-10T00:00:00+08:00,1\n"
    with open(path, "wb") as fh:
        fh.write(b"timestamp,rps\n")
        fh.write(line * (64 * 1024 * 1024 // len(line)))         # 64 MiB
    start = time.monotonic()
    with pytest.raises(SpecError) as info:
        plan_tidal(tidal_load(path))
    assert time.monotonic() - start < 1.0
    assert info.value.one_line() == (f"traffic CSV {path} (load.tidal.csv_path): file too large (more than "
                                     f"{tidal.MAX_CSV_BYTES} bytes; at most {tidal.MAX_CSV_ROWS} rows, hourly or finer)")


def test_too_many_rows_refused(tmp_path: Path):
    rows = "\n".join(f"{i},1" for i in range(tidal.MAX_CSV_ROWS + 1))
    with pytest.raises(SpecError, match=rf"{tidal.MAX_CSV_ROWS + 1} data rows \(at most {tidal.MAX_CSV_ROWS}\)"):
        read_traffic_csv(write(tmp_path, "timestamp,rps\n" + rows))


def test_compression_needing_more_users_than_the_generator_holds_is_refused():
    with pytest.raises(SpecError) as info:
        plan_tidal(tidal_load(spike_users=1000, spawn_rate=500, workers=0))
    assert ("the tidal shape needs 1000 concurrent users, more than 1 generator process(es) hold (400 each); "
            "set load.workers to at least 3") in info.value.one_line()
    assert plan_tidal(tidal_load(spike_users=1000, spawn_rate=500, workers=3)).shape.max_users == 1000


def test_ramp_faster_than_spawn_rate_is_refused_with_the_figure_needed():
    # built-in day, 6 min: 17:00 -> 18:00 goes 12 -> 18 users in 15 s = 0.4 users/s
    with pytest.raises(SpecError) as info:
        plan_tidal(tidal_load(spawn_rate=0.2))
    message = info.value.one_line()
    assert message.startswith("load.tidal: compressing 24.0 h into 6 min (factor 240) needs "), message
    assert "more than load.spawn_rate 0.2; raise load.spawn_rate to " in message
    assert "or load.tidal.compress_to_minutes to " in message
    need = float(message.split("raise load.spawn_rate to ")[1].split(" ")[0])
    minutes = float(message.rsplit(" ", 1)[1])
    assert plan_tidal(tidal_load(spawn_rate=need)).shape.max_users == 24
    assert plan_tidal(tidal_load(spawn_rate=0.2, minutes=minutes)).shape.max_users == 24


def test_spike_not_above_baseline_is_refused():
    with pytest.raises(SpecError, match=r"load.spike_users: must be > load.baseline_users for the tidal shape"):
        plan_tidal(tidal_load(baseline_users=24, spike_users=24))


def test_traffic_time_maps_run_seconds_onto_the_replayed_day(tmp_path: Path):
    built_in = plan_tidal(tidal_load())                          # 04:00 start, factor 240
    assert [built_in.traffic_time(s) for s in (0, 15, 232.5, 359, 400)] == [
        "04:00", "05:00", "19:30", "03:56 +1d", "06:40 +1d"]
    dated = plan_tidal(tidal_load(SAMPLE))                       # 2025-03-10T04:00:00+08:00, factor 240
    assert dated.traffic_time(225) == "2025-03-10T19:00+08:00"
    assert dated.traffic_time(-3) == "2025-03-10T04:00+08:00"    # before the load: its start
    naive = write(tmp_path, "timestamp,users\n" + "\n".join(
        f"2025-03-10T{h:02d}:00:00,{v}" for h, v in enumerate(DAY)) + "\n")
    assert plan_tidal(tidal_load(naive, minutes=1)).traffic_time(30) == "2025-03-10T05:00"
    unix = write(tmp_path, "timestamp,rps\n" + "\n".join(f"{1000 + 60 * i},{v}" for i, v in enumerate(DAY)) + "\n",
                 "unix.csv")
    assert plan_tidal(tidal_load(unix, minutes=1, spawn_rate=50)).traffic_time(30) == "1300"
