"""Cancelling a run by a signal (SIGTERM): the handler records it, the run stops at a checkpoint.

A handler that raises wherever the main thread happens to be can land anywhere: between a lock's
``acquire`` and its ``try`` (a ``Popen``'s wait lock, a logging handler's lock), inside the
``finally`` that kills the load generator or stops the observer, inside Prefect's task engine
while it reports a state. Prefect's own SIGTERM bridge (``capture_sigterm``, installed for the
length of a flow run) raises such an exception in the middle of a stage and, when the flow has
crashed, sends the process a second SIGTERM from its exit path.

So within ``deferring()`` (what ``flows.validation`` runs a run's stages in) the handler only
records the signal, and the run raises ``Terminated`` where it is safe to: ``check()`` between
stages, ``sleep()`` in its waits, the load generator's wait loop. Teardown and the failure hooks
have no checkpoint: they run to their end (bounded by ``teardown.timeout_s``) after a
cancellation. A repeated signal is recorded again, never raised; ``kill -9`` stays the hard
stop (then ``tidegate cleanup --run-id``). Outside ``deferring()`` (commands without
checkpoints) the handler raises ``Terminated`` at once.

Example::

    signal.signal(signal.SIGTERM, cancel.handle)
    with cancel.deferring():
        for step in steps:
            cancel.check()        # Terminated here once SIGTERM arrived
            step()
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM,)
SLEEP_SLICE_S = 0.1


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job, an evicted pod): unwound like Ctrl-C, so that the run tears
    down, writes its report and exits through the exit handlers (Prefect's temporary server)."""

    def __init__(self, name: str = "SIGTERM"):
        super().__init__(name)
        self.signum = int(getattr(signal.Signals, name, signal.SIGTERM))


_pending: str | None = None   # the name of the signal that asked for the cancellation
_deferring = 0                # how many deferring() scopes are open


def handle(signum: int, _frame) -> None:
    """The signal handler: record the request; raise only when no run is checking for it."""
    global _pending
    _pending = signal.Signals(signum).name
    if _deferring == 0:
        raise Terminated(_pending)


def requested() -> str | None:
    """The name of the signal that asked this process to stop, None while none did."""
    return _pending


def check() -> None:
    """A checkpoint: raise ``Terminated`` when a cancellation was requested."""
    if _pending is not None:
        raise Terminated(_pending)


def sleep(seconds: float) -> None:
    """``time.sleep`` that is a checkpoint before, during (every 0.1 s) and after."""
    deadline = time.monotonic() + max(0.0, seconds)
    check()
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(SLEEP_SLICE_S, left))
        check()


@contextlib.contextmanager
def deferring(signals: tuple[signal.Signals, ...] = SIGNALS) -> Iterator[None]:
    """Within: ``signals`` only request cancellation (``handle`` is installed over whatever was
    there, Prefect's bridge included, and the previous handlers are restored on exit). Off the
    main thread the handlers stay as they are (Python runs signal handlers there only)."""
    global _deferring
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            previous[s] = signal.signal(s, handle)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        for s, before in previous.items():
            if before is not None:  # None: installed from outside Python, cannot be put back
                signal.signal(s, before)


def reset() -> None:
    """Forget a recorded request (tests; a process that goes on after a cancelled run)."""
    global _pending
    _pending = None


__all__ = ["SIGNALS", "Terminated", "check", "deferring", "handle", "requested", "reset", "sleep"]
