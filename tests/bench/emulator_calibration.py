"""``make bench-emulator``: the vLLM emulator's latency model against published vLLM figures.

For each published figure (docs/realism.md, "vLLM emulator calibration", cites them) the bench
prints what the model predicts (the formula of testbed/emulator.py with the preset's
EmulatorModel), what the emulator measures when driven the same way (closed loop at the
published concurrency, short bounded runs), and both errors in percent. Then the same for the
prefill term (TTFT at 2,000 vs 100 prompt tokens) and for the KV cache (capacity from the
engine flags, preemptions once it is full).

Presets: ``a6000-qwen2.5-7b`` (fitted to the published sweep) and ``fast`` (the test bed's
default, whose decode slope is kept steep on purpose: the demos' HPA needs it). Only the
emulator runs here, no test bed. Bounded: every driven point stops after ``--seconds``.

    .venv/bin/python -m tests.bench.emulator_calibration [--seconds 6] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from testbed.config import EmulatorModel
from testbed.emulator import MODEL_SIZES, ReplicaPool, engine_args

# ld-singh, "Inference Benchmark Report" (ai-factory-ops-lab, 2026-06-27): Qwen/Qwen2.5-7B-Instruct,
# vLLM v0.23.0, one RTX A6000 48 GB, closed loop, ~52 output tokens per request. p50 figures.
PUBLISHED_SWEEP = {  # concurrency: (TTFT p50 ms, TPOT p50 ms)
    1: (47.0, 21.9), 64: (87.0, 27.5), 128: (126.0, 36.0), 256: (299.0, 53.1)}
PUBLISHED_OUTPUT_TOKENS = 52
ASSUMED_PROMPT_TOKENS = 32  # the harness's prompt length is not published

# llm-d token-aware KEDA guide: calibrated prefill rate V_P = 15,928 tok/s, Qwen3-32B on 2 x H100.
# Scaled by dense fp16 peak (H100 SXM 989 TFLOPS x 2; A6000 154.8; A10 125) and 2 x params FLOPs a
# token: MFU = 15928 * 2 * 32.8e9 / 1.978e15 = 52.8 %, so the same MFU gives:
LLMD_PREFILL_TOK_S = 15_928.0
LLMD_MFU = LLMD_PREFILL_TOK_S * 2 * 32.8e9 / (2 * 989e12)
PREFILL_A6000_QWEN25_7B = LLMD_MFU * 154.8e12 / (2 * 7.6e9)
PREFILL_A10_QWEN_7B = LLMD_MFU * 125e12 / (2 * 7.7e9)

PRESETS: dict[str, dict[str, Any]] = {
    "a6000-qwen2.5-7b": dict(ttft_base_ms=40.0, ttft_per_running_ms=0.6, prefill_tokens_per_s=round(PREFILL_A6000_QWEN25_7B),
                             itl_base_ms=21.9, itl_per_running_ms=0.118, model_size="qwen2-7b", gpu_memory_gib=48.0,
                             gpu_memory_bandwidth_gb_s=768.0, load_delay_s=0),
    "fast": dict(load_delay_s=0),
}


@dataclass
class Point:
    what: str
    published: float
    modelled: float
    measured: float | None

    def err(self, value: float | None) -> str:
        return "-" if value is None else f"{(value - self.published) / self.published * 100:+.1f}%"


def modelled_tpot_ms(model: EmulatorModel, running: int, context_tokens: int) -> float:
    """The decode gap of testbed/emulator.py with ``running`` sequences holding ``context_tokens``."""
    size = MODEL_SIZES[model.model_size]
    per_1k = model.itl_per_1k_context_ms if model.itl_per_1k_context_ms is not None \
        else size.kv_bytes_per_token() * 1000 / (model.gpu_memory_bandwidth_gb_s * 1e9) * 1000
    return model.itl_base_ms + model.itl_per_running_ms * (running - 1) + per_1k * context_tokens / 1000


def modelled_ttft_ms(model: EmulatorModel, prompt_tokens: int, others: int) -> float:
    return model.ttft_base_ms + model.ttft_per_running_ms * others + prompt_tokens / model.prefill_tokens_per_s * 1000


async def drive(model: EmulatorModel, concurrency: int, seconds: float, *, prompt_tokens: int,
                output_tokens: int) -> tuple[float, float]:
    """Closed loop at ``concurrency`` for ~``seconds``: (median TTFT ms, median TPOT ms) after warm-up."""
    ttfts: list[float] = []
    tpots: list[float] = []
    async with ReplicaPool(model, base_port=0, seed=1) as pool:
        replica = await pool.add("bench/qwen-0", served_model_name="qwen", model_root="/mnt/models/qwen")
        body = {"model": "qwen", "prompt": list(range(prompt_tokens)), "max_tokens": output_tokens, "stream": True}
        conn = aiohttp.TCPConnector(limit=concurrency + 4)
        start = time.monotonic()
        warm = start + min(3.0, seconds / 2)
        async with aiohttp.ClientSession(connector=conn) as session:
            # users start spread over one request's duration, as a long-running closed loop ends up:
            # identical requests started together would stay in lockstep and queue their prefills
            e2e_s = (modelled_ttft_ms(model, prompt_tokens, concurrency - 1)
                     + output_tokens * modelled_tpot_ms(model, concurrency, 0)) / 1000

            async def user(i: int) -> None:
                await asyncio.sleep(e2e_s * i / concurrency)
                while time.monotonic() - start < seconds:
                    sent = time.monotonic()
                    times: list[float] = []
                    async with session.post(replica.url + "/v1/completions", json=body) as resp:
                        async for raw in resp.content:
                            if raw.startswith(b"data: {"):
                                times.append(time.monotonic())
                    if sent >= warm and len(times) >= 2:
                        ttfts.append((times[0] - sent) * 1000)
                        tpots.append((times[-1] - times[0]) / (len(times) - 1) * 1000)
            await asyncio.gather(*(user(i) for i in range(concurrency)))
    return statistics.median(ttfts), statistics.median(tpots)


async def prefill_points(model: EmulatorModel) -> tuple[float, float]:
    async with ReplicaPool(model, base_port=0, seed=1) as pool:
        replica = await pool.add("bench/qwen-0", served_model_name="qwen", model_root="/mnt/models/qwen")
        async with aiohttp.ClientSession() as session:
            async def ttft(n: int) -> float:
                body = {"model": "qwen", "prompt": list(range(n)), "max_tokens": 2, "stream": True}
                sent = time.monotonic()
                async with session.post(replica.url + "/v1/completions", json=body) as resp:
                    async for raw in resp.content:
                        if raw.startswith(b"data: {"):
                            return (time.monotonic() - sent) * 1000
                raise RuntimeError("no token")
            await ttft(10)
            short = statistics.median([await ttft(100) for _ in range(3)])
            long_ = statistics.median([await ttft(2000) for _ in range(3)])
    return short, long_


async def main_async(seconds: float, max_concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {"points": [], "prefill": {}, "kv": {}}
    name = "a6000-qwen2.5-7b"
    model = EmulatorModel(**PRESETS[name])
    print(f"== {name}: published sweep (ld-singh, vLLM v0.23.0, RTX A6000, Qwen2.5-7B-Instruct, p50) ==")
    print(f"{'figure':28} {'published':>10} {'model':>9} {'err':>8} {'emulator':>9} {'err':>8}")
    for conc, (ttft_pub, tpot_pub) in PUBLISHED_SWEEP.items():
        context = conc * (ASSUMED_PROMPT_TOKENS + PUBLISHED_OUTPUT_TOKENS // 2)
        measured = await drive(model, conc, seconds, prompt_tokens=ASSUMED_PROMPT_TOKENS,
                               output_tokens=PUBLISHED_OUTPUT_TOKENS) if conc <= max_concurrency else (None, None)
        for what, pub, mod, mea in (
                (f"TPOT ms @ concurrency {conc}", tpot_pub, modelled_tpot_ms(model, conc, context), measured[1]),
                (f"TTFT ms @ concurrency {conc}", ttft_pub, modelled_ttft_ms(model, ASSUMED_PROMPT_TOKENS, conc - 1),
                 measured[0])):
            p = Point(what, pub, mod, mea)
            print(f"{what:28} {pub:10.1f} {mod:9.1f} {p.err(mod):>8} "
                  f"{'-' if mea is None else f'{mea:9.1f}':>9} {p.err(mea):>8}")
            out["points"].append({"preset": name, "figure": what, "published": pub, "modelled": round(mod, 2),
                                  "measured": None if mea is None else round(mea, 2),
                                  "model_err_pct": round((mod - pub) / pub * 100, 1),
                                  "emulator_err_pct": None if mea is None else round((mea - pub) / pub * 100, 1)})

    print("\n== prefill: TTFT at 2,000 vs 100 prompt tokens, concurrency 1 ==")
    for name, derived in (("a6000-qwen2.5-7b", PREFILL_A6000_QWEN25_7B), ("fast", PREFILL_A10_QWEN_7B)):
        model = EmulatorModel(**PRESETS[name])
        short, long_ = await prefill_points(model)
        measured_rate = 1900 / ((long_ - short) / 1000)
        err_model = (model.prefill_tokens_per_s - derived) / derived * 100
        err_meas = (measured_rate - model.prefill_tokens_per_s) / model.prefill_tokens_per_s * 100
        print(f"{name:18} TTFT {short:6.1f} -> {long_:6.1f} ms (x{long_ / short:.2f}); prefill {measured_rate:7.0f} tok/s "
              f"measured vs {model.prefill_tokens_per_s:.0f} configured ({err_meas:+.1f}%) vs {derived:.0f} derived from "
              f"llm-d's V_P ({err_model:+.1f}%)")
        out["prefill"][name] = {"ttft_100_ms": round(short, 1), "ttft_2000_ms": round(long_, 1),
                                "measured_tok_s": round(measured_rate), "configured_tok_s": model.prefill_tokens_per_s,
                                "derived_tok_s": round(derived), "configured_vs_derived_pct": round(err_model, 1),
                                "measured_vs_configured_pct": round(err_meas, 1)}

    print("\n== KV cache: the seed's command on an A10 (24 GiB) ==")
    fast = EmulatorModel()
    cmd = ["--gpu-memory-utilization", "0.95", "--quantization", "gptq", "--max-model-len=6144"]
    for model_path in ("/mnt/models/Qwen", "/mnt/models/Qwen-7B-Chat-Int8", "/mnt/models/Qwen2.5-7B-Instruct"):
        args = engine_args(fast, argv=[*cmd, "--model", model_path], version="0.4.1")
        tokens = args.kv_tokens(fast)
        print(f"{model_path:34} {args.model_key:9} {tokens:7d} KV tokens = {tokens // 6144} full 6144-token sequences")
        out["kv"][model_path] = {"model_key": args.model_key, "kv_tokens": tokens}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.emulator_calibration", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="length of each driven point (default 6)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="drive the emulator only up to this concurrency (the 2-core CI box; default 64)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    out = asyncio.run(main_async(args.seconds, args.max_concurrency))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
