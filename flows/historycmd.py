"""``tidegate history`` (list, show, publish runs of the results store) and ``tidegate judge``
(re-judge a stored run by a spec's rules, running nothing).

The store (tasks/history.py): ``--store`` (a directory, file:///path or oss://bucket/prefix),
else ``$TIDEGATE_RESULTS``, else ``<reports root>/.store``; an oss:// store takes its endpoint
from ``--endpoint``, else ``$TIDEGATE_RESULTS_ENDPOINT`` (``judge``: else the spec's
storage.oss.endpoint) and its key as staging does. Skipped corrupt entries are named on stderr.

Exit codes: ``history`` 0, or 2 when it could not read or write the store; ``judge`` as
``validate``: 0 pass or warn, 1 fail, 3 inconclusive, 2 bad input (no such run, no spec).

Examples::

    tidegate history publish reports/qwen-chat-20261206-002948-c6cc --store oss://results/nightly \\
        --endpoint oss-cn-shanghai.aliyuncs.com
    tidegate history list --spec qwen-chat --json
    tidegate history show qwen-chat-20261206-002948-c6cc
    tidegate judge --candidate qwen-chat-20261206-002948-c6cc --spec examples/qwen-chat.local.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tasks.errors import SpecError

_FIGURE_COLUMNS = (("load.ttft_p95_ms", "ttft_p95_ms"), ("load.error_rate", "err_rate"),
                   ("load.slo_attainment", "attain"), ("elasticity.time_to_first_cloud_pod_ready_s", "cloud_ready_s"),
                   ("cost.cloud_cost_run", "cost_run"))


def _store(args: argparse.Namespace, spec: Any = None):
    from tasks.history import Store

    if spec is not None:
        return Store.for_spec(spec, args.store, endpoint=args.endpoint)
    return Store.open(args.store, endpoint=args.endpoint)


def _warn(store) -> None:
    for text in store.warnings:
        print(f"tidegate: warning: {text}", file=sys.stderr)


def _quiet(fn, *a, **kw):
    """Call ``fn`` with the store's Python warnings silenced (the CLI prints ``store.warnings``)."""
    import warnings

    from tasks.history import StoreWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        return fn(*a, **kw)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    entries = _quiet(store.list, args.spec)
    _warn(store)
    if args.limit:
        entries = entries[:args.limit]
    if args.json:
        print(json.dumps({"runs": [e.to_dict() for e in entries]}, indent=2))
        return 0
    if not entries:
        print(f"no runs{' of spec ' + args.spec if args.spec else ''} in {store.url}")
        return 0
    head = ["run", "spec", "verdict", "started", *[c for _, c in _FIGURE_COLUMNS], "image", "commit"]
    rows = [head] + [[e.run_id, e.spec, e.verdict + ("" if e.full_chain_passed or e.verdict != "pass" else "*"),
                      e.started_at, *[_fmt(e.figures.get(k)) for k, _ in _FIGURE_COLUMNS],
                      e.image or "-", (e.commit or "-")[:12]] for e in entries]
    print(_table(rows))
    if any(e.verdict == "pass" and not e.full_chain_passed for e in entries):
        print("* passed without the full chain: never a baseline")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    doc = store.get(args.run)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    entry, files = store.entry(args.run), store.files(args.run)
    print(f"run {entry.run_id}: {entry.verdict.upper()}  (spec {entry.spec}, profile {entry.profile or '-'}, "
          f"{entry.started_at} -> {entry.finished_at or '-'})")
    print(f"store {store.url}; published {entry.published_at or '-'}; image {entry.image or '-'}; "
          f"commit {entry.commit or '-'}; full chain passed: {'yes' if entry.full_chain_passed else 'no'}")
    for reason in doc.get("inconclusive_reasons") or []:
        print(f"  inconclusive: {reason}")
    stages = doc.get("stages") or {}
    if stages:
        print("\nstages")
        print(_table([["stage", "status", "s", "detail"]] + [
            [n, str(s.get("status")), _fmt(s.get("seconds")), str(s.get("detail", ""))[:100]]
            for n, s in stages.items() if isinstance(s, dict)]))
    if doc.get("gate"):
        print("\ngate")
        print(_table([["rule", "status", "value", "threshold", "detail"]] + [
            [str(r.get("rule")), str(r.get("status")), _fmt(r.get("value")), f"{r.get('op', '')} {r.get('threshold')}",
             str(r.get("detail", ""))[:80]] for r in doc["gate"]]))
    print("\nkey figures")
    print(_table([[k, _fmt(v)] for k, v in entry.figures.items()]))
    print(f"\nfiles ({len(files)}): " + ", ".join(f"{n} ({m.get('bytes', '?')} B)" for n, m in sorted(files.items())))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    store = _store(args)
    entry = store.publish(args.dir, image=args.image, commit=args.commit)
    print(f"tidegate: published run {entry.run_id} (spec {entry.spec}, {entry.verdict}) to {store.url}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from tasks.history import judge

    if not args.spec:
        # report.json records the spec's name only, not its rules: they have to come from a file
        raise SpecError("judge: --spec FILE is required (the report records the spec's name, not its rules)")
    from tasks.spec import load_spec

    spec = load_spec(args.spec, args.set or [])
    store = _store(args, spec)
    candidate = store.get(args.candidate)
    if candidate.get("spec") != spec.name:
        print(f"tidegate: warning: run {args.candidate} is of spec {candidate.get('spec')!r}, judged by the "
              f"rules of {spec.name!r} ({args.spec})", file=sys.stderr)
    if args.baseline:
        names = [b.strip() for b in args.baseline.split(",") if b.strip()]
        if not names:
            raise SpecError("--baseline: expected RUN[,RUN...]")
        baselines = [store.get(b) for b in names]
        source = "named"
    else:
        entries = _quiet(store.baselines, str(candidate.get("spec")), n=args.n, exclude=args.candidate)
        _warn(store)
        baselines = [store.get(e.run_id) for e in entries]
        source = f"last {args.n} full-chain passes of spec {candidate.get('spec')}"
    j = judge(spec.slo, candidate, baselines, requests=store.requests, score=spec.score)
    if args.json:
        print(json.dumps({**j.to_dict(), "store": store.url, "spec": spec.name}, indent=2))
        return j.exit_code
    base = (f"baseline {j.baseline} ({source}: {', '.join(j.baselines)})" if j.baseline
            else f"no baseline ({source}: none)")
    print(f"judge {j.candidate} by the rules of {spec.name} ({args.spec}); {base}")
    if j.results:
        print(_table([["rule", "status", "value", "threshold", "detail"]] + [
            [r.rule, r.status, _fmt(r.value), f"{r.op} {r.threshold}", r.detail] for r in j.results]))
    for reason in j.reasons:
        print(f"  {j.verdict}: {reason}")
    print(f"tidegate: {j.verdict.upper()} {j.candidate} (re-judged; nothing ran)")
    return j.exit_code


# -- argparse ------------------------------------------------------------------------------------
def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL",
                   help="results store: a directory, file:///path or oss://bucket/prefix "
                        "(default: $TIDEGATE_RESULTS, else <reports root>/.store)")
    p.add_argument("--endpoint", metavar="URL",
                   help="OSS endpoint of an oss:// store (default: $TIDEGATE_RESULTS_ENDPOINT)")


def register(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("history", help="list, show and publish runs of the results store")
    hs = h.add_subparsers(dest="history_command", required=True)
    p = hs.add_parser("list", help="runs of the store, newest first: verdict, key figures, image, commit")
    p.add_argument("--spec", metavar="NAME", help="only runs of this spec name")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N runs (default: all)")
    p.add_argument("--json", action="store_true", help='print {"runs": [...]} for scripts')
    _store_args(p)
    p.set_defaults(func=cmd_list)
    p = hs.add_parser("show", help="one stored run: stages, gate rules, key figures, files")
    p.add_argument("run", metavar="RUN", help="run id")
    p.add_argument("--json", action="store_true", help="print the run's report.json")
    _store_args(p)
    p.set_defaults(func=cmd_show)
    p = hs.add_parser("publish", help="publish a report directory (reports/<run id>/) to the store")
    p.add_argument("dir", metavar="DIR", help="the run's report directory")
    p.add_argument("--image", help="record the service image (report.json does not)")
    p.add_argument("--commit", help="record the tidegate commit the run used (report.json does not)")
    _store_args(p)
    p.set_defaults(func=cmd_publish)

    j = sub.add_parser("judge", help="re-judge a stored run by a spec's rules without running anything "
                                     "(0 pass/warn, 1 fail, 3 inconclusive, 2 bad input)")
    j.add_argument("--candidate", required=True, metavar="RUN", help="the stored run to judge")
    j.add_argument("--baseline", metavar="RUN,...",
                   help="baseline runs (relative rules compare with the first); default: the last --n runs "
                        "of the candidate's spec that passed the full chain")
    j.add_argument("--n", type=int, default=5, metavar="N", help="default baselines: how many (default 5)")
    j.add_argument("--spec", metavar="FILE", help="the spec whose slo rules judge the run (required: the report "
                                                  "does not record the rules)")
    j.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field")
    j.add_argument("--json", action="store_true", help="print the judgement as JSON")
    _store_args(j)
    j.set_defaults(func=cmd_judge)
