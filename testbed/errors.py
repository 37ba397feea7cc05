"""Errors of the test bed, under tidegate's one base."""

from __future__ import annotations

from tasks.errors import TidegateError


class TestbedError(TidegateError, RuntimeError):
    """The test bed cannot be built, started or reached."""

    __test__ = False  # not a pytest test class


class BuildError(TestbedError):
    """A Go build of a test bed component failed or its toolchain/module is unavailable."""


class PortInUse(TestbedError):
    """A port the test bed needs is taken by another process."""
