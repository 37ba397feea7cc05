"""tidal: a day of traffic (the user's CSV, or a built-in diurnal profile) as a load shape.

``load.shape: tidal`` replays a traffic curve in compressed time: ``tidal_shape`` builds the
``LoadShape`` (``tasks.shapes``) that ``tasks.load.shape_for`` picks for it.

The curve
    ``load.tidal.csv_path``: a CSV with a ``timestamp`` column and exactly one of ``rps``
    (requests per second) or ``users`` (concurrent users), one row per interval, hourly or
    finer, at a constant interval (no gaps), strictly increasing. Each row stands for the
    interval that starts at its timestamp, so 24 hourly rows span 24 h. Timestamps are ISO 8601
    date-times (``2025-03-10T08:00:00+08:00``; all with an offset or all without), times of day
    (``08:00``, ``08:00:30``; within one day, no wrap past midnight), or seconds (unix time or an
    offset). Other columns are ignored; blank lines and lines starting with ``#`` are skipped.
    Relative paths are relative to the working directory. Start the CSV at the day's quietest
    hour: the run then starts in the trough and ends in the next night's trough, which is its
    cool-down (``examples/traffic/diurnal-sample.csv`` runs 04:00 to 03:00). Without a CSV the
    built-in diurnal profile (``DIURNAL_PROFILE``) is used: 24 hourly values starting at 04:00,
    so the run starts in the night trough, ramps up in the morning, peaks in the evening and
    ends in the next night's trough.

Time compression
    The curve's real span (rows x interval) is compressed into ``load.tidal.compress_to_minutes``:
    ``compression_factor = real_span_s / run_s``; one run second stands for that many real
    seconds. Each row becomes one step of ``interval / factor`` run seconds; when that is
    shorter than ``MIN_STEP_S`` (Locust's shape worker ticks once a second), consecutive rows
    are averaged into steps of at least that length.

Scaling
    Users are an affine map of the curve: the lowest step gets ``load.baseline_users``, the
    highest ``load.spike_users`` (so the shape's peak is exactly ``spike_users``). An ``rps``
    column is read as concurrency by Little's law, ``users = rps x e2e_latency_s``, with the mean
    end-to-end latency assumed constant over the day (``DEFAULT_E2E_LATENCY_S``, a parameter of
    :func:`plan_tidal`): the users of a closed-loop generator without think time that carry
    that rate. Under that assumption users are proportional to rps and the affine scaling
    makes the latency cancel: it only sets ``TidalPlan.real_peak_users``, the concurrency the
    real peak stands for, never the generated shape.

Open-loop arrivals (``load.arrival`` poisson, gamma, constant)
    The steps are rates in requests/s (``Step.rate``), never users: with ``load.spike_rps`` the
    curve is mapped affinely (the lowest step gets ``load.baseline_rps`` or 0, the highest
    ``spike_rps``); without it an ``rps`` column is replayed as written (its real rates, in
    compressed time). A ``users`` CSV with an open arrival is refused (``load.arrival``); the
    built-in profile (relative values) needs ``load.spike_rps``. Rate changes are immediate, so
    ``load.spawn_rate`` does not bound them.

Phases (what the verify stage keys on), with ``level = (users - baseline) / (spike - baseline)``:
    ``baseline``  the leading steps at level <= ``BASELINE_LEVEL`` (the night trough; may be empty)
    ``ramp``      the rest before the spike (the morning ramp and the day; may be empty)
    ``spike``     from the first to the last step at level >= ``SPIKE_LEVEL``: contains the peak,
                  and its start is the spike start that time-to-scale figures count from
    ``cooldown``  everything after: the decline into the final trough, where spill-back is
                  watched. A curve that does not fall below ``SPIKE_LEVEL`` after its last high
                  step is refused, since it has no trough to watch spill-back in.

Bad input is refused before anything runs with one ``SpecError`` line naming the file, the row
(the line number in the file, as a spreadsheet counts rows: the header is row 1) and the
column: missing columns, unparseable or non-increasing timestamps, gaps or an irregular
interval, an interval coarser than hourly, negative, non-finite or absurd values, a flat
curve, an empty or oversized file. A shape that needs more concurrent users than the
generator processes hold, or a faster ramp than ``load.spawn_rate`` at this compression, is
refused with the figure it would need.

Example::

    plan = plan_tidal(LoadSpec(shape="tidal", baseline_users=2, spike_users=24,
                               tidal=TidalSpec(compress_to_minutes=6)))
    plan.compression_factor            # 240.0: one run second = four real minutes
    plan.shape.max_users               # 24
    [p[0] for p in plan.shape.phases()] # ['baseline', 'ramp', 'spike', 'cooldown']
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import SpecError
from tasks.shapes import LoadShape, Step, check_capacity
from tasks.spec import LoadSpec, TidalSpec

MAX_CSV_BYTES = 8 * 1024 * 1024
MAX_CSV_ROWS = 100_000           # a day at one-second resolution fits
MAX_INTERVAL_S = 3600.0          # hourly or finer
MAX_SPAN_S = 31 * 86_400.0
INTERVAL_TOLERANCE = 0.01        # a row may be 1 % early or late against the interval
MAX_RPS = 1_000_000.0            # above this a value is taken for a unit or export error
MAX_USERS_VALUE = 10_000_000.0
MIN_STEP_S = 1.0                 # Locust's shape worker ticks once a second
DEFAULT_E2E_LATENCY_S = 4.0      # ~128 output tokens at ~30 ms/token: the rps -> users assumption
BASELINE_LEVEL = 0.25
SPIKE_LEVEL = 0.5

BUILT_IN = "built-in diurnal profile"
# Relative traffic per hour, starting at 04:00 (the night's lowest hour): trough, morning ramp
# (06-09), a day plateau with a lunch dip, the evening peak (18-22), the decline into the night.
DIURNAL_START_HOUR = 4
DIURNAL_PROFILE: tuple[float, ...] = (
    0.05, 0.08, 0.15, 0.28,          # 04 05 06 07
    0.40, 0.45, 0.45, 0.46,          # 08 09 10 11
    0.42, 0.44, 0.46, 0.45,          # 12 13 14 15
    0.44, 0.48, 0.75, 0.92,          # 16 17 18 19
    1.00, 0.95, 0.70, 0.35,          # 20 21 22 23
    0.20, 0.12, 0.08, 0.06,          # 00 01 02 03
)

_TIME_OF_DAY = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class TrafficCurve:
    """A traffic curve at a constant interval: ``values[i]`` holds over
    ``[i * interval_s, (i + 1) * interval_s)`` real seconds from the first row."""

    source: str
    column: str                     # "rps" | "users"
    values: tuple[float, ...]
    labels: tuple[str, ...]         # the row's timestamp as written (or hh:mm for the built-in)
    rows: tuple[int, ...]           # line numbers in the file (0 for the built-in)
    interval_s: float

    @property
    def span_s(self) -> float:
        return len(self.values) * self.interval_s


@dataclass(frozen=True)
class TidalPlan:
    """The tidal shape and how it was derived from the curve."""

    curve: TrafficCurve
    shape: LoadShape
    run_s: float
    compression_factor: float       # real seconds per run second
    rows_per_step: int
    e2e_latency_s: float
    real_peak_users: float          # the concurrency the real peak stands for (Little's law for rps)

    def traffic_time(self, run_offset_s: float) -> str:
        """The time on the replayed curve ``run_offset_s`` run seconds after the load started,
        written as the CSV writes its timestamps (``19:40``, ``2025-03-10T19:40:00+08:00``, or
        seconds); a time of day past midnight gets ``+1d``."""
        real = max(0.0, float(run_offset_s)) * self.compression_factor
        kind, first = _parse_time(self.curve.labels[0])
        at = first + real
        if kind == "time of day":
            days, rest = divmod(int(at), 86_400)
            text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}"
            return text + (f" +{days}d" if days else "")
        if kind == "seconds":
            return f"{at:.0f}"
        if kind == "date-time with offset":
            zone = dt.datetime.fromisoformat(self.curve.labels[0]).tzinfo
            return dt.datetime.fromtimestamp(at, zone).isoformat(timespec="minutes")
        return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=at)).isoformat(timespec="minutes")

    def describe(self) -> str:
        span_h = self.curve.span_s / 3600.0
        phases = ", ".join(f"{name} {a:.0f}-{b:.0f}s" for name, a, b in self.shape.phases())
        if self.shape.open_loop:
            level = (f"{min(float(s.rate or 0) for s in self.shape.steps):g}-{self.shape.max_rate:g} "
                     f"requests/s (open loop)")
        else:
            level = f"{min(s.users for s in self.shape.steps)}-{self.shape.max_users} users"
        return (f"tidal: {self.curve.source} ({len(self.curve.values)} rows of {self.curve.column} every "
                f"{self.curve.interval_s:g}s, {span_h:.1f} h) compressed into {self.run_s / 60:g} min "
                f"(factor {self.compression_factor:.1f}); {len(self.shape.steps)} steps, {level}; {phases}")


# -- reading the curve --------------------------------------------------------------------------
def diurnal_curve() -> TrafficCurve:
    """The built-in day: ``DIURNAL_PROFILE`` as relative users, hourly from 04:00."""
    n = len(DIURNAL_PROFILE)
    labels = tuple(f"{(DIURNAL_START_HOUR + i) % 24:02d}:00" for i in range(n))
    return TrafficCurve(BUILT_IN, "users", DIURNAL_PROFILE, labels, (0,) * n, 3600.0)


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _parse_time(text: str) -> tuple[str, float]:
    """(kind, seconds): kind tells forms apart, which must not be mixed in one file."""
    m = _TIME_OF_DAY.match(text)
    if m:
        h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if h > 23 or mi > 59 or s > 59:
            raise ValueError(f"not a time of day ({_show(text)})")
        return "time of day", h * 3600 + mi * 60 + s + float(m.group(4) or 0)
    if _NUMBER.match(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"not a finite number of seconds ({_show(text)})")
        return "seconds", value
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date-time, time of day or number of seconds ({_show(text)})") from None
    if stamp.tzinfo is None:
        return "date-time without offset", (stamp - dt.datetime(1970, 1, 1)).total_seconds()
    return "date-time with offset", stamp.timestamp()


def read_traffic_csv(path: str | Path) -> TrafficCurve:
    """Read and check a traffic CSV (module docstring); ``SpecError`` naming file, row and column."""
    source = str(path)
    where = f"traffic CSV {source} (load.tidal.csv_path)"
    try:
        with open(Path(path).expanduser(), "rb") as fh:
            blob = fh.read(MAX_CSV_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(blob) > MAX_CSV_BYTES:
        raise SpecError(f"{where}: file too large (more than {MAX_CSV_BYTES} bytes; at most "
                        f"{MAX_CSV_ROWS} rows, hourly or finer)")
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise SpecError(f"{where}: file is empty (expected a header timestamp,rps or timestamp,users "
                        f"and one row per interval)")

    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines())
             if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) - 1 > MAX_CSV_ROWS:
        raise SpecError(f"{where}: {len(lines) - 1} data rows (at most {MAX_CSV_ROWS})")
    try:
        parsed = list(csv.reader([ln for _, ln in lines]))
    except csv.Error as exc:
        raise SpecError(f"{where}: not valid CSV ({exc})") from None
    header_row, header = lines[0][0], [h.strip().lower() for h in parsed[0]]
    values_col = [c for c in ("rps", "users") if c in header]
    if "timestamp" not in header or len(values_col) != 1:
        got = ", ".join(_show(h, 24) for h in header[:8]) or "nothing"
        need = ("one of rps or users, not both" if len(values_col) == 2
                else "a timestamp column and an rps or users column")
        raise SpecError(f"{where}: row {header_row}: header must have {need} (got {got})")
    column = values_col[0]
    t_idx, v_idx = header.index("timestamp"), header.index(column)
    if len(parsed) < 3:
        raise SpecError(f"{where}: {len(parsed) - 1} data row(s); a curve needs at least 2")

    limit = MAX_RPS if column == "rps" else MAX_USERS_VALUE
    times: list[float] = []
    values: list[float] = []
    labels: list[str] = []
    rows: list[int] = []
    kind0: str | None = None
    interval: float | None = None
    for (row, _), fields in zip(lines[1:], parsed[1:]):
        if len(fields) != len(header):
            raise SpecError(f"{where}: row {row}: {len(fields)} fields, the header has {len(header)}")
        raw_t, raw_v = fields[t_idx].strip(), fields[v_idx].strip()
        try:
            kind, t = _parse_time(raw_t)
        except ValueError as exc:
            raise SpecError(f"{where}: row {row}, column timestamp: {exc}") from None
        if kind0 is None:
            kind0 = kind
        elif kind != kind0:
            raise SpecError(f"{where}: row {row}, column timestamp: a {kind} after rows of {kind0} "
                            f"({_show(raw_t)}); use one form throughout")
        if times:
            step = t - times[-1]
            if step <= 0:
                raise SpecError(f"{where}: row {row}, column timestamp: {_show(raw_t)} is not after the "
                                f"previous row's {_show(labels[-1])} (timestamps must be strictly "
                                f"increasing)")
            if interval is None:
                if step > MAX_INTERVAL_S * (1 + INTERVAL_TOLERANCE):
                    raise SpecError(f"{where}: row {row}, column timestamp: rows are {step:g}s apart; "
                                    f"the curve must be hourly or finer (at most {MAX_INTERVAL_S:g}s)")
                interval = step
            elif abs(step - interval) > interval * INTERVAL_TOLERANCE:
                what = "a gap" if step > interval else "an irregular interval"
                raise SpecError(f"{where}: row {row}, column timestamp: {step:g}s after the previous row "
                                f"where the curve is every {interval:g}s ({what})")
        try:
            value = float(raw_v)
        except ValueError:
            raise SpecError(f"{where}: row {row}, column {column}: not a number ({_show(raw_v)})") from None
        if not math.isfinite(value):
            raise SpecError(f"{where}: row {row}, column {column}: not a finite number ({_show(raw_v)})")
        if value < 0:
            raise SpecError(f"{where}: row {row}, column {column}: must be >= 0 (got {value:g})")
        if value > limit:
            raise SpecError(f"{where}: row {row}, column {column}: absurd value {value:g} (more than "
                            f"{limit:g} {column}; a unit or export error?)")
        times.append(t)
        values.append(value)
        labels.append(raw_t)
        rows.append(row)
    assert interval is not None
    span = len(values) * interval
    if span > MAX_SPAN_S:
        raise SpecError(f"{where}: the curve spans {span / 86400:.1f} days (at most {MAX_SPAN_S / 86400:g})")
    if max(values) == min(values):
        raise SpecError(f"{where}: the curve is flat ({column} {values[0]:g} in every row); nothing to replay")
    return TrafficCurve(source, column, tuple(values), tuple(labels), tuple(rows), float(interval))


# -- the shape ----------------------------------------------------------------------------------
def _phase_names(levels: list[float]) -> list[str]:
    high = [i for i, lv in enumerate(levels) if lv >= SPIKE_LEVEL - 1e-9]
    first, last = high[0], high[-1]
    names: list[str] = []
    leading = True
    for i, lv in enumerate(levels):
        if i < first:
            leading = leading and lv <= BASELINE_LEVEL + 1e-9
            names.append("baseline" if leading else "ramp")
        elif i <= last:
            names.append("spike")
        else:
            names.append("cooldown")
    return names


def plan_tidal(load: LoadSpec, *, e2e_latency_s: float = DEFAULT_E2E_LATENCY_S) -> TidalPlan:
    """The tidal shape for ``load`` and the figures it rests on (module docstring).

    Raises ``SpecError`` (one line) for a bad CSV, a spike not above the baseline, a curve
    without a final trough, a ramp faster than ``load.spawn_rate`` allows, or more users than
    the generator processes hold.
    """
    tidal = load.tidal or TidalSpec()
    if not load.open_loop and load.spike_users <= load.baseline_users:
        raise SpecError(f"load.spike_users: must be > load.baseline_users for the tidal shape "
                        f"({load.spike_users} <= {load.baseline_users})")
    if not (math.isfinite(e2e_latency_s) and e2e_latency_s > 0):
        raise SpecError(f"tidal: e2e_latency_s must be > 0 (got {e2e_latency_s!r})")
    curve = read_traffic_csv(tidal.csv_path) if tidal.csv_path else diurnal_curve()
    where = f"traffic CSV {curve.source} (load.tidal.csv_path)" if tidal.csv_path else curve.source
    if load.open_loop and tidal.csv_path and curve.column == "users":
        raise SpecError(f"load.arrival: {load.arrival} (open loop) replays a rate, but {where} has a users "
                        f"column; use arrival: closed for a users curve, or a CSV with an rps column")
    if load.open_loop and curve.column == "users" and load.spike_rps is None:
        raise SpecError(f"load.spike_rps: is required with arrival {load.arrival} and the {curve.source} "
                        f"(its values are relative): the peak rate in requests/s")
    run_s = float(tidal.compress_to_minutes) * 60.0
    factor = curve.span_s / run_s
    n = len(curve.values)
    row_s = run_s / n
    per = max(1, math.ceil(MIN_STEP_S / row_s - 1e-9))
    groups = [list(range(i, min(i + per, n))) for i in range(0, n, per)]
    if len(groups) > 1 and len(groups[-1]) * row_s < MIN_STEP_S - 1e-9:
        groups[-2].extend(groups.pop())  # a last partial step Locust's tick could miss
    means = [sum(curve.values[i] for i in g) / len(g) for g in groups]
    lo, hi = min(means), max(means)
    if hi == lo:
        raise SpecError(f"{where}: the curve is flat once averaged into {MIN_STEP_S:g}s steps at this "
                        f"compression; raise load.tidal.compress_to_minutes")
    levels = [(m - lo) / (hi - lo) for m in means]
    if levels[-1] >= SPIKE_LEVEL - 1e-9:
        row = curve.rows[groups[-1][-1]]
        at = f"row {row} ({_show(curve.labels[groups[-1][-1]])})" if row else curve.labels[groups[-1][-1]]
        raise SpecError(f"{where}: the curve ends high ({levels[-1]:.0%} of its range at {at}); a tidal run "
                        f"needs a final trough below {SPIKE_LEVEL:.0%} to watch spill-back in: end the "
                        f"curve in a quieter hour")
    names = _phase_names(levels)
    t_ends = [(g[-1] + 1) * row_s for g in groups]
    t_ends[-1] = run_s
    if load.open_loop:
        return _rate_plan(load, curve, means, levels, names, t_ends, run_s, factor, per, e2e_latency_s)
    base, peak = int(load.baseline_users), int(load.spike_users)
    users = [int(math.floor(base + lv * (peak - base) + 0.5)) for lv in levels]
    rate = float(load.spawn_rate)
    worst: tuple[float, int] | None = None
    for k in range(1, len(groups)):
        step_s = t_ends[k] - t_ends[k - 1]
        need = abs(users[k] - users[k - 1]) / step_s
        if need > rate + 1e-9 and (worst is None or need > worst[0]):
            worst = (need, k)
    if worst is not None:
        need, k = worst
        step_s = t_ends[k] - t_ends[k - 1]
        minutes = tidal.compress_to_minutes * abs(users[k] - users[k - 1]) / rate / step_s
        a, b = curve.labels[groups[k - 1][0]], curve.labels[groups[k][0]]
        raise SpecError(f"load.tidal: compressing {curve.span_s / 3600:.1f} h into "
                        f"{tidal.compress_to_minutes:g} min (factor {factor:.0f}) needs "
                        f"{need:.2f} users/s from {a} to {b} ({users[k - 1]} -> {users[k]} users in "
                        f"{step_s:.1f}s), more than load.spawn_rate {rate:g}; raise load.spawn_rate to "
                        f"{math.ceil(need * 100) / 100:g} or load.tidal.compress_to_minutes to "
                        f"{math.ceil(minutes * 10) / 10:g}")
    steps = tuple(Step(t_ends[k], users[k], rate, names[k]) for k in range(len(groups)))
    shape = LoadShape("tidal", steps)
    check_capacity(shape, load.workers)
    scale = e2e_latency_s if curve.column == "rps" else 1.0
    return TidalPlan(curve=curve, shape=shape, run_s=run_s, compression_factor=factor, rows_per_step=per,
                     e2e_latency_s=float(e2e_latency_s), real_peak_users=max(curve.values) * scale)


def _rate_plan(load: LoadSpec, curve: TrafficCurve, means: list[float], levels: list[float], names: list[str],
               t_ends: list[float], run_s: float, factor: float, per: int, e2e_latency_s: float) -> TidalPlan:
    """The open-loop tidal plan: every step a rate in requests/s. With ``load.spike_rps`` the curve
    is mapped affinely (lowest step -> ``load.baseline_rps`` or 0, highest -> ``spike_rps``);
    without it an ``rps`` column is replayed as written (the real rates, never users)."""
    if load.spike_rps is not None:
        base, peak = float(load.baseline_rps or 0.0), float(load.spike_rps)
        rates = [base + lv * (peak - base) for lv in levels]
    else:
        rates = [float(m) for m in means]
    spawn = float(load.spawn_rate)
    steps = tuple(Step(t_ends[k], 0, spawn, names[k], round(rates[k], 6), round(rates[k], 6))
                  for k in range(len(t_ends)))
    shape = LoadShape("tidal", steps)
    check_capacity(shape, load.workers)
    scale = e2e_latency_s if curve.column == "rps" else 1.0
    return TidalPlan(curve=curve, shape=shape, run_s=run_s, compression_factor=factor, rows_per_step=per,
                     e2e_latency_s=float(e2e_latency_s), real_peak_users=max(curve.values) * scale)


def tidal_shape(load: LoadSpec) -> LoadShape:
    """The ``load.shape: tidal`` builder registered with ``tasks.load``."""
    return plan_tidal(load).shape


def compression_factor(load: LoadSpec) -> float:
    """Real seconds per run second: 1.0 for the spike shape, ``real_span_s / run_s`` for tidal."""
    if load.shape != "tidal":
        return 1.0
    return plan_tidal(load).compression_factor


__all__ = [
    "BASELINE_LEVEL", "DEFAULT_E2E_LATENCY_S", "DIURNAL_PROFILE", "MAX_CSV_BYTES", "MAX_CSV_ROWS",
    "SPIKE_LEVEL", "TidalPlan", "TrafficCurve", "compression_factor", "diurnal_curve", "plan_tidal",
    "read_traffic_csv", "tidal_shape",
]
