"""Benchmark of the spike stage's load generator (``python -m tests.bench.load [--quick]``).

Serves emulated vLLM replicas behind the test bed's gateway in a subprocess
(``python -m testbed.emulator``, free loopback ports) and measures, in the same run:

1. Non-streamed requests/s against a fast endpoint (no TTFT, 0.1 ms per token, 4 tokens):
   ``hey -z 10s -c 20`` vs tidegate's generator (``tasks.load.run_load``, 20 users, one
   process and master + 2 workers) vs stock Locust ``FastHttpUser`` (one process), in
   interleaved rounds; printed as ratios of median requests/s to hey's, with each client's
   CPU time per request (the figure the box's other load disturbs least).
2. Streaming fidelity: against a replica configured for TTFT 50 ms and ITL 20 ms at any
   load (no batching penalty), the measured TTFT/ITL p50 at 1, 30, 50, 100 (and 200 without
   ``--quick``) concurrent streams, their error against the configuration, the streamed
   tokens/s taken in, the CPU of the generator and of the server process, and the generator's
   own event-loop lag (its share of every latency it reports). Where the error passes 5 % the
   numbers are bent, by the generator or by the server sharing the box; the loop lag tells which.

"client-server TTFT" is the mean client TTFT minus the replica's own mean (request arrival to
first token, from its vllm:time_to_first_token_seconds histogram): the HTTP path through the
gateway plus the generator's own delay. Everything runs on loopback; nothing needs the
Kubernetes test bed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil

from tasks.load import run_load
from tasks.spec import LoadSpec

HOST = "qwen-chat-default.example.com"
FAST = {"load_delay_s": 0, "ttft_base_ms": 0, "ttft_per_running_ms": 0, "itl_base_ms": 0.1,
        "itl_per_running_ms": 0, "max_num_seqs": 1024, "prefill_tokens_per_s": 1e9, "itl_per_1k_context_ms": 0,
        "gpu_memory_gib": 1024}
STREAM = {"load_delay_s": 0, "ttft_base_ms": 50, "ttft_per_running_ms": 0, "itl_base_ms": 20,
          "itl_per_running_ms": 0, "max_num_seqs": 1024}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator(model: dict[str, float], replicas: int = 1) -> Iterator[tuple[str, psutil.Process, list[str]]]:
    """Replicas + gateway in their own process; yields (gateway URL, its process, replica URLs)."""
    gw, base = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "testbed.emulator", "--replicas", str(replicas), "--base-port", str(base),
           "--gateway-port", str(gw), "--host", HOST]
    for k, v in model.items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{gw}"
    try:
        backends = []
        assert proc.stdout is not None
        for line in proc.stdout:  # "replica <key>: <url>" lines, then "gateway: ..."
            if line.startswith("replica "):
                backends.append(line.rsplit(" ", 1)[1].strip())
            if line.startswith("gateway:"):
                break
        until = time.time() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/models", headers={"Host": HOST}, timeout=1).status_code == 200:
                    break
            if time.time() > until or proc.poll() is not None:
                raise RuntimeError(f"emulator did not come up: {proc.stderr.read()[-400:] if proc.stderr else ''}")
            time.sleep(0.2)
        yield url, psutil.Process(proc.pid), backends
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def server_ttft(backends: list[str]) -> tuple[float, float]:
    """(sum of seconds, count) of the replicas' own TTFT histogram (arrival to first token)."""
    total = count = 0.0
    for b in backends:
        text = httpx.get(b + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("vllm:time_to_first_token_seconds_sum"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:time_to_first_token_seconds_count"):
                count += float(line.rsplit(" ", 1)[1])
    return total, count


def body(max_tokens: int, stream: bool) -> dict:
    doc = {"model": "qwen", "messages": [{"role": "user", "content": "Explain in three sentences why the tide rises and falls."}],
           "max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.9, "seed": 10, "stream": stream}
    if stream:
        doc["stream_options"] = {"include_usage": True}
    return doc


@contextlib.contextmanager
def child_cpu() -> Iterator[dict[str, float]]:
    """CPU seconds (user + system) of the child processes waited for inside the block."""
    box: dict[str, float] = {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield box
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    box["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def hey_run(url: str, seconds: int, conc: int) -> tuple[float, int]:
    """(requests/s, requests) of ``hey -z <seconds>s -c <conc>``, non-streamed."""
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(conc), "-m", "POST", "-T", "application/json",
                          "-d", json.dumps(body(4, False)), "-host", HOST, url + "/v1/chat/completions"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    codes = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
    if not m or not codes or any(code != "200" for code, _ in codes):
        raise RuntimeError(f"hey: unexpected output: {out[-600:]}")
    return float(m.group(1)), sum(int(n) for _, n in codes)


STEADY_CPU: dict[str, list[float]] = {}


def tidegate_run(url: str, seconds: int, users: int, workers: int, out: Path) -> tuple[float, int]:
    load = LoadSpec(stream=False, baseline_s=0, baseline_users=0, spike_users=users, spawn_rate=1000,
                    spike_s=seconds, hold_s=0, cooldown_s=0, max_tokens=4, workers=workers, request_timeout_s=30)
    res = run_load(load, out, base_url=url, host=HOST)
    s = res.summary
    if s["error_rate"]:
        raise RuntimeError(f"tidegate generator saw errors: {s['errors']}")
    STEADY_CPU.setdefault(f"workers={workers}", []).append(1e6 * s["generator"]["cpu_seconds"] / max(1, s["requests"]))
    return float(s["rps"]), int(s["requests"])


STOCK_LOCUSTFILE = """
import json
from locust import FastHttpUser, task, constant
BODY = {body}
class Chat(FastHttpUser):
    wait_time = constant(0)
    @task
    def chat(self):
        self.client.post("/v1/chat/completions", data=BODY,
                         headers={{"Host": "{host}", "Content-Type": "application/json"}})
"""


def stock_locust_run(url: str, seconds: int, users: int, tmp: Path) -> tuple[float, int]:
    locustfile = tmp / "stock_locustfile.py"
    locustfile.write_text(STOCK_LOCUSTFILE.format(body=repr(json.dumps(body(4, False))), host=HOST))
    locust = Path(sys.executable).with_name("locust")
    for old in tmp.glob("stock_*.csv"):
        old.unlink()
    run = subprocess.run([str(locust), "-f", str(locustfile), "--headless", "-u", str(users), "-r", "1000",
                          "-t", f"{seconds}s", "--host", url, "--csv", str(tmp / "stock"), "--only-summary",
                          "--loglevel", "WARNING"], capture_output=True, text=True, timeout=seconds + 60)
    if not (tmp / "stock_stats.csv").exists():
        raise RuntimeError(f"stock locust failed: {run.stderr[-600:]}")
    with open(tmp / "stock_stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    agg = next(r for r in rows if r["Name"] == "Aggregated")
    return float(agg["Requests/s"]), int(agg["Request Count"])


def fidelity(url: str, server: psutil.Process, backends: list[str], users: int, seconds: int, out: Path) -> dict:
    # users join over one second (as in a real ramp), so their requests are not in lock-step
    load = LoadSpec(stream=True, baseline_s=0, baseline_users=0, spike_users=users, spawn_rate=max(1, users),
                    spike_s=seconds, hold_s=0, cooldown_s=0, max_tokens=64, request_timeout_s=60)
    server.cpu_percent()
    s0, c0 = server_ttft(backends)
    res = run_load(load, out, base_url=url, host=HOST)
    s1, c1 = server_ttft(backends)
    server_cpu = server.cpu_percent()
    s = res.summary
    ok = res.requests[res.requests["ok"]]
    # steady state: skip requests sent during the ramp and the first second after it
    req = ok[ok["t_s"] >= 2.0]
    gaps = res.itl[res.itl["request"].isin(req["id"])]["itl_ms"]
    ttft = float(req["ttft_ms"].median()) if len(req) else float("nan")
    itl = float(gaps.median()) if len(gaps) else float("nan")
    server_mean = 1000 * (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")
    return {"users": users, "requests": s["requests"], "errors": s["failures"],
            "ttft_p50_ms": round(ttft, 2), "ttft_err_pct": round(100 * (ttft - STREAM["ttft_base_ms"]) / STREAM["ttft_base_ms"], 1),
            "ttft_client_minus_server_mean_ms": round(float(ok["ttft_ms"].mean()) - server_mean, 2),
            "itl_p50_ms": round(itl, 2), "itl_err_pct": round(100 * (itl - STREAM["itl_base_ms"]) / STREAM["itl_base_ms"], 1),
            "itl_p95_ms": s["itl_p95_ms"], "tokens_per_s": s["output_tokens_per_s"],
            "generator_cpu_mean": s["generator"].get("cpu_mean_percent"),
            "generator_cpu_max": s["generator"].get("cpu_max_percent"),
            "generator_loop_lag_p99_ms": s["generator"].get("loop_lag_p99_ms"), "server_cpu": round(server_cpu, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter runs, no 200-stream point")
    p.add_argument("--seconds", type=int, default=10, help="length of each throughput run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the throughput runs")
    args = p.parse_args(argv)
    if not shutil.which("hey"):
        print("hey is not installed (Debian package hey)", file=sys.stderr)
        return 2
    secs = 5 if args.quick else args.seconds
    tmp = Path(tempfile.mkdtemp(prefix="tidegate-bench-load-"))
    print(f"cores: {os.cpu_count()}; runs of {secs}s; scratch {tmp}")
    tools: dict[str, Callable[[str], tuple[float, int]]] = {
        "hey": lambda url: hey_run(url, secs, 20),
        "tidegate, 1 process": lambda url: tidegate_run(url, secs, 20, 0, tmp / "tg1"),
        "tidegate, master + 2 workers": lambda url: tidegate_run(url, secs, 20, 2, tmp / "tg2"),
        "stock Locust FastHttpUser": lambda url: stock_locust_run(url, secs, 20, tmp),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    with emulator(FAST) as (url, _server, _backends):
        for _ in range(args.rounds):  # interleaved, so that the box's other load hits every tool alike
            for name, run in tools.items():
                with child_cpu() as cpu:
                    rps, n = run(url)
                runs[name].append((rps, 1e6 * cpu["cpu_s"] / max(n, 1)))
    med = {name: statistics.median(r for r, _ in rr) for name, rr in runs.items()}
    print(f"\nnon-streamed requests/s, 20 concurrent, fast endpoint behind the gateway, {args.rounds} round(s)")
    for name, rr in runs.items():
        each = " / ".join(f"{r:.0f}" for r, _ in rr)
        cpu_us = statistics.median(c for _, c in rr)
        print(f"  {name:30} {med[name]:7.0f} rps (runs {each})  ratio to hey {med[name] / med['hey']:.2f}  "
              f"client CPU {cpu_us:5.0f} us/request")
    for key, values in STEADY_CPU.items():
        print(f"  tidegate ({key}) while the shape ran, start-up excluded: {statistics.median(values):.0f} us/request")
    levels = [1, 30, 50, 100] + ([] if args.quick else [200])
    rows = []
    with emulator(STREAM) as (url, server, backends):
        for users in levels:
            rows.append(fidelity(url, server, backends, users, 6 if args.quick else 10, tmp / f"fid{users}"))
    print("\nstreaming fidelity: replica set to TTFT 50 ms, ITL 20 ms at any load; 64 tokens per request")
    for r in rows:
        print(f"  {r['users']:>4} streams: TTFT p50 {r['ttft_p50_ms']:7.2f} ms ({r['ttft_err_pct']:+5.1f}%), "
              f"client-server TTFT {r['ttft_client_minus_server_mean_ms']:5.2f} ms, ITL p50 {r['itl_p50_ms']:6.2f} ms "
              f"({r['itl_err_pct']:+5.1f}%), ITL p95 {r['itl_p95_ms']} ms, {r['tokens_per_s']:.0f} tok/s, "
              f"CPU generator {r['generator_cpu_mean']}% / server {r['server_cpu']}%, generator loop lag p99 "
              f"{r['generator_loop_lag_p99_ms']} ms, {r['errors']} errors")
    print(json.dumps({"rps_median": med, "ratio_to_hey": {k: round(v / med["hey"], 3) for k, v in med.items()},
                      "cpu_us_per_request": {k: round(statistics.median(c for _, c in rr)) for k, rr in runs.items()},
                      "fidelity": rows}))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
