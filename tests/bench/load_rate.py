"""Open-loop generator benchmark: the highest Poisson rate tidegate keeps on schedule, against
kubernetes-sigs inference-perf (``python -m tests.bench.load_rate``, ``make bench-load``).

Serves one emulated vLLM replica (``python -m testbed.emulator``, free loopback ports) and, in
one run on this machine:

1. Max sustainable rate. Against a replica with zero model latency (TTFT 0, ITL 0.1 ms, the
   emulator's floor, no batching penalty, 1024 sequences at once), each tool runs Poisson
   trials of ``--trial-s`` seconds; a trial passes when the tool's schedule delay p50 < 10 ms,
   its achieved/requested rate >= 99 % and >= 99 % of its requests succeeded. The search
   doubles the rate from ``--start-rps`` until a trial fails (at most ``--max-doublings``), then
   bisects between the last pass and the first fail (``--bisect-steps``); the figure is the
   highest rate that passed. Both tools send streamed completions with the same ``max_tokens``
   straight to the replica's port.
2. Fidelity at half of tidegate's max rate: against a replica set to TTFT 50 ms and ITL 20 ms at
   any load, TTFT p50/p95 and ITL p50 of both tools, and whether they agree within 2 %. When
   inference-perf's max rate is lower, the same again at half of its rate (where both keep their
   schedule): above its max rate its figures measure its backlog, and on 2 cores a replica
   streaming to hundreds of clients at once bends everyone's figures.
   tidegate's ``load`` command refuses a rate above what one generator process sends (and has
   no flag for more processes): such a trial is a failed one, printed as ``refused``.

3. Workers' scaling (``--scaling 1,2,4``): the same search for tidegate alone with 1 generator
   process and with a master and 2 and 4 worker processes splitting the rate (the in-cluster
   generators of ``load.generators`` are such workers, one per pod); ``workers_scaling`` in the
   JSON gives each count's max rate and its speed-up over one process. On a machine of few cores
   the processes share them with the replica, so the speed-up is bounded by the cores.

Definitions (each tool's own accounting, read from its own output):

- tidegate: ``tidegate load --json`` -> ``generator.schedule_delay_p50_ms`` and
  ``generator.achieved_ratio`` (achieved rate against the realised schedule, the intended send
  times actually drawn).
- inference-perf: ``stage_0_lifecycle_metrics.json`` -> ``load_summary.schedule_delay`` (its
  per-request actual minus scheduled send time). Its own ``achieved_rate / requested_rate`` is
  against the nominal rate, so it carries the Poisson count's noise (about 1/sqrt(N), several
  per cent at 1,000 requests) and is only printed. It exports no scheduled times, so it runs
  through a small wrapper (``PEER_WRAPPER``) that records the send times its Poisson timer drew,
  changing nothing else; achieved/requested is then ``(realised schedule span) / (its own
  load_summary.send_duration)``, the same "against the realised schedule" as tidegate's.
  inference-perf measures TTFT from the actual send, tidegate from the intended one; at rates
  both keep, the difference is the schedule delay.

The peer lives in its own virtualenv (Python >= 3.12), made on first use under
``~/.cache/tidegate/peers/inference-perf`` (``TIDEGATE_PEER_DIR``), with a small offline
WordLevel tokenizer. The last line of output is one JSON object with ``max_rate_rps``,
``inference_perf_max_rate_rps`` and ``ratio_vs_inference_perf``. Exit 1 when a side could not be
measured (then its figure is null, never guessed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.bench.load import HOST, child_cpu, emulator

SCHEDULE_DELAY_P50_MAX_MS = 10.0
ACHIEVED_RATIO_MIN = 0.99
OK_SHARE_MIN = 0.99
AGREEMENT_MAX_PCT = 2.0
RATE_CEILING_RPS = 5000.0

ZERO_LATENCY = {"load_delay_s": 0, "ttft_base_ms": 0, "ttft_per_running_ms": 0, "itl_base_ms": 0.1,
                "itl_per_running_ms": 0, "max_num_seqs": 1024, "prefill_tokens_per_s": 1e9, "itl_per_1k_context_ms": 0,
                "gpu_memory_gib": 1024}
KNOWN_LATENCY = {"load_delay_s": 0, "ttft_base_ms": 50, "ttft_per_running_ms": 0, "itl_base_ms": 20,
                 "itl_per_running_ms": 0, "max_num_seqs": 1024, "prefill_tokens_per_s": 1e9, "itl_per_1k_context_ms": 0,
                 "gpu_memory_gib": 1024}

PEER_VERSION = "0.7.0"
PEER_PYTHON = "3.12.1"
PEER_DIR = Path(os.environ.get("TIDEGATE_PEER_DIR", Path.home() / ".cache/tidegate/peers/inference-perf"))
TIDEGATE = Path(sys.executable).with_name("tidegate")

TOKENIZER_SCRIPT = """
import sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
words = ["[UNK]", "[PAD]"] + [f"w{i}" for i in range(2000)]
tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.decoder = decoders.WordPiece()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(sys.argv[1])
"""


# Runs inference-perf's own CLI unchanged, recording the send times its Poisson timer drew (it
# keeps them per request but does not export them). Workers are forked and leave by os._exit,
# so only the main process writes the file.
PEER_WRAPPER = """
import atexit, json, os, sys
from inference_perf import main_cli
from inference_perf.loadgen.load_timer import PoissonLoadTimer
out, main_pid, drawn = sys.argv.pop(1), os.getpid(), []
_start_timer = PoissonLoadTimer.start_timer
def start_timer(self, initial=None):
    for t in _start_timer(self, initial):
        drawn.append(t)
        yield t
PoissonLoadTimer.start_timer = start_timer
def dump():
    if os.getpid() == main_pid and drawn:
        with open(out, "w") as fh:
            json.dump({"count": len(drawn), "first": drawn[0], "last": drawn[-1]}, fh)
atexit.register(dump)
sys.argv[0] = "inference-perf"
sys.exit(main_cli())
"""


class ToolUnavailable(RuntimeError):
    """A tool could not run at all (not installed, command missing): its side is not measured."""


@dataclass(frozen=True)
class Trial:
    """One fixed-rate Poisson run of one tool, in that tool's own accounting."""

    tool: str
    rate_rps: float
    requests: int
    ok_share: float
    schedule_delay_p50_ms: float
    schedule_delay_p99_ms: float
    achieved_ratio: float
    client_cpu_s: float
    wall_s: float
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    itl_p50_ms: float | None = None
    extra: dict = field(default_factory=dict)
    refused: str | None = None

    @property
    def passed(self) -> bool:
        return (self.refused is None and self.schedule_delay_p50_ms < SCHEDULE_DELAY_P50_MAX_MS
                and self.achieved_ratio >= ACHIEVED_RATIO_MIN and self.ok_share >= OK_SHARE_MIN)

    def line(self) -> str:
        if self.refused is not None:
            return f"  {self.tool:15} {self.rate_rps:8.1f}/s  FAIL  refused: {self.refused}"
        extra = " ".join(f"{k} {v}" for k, v in self.extra.items())
        return (f"  {self.tool:15} {self.rate_rps:8.1f}/s  {'pass' if self.passed else 'FAIL'}  "
                f"delay p50 {self.schedule_delay_p50_ms:7.2f} ms p99 {self.schedule_delay_p99_ms:8.2f} ms  "
                f"achieved {self.achieved_ratio:6.1%}  ok {self.ok_share:6.1%}  n {self.requests:6}  "
                f"client CPU {self.client_cpu_s:5.1f} s  wall {self.wall_s:5.1f} s  {extra}")


@dataclass
class Search:
    """The bounded rate search of one tool: every trial, and the highest rate that passed."""

    tool: str
    trials: list[Trial] = field(default_factory=list)
    max_rate_rps: float | None = None
    stopped: str = ""


# --- inference-perf, in its own virtualenv ---

def ensure_peer() -> tuple[Path, Path]:
    """(inference-perf executable, tokenizer dir), installing the pinned peer on first use."""
    exe, python = PEER_DIR / "bin/inference-perf", PEER_DIR / "bin/python"
    if not exe.exists():
        py312 = shutil.which("python3.12")
        if py312 is None:
            raise ToolUnavailable("inference-perf needs Python >= 3.12 and python3.12 is not on PATH")
        print(f"installing inference-perf=={PEER_VERSION} into {PEER_DIR} (first use)", flush=True)
        env = {**os.environ, "PYENV_VERSION": PEER_PYTHON}
        for cmd, limit in (([py312, "-m", "venv", str(PEER_DIR)], 120),
                           ([str(python), "-m", "pip", "install", "-q", f"inference-perf=={PEER_VERSION}"], 900)):
            run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=limit)
            if run.returncode:
                raise ToolUnavailable(f"{' '.join(cmd[:3])}: {run.stderr.strip()[-400:]}")
    tokenizer = PEER_DIR / "tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        run = subprocess.run([str(python), "-c", TOKENIZER_SCRIPT, str(tokenizer)], check=False, capture_output=True,
                             text=True, timeout=120)
        if run.returncode:
            raise ToolUnavailable(f"inference-perf tokenizer: {run.stderr.strip()[-400:]}")
    return exe, tokenizer


def peer_config(url: str, rate: float, seconds: int, max_tokens: int, tokenizer: Path, out: Path) -> dict:
    # the defaults otherwise: num_workers = CPU count, 100 in flight per worker
    return {
        "load": {"type": "poisson", "stages": [{"rate": rate, "duration": seconds}], "request_timeout": 60},
        "api": {"type": "completion", "streaming": True},
        "server": {"type": "vllm", "model_name": "qwen", "base_url": url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokenizer)},
        "data": {"type": "random",
                 "input_distribution": {"min": 10, "max": 100, "mean": 50, "std_dev": 10, "total_count": 1000},
                 "output_distribution": {"min": max_tokens, "max": max_tokens, "mean": max_tokens, "std_dev": 0,
                                         "total_count": 1000}},
        "report": {"request_lifecycle": {"summary": False, "per_stage": True, "per_request": False}},
        "storage": {"local_storage": {"path": str(out)}},
    }


def peer_trial(url: str, rate: float, seconds: int, max_tokens: int, out: Path) -> Trial:
    exe, tokenizer = ensure_peer()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = out / "config.in.yaml"  # JSON is YAML
    cfg.write_text(json.dumps(peer_config(url, rate, seconds, max_tokens, tokenizer, out / "report")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.monotonic()
    with child_cpu() as cpu, open(out / "run.log", "w") as log:
        try:
            run = subprocess.run([str(exe.with_name("python")), "-c", PEER_WRAPPER, str(out / "schedule.json"), "-c",
                                  str(cfg), "--log-level", "WARNING"], check=False, stdout=log,
                                 stderr=subprocess.STDOUT, env=env, timeout=seconds + 180)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"inference-perf at {rate}/s ran past {seconds + 180} s (log {out / 'run.log'})") from None
    wall = time.monotonic() - t0
    stage = out / "report/stage_0_lifecycle_metrics.json"
    if run.returncode or not stage.exists():
        raise RuntimeError(f"inference-perf at {rate}/s: exit {run.returncode}, no {stage.name}: "
                           f"{(out / 'run.log').read_text()[-600:]}")
    doc = json.loads(stage.read_text())
    load = doc["load_summary"]
    delay = load["schedule_delay"]
    count = int(load["count"])
    ok = int(doc["successes"]["count"])
    span = float(load["send_duration"])
    schedule = out / "schedule.json"
    if not schedule.exists():
        raise RuntimeError(f"inference-perf at {rate}/s: the wrapper recorded no schedule ({schedule})")
    drawn = json.loads(schedule.read_text())
    ratio = (drawn["last"] - drawn["first"]) / span if span > 0 else 0.0
    lat = doc["successes"].get("latency") or {}

    def ms(metric: str, key: str) -> float | None:
        v = (lat.get(metric) or {}).get(key)
        return None if v is None else round(1000 * float(v), 3)

    return Trial(tool="inference-perf", rate_rps=rate, requests=count, ok_share=ok / max(count, 1),
                 schedule_delay_p50_ms=round(1000 * delay["median"], 3), schedule_delay_p99_ms=round(1000 * delay["p99"], 3),
                 achieved_ratio=round(ratio, 4), client_cpu_s=round(cpu["cpu_s"], 2), wall_s=round(wall, 1),
                 ttft_p50_ms=ms("time_to_first_token", "median"), ttft_p95_ms=ms("time_to_first_token", "p95"),
                 itl_p50_ms=ms("inter_token_latency", "median"),
                 extra={"own_achieved/nominal": f"{load['achieved_rate'] / load['requested_rate']:.1%}",
                        "realised_rps": round((drawn["count"] - 1) / max(drawn["last"] - drawn["first"], 1e-9), 1)})


# --- tidegate ---

def ensure_tidegate_load() -> None:
    """Raise ToolUnavailable unless ``tidegate load`` exists in this virtualenv."""
    if not TIDEGATE.exists():
        raise ToolUnavailable(f"{TIDEGATE} not found (run make setup)")
    run = subprocess.run([str(TIDEGATE), "load", "--help"], check=False, capture_output=True, text=True, timeout=120)
    if run.returncode or "--rate" not in run.stdout:
        raise ToolUnavailable(f"`tidegate load` is not available: {(run.stderr or run.stdout).strip()[-300:]}")


def tidegate_trial(url: str, rate: float, seconds: int, max_tokens: int, out: Path, workers: int = 0) -> Trial:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    report = out / "load.json"
    cmd = [str(TIDEGATE), "load", "--url", url, "--host", HOST, "--arrival", "poisson", "--rate", f"{rate:g}",
           "--duration", str(seconds), "--max-tokens", str(max_tokens), "--out", str(out / "files"), "--json", str(report)]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.monotonic()
    with child_cpu() as cpu, open(out / "run.log", "w") as log:
        try:
            run = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, timeout=seconds + 180)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"tidegate load at {rate}/s ran past {seconds + 180} s (log {out / 'run.log'})") from None
    wall = time.monotonic() - t0
    refusal = [ln for ln in (out / "run.log").read_text().splitlines() if "requests/s" in ln and "process" in ln]
    if run.returncode == 2 and refusal:
        # the CLI refuses a rate one generator process cannot send (and has no flag for more
        # processes): a failed trial at this rate, not a broken bench
        return Trial(tool="tidegate", rate_rps=rate, requests=0, ok_share=0.0, schedule_delay_p50_ms=math.nan,
                     schedule_delay_p99_ms=math.nan, achieved_ratio=0.0, client_cpu_s=round(cpu["cpu_s"], 2),
                     wall_s=round(wall, 1), refused=refusal[-1][-300:])
    # exit 3 is "the generator fell behind": a measured trial that fails, with its JSON written
    if run.returncode not in (0, 3) or not report.exists():
        raise RuntimeError(f"tidegate load at {rate}/s: exit {run.returncode}, no JSON: {(out / 'run.log').read_text()[-600:]}")
    doc = json.loads(report.read_text())
    gen = doc.get("generator") or {}
    missing = [k for k in ("achieved_ratio", "schedule_delay_p50_ms", "schedule_delay_p99_ms") if gen.get(k) is None]
    if missing:
        raise RuntimeError(f"tidegate load at {rate}/s: generator.{', generator.'.join(missing)} missing from {report}")
    n = int(doc.get("requests") or 0)
    failures = int(doc.get("failures") or 0)

    def num(key: str) -> float | None:
        return None if doc.get(key) is None else float(doc[key])

    return Trial(tool="tidegate", rate_rps=rate, requests=n, ok_share=(n - failures) / max(n, 1),
                 schedule_delay_p50_ms=float(gen["schedule_delay_p50_ms"]),
                 schedule_delay_p99_ms=float(gen["schedule_delay_p99_ms"]), achieved_ratio=float(gen["achieved_ratio"]),
                 client_cpu_s=round(cpu["cpu_s"], 2), wall_s=round(wall, 1), ttft_p50_ms=num("ttft_p50_ms"),
                 ttft_p95_ms=num("ttft_p95_ms"), itl_p50_ms=num("itl_p50_ms"),
                 extra={"exit": run.returncode, "nominal_rps": gen.get("nominal_rps"),
                        **({"behind": "; ".join(gen["behind"])} if gen.get("behind") else {})})


# --- the search ---

def search(tool: str, trial: Callable[[float], Trial], start: float, doublings: int, bisect_steps: int,
           budget_s: float) -> Search:
    """Double from ``start`` until a trial fails, then bisect; bounded in trials and in time."""
    result = Search(tool)
    until = time.monotonic() + budget_s

    def run(rate: float) -> bool:
        t = trial(round(rate, 1))
        result.trials.append(t)
        print(t.line(), flush=True)
        return t.passed

    lo, hi = 0.0, None
    rate = start
    if not run(rate):  # even the start rate fails: halve, a few times
        hi = rate
        for _ in range(3):
            rate /= 2
            if run(rate):
                lo = rate
                break
            hi = rate
            if time.monotonic() > until:
                break
    else:
        lo = rate
        for _ in range(doublings):
            if time.monotonic() > until:
                result.stopped = "time budget spent while doubling"
                break
            rate = min(rate * 2, RATE_CEILING_RPS)
            if run(rate):
                lo = rate
                if rate >= RATE_CEILING_RPS:
                    result.stopped = f"reached the ceiling {RATE_CEILING_RPS:g}/s"
                    break
            else:
                hi = rate
                break
        else:
            result.stopped = f"still passing after {doublings} doublings"
    if lo and hi:
        for _ in range(bisect_steps):
            if time.monotonic() > until:
                result.stopped = "time budget spent while bisecting"
                break
            mid = (lo + hi) / 2
            if run(mid):
                lo = mid
            else:
                hi = mid
    result.max_rate_rps = round(lo, 1) if lo else None
    if lo == 0.0:
        result.stopped = "no rate passed"
    return result


def agreement(tg: Trial, ip: Trial) -> dict:
    rows = {}
    for key in ("ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms"):
        a, b = getattr(tg, key), getattr(ip, key)
        diff = None if a is None or b is None or not b else round(100 * (a - b) / b, 2)
        rows[key] = {"tidegate": a, "inference_perf": b, "diff_pct": diff,
                     "agree": diff is not None and abs(diff) <= AGREEMENT_MAX_PCT}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.load_rate", description=__doc__.splitlines()[0])
    p.add_argument("--trial-s", type=int, default=10, help="seconds of load in each rate trial (default 10)")
    p.add_argument("--start-rps", type=float, default=50.0, help="first rate of the search (default 50)")
    p.add_argument("--max-doublings", type=int, default=6, help="rate doublings at most (default 6)")
    p.add_argument("--bisect-steps", type=int, default=3, help="bisection steps after the first failure (default 3)")
    p.add_argument("--budget-s", type=float, default=240.0, help="time budget of each tool's search (default 240)")
    p.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each request in the rate search (default 8)")
    p.add_argument("--fidelity-s", type=int, default=15, help="seconds of load in each fidelity run (default 15)")
    p.add_argument("--fidelity-max-tokens", type=int, default=16, help="max_tokens in the fidelity runs (default 16)")
    p.add_argument("--tools", default="inference-perf,tidegate", help="comma-separated subset to measure (default both)")
    p.add_argument("--scaling", default="1,2,4",
                   help="tidegate's worker-process counts whose max rate is measured too (1: one process; "
                        "N > 1: a master and N workers splitting the rate; '' skips; default 1,2,4)")
    p.add_argument("--scaling-budget-s", type=float, default=120.0,
                   help="time budget of each worker count's search (default 120)")
    args = p.parse_args(argv)
    wanted = set(args.tools.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="tidegate-bench-load-rate-"))
    started = time.monotonic()
    print(f"cores: {os.cpu_count()}; trials of {args.trial_s} s; scratch {tmp}", flush=True)
    problems: list[str] = []

    searches: dict[str, Search] = {}
    sides: dict[str, Callable[[], None]] = {"inference-perf": lambda: ensure_peer(), "tidegate": ensure_tidegate_load}
    trials: dict[str, Callable[[str, float, int, int, Path], Trial]] = {"inference-perf": peer_trial,
                                                                        "tidegate": tidegate_trial}
    available: dict[str, bool] = {}
    for tool, check in sides.items():
        if tool not in wanted:
            available[tool] = False
            problems.append(f"{tool}: not measured (--tools {args.tools})")
            continue
        try:
            check()
            available[tool] = True
        except (ToolUnavailable, subprocess.TimeoutExpired, OSError) as exc:
            available[tool] = False
            problems.append(f"{tool}: {exc}")
            print(f"error: {tool} cannot run: {exc}", file=sys.stderr, flush=True)

    print(f"\nmax Poisson rate with schedule delay p50 < {SCHEDULE_DELAY_P50_MAX_MS:g} ms, achieved >= "
          f"{ACHIEVED_RATIO_MIN:.0%}, ok >= {OK_SHARE_MIN:.0%}; replica with zero model latency, "
          f"max_tokens {args.max_tokens}, streamed", flush=True)
    with emulator(ZERO_LATENCY) as (_gw, _server, backends):
        url = backends[0]
        for tool, trial in trials.items():
            if not available[tool]:
                continue
            try:
                searches[tool] = search(tool, lambda r, t=trial, tool=tool: t(url, r, args.trial_s, args.max_tokens,
                                                                            tmp / f"{tool}-{r:g}"),
                                        args.start_rps, args.max_doublings, args.bisect_steps, args.budget_s)
            except RuntimeError as exc:
                problems.append(f"{tool}: {exc}")
                print(f"error: {tool}: {exc}", file=sys.stderr, flush=True)
    for tool, s in searches.items():
        print(f"  => {tool}: max rate {s.max_rate_rps}/s{f' ({s.stopped})' if s.stopped else ''}", flush=True)

    # workers' scaling: the same search for tidegate with 1, 2, 4 local worker processes (the
    # in-cluster generators are such workers, one per pod); on this machine's cores the figure
    # is bounded by the cores the processes share with the replica
    scaling: dict[str, dict] = {}
    counts = [int(x) for x in args.scaling.split(",") if x.strip()] if "tidegate" in wanted and available.get("tidegate") else []
    if counts:
        print(f"\nworkers' scaling: tidegate's max rate with {', '.join(map(str, counts))} worker processes "
              f"(budget {args.scaling_budget_s:g} s each)", flush=True)
        with emulator(ZERO_LATENCY) as (_gw, _server, backends):
            url = backends[0]
            for n in counts:
                try:
                    s_n = search(f"tidegate x{n}", lambda r, n=n: tidegate_trial(url, r, args.trial_s, args.max_tokens,
                                                                                tmp / f"scale{n}-{r:g}",
                                                                                workers=0 if n <= 1 else n),
                                 args.start_rps, args.max_doublings, args.bisect_steps, args.scaling_budget_s)
                except RuntimeError as exc:
                    problems.append(f"scaling x{n}: {exc}")
                    continue
                best = max((t for t in s_n.trials if t.passed), key=lambda t: t.rate_rps, default=None)
                scaling[str(n)] = {"processes": n, "max_rate_rps": s_n.max_rate_rps, "stopped": s_n.stopped,
                                   "client_cpu_s_at_max": best.client_cpu_s if best else None,
                                   "trials": len(s_n.trials)}
                print(f"  => {n} worker process(es): max rate {s_n.max_rate_rps}/s"
                      f"{f' ({s_n.stopped})' if s_n.stopped else ''}", flush=True)
        base = (scaling.get("1") or {}).get("max_rate_rps")
        for row in scaling.values():
            row["speedup_vs_1"] = round(row["max_rate_rps"] / base, 3) if base and row["max_rate_rps"] else None

    tg_max = searches["tidegate"].max_rate_rps if "tidegate" in searches else None
    ip_max = searches["inference-perf"].max_rate_rps if "inference-perf" in searches else None
    ratio = round(tg_max / ip_max, 3) if tg_max and ip_max else None

    # the point is half of tidegate's max rate; where that is beyond what inference-perf
    # keeps, its figures (and, on 2 cores, the emulator's) are bent, so half of the lower max rate
    # is measured too: there both tools are on schedule
    points: dict[str, float] = {}
    if tg_max:
        points["half_tidegate_max"] = round(tg_max / 2, 1)
        if ip_max and ip_max < tg_max:
            points["half_inference_perf_max"] = round(ip_max / 2, 1)
    else:
        problems.append("fidelity: not run (no max rate for tidegate)")
    fidelity: dict[str, dict] = {}
    if points:
        print(f"\nfidelity: replica set to TTFT {KNOWN_LATENCY['ttft_base_ms']} ms, ITL {KNOWN_LATENCY['itl_base_ms']} ms "
              f"at any load, max_tokens {args.fidelity_max_tokens}, {args.fidelity_s} s per run", flush=True)
        with emulator(KNOWN_LATENCY) as (_gw, _server, backends):
            for label, rate in points.items():
                print(f"  at {rate}/s ({label.replace('_', ' ')})", flush=True)
                if ip_max and rate > ip_max:
                    print(f"  note: above inference-perf's max rate {ip_max}/s: its figures are bent", flush=True)
                runs: dict[str, Trial] = {}
                for tool, trial in trials.items():
                    if not available[tool]:
                        continue
                    try:
                        runs[tool] = trial(backends[0], rate, args.fidelity_s, args.fidelity_max_tokens,
                                           tmp / f"fid-{label}-{tool}")
                        print(runs[tool].line(), flush=True)
                    except RuntimeError as exc:
                        problems.append(f"fidelity at {rate}/s, {tool}: {exc}")
                        print(f"error: fidelity, {tool}: {exc}", file=sys.stderr, flush=True)
                if len(runs) < 2:
                    continue
                rows = agreement(runs["tidegate"], runs["inference-perf"])
                for key, r in rows.items():
                    print(f"    {key:12} tidegate {r['tidegate']} ms, inference-perf {r['inference_perf']} ms, "
                          f"diff {r['diff_pct']}% -> {'agree' if r['agree'] else 'DISAGREE'} "
                          f"(within {AGREEMENT_MAX_PCT:g}%)", flush=True)
                fidelity[label] = {"rate_rps": rate, "figures": rows, "agree": all(r["agree"] for r in rows.values()),
                                   "both_on_schedule": all(t.passed for t in runs.values()),
                                   "trials": {k: {**asdict(v), "passed": v.passed} for k, v in runs.items()}}
        if fidelity:
            fidelity["configured"] = {"ttft_ms": KNOWN_LATENCY["ttft_base_ms"], "itl_ms": KNOWN_LATENCY["itl_base_ms"],
                                      "max_tokens": args.fidelity_max_tokens}
    agree = {k: v["agree"] for k, v in fidelity.items() if "agree" in v}

    goal = 1.5
    print(f"\nratio tidegate / inference-perf max rate: {ratio} (goal >= {goal}: "
          f"{'met' if ratio is not None and ratio >= goal else 'NOT met' if ratio is not None else 'not measured'}); "
          f"fidelity agreement: {agree or 'not measured'}; {time.monotonic() - started:.0f} s in all",
          flush=True)
    for msg in problems:
        print(f"missing: {msg}", file=sys.stderr, flush=True)
    if problems:
        print(f"scratch kept for the logs: {tmp}", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "max_rate_rps": tg_max, "inference_perf_max_rate_rps": ip_max, "ratio_vs_inference_perf": ratio,
        "goal_ratio": goal, "goal_met": ratio is not None and ratio >= goal,
        "criteria": {"schedule_delay_p50_ms_below": SCHEDULE_DELAY_P50_MAX_MS, "achieved_ratio_min": ACHIEVED_RATIO_MIN,
                     "ok_share_min": OK_SHARE_MIN, "trial_s": args.trial_s, "max_tokens": args.max_tokens},
        "achieved_definition": {"tidegate": "generator.achieved_ratio (against the realised schedule)",
                                "inference_perf": "realised schedule span (the send times its timer drew, recorded "
                                                  "by a wrapper) / its own load_summary.send_duration"},
        "trials": {tool: [{**asdict(t), "passed": t.passed} for t in s.trials] for tool, s in searches.items()},
        "fidelity": fidelity or None, "workers_scaling": scaling or None, "cores": os.cpu_count(),
        "missing": problems,
    }, default=str))
    return 1 if problems or tg_max is None or ip_max is None else 0


if __name__ == "__main__":
    sys.exit(main())
