"""The ``load`` section: the load shape (spike, or a replayed tidal curve)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.spec.base import Quantity, RootedPath, _FieldError, _Strict


class TidalSpec(_Strict):
    """A traffic curve replayed in compressed time (shape: tidal)."""

    csv_path: RootedPath | None = Field(
        None, title="Traffic CSV",
        description="CSV of timestamp and requests/s or users; empty uses the built-in diurnal profile.")
    compress_to_minutes: float = Field(30.0, gt=0, le=1440, title="Run length (min)",
                                       description="The curve is compressed into a run of this many minutes.")


class LengthSpec(_Strict):
    """A distribution of token counts (input or output length of a request)."""

    dist: Literal["fixed", "uniform", "normal", "lognormal"] = Field(
        "fixed", title="Distribution",
        description="fixed: always mean; uniform: between min and max; normal and lognormal: with "
                    "mean and std (of the token count itself), clipped to [min, max].")
    mean: float = Field(128, gt=0, le=1_000_000, title="Mean (tokens)", description="Mean token count.")
    std: float = Field(0, ge=0, le=1_000_000, title="Std (tokens)",
                       description="Standard deviation of the token count (normal, lognormal).")
    min: int = Field(1, ge=1, le=1_000_000, title="Min (tokens)", description="Smallest count drawn.")
    max: int = Field(32_768, ge=1, le=1_000_000, title="Max (tokens)", description="Largest count drawn.")

    @model_validator(mode="after")
    def _bounds(self) -> LengthSpec:
        if self.min > self.max:
            raise _FieldError("min", f"must be <= max ({self.min} > {self.max})")
        if self.dist in ("normal", "lognormal") and self.std == 0:
            raise _FieldError("std", f"must be > 0 for a {self.dist} distribution")
        return self


class RequestsSpec(_Strict):
    """What each request asks: its prompt and lengths, drawn or replayed."""

    source: Literal["synthetic", "jsonl", "trace"] = Field(
        "synthetic", title="Source",
        description="synthetic: prompts of input_tokens (or load.prompt when input_tokens is not "
                    "set) and max_tokens drawn from output_tokens; jsonl: one prompt per line "
                    '({"prompt": ..., "max_tokens": optional}); trace: a CSV of timestamp, '
                    "input_tokens, output_tokens (Azure LLM inference trace or Mooncake).")
    path: RootedPath | None = Field(None, title="File", description="The JSONL or trace file (source jsonl, trace).")
    input_tokens: LengthSpec | None = Field(
        None, title="Input tokens", description="Prompt length distribution (synthetic); unset: load.prompt.")
    output_tokens: LengthSpec | None = Field(
        None, title="Output tokens", description="max_tokens distribution (synthetic); unset: load.max_tokens.")
    words_per_token: float = Field(
        0.75, gt=0, le=10, title="Words per token",
        description="Used to size a prompt of N tokens when no tokenizer is available offline "
                    "(the report states it).")
    tokenizer: RootedPath | None = Field(
        None, title="Tokenizer directory",
        description="A local Hugging Face tokenizer (tokenizer.json) of the served model, to size prompts in "
                    "real tokens; never downloaded.")
    repeat_prompts: bool = Field(
        False, title="Repeat prompts verbatim",
        description="false: every prompt is unique (a request number leads it), so prefix caching "
                    "cannot flatter TTFT; true: the same text may be sent again.")

    @model_validator(mode="after")
    def _source(self) -> RequestsSpec:
        if self.source in ("jsonl", "trace") and not self.path:
            raise _FieldError("path", f"is required for source {self.source}")
        return self


class RequestSlo(_Strict):
    """Per-request SLOs: a request is good when it succeeded and met every one that is set."""

    ttft_ms: float | None = Field(None, gt=0, title="TTFT (ms)", description="Time to first token, from "
                                  "the intended send time.")
    itl_ms: float | None = Field(None, gt=0, title="ITL p95 (ms)",
                                 description="The request's own 95th percentile inter-token latency.")
    tpot_ms: float | None = Field(None, gt=0, title="TPOT (ms)", description="Time per output token after the first.")
    e2e_ms: float | None = Field(None, gt=0, title="End to end (ms)",
                                 description="Intended send time to the last byte.")


class GeneratorResources(_Strict):
    """CPU and memory of each in-cluster generator pod (requests = limits: a throttled generator
    measures itself)."""

    cpu: Quantity = Field("1", title="CPU", description="CPU of each generator pod (request and limit).")
    memory: Quantity = Field("1Gi", title="Memory", description="Memory of each generator pod (request and limit).")


class GeneratorsSpec(_Strict):
    """Where the load is generated: on this machine (default), or inside the cluster as Kubernetes
    Jobs, one Locust worker per pod, placed on the pools named (round-robin), so that the clients
    stand where the users stand (in the IDC and in the cloud)."""

    in_cluster: bool = Field(False, title="In the cluster",
                             description="true: the workers run as Kubernetes Jobs on the pools named; "
                                         "false: on the machine that runs tidegate.")
    workers: int = Field(2, ge=1, le=64, title="Workers",
                         description="In-cluster worker Jobs; the open-loop rate is split evenly across them.")
    pools: list[Literal["idc", "elastic"]] = Field(
        default_factory=lambda: ["idc", "elastic"], min_length=1, max_length=2, title="Pools",
        description="The node pools the workers are placed on (nodeSelector on cluster.nodepool_label), "
                    "worker i on pools[i % len(pools)].")
    image: str = Field("tidegate/tidegate:latest", min_length=1, max_length=512, title="Image",
                       description="The image of the worker pods: tidegate's own (it runs python -m "
                                   "tasks._locust_runner).")
    resources: GeneratorResources = Field(default_factory=GeneratorResources, title="Resources",
                                          description="CPU and memory of each worker pod.")
    collector_url: str | None = Field(
        None, max_length=512, title="Collector URL",
        description="Where the workers send their per-request samples: the address of the machine or pod "
                    "that runs tidegate as the workers see it (http://host:port); the port is the "
                    "collector's. Unset: http://$POD_IP (tidegate running in the cluster, as a Prefect "
                    "Kubernetes work pool's Job) or 127.0.0.1 (the test bed).")

    @model_validator(mode="after")
    def _generators(self) -> GeneratorsSpec:
        if len(set(self.pools)) != len(self.pools):
            raise _FieldError("pools", f"names a pool twice ({self.pools})")
        if self.collector_url is not None and not self.collector_url.startswith("http://"):
            raise _FieldError("collector_url", f"must be an http://host[:port] URL (got {self.collector_url!r})")
        return self


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
    arrival: Literal["closed", "poisson", "gamma", "constant"] = Field(
        "closed", title="Arrival process",
        description="closed: users each send their next request when the last one returned (hey -c, "
                    "the load backs off when the service slows); poisson, gamma (burstiness cv) and "
                    "constant: open loop, requests arrive at the shape's rate whether or not earlier "
                    "ones finished, and latency counts from each request's intended send time.")
    cv: float = Field(1.0, gt=0, le=20, title="Coefficient of variation (gamma)",
                      description="Of the gamma inter-arrival times: 1 is Poisson, > 1 burstier.")
    baseline_rps: float | None = Field(
        None, ge=0, le=100_000, title="Baseline rate (requests/s)",
        description="Open-loop arrivals: the rate before and after the spike.")
    spike_rps: float | None = Field(
        None, gt=0, le=100_000, title="Spike rate (requests/s)", description="Open-loop arrivals: the spike's rate.")
    ramp_s: float = Field(0, ge=0, le=86_400, title="Ramp (s)",
                          description="Open-loop arrivals: the rate climbs linearly to spike_rps over this "
                                      "many seconds at the start of the spike (0: a step).")
    max_in_flight: int = Field(
        2000, ge=1, le=100_000, title="In-flight cap",
        description="Open-loop arrivals: at most this many requests in flight per generator process; "
                    "a request due while the cap is reached waits (its wait is schedule delay, the "
                    "report says the cap was reached).")
    seed: int | None = Field(None, ge=0, title="Seed", description="Seed of the arrival and length draws "
                             "(unset: a new one per run, recorded in the report).")
    repeat: int = Field(1, ge=1, le=20, title="Repeat",
                        description="Run the spike shape this many times in one validation (each waits for "
                                    "spill-back first) to get confidence intervals of the per-run figures "
                                    "(report: repeats); the first repetition is the run's main figures.")
    requests: RequestsSpec = Field(default_factory=RequestsSpec, title="Requests",
                                   description="Prompts and lengths, drawn or replayed.")
    slo: RequestSlo = Field(default_factory=RequestSlo, title="Per-request SLOs",
                            description="For goodput: the share of requests that succeeded and met all of them.")
    generators: GeneratorsSpec = Field(default_factory=GeneratorsSpec, title="Generators",
                                       description="Where the load is generated: locally or as Jobs in the cluster.")

    @property
    def open_loop(self) -> bool:
        return self.arrival != "closed"

    @model_validator(mode="after")
    def _load(self) -> LoadSpec:
        if self.shape == "spike" and self.spike_users < self.baseline_users:
            raise _FieldError("spike_users", f"must be >= load.baseline_users "
                                             f"({self.baseline_users} > {self.spike_users})")
        if self.repeat > 1 and self.shape != "spike":
            raise _FieldError("repeat", f"repeats the spike shape (got shape {self.shape}; a tidal day "
                                        "is not repeated within one run)")
        if self.open_loop and self.shape == "spike":
            if self.spike_rps is None or self.baseline_rps is None:
                raise _FieldError("spike_rps" if self.spike_rps is None else "baseline_rps",
                                  f"is required with arrival {self.arrival} (open loop: the shape is a rate "
                                  "in requests/s); use arrival: closed for users")
            if self.spike_rps < self.baseline_rps:
                raise _FieldError("spike_rps", f"must be >= load.baseline_rps ({self.baseline_rps} > {self.spike_rps})")
        if self.generators.in_cluster:
            if not self.open_loop:
                raise _FieldError("generators.in_cluster", "needs open-loop arrivals (load.arrival poisson, gamma "
                                  "or constant): the workers split a rate, closed-loop users need a Locust master")
            if self.workers:
                raise _FieldError("workers", "must be 0 with load.generators.in_cluster (the in-cluster workers are "
                                  "load.generators.workers)")
        return self
