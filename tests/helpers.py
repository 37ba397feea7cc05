"""Small helpers shared by the integration, e2e and reliability suites."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float, what: str, interval: float = 1.0) -> T:
    """Poll ``pred`` until it returns something truthy; fail the test naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def scratch_namespace(kube, prefix: str):
    """A fresh namespace for one test (generator for a fixture): created, its default
    ServiceAccount waited for; afterwards deleted with the model PV a run renders for it."""
    import uuid

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(lambda: kube.get("v1", "ServiceAccount", "default", name), 30, "default ServiceAccount", 0.2)
    yield name
    kube.delete("v1", "Namespace", name)
    kube.delete("v1", "PersistentVolume", f"llm-model-{name}")
    wait_for(lambda: kube.get("v1", "Namespace", name) is None, 120, f"namespace {name} gone", 1)
