"""The ``load`` section: the load shape (spike, or a replayed tidal curve)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.spec.base import RootedPath, _FieldError, _Strict


class TidalSpec(_Strict):
    """A traffic curve replayed in compressed time (shape: tidal)."""

    csv_path: RootedPath | None = Field(
        None, title="Traffic CSV",
        description="CSV of timestamp and requests/s or users; empty uses the built-in diurnal profile.")
    compress_to_minutes: float = Field(30.0, gt=0, le=1440, title="Run length (min)",
                                       description="The curve is compressed into a run of this many minutes.")


class LoadSpec(_Strict):
    """The load shape: baseline, spike, hold at the spike, cool-down."""

    shape: Literal["spike", "tidal"] = Field("spike", title="Shape",
                                             description="spike: baseline -> spike -> hold -> cool-down; "
                                                         "tidal: replay load.tidal.")
    baseline_users: int = Field(5, ge=0, le=100_000, title="Baseline users",
                                description="Concurrent users before and after the spike.")
    spike_users: int = Field(30, ge=1, le=100_000, title="Spike users",
                             description="Concurrent users during the spike.")
    spawn_rate: float = Field(10.0, gt=0, le=10_000, title="Spawn rate (users/s)",
                              description="How fast users are added or removed.")
    baseline_s: int = Field(60, ge=0, le=86_400, title="Baseline (s)", description="Baseline duration.")
    spike_s: int = Field(300, ge=1, le=86_400, title="Spike (s)", description="Ramp and spike duration.")
    hold_s: int = Field(120, ge=0, le=86_400, title="Hold (s)",
                        description="Time the spike load is held after spike_s.")
    cooldown_s: int = Field(
        900, ge=0, le=86_400, title="Cool-down (s)",
        description="Baseline load after the spike while spill-back is watched; must cover the "
                    "HPA scale-down stabilization and the autoscaler's scale-down time.")
    max_tokens: int = Field(128, ge=1, le=32_768, title="Max tokens",
                            description="max_tokens of every chat request.")
    max_error_rate: float = Field(
        0.5, ge=0, le=1, title="Max error rate of the spike stage",
        description="The spike stage fails when a larger share of its requests failed: the service did "
                    "not hold the load, whatever the gate's rules say (they judge finer).")
    prompt: str = Field("Explain in three sentences why the tide rises and falls.", title="Prompt",
                        min_length=1, description="User message of every chat request.")
    stream: bool = Field(True, title="Stream", description="Send streamed chat requests (needed for TTFT).")
    workers: int = Field(0, ge=0, le=64, title="Worker processes",
                         description="Locust worker processes; 0 runs the generator in one process.")
    request_timeout_s: float = Field(120.0, gt=0, le=3600, title="Request timeout (s)",
                                     description="Per-request timeout; a timeout counts as an error.")
    tidal: TidalSpec | None = Field(None, title="Tidal", description="Used when shape is tidal.")

    @model_validator(mode="after")
    def _load(self) -> LoadSpec:
        if self.shape == "spike" and self.spike_users < self.baseline_users:
            raise _FieldError("spike_users", f"must be >= load.baseline_users "
                                             f"({self.baseline_users} > {self.spike_users})")
        return self
