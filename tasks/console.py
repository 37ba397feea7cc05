"""The console of a long stage (issue 23): a live bar on a terminal, a plain line every interval
otherwise.

:func:`interactive` decides which: stderr is a terminal (and ``TERM`` is not ``dumb``, and
``TIDEGATE_CONSOLE`` is not ``lines``). :class:`LiveBar` is the terminal's view: a rich ``Live``
display on stderr of a title, a bar, a counter and status lines, refreshed by rich's own thread
from what the stage last set. While it is shown, every logging handler that writes to the
terminal (the CLI's ``basicConfig`` handler, Prefect's ``PrefectConsoleHandler``, whose rich
``Console`` holds the stream it was built with) writes through rich's stderr proxy instead, so
that a log line is printed above the bar and never through it; ``print(..., file=sys.stderr)``
goes the same way. Stopping puts every stream back and leaves the bar's last state on the screen
(not transient: the scroll-back shows where the stage ended).

A console is never the run's business: every method here swallows its own failures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Self, TextIO

BAR_REFRESH_PER_S = 2.0
LINE_INTERVAL_S = 10.0


def interactive(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal a live bar can be drawn on."""
    if os.environ.get("TIDEGATE_CONSOLE", "").lower() == "lines" or os.environ.get("TERM") == "dumb":
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _terminal_handlers(streams: set[int]) -> list[logging.StreamHandler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    out: list[logging.StreamHandler] = []
    for lg in loggers:
        for h in lg.handlers:
            if (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                    and id(getattr(h, "stream", None)) in streams and h not in out):
                out.append(h)
    return out


class LiveBar:
    """A live display on stderr: ``title`` and ``counter()`` around a bar of ``completed`` of
    ``total``, then one line per entry of ``lines()``; both callables are read at each refresh
    (from rich's thread, so they only read what the stage set). Use as a context manager, or
    ``start()`` / ``stop()`` (idempotent)."""

    def __init__(self, title: Callable[[], str], total: float, counter: Callable[[float], str],
                 lines: Callable[[], list[str]], *, refresh_per_s: float = BAR_REFRESH_PER_S):
        self.title, self.total, self.counter, self.lines = title, max(float(total), 1e-9), counter, lines
        self.refresh_per_s = refresh_per_s
        self.completed = 0.0
        self._live: Any = None
        self._rerouted: list[tuple[logging.StreamHandler, TextIO, Any]] = []
        self._lock = threading.Lock()

    def update(self, completed: float) -> None:
        self.completed = min(max(float(completed), 0.0), self.total)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True, min_width=16)
        head.add_column(width=32, no_wrap=True)
        head.add_column(no_wrap=True)
        head.add_row(Text(self._safe(self.title), style="bold"),
                     ProgressBar(total=self.total, completed=self.completed, width=32),
                     Text(self._safe(lambda: self.counter(self.completed))))
        body = [Text("  " + line, overflow="fold") for line in self._safe_lines()]
        return Group(head, *body)

    @staticmethod
    def _safe(fn: Callable[[], str]) -> str:
        try:
            return str(fn())
        except Exception:  # noqa: BLE001 - a console must never cost the run
            return "?"

    def _safe_lines(self) -> list[str]:
        try:
            return [str(s) for s in self.lines()]
        except Exception:  # noqa: BLE001
            return []

    def start(self) -> Self:
        with self._lock:
            if self._live is not None:
                return self
            try:
                from rich.console import Console
                from rich.live import Live

                err = sys.stderr
                console = Console(file=err, stderr=True)
                live = Live(console=console, get_renderable=self._render, refresh_per_second=self.refresh_per_s,
                            transient=False, redirect_stderr=True, redirect_stdout=interactive(sys.stdout))
                live.start(refresh=True)
            except Exception:  # noqa: BLE001 - no bar then; the stage goes on
                return self
            self._live = live
            try:
                self._reroute(err, sys.stdout if interactive(sys.stdout) else None)
            except Exception:  # noqa: BLE001 - the handlers write as before; the bar stays
                pass
        return self

    def _reroute(self, err: TextIO, out: TextIO | None) -> None:
        """Handlers that write to the terminal write through rich's proxies while the bar is shown."""
        proxies: dict[int, TextIO] = {id(err): sys.stderr, id(sys.__stderr__): sys.stderr}
        if out is not None:
            proxies.update({id(out): sys.stdout, id(sys.__stdout__): sys.stdout})
        for h in _terminal_handlers(set(proxies)):
            target = proxies[id(h.stream)]
            if target is h.stream:
                continue
            console = getattr(h, "console", None)
            old_console_file = None
            with contextlib.suppress(Exception):
                if console is not None and getattr(console, "file", None) is h.stream:
                    old_console_file = console.file
                    console.file = target
            self._rerouted.append((h, h.stream, old_console_file))
            h.setStream(target)

    def stop(self) -> None:
        with self._lock:
            live, self._live = self._live, None
            if live is None:
                return
            for h, stream, console_file in reversed(self._rerouted):
                with contextlib.suppress(Exception):
                    h.setStream(stream)
                    if console_file is not None:
                        h.console.file = console_file  # type: ignore[attr-defined]
            self._rerouted.clear()
            with contextlib.suppress(Exception):
                live.refresh()
                live.stop()

    @property
    def shown(self) -> bool:
        return self._live is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


class TransferConsole:
    """Bytes done / total and rate of a transfer: a :class:`LiveBar` on a terminal, else a line
    on stderr every ``line_interval_s`` (``tidegate: staging: 12.3 MB of 45.6 MB (27.0%), 30.1
    MB/s, ETA 1 s``). ``update(done, now)`` from the thread that waits on the transfer."""

    def __init__(self, label: str, total: int, *, bar: bool, lines: bool, began: float,
                 line_interval_s: float = LINE_INTERVAL_S):
        self.label, self.total, self.began, self.line_interval_s = label, max(int(total), 0), began, line_interval_s
        self.done, self.now, self.lines_printed = 0, began, 0
        self._next_line = began + line_interval_s
        self._bar = LiveBar(lambda: self.label, self.total, self._counter, self._status).start() if bar else None
        if self._bar is not None and not self._bar.shown:  # rich could not draw: the lines then
            self._bar = None
        self._lines = lines and self._bar is None

    @property
    def rate(self) -> float:
        return self.done / max(self.now - self.began, 1e-6)

    def _counter(self, _shown: float) -> str:  # the figures the status line reads too, not the bar's copy
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{pct:5.1f}% {mb(self.done)} / {mb(self.total)}"

    def _status(self) -> list[str]:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return [f"{rate / 1e6:.1f} MB/s, elapsed {self.now - self.began:.0f} s, ETA {eta:.0f} s"]

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.label}: {mb(self.done)} of {mb(self.total)} ({pct:.1f}%), {self._status()[0]}"

    def update(self, done: int, now: float, *, final: bool = False) -> str | None:
        self.done, self.now = done, now
        if self._bar is not None:
            self._bar.update(done)
            if final:
                self._bar.stop()
            return None
        if not self._lines or not (now >= self._next_line or (final and self.lines_printed)):
            return None
        self._next_line = now + self.line_interval_s
        text = self.line()
        with contextlib.suppress(Exception):
            print(f"tidegate: {text}", file=sys.stderr, flush=True)
        self.lines_printed += 1
        return text

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


__all__ = ["BAR_REFRESH_PER_S", "LINE_INTERVAL_S", "LiveBar", "TransferConsole", "interactive", "mb"]
