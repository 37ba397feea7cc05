"""``make bench-staging``: tidegate's staging against ``rclone copy`` and ``s5cmd cp``, same
store, same endpoint, same run.

A synthetic model directory (``TIDEGATE_BENCH_SHARDS`` x ``TIDEGATE_BENCH_SHARD_MIB`` MiB
shards of random bytes, default 4 x 256 MiB, plus config/tokenizer files) is generated in a
temp dir, then staged cold (fresh prefix, empty hash cache) by each tool to its own prefix of
the test bed's bucket through the OSS adapter (http://127.0.0.1:18333: tidegate speaks OSS to
it, rclone and s5cmd speak S3 SigV4, which the adapter passes through to SeaweedFS): every
tool takes the same hop. The peers are built from the Go module proxy on first use
(``testbed.build.BENCH_COMPONENTS``).

Fairness:
- every tool runs as its own process and is timed wall-clock from spawn to exit (tidegate
  through ``python -m tests.bench.staging --run-tidegate``, interpreter start included);
- each peer runs with three settings: the same part size and number of streams as tidegate
  (``TIDEGATE_BENCH_STREAMS``, default 2, ``TIDEGATE_BENCH_PART_MIB``, default 16) spread
  over files or over parts with its documented concurrency flags, and its own defaults;
- a calibration pass runs every setting of each peer once and keeps its fastest; then
  ``TIDEGATE_BENCH_ROUNDS`` rounds (default 5) run each tool once with its setting, the order
  rotated per round, so that every tool gets the same number of measured runs; each tool's
  figure is the median of its measured runs (the machine is shared and noisy: a best-of-5
  flips on one lucky run, as seen when a peer's best was 20 % under its own median), and the
  best runs are reported too; all runs are printed;
- after every run the prefix is listed: a run only counts if every byte arrived.

Why 2 streams by default: on this 2-core machine the store (SeaweedFS) is the bottleneck,
CPU-bound at roughly 9 CPU-seconds per GiB, and it gets less efficient with more bytes in flight
(its Go heap runs against the test bed's 512 MiB GOMEMLIMIT); 2 streams of 16 MiB was the
fastest setting for all three tools in trials (8 streams cost 40-60 % more store CPU per byte).
Every run's objects are deleted afterwards and SeaweedFS is asked to compact its volumes
(``/vol/vacuum``), since it frees deleted objects' space only then and a bench writes ~16 GB.

Figures: seconds and MB/s per tool (median), ``ratio_vs_<peer> = peer_seconds /
tidegate_seconds`` (> 1: tidegate faster; ``best_ratio_vs_<peer>`` from the best runs),
tidegate's no-op re-stage (``noop_seconds``: the staging call itself
in-process; ``noop_wall_seconds``: with interpreter start), peak RSS per tool. The last line
printed is one JSON object with all of it and the exact commands (credentials are passed in
the environment, never on a command line).
"""

from __future__ import annotations

# The tidegate child process (``--run-tidegate``) imports this module: its imports stay light
# (the rest is imported where used), as the peers start as Go binaries.
import argparse
import json
import os
import sys
import time
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


# -- the tree ------------------------------------------------------------------------------------
def make_tree(root: Path, shards: int, shard_mib: int, seed: int = 5) -> tuple[int, int]:
    """A model-like directory of random bytes; (files, bytes)."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    total, count = 0, 0
    for i in range(shards):
        path = root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as fh:
            for _ in range(shard_mib):
                fh.write(rng.randbytes(MiB))
        total += shard_mib * MiB
        count += 1
    small = {
        "config.json": json.dumps({"architectures": ["QWenLMHeadModel"], "hidden_size": 4096}).encode(),
        "generation_config.json": b'{"max_new_tokens": 512}\n',
        "tokenizer_config.json": b'{"model_max_length": 8192}\n',
        "qwen.tiktoken": rng.randbytes(2 * MiB),
        "model.safetensors.index.json": json.dumps(
            {"weight_map": {f"layer.{j}": f"model-{j % max(shards, 1) + 1:05d}-of-{shards:05d}.safetensors"
                            for j in range(400)}}).encode(),
    }
    for name, blob in small.items():
        (root / name).write_bytes(blob)
        total += len(blob)
        count += 1
    return count, total


# -- the store -------------------------------------------------------------------------------------
class Store:
    def __init__(self) -> None:
        import oss2

        from testbed.config import load_config
        from testbed.objectstore import BUCKET, load_keys, oss_endpoint

        cfg = load_config(saved=True)
        self.endpoint = oss_endpoint(cfg.ports)
        self.master = f"http://127.0.0.1:{cfg.ports.seaweed_master}"
        self.bucket_name = BUCKET
        self.keys = load_keys(cfg.state_dir)
        self.bucket = oss2.Bucket(oss2.Auth(*self.keys), self.endpoint, BUCKET, enable_crc=False)

    def health(self) -> None:
        import urllib.request

        with urllib.request.urlopen(f"{self.endpoint}/_tidegate/health", timeout=5) as resp:  # noqa: S310
            if resp.status != 200:
                raise SystemExit(f"bench-staging: the test bed's OSS adapter is not healthy ({resp.status})")

    def listing(self, prefix: str) -> dict[str, int]:
        import oss2

        return {o.key: o.size for o in oss2.ObjectIteratorV2(self.bucket, prefix=prefix)}

    def purge(self, prefix: str) -> None:
        keys = list(self.listing(prefix))
        for i in range(0, len(keys), 500):
            self.bucket.batch_delete_objects(keys[i:i + 500])

    def vacuum(self) -> None:
        """SeaweedFS frees deleted objects' space only when it compacts a volume (by itself every
        15 min, above 30 % garbage): a bench writes tens of GB, so compact now, or the shared
        store and disk fill up."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.master}/vol/vacuum?garbageThreshold=0.1", timeout=600):  # noqa: S310
                pass
        except OSError as exc:
            print(f"bench-staging: vacuum failed ({exc}); SeaweedFS compacts by itself later", flush=True)


# -- tools -----------------------------------------------------------------------------------------
def peer_binaries() -> dict[str, Path]:
    """rclone and s5cmd, built from the Go module proxy into the tidegate cache on first use."""
    from testbed.build import BENCH_COMPONENTS, build
    from testbed.errors import BuildError

    out = {}
    for name in ("rclone", "s5cmd"):
        comp = BENCH_COMPONENTS[name]
        try:
            build(comp)
        except BuildError as exc:
            raise SystemExit(f"bench-staging: cannot build the peer tool {name}: {exc}") from None
        out[name] = comp.path(name)
    return out


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds and peak RSS of that process alone."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"rc": proc.returncode, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def _shell(cmd: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(c) for c in cmd)


def configs(bins: dict[str, Path], store: Store, src: Path, part_mib: int, streams: int) -> dict[str, list[dict]]:
    """Per tool, the settings it runs with: {label, cmd(prefix) -> argv, env}."""
    key_id, secret = store.keys
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    rclone_env = dict(base, RCLONE_CONFIG_TG_TYPE="s3", RCLONE_CONFIG_TG_PROVIDER="Other",
                      RCLONE_CONFIG_TG_ENDPOINT=store.endpoint, RCLONE_CONFIG_TG_REGION="us-east-1",
                      RCLONE_CONFIG_TG_ACCESS_KEY_ID=key_id, RCLONE_CONFIG_TG_SECRET_ACCESS_KEY=secret,
                      RCLONE_CONFIG="/dev/null")
    s5_env = dict(base, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="us-east-1")
    # the tidegate child gets the store the way the peers do, in its environment
    tg_env = dict(base, TIDEGATE_BENCH_ENDPOINT=store.endpoint, TIDEGATE_BENCH_BUCKET=store.bucket_name,
                  TIDEGATE_BENCH_KEY_ID=key_id, TIDEGATE_BENCH_KEY_SECRET=secret)
    b = store.bucket_name
    rclone, s5 = str(bins["rclone"]), str(bins["s5cmd"])
    chunk = [f"--s3-chunk-size={part_mib}Mi", f"--s3-upload-cutoff={part_mib}Mi"]
    return {
        "tidegate": [{
            "label": f"workers={streams}, part={part_mib}MiB",
            "cmd": lambda p: [sys.executable, "-m", "tests.bench.staging", "--run-tidegate", str(src), p,
                              "--workers", str(streams), "--part-mib", str(part_mib)],
            "env": tg_env}],
        "rclone": [
            {"label": f"matched: {streams} transfers x 1 chunk of {part_mib}MiB",
             "cmd": lambda p: [rclone, "copy", str(src), f"tg:{b}/{p}", f"--transfers={streams}",
                               "--s3-upload-concurrency=1", *chunk, "--stats=0"],
             "env": rclone_env},
            {"label": f"matched: 1 transfer x {streams} chunks of {part_mib}MiB",
             "cmd": lambda p: [rclone, "copy", str(src), f"tg:{b}/{p}", "--transfers=1",
                               f"--s3-upload-concurrency={streams}", *chunk, "--stats=0"],
             "env": rclone_env},
            {"label": "defaults (4 transfers x 4 chunks of 5MiB, cutoff 200MiB)",
             "cmd": lambda p: [rclone, "copy", str(src), f"tg:{b}/{p}", "--stats=0"],
             "env": rclone_env},
        ],
        "s5cmd": [
            {"label": f"matched: {streams} workers x concurrency 1, part {part_mib}MiB",
             "cmd": lambda p: [s5, "--endpoint-url", store.endpoint, "--numworkers", str(streams), "cp",
                               "--concurrency", "1", "--part-size", str(part_mib), f"{src}/*", f"s3://{b}/{p}/"],
             "env": s5_env},
            {"label": f"matched: 1 worker x concurrency {streams}, part {part_mib}MiB",
             "cmd": lambda p: [s5, "--endpoint-url", store.endpoint, "--numworkers", "1", "cp",
                               "--concurrency", str(streams), "--part-size", str(part_mib), f"{src}/*",
                               f"s3://{b}/{p}/"],
             "env": s5_env},
            {"label": "defaults (256 workers, concurrency 5, part 50MiB)",
             "cmd": lambda p: [s5, "--endpoint-url", store.endpoint, "cp", f"{src}/*", f"s3://{b}/{p}/"],
             "env": s5_env},
        ],
    }


# -- the tidegate child process -------------------------------------------------------------------
def run_tidegate(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-tidegate", nargs=2, metavar=("SRC", "PREFIX"))
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--part-mib", type=int, default=16)
    ap.add_argument("--checkpoint-dir")
    ap.add_argument("--noop", action="store_true")
    args = ap.parse_args(argv)
    import tempfile

    from tasks.staging import OssTarget, TransferOptions, stage_model

    class SecretStr:  # what staging needs of pydantic's SecretStr, without importing pydantic
        def __init__(self, value: str) -> None:
            self._value = value

        def get_secret_value(self) -> str:
            return self._value

    src, prefix = args.run_tidegate
    env = os.environ
    target = OssTarget(env["TIDEGATE_BENCH_ENDPOINT"], env["TIDEGATE_BENCH_BUCKET"], prefix,
                       SecretStr(env["TIDEGATE_BENCH_KEY_ID"]), SecretStr(env["TIDEGATE_BENCH_KEY_SECRET"]))
    opts = TransferOptions(workers=args.workers, part_size=args.part_mib * MiB,
                           multipart_threshold=args.part_mib * MiB)
    ckpt = args.checkpoint_dir or tempfile.mkdtemp(prefix="tidegate-bench-ckpt-")  # cold: an empty hash cache
    try:
        staged = stage_model(src, target, options=opts, checkpoint_dir=ckpt, progress=False)
    finally:
        if not args.checkpoint_dir:
            import shutil

            shutil.rmtree(ckpt, ignore_errors=True)
    print(json.dumps(staged.report_block()))
    return 0


# -- the bench -------------------------------------------------------------------------------------
def _one(store: Store, tool: str, conf: dict, prefix: str, phase: str, nbytes: int, keep: bool = False) -> dict:
    res = timed(conf["cmd"](prefix), conf["env"])
    listed = store.listing(prefix + "/")
    got = sum(size for key, size in listed.items() if not key.endswith(".tidegate-manifest.json"))
    ok = res["rc"] == 0 and got == nbytes
    row = {"tool": tool, "config": conf["label"], "phase": phase, "ok": ok, "seconds": round(res["wall_s"], 3),
           "MBps": round(nbytes / res["wall_s"] / 1e6, 1), "cpu_s": round(res["cpu_s"], 2),
           "peak_rss_mib": round(res["peak_rss_mib"], 1), "bytes_stored": got}
    if tool == "tidegate" and res["rc"] == 0:
        row["in_process_seconds"] = json.loads(res["stdout"].strip().splitlines()[-1])["seconds"]
    if not ok:
        row["error"] = (res["stderr"].strip().splitlines() or ["?"])[-1][:300]
    print(f"  {phase:<12} {tool:<9} {conf['label']:<52} {row['seconds']:7.2f}s {row['MBps']:7.1f} MB/s "
          f"cpu {row['cpu_s']:6.2f}s rss {row['peak_rss_mib']:5.0f}MiB load {os.getloadavg()[0]:4.1f}"
          f"{'' if ok else '  FAILED: ' + row.get('error', '')}", flush=True)
    if not keep:
        store.purge(prefix + "/")
    return row


def main() -> int:
    import shutil
    import statistics
    import tempfile
    import uuid

    shards = int(os.environ.get("TIDEGATE_BENCH_SHARDS", "4"))
    shard_mib = int(os.environ.get("TIDEGATE_BENCH_SHARD_MIB", "256"))
    rounds = int(os.environ.get("TIDEGATE_BENCH_ROUNDS", "5"))
    part_mib = int(os.environ.get("TIDEGATE_BENCH_PART_MIB", "16"))
    streams = int(os.environ.get("TIDEGATE_BENCH_STREAMS", "2"))
    store = Store()
    store.health()
    bins = peer_binaries()
    work = Path(tempfile.mkdtemp(prefix="tidegate-bench-staging-"))
    run_prefix = f"bench-staging-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    runs: list[dict] = []
    try:
        src = work / "model"
        t0 = time.perf_counter()
        nfiles, nbytes = make_tree(src, shards, shard_mib)
        print(f"tree: {nfiles} files, {nbytes / 1e6:.1f} MB in {time.perf_counter() - t0:.1f}s ({src}); "
              f"{streams} streams, {part_mib} MiB parts", flush=True)
        tools = configs(bins, store, src, part_mib, streams)
        # calibration: every setting of every peer once; each peer keeps its fastest setting
        chosen: dict[str, dict] = {"tidegate": tools["tidegate"][0]}
        for tool in ("rclone", "s5cmd"):
            rows = [(_one(store, tool, conf, f"{run_prefix}/{tool}-cal{i}", "calibration", nbytes), conf)
                    for i, conf in enumerate(tools[tool])]
            runs += [row for row, _ in rows]
            good = [(row, conf) for row, conf in rows if row["ok"]]
            chosen[tool] = min(good, key=lambda rc: rc[0]["seconds"])[1] if good else tools[tool][0]
        store.vacuum()
        # measured rounds: each tool once per round with its setting, order rotated
        order = ["tidegate", "rclone", "s5cmd"]
        last_tidegate = ""
        for r in range(rounds):
            for tool in order[r % 3:] + order[:r % 3]:
                prefix = f"{run_prefix}/{tool}-r{r}"
                keep = tool == "tidegate" and r == rounds - 1
                runs.append(_one(store, tool, chosen[tool], prefix, f"round {r + 1}", nbytes, keep=keep))
                if keep:
                    last_tidegate = prefix
            store.vacuum()
        # no-op re-stage of the last tidegate prefix: a first pass fills a fresh hash cache (it
        # reads every file once, uploads nothing), the second one is the no-op
        ckpt = work / "noop-ckpt"
        tg_cmd = chosen["tidegate"]["cmd"]
        env = chosen["tidegate"]["env"]
        warm = timed(tg_cmd(last_tidegate) + ["--checkpoint-dir", str(ckpt)], env)
        noop = timed(tg_cmd(last_tidegate) + ["--checkpoint-dir", str(ckpt)], env)
        noop_block = json.loads(noop["stdout"].strip().splitlines()[-1]) if noop["rc"] == 0 else {}
        warm_block = json.loads(warm["stdout"].strip().splitlines()[-1]) if warm["rc"] == 0 else {}
        store.purge(last_tidegate + "/")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        store.purge(run_prefix + "/")
        store.vacuum()

    measured = [r for r in runs if r["phase"].startswith("round") and r["ok"]]
    result: dict = {
        "tree": {"files": nfiles, "bytes": nbytes, "shards": shards, "shard_mib": shard_mib},
        "endpoint": store.endpoint, "rounds": rounds, "part_mib": part_mib, "streams": streams,
        "machine": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
    }
    def ratio(peer: str, key: str) -> float | None:
        a, b = result[f"{peer}_{key}"], result[f"tidegate_{key}"]
        return round(a / b, 3) if a and b else None

    best: dict[str, dict | None] = {}
    for tool in order:
        mine = [r for r in measured if r["tool"] == tool]
        row = min(mine, key=lambda r: r["seconds"]) if mine else None
        best[tool] = row
        median = round(statistics.median(r["seconds"] for r in mine), 3) if mine else None
        result[f"{tool}_seconds"] = median
        result[f"{tool}_MBps"] = round(nbytes / median / 1e6, 1) if median else None
        result[f"{tool}_best_seconds"] = row["seconds"] if row else None
        result[f"{tool}_cpu_seconds"] = round(statistics.median(r["cpu_s"] for r in mine), 2) if mine else None
        result[f"{tool}_peak_rss_mib"] = max((r["peak_rss_mib"] for r in mine), default=None)
        result[f"{tool}_config"] = chosen[tool]["label"]
        anywhere = [r["seconds"] for r in runs if r["tool"] == tool and r["ok"]]
        result[f"{tool}_best_any_phase_seconds"] = min(anywhere) if anywhere else None
    for peer in ("rclone", "s5cmd"):
        result[f"ratio_vs_{peer}"] = ratio(peer, "seconds")
        result[f"best_ratio_vs_{peer}"] = ratio(peer, "best_seconds")
        # best runs again, letting the peers' calibration runs count too (they get more runs then)
        result[f"best_ratio_vs_{peer}_any_phase"] = ratio(peer, "best_any_phase_seconds")
    result["peak_rss_mib"] = result["tidegate_peak_rss_mib"]
    result["noop_seconds"] = noop_block.get("seconds")
    result["noop_wall_seconds"] = round(noop["wall_s"], 3)
    result["noop_uploaded_bytes"] = noop_block.get("uploaded_bytes")
    result["noop_skipped_files"] = noop_block.get("skipped_files")
    result["noop_first_pass"] = {"seconds": warm_block.get("seconds"), "hashed_bytes": warm_block.get("hashed_bytes"),
                                 "uploaded_bytes": warm_block.get("uploaded_bytes")}
    result["commands"] = {tool: {c["label"]: _shell(c["cmd"](f"{run_prefix}/{tool}-N")) for c in confs}
                          for tool, confs in tools.items()}
    result["commands"]["credentials"] = ("passed in the environment: rclone RCLONE_CONFIG_TG_* (type s3, provider "
                                         f"Other, endpoint {store.endpoint}, region us-east-1), s5cmd "
                                         "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, tidegate TIDEGATE_BENCH_*")
    result["runs"] = runs

    print()
    print(f"{'tool':<10}{'median s':>10}{'MB/s':>8}{'best s':>8}{'cpu s':>8}{'peak RSS':>10}  setting")
    for tool, row in best.items():
        if row:
            print(f"{tool:<10}{result[tool + '_seconds']:>10.2f}{result[tool + '_MBps']:>8.1f}{row['seconds']:>8.2f}"
                  f"{result[tool + '_cpu_seconds']:>8.2f}{result[tool + '_peak_rss_mib']:>9.0f}M  "
                  f"{chosen[tool]['label']}")
        else:
            print(f"{tool:<10}{'failed':>10}")
    print(f"ratio (peer seconds / tidegate seconds, > 1 = tidegate faster), medians: vs rclone "
          f"{result['ratio_vs_rclone']}, vs s5cmd {result['ratio_vs_s5cmd']}; best runs: vs rclone "
          f"{result['best_ratio_vs_rclone']}, vs s5cmd {result['best_ratio_vs_s5cmd']}; best runs counting the "
          f"peers' calibration runs too: vs rclone {result['best_ratio_vs_rclone_any_phase']}, "
          f"vs s5cmd {result['best_ratio_vs_s5cmd_any_phase']}")
    print(f"no-op re-stage: {result['noop_seconds']} s in-process ({result['noop_wall_seconds']} s with interpreter "
          f"start), {result['noop_uploaded_bytes']} bytes uploaded, {result['noop_skipped_files']} files unchanged; "
          f"first pass with an empty hash cache: {result['noop_first_pass']['seconds']} s")
    print(json.dumps(result))
    return 0 if all(best.values()) else 1


if __name__ == "__main__":
    if "--run-tidegate" in sys.argv:
        sys.exit(run_tidegate(sys.argv[1:]))
    sys.exit(main())
