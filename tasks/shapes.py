"""Load shapes: what the generator should do over time, as a table of steps.

A ``LoadShape`` is a table of steps ``(t_end_s, users, spawn_rate, phase)``: from the end of the
previous step until ``t_end_s`` seconds into the run, hold ``users`` concurrent users (reached at
``spawn_rate`` users/s). ``spike_shape`` builds ``baseline -> spike -> hold -> cooldown`` from the
spec; ``tasks.tidal`` builds the tidal one; ``tasks.load.shape_for`` picks by ``load.shape``.
``check_capacity`` refuses a shape the generator cannot drive, before anything runs.

Open-loop arrivals (``load.arrival`` poisson, gamma, constant) use the same table with a *rate*
instead of users: every step also carries ``rate`` (requests/s at its end) and ``rate_from``
(requests/s at its start; the rate is linear in between, so a ramp is one step), and ``users``
is 0. Such a shape is ``open_loop``; ``rate_at`` and ``nominal_requests`` (the integral of the
rate) read it, and ``rate_table`` is what the generator is given. The phases are the same names
as for users (the spike shape's ramp is the first step of its ``spike`` phase), so verify and
the report read both kinds alike.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from tasks.errors import SpecError
from tasks.spec import LoadSpec

MAX_STEPS = 100_000
# Concurrent users one generator process is trusted with. tests/bench/load.py measured about
# 25 us of generator CPU per streamed token (200 streams, 8.9k tokens/s: 23 % of a core), so
# 400 users at ~50 tokens/s each keep a process near half a core, where its own timestamp lag
# stays small; shapes above it need load.workers.
MAX_USERS_PER_PROCESS = 400
# Open-loop requests/s one generator process is trusted with; above it a shape needs
# load.workers. Measured 2026-12-06 against the zero-latency emulator, streamed, 16 tokens per
# request: 600/s took 39 % of a core (about 0.65 ms of CPU per request) with schedule delay p50
# 0.7 ms, so 1500/s is about one core: beyond it one process cannot keep the schedule whatever
# the responses. Below it the run checks itself (summary.generator.behind: CPU, schedule delay).
MAX_RPS_PER_PROCESS = 1500.0


@dataclass(frozen=True)
class Step:
    """Hold ``users`` concurrent users (reached at ``spawn_rate`` users/s) until ``t_end_s``; for
    open-loop arrivals send at ``rate`` requests/s instead (linear from ``rate_from`` at the
    step's start; None: constant ``rate``)."""

    t_end_s: float
    users: int
    spawn_rate: float
    phase: str
    rate: float | None = None
    rate_from: float | None = None


@dataclass(frozen=True)
class LoadShape:
    """A load profile as a table of steps; the spike and tidal shapes are both one.

    >>> s = LoadShape("spike", (Step(3, 2, 10, "baseline"), Step(9, 10, 10, "spike")))
    >>> s.users_at(0.0), s.users_at(3.0), s.users_at(9.0)
    ((2, 10.0), (10, 10.0), None)
    >>> s.phases()
    [('baseline', 0.0, 3.0), ('spike', 3.0, 9.0)]
    """

    kind: str
    steps: tuple[Step, ...]
    _t_ends: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps:
            raise SpecError(f"load shape {self.kind!r}: has no steps")
        if len(steps) > MAX_STEPS:
            raise SpecError(f"load shape {self.kind!r}: {len(steps)} steps (at most {MAX_STEPS})")
        prev = 0.0
        for i, st in enumerate(steps):
            if not (math.isfinite(st.t_end_s) and st.t_end_s > prev):
                raise SpecError(f"load shape {self.kind!r}: step {i}: t_end_s must be finite and after "
                                f"the previous step's end ({st.t_end_s!r} <= {prev!r})")
            if not isinstance(st.users, int) or st.users < 0:
                raise SpecError(f"load shape {self.kind!r}: step {i}: users must be an integer >= 0 "
                                f"(got {st.users!r})")
            if not (math.isfinite(st.spawn_rate) and st.spawn_rate > 0):
                raise SpecError(f"load shape {self.kind!r}: step {i}: spawn_rate must be > 0 "
                                f"(got {st.spawn_rate!r})")
            if not st.phase:
                raise SpecError(f"load shape {self.kind!r}: step {i}: phase must be a name")
            if (st.rate is None) != (steps[0].rate is None):
                raise SpecError(f"load shape {self.kind!r}: step {i}: every step or none has a rate")
            for what, value in (("rate", st.rate), ("rate_from", st.rate_from)):
                if value is not None and not (math.isfinite(value) and value >= 0):
                    raise SpecError(f"load shape {self.kind!r}: step {i}: {what} must be >= 0 (got {value!r})")
            prev = st.t_end_s
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "_t_ends", tuple(float(s.t_end_s) for s in steps))

    @property
    def duration_s(self) -> float:
        return self._t_ends[-1]

    @property
    def max_users(self) -> int:
        return max(s.users for s in self.steps)

    @property
    def open_loop(self) -> bool:
        """The steps carry request rates (open-loop arrivals), not users."""
        return self.steps[0].rate is not None

    @property
    def max_rate(self) -> float:
        """The highest rate of the shape in requests/s (0 for a users shape)."""
        if not self.open_loop:
            return 0.0
        return max(max(float(s.rate or 0), float(s.rate if s.rate_from is None else s.rate_from))
                   for s in self.steps)

    def rate_at(self, t: float) -> float | None:
        """Requests/s at ``t`` s into the run (None once the shape is over or it has no rates)."""
        i = self.step_index(t)
        if i is None or not self.open_loop:
            return None
        st = self.steps[i]
        a = 0.0 if i == 0 else self._t_ends[i - 1]
        r0 = float(st.rate if st.rate_from is None else st.rate_from)
        frac = min(1.0, max(0.0, (t - a) / (st.t_end_s - a)))
        return r0 + (float(st.rate or 0) - r0) * frac

    def nominal_requests(self, until_s: float | None = None) -> float:
        """The integral of the rate from 0 to ``until_s`` (default: the whole shape)."""
        if not self.open_loop:
            return 0.0
        end = self.duration_s if until_s is None else min(float(until_s), self.duration_s)
        total, a = 0.0, 0.0
        for st in self.steps:
            if a >= end:
                break
            b = min(float(st.t_end_s), end)
            r0 = float(st.rate if st.rate_from is None else st.rate_from)
            slope = (float(st.rate or 0) - r0) / (st.t_end_s - a)
            total += r0 * (b - a) + slope * (b - a) ** 2 / 2
            a = float(st.t_end_s)
        return total

    def rate_table(self) -> list[list[Any]]:
        """The rates as JSON-ready rows ``[t_end_s, rate_from, rate, phase]`` (open loop only)."""
        return [[float(s.t_end_s), float(s.rate if s.rate_from is None else s.rate_from), float(s.rate or 0),
                 s.phase] for s in self.steps]

    def step_index(self, t: float) -> int | None:
        """The step covering ``t`` s into the run: ``[previous t_end, t_end)``; None after the end."""
        if t < 0:
            return 0
        i = bisect.bisect_right(self._t_ends, t)
        return i if i < len(self._t_ends) else None

    def users_at(self, t: float) -> tuple[int, float] | None:
        """(users, spawn_rate) at ``t`` s into the run, None once the shape is over."""
        i = self.step_index(t)
        if i is None:
            return None
        return self.steps[i].users, float(self.steps[i].spawn_rate)

    def phase_at(self, t: float) -> str:
        """The phase at ``t`` (before the start: the first; after the end: the last)."""
        i = self.step_index(t)
        return self.steps[-1 if i is None else i].phase

    def phases(self) -> list[tuple[str, float, float]]:
        """(name, start_s, end_s) of every phase; consecutive steps of one phase are merged."""
        out: list[tuple[str, float, float]] = []
        start = 0.0
        for st in self.steps:
            if out and out[-1][0] == st.phase:
                out[-1] = (st.phase, out[-1][1], float(st.t_end_s))
            else:
                out.append((st.phase, start, float(st.t_end_s)))
            start = float(st.t_end_s)
        return out

    def table(self) -> list[list[Any]]:
        """The steps as JSON-ready rows ``[t_end_s, users, spawn_rate, phase]``."""
        return [[float(s.t_end_s), int(s.users), float(s.spawn_rate), s.phase] for s in self.steps]


def spike_shape(load: LoadSpec) -> LoadShape:
    """``baseline -> spike -> hold -> cooldown`` from the spec; zero-length phases are left out.

    Cool-down holds ``baseline_users`` (see the module docstring for why not zero). With an
    open-loop arrival the steps are rates (``rate_spike_shape``).
    """
    if load.open_loop:
        return rate_spike_shape(load)
    rate = float(load.spawn_rate)
    steps: list[Step] = []
    t = 0.0
    for phase, seconds, users in (("baseline", load.baseline_s, load.baseline_users),
                                  ("spike", load.spike_s, load.spike_users),
                                  ("hold", load.hold_s, load.spike_users),
                                  ("cooldown", load.cooldown_s, load.baseline_users)):
        if seconds > 0:
            t += float(seconds)
            steps.append(Step(t, int(users), rate, phase))
    return LoadShape("spike", tuple(steps))


def rate_spike_shape(load: LoadSpec) -> LoadShape:
    """The spike shape as a rate: baseline_s at baseline_rps, spike_s at spike_rps (reached by a
    linear ramp from baseline_rps over its first ramp_s, part of the ``spike`` phase), hold_s at
    spike_rps, cooldown_s at baseline_rps; zero-length phases are left out.

    >>> s = rate_spike_shape(LoadSpec(arrival="poisson", baseline_rps=2, spike_rps=10, ramp_s=2,
    ...                               baseline_s=3, spike_s=6, hold_s=0, cooldown_s=3))
    >>> s.rate_table()
    [[3.0, 2.0, 2.0, 'baseline'], [5.0, 2.0, 10.0, 'spike'], [9.0, 10.0, 10.0, 'spike'], [12.0, 2.0, 2.0, 'cooldown']]
    >>> s.nominal_requests()
    64.0
    """
    if load.spike_rps is None or load.baseline_rps is None:
        raise SpecError(f"load.spike_rps: is required with arrival {load.arrival} (open loop)")
    base, peak = float(load.baseline_rps), float(load.spike_rps)
    spawn = float(load.spawn_rate)
    steps: list[Step] = []
    t = 0.0
    if load.baseline_s > 0:
        t += float(load.baseline_s)
        steps.append(Step(t, 0, spawn, "baseline", base, base))
    ramp = min(float(load.ramp_s), float(load.spike_s))
    if ramp > 0:
        t += ramp
        steps.append(Step(t, 0, spawn, "spike", peak, base))
    if load.spike_s - ramp > 0:
        t += float(load.spike_s) - ramp
        steps.append(Step(t, 0, spawn, "spike", peak, peak))
    for phase, seconds, rate in (("hold", load.hold_s, peak), ("cooldown", load.cooldown_s, base)):
        if seconds > 0:
            t += float(seconds)
            steps.append(Step(t, 0, spawn, phase, rate, rate))
    return LoadShape("spike", tuple(steps))


def check_capacity(shape: LoadShape, workers: int) -> None:
    """Refuse a shape that needs more users (closed loop) or a higher rate (open loop) than the
    generator processes hold (before the run)."""
    processes = max(1, workers)
    if shape.open_loop:
        per = shape.max_rate / processes
        if per > MAX_RPS_PER_PROCESS:
            need = math.ceil(shape.max_rate / MAX_RPS_PER_PROCESS)
            raise SpecError(f"load: the {shape.kind} shape peaks at {shape.max_rate:g} requests/s, more than "
                            f"{processes} generator process(es) send ({MAX_RPS_PER_PROCESS:g}/s each); set "
                            f"load.workers to at least {need}")
        return
    cap = MAX_USERS_PER_PROCESS * processes
    if shape.max_users > cap:
        need = math.ceil(shape.max_users / MAX_USERS_PER_PROCESS)
        raise SpecError(f"load: the {shape.kind} shape needs {shape.max_users} concurrent users, more "
                        f"than {processes} generator process(es) hold ({MAX_USERS_PER_PROCESS} each); "
                        f"set load.workers to at least {need}")
