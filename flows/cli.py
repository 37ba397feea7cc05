"""The ``tidegate`` console script.

Exit codes: 0 pass, 1 gate failed (or a stage ran and failed), 2 could not run (bad input,
unreachable cluster, missing credentials). Expected failures print one line to stderr; a
traceback means a bug. Heavy imports (Prefect, pandas) happen inside the subcommands so that
``tidegate testbed status`` stays fast.

This module only builds the parser from the subcommand modules (flows/testbed_cmd.py,
flows/commands.py, flows/gatecmd.py, flows/prefect_admin.py; each ``register``s its parsers)
and calls the chosen function.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from flows import commands, experiment, gatecmd, historycmd, loadcmd, prefect_admin, testbed_cmd
from tasks.cancel import Terminated, handle
from tasks.errors import TidegateError

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tidegate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidegate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for module in (testbed_cmd, commands, loadcmd, experiment, gatecmd, historycmd, prefect_admin):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # SIGTERM raises Terminated at once, except in a run, which stops at its next checkpoint
    # (tasks/cancel.py says why)
    signal.signal(signal.SIGTERM, handle)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TidegateError as exc:
        print(f"tidegate: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"tidegate: {'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 2


__all__ = ["Terminated", "build_parser", "main"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
