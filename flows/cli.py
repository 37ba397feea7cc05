"""The ``tidegate`` console script.

Exit codes: 0 pass, 1 gate failed (or a stage ran and failed), 2 could not run (bad input,
unreachable cluster, missing credentials). Expected failures print one line to stderr; a
traceback means a bug. Heavy imports (Prefect, pandas) happen inside the subcommands so that
``tidegate testbed status`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tidegate")


def _testbed(args: argparse.Namespace) -> int:
    from testbed import cluster
    from testbed.config import load_config

    if args.action == "build":
        from testbed.build import build_all

        build_all(args.components or None, force=args.force)
        return 0
    if args.action == "up":
        cfg = load_config(args.set)
        cluster.up(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
        return 0
    cfg = load_config(saved=True)
    if args.action == "down":
        cluster.down(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
        return 0
    if args.action == "status":
        st = cluster.status(cfg)
        if args.json:
            print(json.dumps(st, indent=2, default=str))
        else:
            for c in st["components"]:
                mark = "ready" if c["ready"] else ("running" if c["pid"] else "stopped")
                print(f"{c['name']:<26} {mark:<8} pid={c['pid'] or '-':<8} {c['version']}")
            for pool, info in st["pools"].items():
                print(f"pool {pool}: {json.dumps(info)}")
            for key in ("gateway", "oss"):
                if key in st:
                    print(f"{key}: {json.dumps(st[key])}")
        return 0 if st["ready"] else 3
    if args.action == "kubeconfig":
        print(cfg.kubeconfig)
        return 0
    if args.action == "logs":
        print(cluster.logs(cfg, args.component, args.lines))
        return 0
    raise AssertionError(args.action)


def _not_ready(name: str):
    def run(_args: argparse.Namespace) -> int:
        from tasks.errors import StageNotImplemented

        raise StageNotImplemented(f"`tidegate {name}` is not implemented yet")

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidegate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    tb = sub.add_parser("testbed", help="the local hybrid-cluster test bed")
    tb.add_argument("action", choices=["build", "up", "down", "status", "kubeconfig", "logs"])
    tb.add_argument("components", nargs="*", help="build: only these components; logs: first one is shown")
    tb.add_argument("--json", action="store_true", help="status: machine-readable output")
    tb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="up: override a test bed setting, e.g. idc.nodes=4")
    tb.add_argument("--force", action="store_true", help="build: rebuild even if cached")
    tb.add_argument("--lines", type=int, default=40, help="logs: lines per component")
    tb.set_defaults(func=_testbed)

    from flows import commands

    commands.register(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job, an evicted pod): unwound like Ctrl-C, so that the run tears
    down, writes its report and exits through the exit handlers (Prefect's temporary server)."""


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "testbed" and args.action == "logs":
        args.component = args.components[0] if args.components else None
    from tasks.errors import TidegateError

    try:
        return int(args.func(args) or 0)
    except TidegateError as exc:
        print(f"tidegate: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"tidegate: {'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
