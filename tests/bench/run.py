"""``make bench``: the test bed's figures, each against a peer measured in the same run.

1. Gateway overhead: requests/s and p50 latency through the Host gateway vs straight to one
   emulator replica, both with ``hey`` (the seed's tool), same body, same concurrency.
2. Emulator fidelity: at concurrency 1, measured TTFT and inter-token latency vs the
   configured latency model (the peer is the model itself: deviation in percent).
3. Test bed: warm ``tidegate testbed up`` to all components ready (seconds), and a 500-node
   IDC pool: time until every node is Ready and kube-apiserver's resident memory, on a private
   test bed (own state dir and ports) so the shared one is not disturbed.

Prints a table and, as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BODY = {"model": "qwen", "messages": [{"role": "user", "content": "测试一下"}], "max_tokens": 10,
        "temperature": 0.7, "top_p": 0.9, "seed": 10}
HOST = "qwen-chat-default.example.com"


def _hey(url: str, *, host: str | None, seconds: int = 8, conc: int = 5) -> dict:
    hey = shutil.which("hey")
    if not hey:
        raise SystemExit("bench: `hey` is missing: apt-get install -y hey")
    cmd = [hey, "-z", f"{seconds}s", "-c", str(conc), "-m", "POST", "-T", "application/json", "-d", json.dumps(BODY)]
    if host:
        cmd += ["-host", host]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    ok = re.search(r"\[200\]\s+(\d+) responses", out)
    return {"rps": rps, "p50_ms": float(p50.group(1)) * 1000 if p50 else None,
            "ok_responses": int(ok.group(1)) if ok else 0, "command": " ".join(cmd[:-1] + ["<url>"])}


async def _serve(model, replicas: int, gateway: bool):
    from testbed.emulator import ReplicaPool
    from testbed.gateway import Gateway

    pool = ReplicaPool(model, base_port=0)
    reps = [await pool.add(f"default/r{i}", served_model_name="qwen", model_root="/mnt/models/Qwen")
            for i in range(replicas)]
    gw = None
    if gateway:
        gw = Gateway(port=0)
        await gw.start()
        gw.set_routes({HOST: [r.url for r in reps]})
    return pool, reps, gw


def _run_servers_in_subprocess(args: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.run", "--serve", *args], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    return proc, json.loads(line)


def serve_main(argv: list[str]) -> None:
    """Child process: serve emulator replicas (and a gateway) until killed; print ports."""
    from testbed.config import EmulatorModel

    fast = "--fast" in argv
    model = EmulatorModel(load_delay_s=0, ttft_base_ms=0.5 if fast else 60, ttft_per_running_ms=0 if fast else 8,
                          itl_base_ms=0.1 if fast else 20, itl_per_running_ms=0 if fast else 1.5,
                          **({"prefill_tokens_per_s": 1e9, "itl_per_1k_context_ms": 0} if fast else {}))

    async def main() -> None:
        pool, reps, gw = await _serve(model, 1, gateway=True)
        deadline = time.monotonic() + 10
        while not all(r.healthy for r in reps) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        print(json.dumps({"replica": reps[0].url, "gateway": gw.url}), flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())


def bench_gateway() -> dict:
    out = {}
    for label, flag in (("near_zero_model", ["--fast"]), ("default_model", [])):
        # gateway and replica in one process, as in the test-bed daemon; hey in its own
        proc, urls = _run_servers_in_subprocess(flag)
        try:
            direct = _hey(f"{urls['replica']}/v1/chat/completions", host=None)
            via = _hey(f"{urls['gateway']}/v1/chat/completions", host=HOST)
        finally:
            proc.kill()
            proc.wait()
        out[label] = {"direct": direct, "gateway": via, "rps_ratio": round(via["rps"] / direct["rps"], 3),
                      "added_p50_ms": round((via["p50_ms"] or 0) - (direct["p50_ms"] or 0), 2)}
    return out


def bench_fidelity() -> dict:
    from testbed.config import EmulatorModel

    # the batch terms alone: prefill and context (make bench-emulator) would blur the comparison
    model = EmulatorModel(load_delay_s=0, ttft_base_ms=60, itl_base_ms=20, prefill_tokens_per_s=1e9,
                          itl_per_1k_context_ms=0)

    async def main() -> dict:
        pool, reps, _ = await _serve(model, 1, gateway=False)
        url = reps[0].url
        ttfts, itls = [], []
        async with httpx.AsyncClient(timeout=30) as c:
            for i in range(12):
                body = dict(BODY, max_tokens=32, stream=True)
                t0 = time.perf_counter()
                last = None
                first = None
                async with c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if not line.startswith("data:") or "[DONE]" in line:
                            continue
                        chunk = json.loads(line[5:])
                        if any((ch.get("delta") or {}).get("content") for ch in chunk.get("choices") or []):
                            now = time.perf_counter()
                            if first is None:
                                first = now
                            elif last is not None:
                                itls.append((now - last) * 1000)
                            last = now
                if i > 1:  # warm-up
                    ttfts.append((first - t0) * 1000)
        await pool.close()
        return {"configured_ttft_ms": 60.0, "configured_itl_ms": 20.0,
                "ttft_p50_ms": round(statistics.median(ttfts), 2), "itl_p50_ms": round(statistics.median(itls), 2),
                "ttft_dev_pct": round((statistics.median(ttfts) - 60) / 60 * 100, 2),
                "itl_dev_pct": round((statistics.median(itls) - 20) / 20 * 100, 2)}

    return asyncio.run(main())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def bench_testbed() -> dict:
    from testbed import cluster
    from testbed.config import load_config
    from testbed.procs import ProcessTable

    state = Path(tempfile.mkdtemp(prefix="tidegate-bench-tb-"))
    ports = {"etcd_client": 42379, "etcd_peer": 42380, "apiserver": 46443, "controller_manager": 40257,
             "scheduler": 40259, "kwok": 40247, "autoscaler": 48085, "metrics_adapter": 46444, "daemon": 48080,
             "webhook": 48443, "gateway": 48000, "oss": 48333, "seaweed_s3": 37334, "seaweed_master": 37333,
             "seaweed_volume": 37081, "seaweed_filer": 37888, "replica_base": 50000}
    sets = [f"state_dir={state}"] + [f"ports.{k}={v}" for k, v in ports.items()]
    out: dict = {}
    try:
        cfg = load_config(sets)
        cold = cluster.up(cfg, log=lambda *_: None)  # first start: PKI, CRDs, empty data dirs
        cluster.down(cfg, log=lambda *_: None)
        warm = cluster.up(cfg, log=lambda *_: None)
        out["up_first_s"] = cold["total"]
        out["up_warm_s"] = warm["total"]
        out["up_warm_per_component_s"] = {k: v for k, v in warm.items() if k != "total"}
        cluster.down(cfg, log=lambda *_: None)
        # 500 IDC nodes: control plane + kwok + autoscaler only (no data plane needed)
        cfg500 = load_config(sets + ["idc.nodes=500"])
        t0 = time.monotonic()
        timings = cluster.up(cfg500, log=lambda *_: None, components=cluster.CONTROL_PLANE)
        out["nodes500_up_s"] = timings["total"]
        out["nodes500_kwok_ready_s"] = timings.get("kwok")
        table = ProcessTable(cfg500.run_dir, cfg500.log_dir)
        out["nodes500_apiserver_rss_mb"] = _rss_mb(table.pid("kube-apiserver"))
        out["nodes500_etcd_rss_mb"] = _rss_mb(table.pid("etcd"))
        out["nodes500_kwok_rss_mb"] = _rss_mb(table.pid("kwok"))
        out["nodes500_autoscaler_rss_mb"] = _rss_mb(table.pid("cluster-autoscaler"))
        out["nodes500_total_s"] = round(time.monotonic() - t0, 2)
        cluster.down(cfg500, log=lambda *_: None)
    finally:
        try:
            cluster.down(load_config(sets), log=lambda *_: None)
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(state, ignore_errors=True)
    return out


def main() -> None:
    if "--serve" in sys.argv:
        serve_main(sys.argv[2:])
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    results: dict = {}
    only = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not only or "gateway" in only:
        results["gateway"] = bench_gateway()
    if not only or "fidelity" in only:
        results["fidelity"] = bench_fidelity()
    if not only or "testbed" in only:
        results["testbed"] = bench_testbed()
    if "gateway" in results:
        for label, g in results["gateway"].items():
            print(f"gateway[{label}]: direct {g['direct']['rps']:.0f} rps p50 {g['direct']['p50_ms']:.1f} ms | "
                  f"via gateway {g['gateway']['rps']:.0f} rps p50 {g['gateway']['p50_ms']:.1f} ms | "
                  f"ratio {g['rps_ratio']} | +{g['added_p50_ms']} ms p50")
    if "fidelity" in results:
        f = results["fidelity"]
        print(f"emulator fidelity @c=1: TTFT {f['ttft_p50_ms']} ms (configured 60, {f['ttft_dev_pct']:+}%), "
              f"ITL {f['itl_p50_ms']} ms (configured 20, {f['itl_dev_pct']:+}%)")
    if "testbed" in results:
        t = results["testbed"]
        print(f"test bed: first up {t['up_first_s']} s, warm up {t['up_warm_s']} s; 500 IDC nodes ready in "
              f"{t['nodes500_up_s']} s, kube-apiserver RSS {t['nodes500_apiserver_rss_mb']} MB")
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
