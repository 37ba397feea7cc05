"""``tidegate testbed``: build, start, stop and inspect the local hybrid-cluster test bed.

The only product module that imports the test bed package (inside the command, so that
``tidegate testbed status`` stays fast). Everything else reaches the test bed the way it
reaches any cluster: through the local profile (tasks/profile.py).
"""

from __future__ import annotations

import argparse
import json
import sys


def cmd_testbed(args: argparse.Namespace) -> int:
    from testbed import cluster
    from testbed.config import load_config

    if args.action == "build":
        from testbed.build import build_all

        build_all(args.components or None, force=args.force)
        return 0
    if args.action == "up":
        cfg = load_config(args.set, profile=args.profile)
        print(f"[testbed] realism profile {cfg.profile}"
              + (f" (set: {', '.join(cfg.realism.overridden)})" if cfg.realism.overridden else ""),
              file=sys.stderr, flush=True)
        cluster.up(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
        return 0
    cfg = load_config(saved=True)
    if args.action == "down":
        cluster.down(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
        return 0
    if args.action == "status":
        from testbed.fidelity import components

        st = cluster.status(cfg)
        # upstream or emulated, per part
        st["components"] = components(st["components"], kserve_upstream=cfg.kserve.controller == "upstream")
        if args.json:
            print(json.dumps(st, indent=2, default=str))
        else:
            for c in st["components"]:
                mark = "ready" if c["ready"] else ("running" if c["pid"] else "stopped")
                print(f"{c['name']:<26} {mark:<8} pid={c['pid'] or '-':<8} {c['version']}")
            for pool, info in st["pools"].items():
                print(f"pool {pool}: {json.dumps(info)}")
            print(f"profile: {st['profile']}")
            for key in ("gateway", "oss"):
                if key in st:
                    print(f"{key}: {json.dumps(st[key])}")
        return 0 if st["ready"] else 3
    if args.action == "kubeconfig":
        print(cfg.kubeconfig)
        return 0
    if args.action == "logs":
        print(cluster.logs(cfg, args.components[0] if args.components else None, args.lines))
        return 0
    raise AssertionError(args.action)


def register(sub: argparse._SubParsersAction) -> None:
    tb = sub.add_parser("testbed", help="the local hybrid-cluster test bed")
    tb.add_argument("action", choices=["build", "up", "down", "status", "kubeconfig", "logs"])
    tb.add_argument("components", nargs="*", help="build: only these components; logs: first one is shown")
    tb.add_argument("--json", action="store_true", help="status: machine-readable output")
    tb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="up: override a test bed setting, e.g. idc.nodes=4")
    tb.add_argument("--profile", choices=["fast", "ack-gpu"], default=None,
                    help="up: realism profile (docs/realism.md): fast (default, CI) or ack-gpu (published ACK/vLLM "
                         "timings); override a figure with --set realism.NAME=VALUE")
    tb.add_argument("--force", action="store_true", help="build: rebuild even if cached")
    tb.add_argument("--lines", type=int, default=40, help="logs: lines per component")
    tb.set_defaults(func=cmd_testbed)
