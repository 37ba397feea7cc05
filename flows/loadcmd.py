"""``tidegate load``: the load stage alone, against any OpenAI-compatible URL (and Host header),
for a quick measurement without the cluster stages.

Either the spec's ``load`` section (``--spec FILE [--set load.x=y]``, target from ``ingress`` unless
``--url`` is given), or flags alone: ``--arrival poisson --rate 20 --duration 60 --max-tokens 64``
(a constant rate for ``--duration`` seconds; ``--arrival closed --users N`` for the seed's
``hey -c N``). Writes ``requests.csv`` / ``per_second.csv`` under ``--out`` (default
``reports/load-<time>-<hex>/``), prints one line per figure group, and with ``--json OUT`` the
report's ``load`` block (latency, goodput, the generator's own account) as JSON.

Exit codes: 0 measured; 3 the generator fell behind its schedule (the figures are the
generator's, not the service's); 1 every request failed; 2 bad input or the target never answered.

Example::

    tidegate load --url http://127.0.0.1:18000 --host qwen-chat-default.example.com \\
        --arrival poisson --rate 20 --duration 30 --max-tokens 64 --slo-ttft-ms 500 --json load.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import sys
from pathlib import Path

from tasks.errors import RunInconclusive, SpecError, StageFailed

ARRIVALS = ("poisson", "gamma", "constant", "closed")


def _served_name(url: str, host: str | None) -> str:
    """The first model ``GET /v1/models`` lists (what ``--model`` defaults to)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/v1/models", headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - a URL the user gave
            doc = json.loads(resp.read(1 << 20))
        return str(doc["data"][0]["id"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise SpecError(f"--url: GET {url.rstrip('/')}/v1/models (Host {host or '-'}) gave no model "
                        f"({type(exc).__name__}: {str(exc)[:80]})", hint="check --url/--host, or name it with --model") from None


def _load_spec(args: argparse.Namespace):
    """(LoadSpec, url, host, served name) from --spec and/or the flags."""
    from tasks.spec import LoadSpec, RolloutSpec, load_spec

    spec: RolloutSpec | None = load_spec(args.spec, args.set) if args.spec else None
    if spec is None and not args.url:
        raise SpecError("--url is required without --spec (an OpenAI-compatible base URL, e.g. http://127.0.0.1:18000)")
    url = args.url or spec.ingress.url
    host = args.host or (spec.ingress.host if spec is not None and not args.url else None)
    if spec is not None and args.rate is None and args.users is None and args.duration is None:
        load = spec.load
    else:
        base = spec.load.model_dump() if spec is not None else {}
        arrival = args.arrival or base.get("arrival") or "poisson"
        duration = args.duration or 60
        fields = {**base, "shape": "spike", "arrival": arrival, "baseline_s": 0, "spike_s": int(duration),
                  "hold_s": 0, "cooldown_s": 0, "ramp_s": 0}
        if arrival == "closed":
            users = args.users or 5
            fields.update(baseline_users=users, spike_users=users, spawn_rate=max(float(users), 1.0))
        else:
            if args.rate is None:
                raise SpecError(f"--rate is required with --arrival {arrival} (requests per second)")
            fields.update(baseline_rps=args.rate, spike_rps=args.rate, baseline_users=0,
                          spike_users=max(1, base.get("spike_users", 1)))
        load = LoadSpec.model_validate(fields)
    updates = {}
    if args.max_tokens is not None:
        updates["max_tokens"] = args.max_tokens
    if args.cv is not None:
        updates["cv"] = args.cv
    if args.seed is not None:
        updates["seed"] = args.seed
    if args.workers is not None:
        updates["workers"] = args.workers
    slo = {k: getattr(args, f"slo_{k}") for k in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
           if getattr(args, f"slo_{k}") is not None}
    if slo:
        updates["slo"] = {**load.slo.model_dump(), **slo}
    if updates:
        try:
            load = LoadSpec.model_validate({**load.model_dump(), **updates})
        except ValueError as exc:
            raise SpecError(f"tidegate load: {str(exc).splitlines()[0]}") from None
    served = args.model or (spec.model.served_name if spec is not None else _served_name(url, host))
    return load, url, host, served


def cmd_load(args: argparse.Namespace) -> int:
    from tasks.load import run_load

    from flows.commands import _setup_logging

    load, url, host, served = _load_spec(args)
    _setup_logging(False)   # the generator's progress lines (tidegate.load)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("reports") / f"load-{stamp}-{secrets.token_hex(2)}"
    print(f"tidegate: load {load.arrival} against {url} (Host {host or '-'}, model {served}); files in {out}",
          file=sys.stderr, flush=True)
    result = run_load(load, out, base_url=url, host=host, served_name=served)
    block = result.report_block()
    if args.json:
        Path(args.json).write_text(json.dumps(block, indent=1, default=str))
    print(result.describe())
    gen = block.get("generator") or {}
    if block.get("slo_attainment") is not None:
        print(f"goodput: slo_attainment {block['slo_attainment']:.1%}, {block.get('request_goodput_rps')} good "
              f"requests/s, {block.get('token_goodput_per_s')} good tokens/s ({(block.get('goodput') or {}).get('rule', '')})")
    if gen.get("achieved_rps") is not None:
        print(f"generator: achieved {gen['achieved_rps']}/s of {gen.get('requested_rps')}/s requested "
              f"(nominal {gen.get('nominal_rps')}/s), schedule delay p50 {gen.get('schedule_delay_p50_ms')} ms "
              f"p99 {gen.get('schedule_delay_p99_ms')} ms")
    if not block.get("requests"):
        raise StageFailed(f"load: no request completed against {url}")
    if block.get("requests") == block.get("failures"):
        raise StageFailed(f"load: every one of {block['requests']} requests failed: "
                          f"{next(iter(block.get('errors') or {}), 'no error text')}")
    if gen.get("behind"):
        raise RunInconclusive(f"the load generator fell behind its schedule: {'; '.join(gen['behind'])} "
                              "(the figures measure the generator, not the service)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="the load stage alone against an OpenAI-compatible URL (no cluster stages)")
    p.add_argument("--spec", help="take the load section (and the target) from this spec")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field")
    p.add_argument("--url", help="base URL, e.g. http://127.0.0.1:18000 (default: the spec's ingress.url)")
    p.add_argument("--host", help="Host header (default: the spec's ingress.host, else the URL's)")
    p.add_argument("--model", help="served model name (default: the spec's, else the first of /v1/models)")
    p.add_argument("--arrival", choices=ARRIVALS, help="open-loop arrival process, or closed (users)")
    p.add_argument("--rate", type=float, help="requests per second (open loop)")
    p.add_argument("--users", type=int, help="concurrent users (--arrival closed)")
    p.add_argument("--cv", type=float, help="coefficient of variation of gamma inter-arrival times")
    p.add_argument("--duration", type=float, help="seconds of load at that rate (default 60)")
    p.add_argument("--max-tokens", type=int, help="max_tokens of each request")
    p.add_argument("--seed", type=int, help="seed of the arrival and length draws")
    p.add_argument("--workers", type=int, help="Locust worker processes (the rate is split across them; "
                                               "one process holds up to 1500 requests/s)")
    for name, what in (("ttft-ms", "TTFT"), ("itl-ms", "ITL p95"), ("tpot-ms", "TPOT"), ("e2e-ms", "e2e")):
        p.add_argument(f"--slo-{name}", type=float, help=f"per-request SLO for goodput: {what} in ms")
    p.add_argument("--out", help="directory for requests.csv, per_second.csv and the generator's files")
    p.add_argument("--json", metavar="OUT", help="write the load block (figures, goodput, generator) as JSON")
    p.set_defaults(func=cmd_load)


__all__ = ["cmd_load", "register"]
