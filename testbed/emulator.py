"""In-process vLLM emulator: the model servers of the test bed's KWOK pods.

KWOK pods run no process, so the test-bed daemon gives every Running predictor pod a
``Replica``: an OpenAI-compatible HTTP server on its own 127.0.0.1 port that answers like the
vLLM version in the pod's image tag (``/health``, ``/version``, ``/v1/models``,
``/v1/chat/completions``, ``/v1/completions``, ``/metrics`` with vLLM's metric names and
error bodies) and takes as long as a GPU running vLLM's scheduler would. All replicas of a
``ReplicaPool`` share one asyncio loop.

Versions (``api_surface``): the image tag's version picks the OpenAI surface, as vLLM's tagged
sources have it (``testbed/vllm_surface.py`` and ``vllm_request_fields.json``: the request fields of
every release from 0.4.1 to 0.8.0, read from the PyPI sdists). An unknown field is dropped
silently by 0.4.1 (plain pydantic models: the seed's image accepts ``stream_options`` and ignores
it), a 400 (``extra_forbidden``) from 0.4.2 to 0.6.4 (``OpenAIBaseModel`` with
``extra="forbid"``: ``stream_options`` before 0.5.0, ``max_completion_tokens`` before 0.6.4) and
accepted again from 0.6.5. Before 0.5.0 chat content is a string (0.4.1) and the streamed finish
chunk carries ``usage``; from 0.5.0 (``stream_options``: vllm#5135, #5319) usage comes only on
``stream_options.include_usage``. ``/metrics`` has no ``vllm:num_preemptions_total`` before
0.4.3 (vllm#4647). A tag that names no version gets the newest modelled (0.6.3, the example's).

Engine (``EngineArgs`` from the pod's vLLM command: ``--max-model-len``,
``--gpu-memory-utilization`` (0.9), ``--max-num-seqs`` (256), ``--max-num-batched-tokens``,
``--enable-chunked-prefill``, ``--quantization``, ``--model``):
    KV cache: (gpu_memory_gib * gpu_memory_utilization - weights - non_kv_reserve_gib) /
        KV bytes per token of the model (``MODEL_SIZES``), in blocks of 16 tokens, as
        vLLM's profiling run sizes it. A sequence holds ceil((prompt + generated) / 16)
        blocks.
    Admission (FCFS): the head of the waiting queue starts when fewer than ``max_num_seqs``
        run and its blocks fit above a 1 % watermark; the rest wait behind it.
    Preemption (recompute, vLLM's default): when a running sequence needs a block and none
        is free, the most recently admitted running sequence is preempted: its blocks are
        freed, it goes to the front of the waiting queue (``vllm:num_preemptions_total``
        +1) and, readmitted, recomputes its prompt and what it had generated. A lone sequence
        is never preempted: a ``--max-model-len`` larger than the cache (vLLM refuses to start)
        is capped at the cache's size, with a warning.
Latency (``testbed.config.EmulatorModel``; times in ms):
    TTFT  = queue wait + prefill wait + prompt / prefill_tokens_per_s
            + ttft_base + ttft_per_running * (sequences already running when admitted)
            Prefills of concurrent arrivals queue behind each other (one prefill lane at
            ``prefill_tokens_per_s``); with chunked prefill each further budget-sized chunk
            costs one more decode step.
    gap   = itl_base + itl_per_running * (running - 1) + itl_per_1k_context * KV tokens / 1000
            + min(pending prefill, one budget of prefill)     before each further token
            i.e. decode steps stretch with the batch, with the context read from the KV cache,
            and with prefill work sharing the step (a whole prompt without chunked prefill,
            at most ``max_num_batched_tokens`` with it).
    A lone short request therefore sees TTFT ~ ttft_base and ITL ~ itl_base. Token times are
    deadlines on a monotonic schedule (each deadline = the previous one + gap), so late
    wake-ups of the event loop do not accumulate. As in vLLM, the engine does not wait for
    the client: tokens that fall due while a slow client is being written to go out in a
    burst. The figures the realistic values come from are cited in docs/realism.md
    ("vLLM emulator calibration"); ``tests/bench/emulator_calibration.py`` prints the
    model-vs-published errors.

GPU metric: ``sm_util()`` is ``DCGM_CUSTOM_PROCESS_SM_UTIL`` (0-100), the time average over
the last ``window_s`` seconds (or since start, if younger) of
    u(r) = 0                                   if r == 0
    u(r) = 0.3 + 0.7 * sqrt(min(r, S) / S)     otherwise (r running sequences, S = sm_saturation_seqs)
i.e. a GPU decoding anything keeps its SMs at least 30 % busy, and batching more sequences
fills them with diminishing returns: 1 of 16 -> 47.5, 3 -> 60, 5 -> 69, 16 -> 100.
``busy_fraction()`` is the share of the same window with at least one running sequence.

Prompt tokens are estimated without a tokenizer: every CJK/kana/hangul/full-width character
is one token, any other run of text costs ceil(chars / 4); a chat adds 3 tokens of template
per message and 3 for the assistant prefix (Qwen's ``<|im_start|>assistant\\n``). The output is
``max_tokens`` (or ``default_max_tokens``) deterministic filler words, one word per token,
chosen by ``seed``; ``finish_reason`` is ``"length"`` when the request set a limit and
``"stop"`` otherwise. ``--max-model-len`` is enforced with vLLM's 400.

Fault injection (``Fault``): a share of inference requests answered with a 5xx error body, or
connections dropped after N tokens (a stream without its final chunk and ``[DONE]``; a
non-streamed request without any response).

Run ``python -m testbed.emulator --replicas 2 --gateway-port 18000 [--vllm-version 0.4.1]
[--vllm-args "--max-model-len 6144 --max-num-seqs 64"]`` to serve replicas behind the
gateway for manual checks.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import errno
import itertools
import json
import logging
import math
import random
import re
import shlex
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from testbed.config import EmulatorModel
from testbed.errors import PortInUse, TestbedError
from testbed.vllm_surface import RequestSurface, parse_version, request_surface

log = logging.getLogger("testbed.emulator")
LOOPBACK = "127.0.0.1"

# vLLM's bucket edges (vllm/engine/metrics.py, the same from 0.4.1 to 0.6.x).
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS_S = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)

SM_UTIL_FLOOR = 0.3
MAX_BODY_BYTES = 32 * 2**20
BLOCK_TOKENS = 16             # vLLM's default --block-size
WATERMARK = 0.01              # vLLM's block-manager watermark
DEFAULT_MAX_NUM_SEQS = 256    # vLLM's --max-num-seqs default
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
NEWEST_VERSION = (0, 6, 3)    # the newest vLLM whose surface is modelled

_FILLER = (
    "The", "emulated", "model", "answers", "with", "steady", "filler", "words", "so", "that",
    "latency", "and", "token", "counts", "stay", "predictable", "while", "the", "cluster",
    "scales", "out", "to", "cloud", "nodes", "and", "back", "again", "under", "a", "spike",
    "of", "traffic",
)
_WIDE_CHAR = re.compile(r"[\u1100-\u11ff\u2e80-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf"
                        r"\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


# the twin tells which pod served a request (vLLM does not; on ACK the pod is unknown): the load
# generator records it, and the critical path's "first request served by the new pod" rests on it
SERVED_BY = "X-Tidegate-Served-By"

class Fault(BaseModel):
    """Faults a replica injects into its inference endpoints (the reliability suite's knob)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of requests answered with `status`")
    status: int = Field(500, ge=500, le=599, description="HTTP status of an injected error")
    close_stream_after_tokens: int | None = Field(
        None, ge=0, description="drop the connection after this many output tokens (None: never)")


# --- the model-size table and the engine's arguments ---

@dataclasses.dataclass(frozen=True)
class ModelSize:
    """What sizes vLLM's KV cache: parameters (weights) and the KV bytes each token takes."""

    params_b: float      # billions of parameters
    layers: int
    kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes  # K and V, fp16


# config.json of each model on Hugging Face (num_hidden_layers, num_key_value_heads, head dim).
MODEL_SIZES: dict[str, ModelSize] = {
    "qwen-1.8b": ModelSize(1.8, 24, 16, 128),
    "qwen-7b": ModelSize(7.7, 32, 32, 128),        # Qwen-7B(-Chat): multi-head attention, 512 KiB/token
    "qwen-14b": ModelSize(14.2, 40, 40, 128),
    "qwen-72b": ModelSize(72.3, 80, 64, 128),
    "qwen2-0.5b": ModelSize(0.5, 24, 2, 64),
    "qwen2-1.5b": ModelSize(1.5, 28, 2, 128),
    "qwen2-7b": ModelSize(7.6, 28, 4, 128),        # Qwen2/2.5-7B: grouped-query attention, 56 KiB/token
    "qwen2-14b": ModelSize(14.8, 48, 8, 128),
    "qwen2-32b": ModelSize(32.8, 64, 8, 128),
    "qwen2-72b": ModelSize(72.7, 80, 8, 128),
    "llama-7b": ModelSize(6.7, 32, 32, 128),
    "llama-8b": ModelSize(8.0, 32, 8, 128),
    "llama-13b": ModelSize(13.0, 40, 40, 128),
    "llama-70b": ModelSize(70.6, 80, 8, 128),
}
_SIZE_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)b\b")


def model_size_for(names: Iterable[str], default: str) -> tuple[str, ModelSize]:
    """The table entry a model path or name points at (family + size in the name), else ``default``."""
    for raw in names:
        name = raw.lower().replace("_", "-")
        size = _SIZE_IN_NAME.search(name)
        if not size:
            continue
        family = "qwen2" if re.search(r"qwen(2|3)", name) else "qwen" if "qwen" in name else "llama"
        key = f"{family}-{size.group(1)}b"
        if key in MODEL_SIZES:
            return key, MODEL_SIZES[key]
    if default not in MODEL_SIZES:
        raise TestbedError(f"emulator model_size {default!r}: not in the table ({', '.join(MODEL_SIZES)})")
    return default, MODEL_SIZES[default]


@dataclasses.dataclass(frozen=True)
class ApiSurface:
    """What a vLLM version's OpenAI server accepts and answers (see the module docstring)."""

    request: RequestSurface       # the request fields and what an unknown one does (vllm_surface.py)
    stream_options: bool          # stream_options.include_usage exists
    usage_in_last_chunk: bool     # the streamed chat's finish chunk carries usage
    preemption_metric: bool       # /metrics has vllm:num_preemptions_total
    chunked_prefill_default: bool

    @property
    def strict(self) -> bool:
        """Unknown request fields are a 400 (0.4.2 to 0.6.4)."""
        return self.request.extra == "forbid"


def api_surface(version: tuple[int, int, int]) -> ApiSurface:
    """The request fields of the version (unknown ones ignored before 0.4.2, a 400 until 0.6.5);
    usage on the finish chunk and stream_options from 0.5.0 (vllm#5135 chat, #5319 completions);
    vllm:num_preemptions_total from 0.4.3 (vllm#4647)."""
    request = request_surface(version)
    has_options = "stream_options" in request.chat
    return ApiSurface(request=request, stream_options=has_options, usage_in_last_chunk=not has_options,
                      preemption_metric=version >= (0, 4, 3), chunked_prefill_default=False)


@dataclasses.dataclass(frozen=True)
class EngineArgs:
    """One replica's vLLM: its version and the engine flags of its command line."""

    version: tuple[int, int, int] = NEWEST_VERSION
    max_model_len: int = 4096
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool | None = None
    quantization: str | None = None
    model_key: str = "qwen-7b"
    model_name: str = ""          # --model as given (a quantized checkpoint's name says its bits)

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def surface(self) -> ApiSurface:
        return api_surface(self.version)

    @property
    def chunked_prefill(self) -> bool:
        return self.surface.chunked_prefill_default if self.enable_chunked_prefill is None \
            else self.enable_chunked_prefill

    @property
    def prefill_budget_tokens(self) -> int:
        """Prompt tokens one engine step takes: the chunk size, or a whole prompt without chunking."""
        if self.max_num_batched_tokens:
            return self.max_num_batched_tokens
        return 512 if self.chunked_prefill else max(self.max_model_len, 2048)

    @property
    def weight_bytes_per_param(self) -> float:
        """fp16 unless ``--quantization``: GPTQ/AWQ are 4-bit unless the checkpoint's name says 8."""
        q = (self.quantization or "").lower()
        name = self.model_name.lower()
        if q in ("gptq", "awq", "marlin", "gptq_marlin", "awq_marlin", "squeezellm"):
            return 1.0 if "int8" in name or "8bit" in name else 0.5
        if q in ("fp8", "int8", "w8a8", "bitsandbytes"):
            return 1.0
        return 2.0

    def kv_tokens(self, model: EmulatorModel) -> int:
        """KV-cache capacity in tokens (whole blocks), as vLLM's memory profiling would find."""
        size = MODEL_SIZES[self.model_key]
        free = (model.gpu_memory_gib * self.gpu_memory_utilization * 2**30
                - size.params_b * 1e9 * self.weight_bytes_per_param - model.non_kv_reserve_gib * 2**30)
        blocks = max(0, int(free // (size.kv_bytes_per_token() * BLOCK_TOKENS)))
        return blocks * BLOCK_TOKENS


def _flag_values(argv: Sequence[str]) -> dict[str, str | None]:
    words: list[str] = []
    for part in argv:
        try:
            words += shlex.split(str(part))
        except ValueError:
            words += str(part).split()
    flags: dict[str, str | None] = {}
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        key, eq, val = word.partition("=")
        key = key.replace("_", "-")
        if eq:
            flags[key] = val
        elif i + 1 < len(words) and not words[i + 1].startswith("--"):
            flags[key] = words[i + 1]
        else:
            flags[key] = None
    return flags


def engine_args(model: EmulatorModel, *, image: str | None = None, argv: Sequence[str] = (),
                version: str | None = None, default_max_model_len: int = 4096,
                names: Iterable[str] = ()) -> EngineArgs:
    """The engine a pod runs: version from ``version`` or the image tag (else the model's
    ``vllm_version``, else the newest modelled), flags from its command line ``argv``."""
    parsed = parse_version(version) or parse_version(image) or parse_version(model.vllm_version) or NEWEST_VERSION
    flags = _flag_values(argv)
    names = list(names)

    def number(flag: str, kind: Callable[[str], Any], default: Any) -> Any:
        raw = flags.get(flag)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError as exc:
            raise TestbedError(f"vLLM flag {flag}={raw!r}: not a number") from exc

    chunked = flags.get("--enable-chunked-prefill", "absent")
    key, _ = model_size_for([*(n for n in [flags.get("--model"), flags.get("--served-model-name")] if n), *names],
                            model.model_size)
    return EngineArgs(
        version=parsed,
        max_model_len=number("--max-model-len", int, default_max_model_len),
        max_num_seqs=number("--max-num-seqs", int, model.max_num_seqs or DEFAULT_MAX_NUM_SEQS),
        gpu_memory_utilization=number("--gpu-memory-utilization", float, DEFAULT_GPU_MEMORY_UTILIZATION),
        max_num_batched_tokens=number("--max-num-batched-tokens", int, None),
        enable_chunked_prefill=None if chunked == "absent" else chunked in (None, "true", "True", "1"),
        quantization=flags.get("--quantization"),
        model_key=key,
        model_name=flags.get("--model") or next(iter(names), "") or "",
    )


# --- request schemas: the newest surface (lenient: unknown fields ignored, numbers coerced) ---

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Body):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Body):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


# --- vLLM 0.4.1's surface (vllm/entrypoints/openai/protocol.py at v0.4.1): plain pydantic
# models (unknown fields are dropped); messages are List[Dict[str, str]]; no stream_options, no
# max_completion_tokens. Which fields each version knows is vllm_surface's table. ---

class _Body041(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Sampling041(_Body041):
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    temperature: float | None = None
    top_p: float | None = 1.0
    user: str | None = None
    best_of: int | None = None
    use_beam_search: bool | None = False
    top_k: int | None = -1
    min_p: float | None = 0.0
    repetition_penalty: float | None = 1.0
    length_penalty: float | None = 1.0
    early_stopping: bool | None = False
    ignore_eos: bool | None = False
    min_tokens: int | None = 0
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = True
    spaces_between_special_tokens: bool | None = True
    include_stop_str_in_output: bool | None = False
    response_format: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None


class ChatCompletionRequest041(_Sampling041):
    messages: list[dict[str, str]] = Field(min_length=1)
    model: str
    logprobs: bool | None = False
    top_logprobs: int | None = None
    max_tokens: int | None = None
    n: int | None = 1
    echo: bool | None = False
    add_generation_prompt: bool | None = True


class CompletionRequest041(_Sampling041):
    model: str
    prompt: list[int] | list[list[int]] | str | list[str]
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    n: int | None = 1
    suffix: str | None = None


def estimate_text_tokens(text: str) -> int:
    """Tokens of ``text``: one per wide (CJK) character, ceil(len/4) for the rest."""
    wide = len(_WIDE_CHAR.findall(text))
    return wide + math.ceil((len(text) - wide) / 4)


def estimate_chat_tokens(messages: Iterable[ChatMessage | dict[str, str]]) -> int:
    """Prompt tokens of a chat: its texts plus 3 template tokens a message and 3 to open the reply."""
    total = 3
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else msg.content
        if isinstance(content, str):
            text = content
        else:
            text = "".join(part.text or "" for part in content or [])
        total += 3 + estimate_text_tokens(text)
    return total


def sm_util_of(running: int, saturation_seqs: int) -> float:
    """Instantaneous SM utilisation (0-100) with ``running`` sequences (see module docstring)."""
    if running <= 0:
        return 0.0
    return 100.0 * (SM_UTIL_FLOOR + (1 - SM_UTIL_FLOOR) * math.sqrt(min(running, saturation_seqs) / saturation_seqs))


def filler_tokens(count: int, seed: int | None) -> list[str]:
    """``count`` deterministic output tokens: words, each after the first with a leading space."""
    start = (seed or 0) % len(_FILLER)
    words = [_FILLER[(start + i) % len(_FILLER)] for i in range(count)]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


# --- continuous batching ---

class _Timer:
    """Sleeps that aim early by the event loop's usual lateness.

    asyncio wakes up ~1 ms after a deadline (epoll rounds timeouts up to whole milliseconds,
    and the loop has other work); a 50 ms TTFT would come out 2 % long. The lateness is
    learnt as a moving average, so wake-ups land on their deadlines on average.
    """

    MAX_LEAD_S = 0.003

    def __init__(self) -> None:
        self.lateness_s = 0.0

    async def sleep_until(self, deadline: float) -> None:
        target = deadline - self.lateness_s
        delay = target - time.monotonic()
        if delay <= 0:
            return
        await asyncio.sleep(delay)
        late = time.monotonic() - target
        self.lateness_s = min(self.MAX_LEAD_S, max(0.0, 0.9 * self.lateness_s + 0.1 * late))


class _Sequence:
    """One request's token schedule and its share of the KV cache."""

    def __init__(self, engine: _Engine, prompt_tokens: int, arrived_at: float):
        self._engine = engine
        self.prompt_tokens = prompt_tokens
        self.arrived_at = arrived_at
        self.admitted_at = arrived_at
        self.generated = 0
        self.blocks = 0
        self.running = False
        self.epoch = 0                 # +1 at every preemption: a token scheduled before it is void
        self.preemptions = 0
        self.ttft_s = 0.0
        self.last_token_at: float | None = None
        self._admitted: asyncio.Future[None] | None = None
        self._deadline: float | None = None

    def blocks_needed(self, extra: int = 1) -> int:
        return math.ceil((self.prompt_tokens + self.generated + extra) / BLOCK_TOKENS)

    async def next_token(self) -> float:
        """Sleep until the next token is due; return the gap since the previous one (0 for the first)."""
        engine, model = self._engine, self._engine.model
        while True:
            if not self.running:
                await engine.wait_admitted(self)
                self._deadline = None
            now = time.monotonic()
            if self._deadline is None:
                # (re)compute the prompt and whatever was generated before a preemption
                self._deadline = engine.prefill_done_at(self.prompt_tokens + self.generated, now) \
                    + (model.ttft_base_ms + model.ttft_per_running_ms * (engine.running - 1)) / 1000
            else:
                if not engine.grow(self):
                    continue  # preempted itself: wait for readmission
                self._deadline += engine.decode_gap_s(now)
            epoch = self.epoch
            await engine.timer.sleep_until(self._deadline)
            if self.epoch != epoch:
                self._deadline = None  # preempted while this token was being computed: recompute
                continue
            break
        emitted = time.monotonic()
        self.generated += 1
        engine.kv_tokens_in_use += 1
        previous, self.last_token_at = self.last_token_at, emitted
        if previous is None:
            self.ttft_s = emitted - self.arrived_at
            return 0.0
        return emitted - previous


class _Engine:
    """vLLM's scheduler in miniature: FCFS admission within ``max_num_seqs`` and the KV blocks,
    recompute preemption of the newest sequence when blocks run out, a prefill lane, and the
    history of ``running`` for the SM metric."""

    def __init__(self, model: EmulatorModel, args: EngineArgs, window_s: float, timer: _Timer):
        self.model = model
        self.args = args
        self.timer = timer
        self.total_blocks = max(1, args.kv_tokens(model) // BLOCK_TOKENS)
        self.watermark_blocks = int(WATERMARK * self.total_blocks)
        self.used_blocks = 0
        self.kv_tokens_in_use = 0     # prompt + generated tokens of the running sequences
        self.num_preemptions = 0
        self._running: list[_Sequence] = []
        self._waiting: deque[_Sequence] = deque()
        self._prefill_free_at = 0.0
        size = MODEL_SIZES[args.model_key]
        self._itl_per_token_s = (model.itl_per_1k_context_ms / 1000 / 1000 if model.itl_per_1k_context_ms is not None
                                 else size.kv_bytes_per_token() / (model.gpu_memory_bandwidth_gb_s * 1e9))
        self._window_s = window_s
        self._started_at = time.monotonic()
        self._history: deque[tuple[float, int]] = deque([(self._started_at, 0)])

    # -- state --
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def cache_usage(self) -> float:
        return min(1.0, self.used_blocks / self.total_blocks)


    # -- timing --
    def prefill_done_at(self, tokens: int, now: float) -> float:
        """When a prefill of ``tokens`` submitted at ``now`` finishes (prefills queue in one lane)."""
        rate = self.model.prefill_tokens_per_s
        budget = self.args.prefill_budget_tokens
        start = max(now, self._prefill_free_at)
        done = start + tokens / rate
        self._prefill_free_at = done
        if self.args.chunked_prefill and tokens > budget:
            done += (math.ceil(tokens / budget) - 1) * self.model.itl_base_ms / 1000  # one step per chunk
        return done

    def decode_gap_s(self, now: float) -> float:
        model = self.model
        gap = (model.itl_base_ms + model.itl_per_running_ms * (self.running - 1)) / 1000
        gap += self._itl_per_token_s * self.kv_tokens_in_use
        pending = self._prefill_free_at - now
        if pending > 0:  # a decode step shares the GPU with up to one budget of prefill
            gap += min(pending, self.args.prefill_budget_tokens / model.prefill_tokens_per_s)
        return gap

    # -- admission, growth, preemption --
    @contextlib.asynccontextmanager
    async def sequence(self, prompt_tokens: int) -> AsyncIterator[_Sequence]:
        seq = _Sequence(self, prompt_tokens, time.monotonic())
        try:
            await self.wait_admitted(seq)
            yield seq
        finally:
            self._finish(seq)

    async def wait_admitted(self, seq: _Sequence) -> None:
        if seq.running:
            return
        if seq not in self._waiting:
            self._waiting.append(seq)
        self._admit_waiting()
        if seq.running:
            return
        seq._admitted = asyncio.get_running_loop().create_future()
        await seq._admitted  # cancellation: _finish takes it out of the queue

    def _free(self) -> int:
        return self.total_blocks - self.used_blocks

    def _admit_waiting(self) -> None:
        while self._waiting and self.running < self.args.max_num_seqs:
            head = self._waiting[0]
            need = head.blocks_needed(0 if head.generated else 1)
            if self._free() - need < self.watermark_blocks and self._running:
                break  # FCFS: the head waits for blocks, and everyone behind it
            self._waiting.popleft()
            head.blocks = need
            self.used_blocks += need
            self.kv_tokens_in_use += head.prompt_tokens + head.generated
            head.running = True
            head.admitted_at = time.monotonic()
            self._running.append(head)
            self._record()
            if head._admitted is not None and not head._admitted.done():
                head._admitted.set_result(None)

    def grow(self, seq: _Sequence) -> bool:
        """Give ``seq`` the block its next token needs, preempting the newest sequences if none is
        free; False when ``seq`` itself was preempted."""
        need = seq.blocks_needed() - seq.blocks
        while need > 0 and self._free() < need:
            if len(self._running) == 1:
                break  # a lone sequence always fits: max_model_len is capped at the cache's size
            victim = max(self._running, key=lambda s: s.arrived_at)  # FCFS: the newest arrival goes
            self._preempt(victim)
            if victim is seq:
                return False
        if need > 0:
            seq.blocks += need
            self.used_blocks += need
        return True

    def _preempt(self, seq: _Sequence) -> None:
        self._running.remove(seq)
        self.used_blocks -= seq.blocks
        self.kv_tokens_in_use -= seq.prompt_tokens + seq.generated
        seq.blocks = 0
        seq.running = False
        seq.epoch += 1
        seq.preemptions += 1
        seq._admitted = None
        self.num_preemptions += 1
        self._waiting.appendleft(seq)
        self._record()

    def _finish(self, seq: _Sequence) -> None:
        if seq.running:
            self._running.remove(seq)
            self.used_blocks -= seq.blocks
            self.kv_tokens_in_use -= seq.prompt_tokens + seq.generated
            seq.blocks = 0
            seq.running = False
            self._record()
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(seq)
        self._admit_waiting()

    # -- history for the SM metric --
    def _record(self) -> None:
        now = time.monotonic()
        self._history.append((now, self.running))
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self._window_s
        while len(self._history) >= 2 and self._history[1][0] <= horizon:
            self._history.popleft()

    def window_average(self, value: Callable[[int], float]) -> float:
        """Time average of ``value(running)`` over the window (or since start, if younger)."""
        now = time.monotonic()
        self._prune(now)
        start = max(now - self._window_s, self._started_at)
        span = now - start
        if span <= 0:
            return value(self.running)
        history = list(self._history)
        total = 0.0
        for i, (since, running) in enumerate(history):
            until = history[i + 1][0] if i + 1 < len(history) else now
            since = max(since, start)
            if until > since:
                total += (until - since) * value(running)
        return total / span


# --- Prometheus exposition ---

def _labels(pairs: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.buckets):
            self.counts[i] += 1  # per bucket here; cumulated when rendered

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        out = []
        for edge, count in zip(self.buckets, itertools.accumulate(self.counts)):
            out.append(f"{name}_bucket{{{_labels({**labels, 'le': _num(edge)})}}} {_num(count)}")
        out.append(f"{name}_bucket{{{_labels({**labels, 'le': '+Inf'})}}} {_num(self.count)}")
        out.append(f"{name}_count{{{_labels(labels)}}} {_num(self.count)}")
        out.append(f"{name}_sum{{{_labels(labels)}}} {_num(self.sum)}")
        return out


class _Metrics:
    """vLLM's engine metrics of one replica."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0}
        self.ttft = _Histogram(TTFT_BUCKETS_S)
        self.tpot = _Histogram(TPOT_BUCKETS_S)
        self.e2e = _Histogram(E2E_BUCKETS_S)

    def render(self, model_name: str, running: int, waiting: int, cache_usage: float, preemptions: int,
               surface: ApiSurface) -> str:
        labels = {"model_name": model_name}
        lbl = _labels(labels)
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)

        def gauge(name: str, help_text: str, value: float) -> None:
            family(name, "gauge", help_text, [f"{name}{{{lbl}}} {_num(value)}"])

        gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", running)
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
        gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", 0)
        gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", cache_usage)
        gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.", 0)
        if surface.preemption_metric:
            family("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.",
                   [f"vllm:num_preemptions_total{{{lbl}}} {_num(preemptions)}"])
        family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
               [f"vllm:prompt_tokens_total{{{lbl}}} {_num(self.prompt_tokens)}"])
        family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
               [f"vllm:generation_tokens_total{{{lbl}}} {_num(self.generation_tokens)}"])
        family("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
               self.ttft.lines("vllm:time_to_first_token_seconds", labels))
        family("vllm:time_per_output_token_seconds", "histogram", "Histogram of time per output token in seconds.",
               self.tpot.lines("vllm:time_per_output_token_seconds", labels))
        family("vllm:e2e_request_latency_seconds", "histogram", "Histogram of end to end request latency in seconds.",
               self.e2e.lines("vllm:e2e_request_latency_seconds", labels))
        family("vllm:request_success_total", "counter", "Count of successfully processed requests.",
               [f"vllm:request_success_total{{{_labels({**labels, 'finished_reason': reason})}}} {_num(n)}"
                for reason, n in self.success.items()])
        return "\n".join(lines) + "\n"


# --- HTTP ---

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
                503: "ServiceUnavailableError"}


def error_response(status: int, message: str, err_type: str | None = None) -> web.Response:
    """vLLM's ``ErrorResponse`` body with ``status``."""
    body = {"object": "error", "message": message, "type": err_type or _ERROR_TYPES.get(status, "InternalServerError"),
            "param": None, "code": status}
    return web.json_response(body, status=status, dumps=_compact)


def _validation_error(errors: list[dict[str, Any]]) -> web.Response:
    # vLLM answers FastAPI's RequestValidationError with str(exc): the list of pydantic errors.
    return error_response(400, str(errors))


def _parse(raw: bytes, schema: type[BaseModel], request: RequestSurface | None = None,
           kind: Literal["chat", "completion"] = "chat") -> BaseModel | web.Response:
    """``raw`` as ``schema``; with a version's ``request`` surface, a field that version does not
    know is a 400 where it forbids unknown fields, and otherwise dropped before validation."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return _validation_error([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                   "input": {}, "ctx": {"error": exc.msg}}])
    except UnicodeDecodeError as exc:
        return _validation_error([{"type": "json_invalid", "loc": ("body", exc.start), "msg": "JSON decode error",
                                   "input": {}, "ctx": {"error": exc.reason}}])
    if request is not None and isinstance(data, dict):
        known = request.fields(kind)
        unknown = [k for k in data if k not in known]
        if unknown and request.extra == "forbid":
            return _validation_error([{"type": "extra_forbidden", "loc": ("body", k),
                                       "msg": "Extra inputs are not permitted", "input": data[k]} for k in unknown])
        data = {k: v for k, v in data.items() if k in known}
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        return _validation_error([{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)])


def _compact(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _dumps(payload: dict[str, Any]) -> bytes:
    return _compact(payload).encode()


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _dumps(payload) + b"\n\n"


class _DropConnection(Exception):
    """Raised inside a handler to cut the client's connection (fault injection)."""


@web.middleware
async def _fastapi_like_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.json_response({"detail": "Not Found"}, status=404, dumps=_compact)
    except web.HTTPMethodNotAllowed:
        return web.json_response({"detail": "Method Not Allowed"}, status=405, dumps=_compact)
    except web.HTTPException as exc:  # e.g. 413 for a body over client_max_size
        return error_response(exc.status, exc.reason)
    except _DropConnection:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError from None
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # a bug in the emulator must not take the replica down
        return error_response(500, f"emulator error: {type(exc).__name__}: {exc}")


class Replica:
    """One emulated vLLM server on its own loopback port.

    Create through ``ReplicaPool.add``; a standalone replica needs ``await start()`` and
    ``await stop()``.
    """

    def __init__(self, key: str, *, served_model_name: str, model_root: str, labels: dict[str, str],
                 model: EmulatorModel, port: int = 0, max_model_len: int = 4096, window_s: float = 10.0,
                 seed: int | None = None, engine: EngineArgs | None = None):
        self.key = key
        self.served_model_name = served_model_name
        self.model_root = model_root
        self.labels = dict(labels)
        self.model = model
        self.engine_args = engine or engine_args(model, default_max_model_len=max_model_len,
                                                 names=[model_root, served_model_name])
        self.surface = self.engine_args.surface
        self.max_model_len = self.engine_args.max_model_len
        kv_tokens = self.engine_args.kv_tokens(model)
        if kv_tokens < self.max_model_len:
            # vLLM refuses to start here; the twin warns and serves what fits (longer requests: 400)
            log.warning("replica %s: --max-model-len %d exceeds the KV cache's %d tokens (%s, %.0f GiB x %.2f)",
                        key, self.max_model_len, kv_tokens, self.engine_args.model_key, model.gpu_memory_gib,
                        self.engine_args.gpu_memory_utilization)
            self.max_model_len = max(BLOCK_TOKENS, kv_tokens)
        self.fault = Fault()
        self.created = int(time.time())
        self._requested_port = port
        self._window_s = window_s
        self._rng = random.Random(seed)
        self._timer = _Timer()
        self._engine = _Engine(model, self.engine_args, window_s, self._timer)
        self._metrics = _Metrics()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._ready_at = math.inf
        self._in_flight = 0
        self._drained = asyncio.Event()

    # -- lifecycle --

    async def start(self) -> None:
        """Listen on 127.0.0.1:port (0: any free port); healthy after ``load_delay_s``. OSError if the port is taken."""
        app = web.Application(middlewares=[_fastapi_like_errors], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/metrics/", self._metrics_page)
        app.middlewares.insert(0, self._track_in_flight)
        # Draining is done by stop() itself; whatever is left after its grace is cancelled at once.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.0)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        self._engine = _Engine(self.model, self.engine_args, self._window_s, self._timer)
        self._ready_at = time.monotonic() + self.model.load_delay_s

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop listening, let in-flight requests finish for up to ``grace_s``, then cut them."""
        runner, self._runner = self._runner, None
        self._ready_at = math.inf
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        if self._in_flight and grace_s > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace_s)
        await runner.cleanup()

    @web.middleware
    async def _track_in_flight(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self._in_flight += 1
        self._drained.clear()
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    # -- state --

    @property
    def port(self) -> int:
        if self._port is None:
            raise TestbedError(f"replica {self.key} has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self._ready_at

    @property
    def running(self) -> int:
        return self._engine.running

    @property
    def waiting(self) -> int:
        return self._engine.waiting

    @property
    def gpu_cache_usage(self) -> float:
        """vllm:gpu_cache_usage_perc: share (0-1) of the KV blocks in use."""
        return self._engine.cache_usage

    @property
    def num_preemptions(self) -> int:
        """vllm:num_preemptions_total (counted in every version, shown on /metrics from 0.4.3)."""
        return self._engine.num_preemptions

    @property
    def kv_capacity_tokens(self) -> int:
        return self._engine.total_blocks * BLOCK_TOKENS

    def busy_fraction(self) -> float:
        """Share (0-1) of the last ``window_s`` with at least one running sequence."""
        return self._engine.window_average(lambda r: 1.0 if r > 0 else 0.0)

    def sm_util(self) -> float:
        """DCGM_CUSTOM_PROCESS_SM_UTIL (0-100) over the last ``window_s`` (see module docstring)."""
        seqs = self.model.sm_saturation_seqs
        return self._engine.window_average(lambda r: sm_util_of(r, seqs))

    def set_fault(self, *, error_rate: float = 0.0, status: int = 500,
                  close_stream_after_tokens: int | None = None) -> Fault:
        """Replace the injected faults; all defaults mean "no fault"."""
        self.fault = Fault(error_rate=error_rate, status=status, close_stream_after_tokens=close_stream_after_tokens)
        return self.fault

    def metrics_text(self) -> str:
        """The Prometheus page that ``GET /metrics`` serves."""
        return self._metrics.render(self.served_model_name, self.running, self.waiting, self.gpu_cache_usage,
                                    self.num_preemptions, self.surface)

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "-"
        return f"Replica({self.key!r}, port={port}, healthy={self.healthy}, running={self.running})"

    # -- handlers --

    def _loading(self) -> web.Response | None:
        if self.healthy:
            return None
        return error_response(503, "The model is still loading.", "ServiceUnavailableError")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.engine_args.version_text}, dumps=_compact)

    async def _models(self, request: web.Request) -> web.Response:
        if (busy := self._loading()) is not None:
            return busy
        card = {
            "id": self.served_model_name, "object": "model", "created": self.created, "owned_by": "vllm",
            "root": self.model_root, "parent": None, "max_model_len": self.max_model_len,
            "permission": [{
                "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": self.created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False,
            }],
        }
        return web.json_response({"object": "list", "data": [card]}, dumps=_compact)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics_text().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if (busy := self._loading()) is not None:
            return busy
        surface = self.surface.request
        if surface.extra == "ignore":  # 0.4.1: string contents, unknown fields dropped
            old = _parse(await request.read(), ChatCompletionRequest041, surface, "chat")
            if isinstance(old, web.Response):
                return old
            assert isinstance(old, ChatCompletionRequest041)
            return await self._generate(request, kind="chat", model=old.model,
                                        prompt_tokens=estimate_chat_tokens(old.messages), max_tokens=old.max_tokens,
                                        seed=old.seed, stream=bool(old.stream), stream_options=None, where="messages")
        body = _parse(await request.read(), ChatCompletionRequest, surface, "chat")
        if isinstance(body, web.Response):
            return body
        assert isinstance(body, ChatCompletionRequest)
        prompt_tokens = estimate_chat_tokens(body.messages)
        return await self._generate(request, kind="chat", model=body.model, prompt_tokens=prompt_tokens,
                                    max_tokens=body.max_completion_tokens or body.max_tokens, seed=body.seed,
                                    stream=body.stream, stream_options=body.stream_options, where="messages")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if (busy := self._loading()) is not None:
            return busy
        surface = self.surface.request
        body = _parse(await request.read(), CompletionRequest041 if surface.extra == "ignore" else CompletionRequest,
                      surface, "completion")
        if isinstance(body, web.Response):
            return body
        assert isinstance(body, (CompletionRequest, CompletionRequest041))
        prompt = body.prompt
        if isinstance(prompt, str):
            prompt_tokens = estimate_text_tokens(prompt)
        elif prompt and isinstance(prompt[0], str):
            prompt_tokens = estimate_text_tokens(str(prompt[0]))
        elif prompt and isinstance(prompt[0], list):
            prompt_tokens = len(prompt[0])
        else:
            prompt_tokens = len(prompt)
        return await self._generate(request, kind="completion", model=body.model, prompt_tokens=prompt_tokens,
                                    max_tokens=body.max_tokens, seed=body.seed, stream=bool(body.stream),
                                    stream_options=getattr(body, "stream_options", None), where="prompt")

    async def _generate(self, request: web.Request, *, kind: Literal["chat", "completion"], model: str | None,
                        prompt_tokens: int, max_tokens: int | None, seed: int | None, stream: bool,
                        stream_options: StreamOptions | None, where: str) -> web.StreamResponse:
        if model is not None and model != self.served_model_name:
            return error_response(404, f"The model `{model}` does not exist.", "NotFoundError")
        if stream_options is not None and not stream:
            return error_response(400, "Stream options can only be defined when `stream=True`.")
        if max_tokens is None:
            if prompt_tokens >= self.max_model_len:
                return error_response(400, f"This model's maximum context length is {self.max_model_len} tokens. "
                                           f"However, you requested {prompt_tokens} tokens in the {where}, "
                                           f"Please reduce the length of the {where}.")
            n_tokens, finish_reason = min(self.model.default_max_tokens, self.max_model_len - prompt_tokens), "stop"
        else:
            if prompt_tokens + max_tokens > self.max_model_len:
                return error_response(400, f"This model's maximum context length is {self.max_model_len} tokens. "
                                           f"However, you requested {prompt_tokens + max_tokens} tokens "
                                           f"({prompt_tokens} in the {where}, {max_tokens} in the completion). "
                                           f"Please reduce the length of the {where} or completion.")
            n_tokens, finish_reason = max_tokens, "length"
        fault = self.fault
        if fault.error_rate > 0 and self._rng.random() < fault.error_rate:
            return error_response(fault.status, f"injected fault: HTTP {fault.status}")
        cut_after = fault.close_stream_after_tokens
        tokens = filler_tokens(n_tokens, seed)
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n_tokens,
                 "completion_tokens": n_tokens}
        rid = f"{'chat' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        name = self.served_model_name
        usage_last = self.surface.usage_in_last_chunk  # 0.4.x: the finish chunk carries usage

        if kind == "chat":
            def chunk(i: int) -> dict[str, Any]:
                delta: dict[str, Any] = {"content": tokens[i]}
                last = i == n_tokens - 1
                out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish_reason if last else None, "stop_reason": None}]}
                if last and usage_last:
                    out["usage"] = usage
                return out
            obj_chunk = "chat.completion.chunk"
        else:
            def chunk(i: int) -> dict[str, Any]:
                last = i == n_tokens - 1
                out = {"id": rid, "object": "text_completion", "created": created, "model": name,
                       "choices": [{"index": 0, "text": tokens[i], "logprobs": None,
                                    "finish_reason": finish_reason if last else None, "stop_reason": None}]}
                if last and usage_last:
                    out["usage"] = usage
                return out
            obj_chunk = "text_completion"

        response: web.StreamResponse | None = None
        if stream:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                   "Cache-Control": "no-cache", SERVED_BY: self.key})
            await response.prepare(request)
        metrics = self._metrics
        async with self._engine.sequence(prompt_tokens) as seq:
            for i in range(n_tokens):
                gap = await seq.next_token()
                if cut_after is not None and i >= cut_after:
                    raise _DropConnection
                if i == 0:
                    metrics.prompt_tokens += prompt_tokens
                    metrics.ttft.observe(seq.ttft_s)
                else:
                    metrics.tpot.observe(gap)
                metrics.generation_tokens += 1
                if response is not None:
                    data = _sse(chunk(i))
                    if i == 0 and kind == "chat":
                        role = {"id": rid, "object": obj_chunk, "created": created, "model": name,
                                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]}
                        data = _sse(role) + data
                    await response.write(data)
            metrics.success[finish_reason] = metrics.success.get(finish_reason, 0) + 1
            metrics.e2e.observe(time.monotonic() - seq.arrived_at)
        if response is not None:
            tail = b""
            if stream_options is not None and stream_options.include_usage:
                tail += _sse({"id": rid, "object": obj_chunk, "created": created, "model": name, "choices": [],
                              "usage": usage})
            await response.write(tail + b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        text = "".join(tokens)
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                      "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
            obj = "text_completion"
        return web.json_response({"id": rid, "object": obj, "created": created, "model": name,
                                  "choices": [choice], "usage": usage}, dumps=_compact, headers={SERVED_BY: self.key})


class ReplicaPool:
    """The emulated model servers of the test bed, keyed by pod (e.g. ``namespace/name``).

    Ports are handed out from ``base_port`` upwards, skipping ports in use; ``base_port=0``
    lets the OS choose (tests). ``model`` is shared, so changing it changes every replica.

    >>> pool = ReplicaPool(EmulatorModel(), base_port=20000)              # doctest: +SKIP
    >>> r = await pool.add("default/qwen-0", served_model_name="qwen",
    ...                    model_root="/mnt/models/qwen", labels={})      # doctest: +SKIP
    >>> r.url, r.healthy                                                  # doctest: +SKIP
    ('http://127.0.0.1:20000', False)
    """

    def __init__(self, model: EmulatorModel, *, base_port: int = 20000, max_model_len: int = 4096,
                 window_s: float = 10.0, seed: int | None = None, port_search: int = 1000):
        self.model = model
        self.base_port = base_port
        self.max_model_len = max_model_len
        self.window_s = window_s
        self._seed = seed
        self._port_search = port_search
        self._replicas: dict[str, Replica] = {}
        self._lock = asyncio.Lock()

    async def add(self, key: str, *, served_model_name: str, model_root: str,
                  labels: dict[str, str] | None = None, image: str | None = None, argv: Sequence[str] = (),
                  vllm_version: str | None = None) -> Replica:
        """Start a replica for ``key`` (loading for ``load_delay_s``); an existing one is returned as is.

        ``image`` (its tag) or ``vllm_version`` picks the vLLM version it behaves like, ``argv`` (the
        container's command + args) its engine flags; TestbedError for a flag that is not a number.
        """
        async with self._lock:
            if key in self._replicas:
                return self._replicas[key]
            seed = None if self._seed is None else self._seed + len(self._replicas)
            engine = engine_args(self.model, image=image, argv=argv, version=vllm_version,
                                 default_max_model_len=self.max_model_len, names=[model_root, served_model_name])
            replica = Replica(key, served_model_name=served_model_name, model_root=model_root, labels=labels or {},
                              model=self.model, max_model_len=self.max_model_len, window_s=self.window_s, seed=seed,
                              engine=engine)
            await self._bind(replica)
            self._replicas[key] = replica
            return replica

    async def _bind(self, replica: Replica) -> None:
        if self.base_port == 0:
            await replica.start()
            return
        taken = {r.port for r in self._replicas.values()}
        for port in range(self.base_port, min(self.base_port + self._port_search, 65536)):
            if port in taken:
                continue
            replica._requested_port = port
            try:
                await replica.start()
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise TestbedError(f"replica {replica.key}: cannot listen on {LOOPBACK}:{port}: {exc}") from exc
        raise PortInUse(f"replica {replica.key}: no free port in {self.base_port}..{self.base_port + self._port_search - 1}")

    async def remove(self, key: str, *, grace_s: float = 5.0) -> None:
        """Stop ``key``'s replica (in-flight requests get ``grace_s`` to finish); unknown keys are ignored."""
        replica = self._replicas.pop(key, None)
        if replica is not None:
            await replica.stop(grace_s)

    def get(self, key: str) -> Replica | None:
        return self._replicas.get(key)

    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    def set_fault(self, key: str, *, error_rate: float = 0.0, status: int = 500,
                  close_stream_after_tokens: int | None = None) -> Fault:
        """Set ``key``'s injected faults (all defaults: none). KeyError for an unknown key."""
        return self._replicas[key].set_fault(error_rate=error_rate, status=status,
                                             close_stream_after_tokens=close_stream_after_tokens)

    async def close(self, *, grace_s: float = 0.0) -> None:
        """Stop every replica."""
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r.stop(grace_s) for r in replicas))

    async def __aenter__(self) -> ReplicaPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --- manual entry point ---

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from testbed.config import Ports

    ports = Ports()
    p = argparse.ArgumentParser(prog="python -m testbed.emulator",
                                description="Serve emulated vLLM replicas behind the Host-routing gateway.")
    p.add_argument("--replicas", type=int, default=1, help="number of replicas (default 1)")
    p.add_argument("--base-port", type=int, default=ports.replica_base, help="first replica port")
    p.add_argument("--gateway-port", type=int, default=ports.gateway, help="gateway port (0: none)")
    p.add_argument("--host", default="qwen-chat-default.example.com", help="Host the gateway routes to the replicas")
    p.add_argument("--served-model-name", default="qwen")
    p.add_argument("--model-root", default="/mnt/models/qwen")
    p.add_argument("--vllm-version", default=None, metavar="X.Y.Z",
                   help="behave like this vLLM version (its OpenAI surface and /metrics); default: the newest "
                        f"modelled, {'.'.join(map(str, NEWEST_VERSION))}")
    p.add_argument("--vllm-args", default="", metavar="'--max-model-len N ...'",
                   help="vLLM engine flags as in the pod's command (--max-model-len, --gpu-memory-utilization, "
                        "--max-num-seqs, --max-num-batched-tokens, --enable-chunked-prefill, --quantization, --model)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override an EmulatorModel field, e.g. load_delay_s=0")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    from testbed.gateway import Gateway

    fields: dict[str, str] = {}
    for assignment in args.set:
        field, _, value = assignment.partition("=")
        fields[field] = value
    try:
        model = EmulatorModel.model_validate(fields)
    except ValidationError as exc:
        raise TestbedError(f"--set: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    if args.vllm_version is not None and parse_version(args.vllm_version) is None:
        raise TestbedError(f"--vllm-version {args.vllm_version!r}: expected X.Y.Z, e.g. 0.4.1")
    async with ReplicaPool(model, base_port=args.base_port) as pool:
        for i in range(args.replicas):
            replica = await pool.add(f"default/{args.served_model_name}-{i}", served_model_name=args.served_model_name,
                                     model_root=args.model_root, labels={}, vllm_version=args.vllm_version,
                                     argv=shlex.split(args.vllm_args))
            e = replica.engine_args
            print(f"replica {replica.key}: {replica.url} (vLLM {e.version_text}, {e.model_key}, "
                  f"max_model_len {e.max_model_len}, max_num_seqs {e.max_num_seqs}, "
                  f"KV cache {replica.kv_capacity_tokens} tokens)", flush=True)
        gateway = Gateway(port=args.gateway_port) if args.gateway_port else None
        if gateway is not None:
            await gateway.start()
            print(f"gateway: {gateway.url} (Host: {args.host})", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            while not stop.is_set():
                if gateway is not None:
                    gateway.set_routes({args.host: [r.url for r in pool.replicas() if r.healthy]})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
        finally:
            if gateway is not None:
                await gateway.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0
    except TestbedError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    # Run the importable module's code, not this __main__ copy: one set of classes per process.
    from testbed.emulator import main as _main

    sys.exit(_main())
