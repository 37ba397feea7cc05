"""The one error hierarchy of tidegate.

Every expected failure is a ``TidegateError``; the CLI maps its class to an exit code and
prints its message as one line. Subclasses also inherit the matching builtin so that callers
who do not know tidegate still catch them sensibly (a bad spec is also a ``ValueError``).
A traceback means a bug.
"""

from __future__ import annotations


class TidegateError(Exception):
    """Base of every error tidegate raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        msg = " ".join(str(self).split())
        return f"{msg}; {self.hint}" if self.hint else msg


class SpecError(TidegateError, ValueError):
    """The RolloutSpec (or a --set override) is invalid; the message names the field path."""


class ClusterError(TidegateError, RuntimeError):
    """The cluster is unreachable, lacks a prerequisite, or refused a request."""


class StagingError(TidegateError, RuntimeError):
    """Model weights could not be staged or verified."""


class CredentialsError(TidegateError, PermissionError):
    """Credentials are missing or rejected; the message names where they were looked for."""


class StageFailed(TidegateError, RuntimeError):
    """A stage ran and failed (deploy timed out, smoke failed, ...); the message is the diagnosis."""

    exit_code = 1


class StageNotImplemented(TidegateError, NotImplementedError):
    """A selected stage does not exist yet: fail loudly instead of passing."""


class RunInconclusive(TidegateError, RuntimeError):
    """The run could not decide (no gate, no rule evaluated, no data, no baseline, events lost):
    never a pass."""

    exit_code = 3


class GateFailed(TidegateError, AssertionError):
    """The SLO gate judged the run as failed."""

    exit_code = 1
