"""Load shapes: what the generator should do over time, as a table of steps.

A ``LoadShape`` is a table of steps ``(t_end_s, users, spawn_rate, phase)``: from the end of the
previous step until ``t_end_s`` seconds into the run, hold ``users`` concurrent users (reached at
``spawn_rate`` users/s). ``spike_shape`` builds ``baseline -> spike -> hold -> cooldown`` from the
spec; ``tasks.tidal`` builds the tidal one; ``tasks.load.shape_for`` picks by ``load.shape``.
``check_capacity`` refuses a shape the generator cannot drive, before anything runs.
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


@dataclass(frozen=True)
class Step:
    """Hold ``users`` concurrent users (reached at ``spawn_rate`` users/s) until ``t_end_s``."""

    t_end_s: float
    users: int
    spawn_rate: float
    phase: str


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
            prev = st.t_end_s
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "_t_ends", tuple(float(s.t_end_s) for s in steps))

    @property
    def duration_s(self) -> float:
        return self._t_ends[-1]

    @property
    def max_users(self) -> int:
        return max(s.users for s in self.steps)

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

    Cool-down holds ``baseline_users`` (see the module docstring for why not zero).
    """
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


def check_capacity(shape: LoadShape, workers: int) -> None:
    """Refuse a shape that needs more users than the generator processes hold (before the run)."""
    processes = max(1, workers)
    cap = MAX_USERS_PER_PROCESS * processes
    if shape.max_users > cap:
        need = math.ceil(shape.max_users / MAX_USERS_PER_PROCESS)
        raise SpecError(f"load: the {shape.kind} shape needs {shape.max_users} concurrent users, more "
                        f"than {processes} generator process(es) hold ({MAX_USERS_PER_PROCESS} each); "
                        f"set load.workers to at least {need}")
