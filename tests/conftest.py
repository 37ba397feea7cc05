"""Session fixtures shared by the integration, e2e and reliability suites.

``testbed`` starts the real test bed once per session if it is not already running, and
stops it at the end only if this session started it. Unit tests never touch it.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def testbed():
    from testbed import cluster
    from testbed.config import load_config

    cfg = load_config(saved=True)
    st = cluster.status(cfg)
    started_here = False
    if not st["ready"]:
        cfg = load_config()
        cluster.up(cfg, log=lambda m: print(m, flush=True))
        started_here = True
    yield cfg
    if started_here and os.environ.get("TIDEGATE_KEEP_TESTBED") != "1":
        cluster.down(cfg, log=lambda m: print(m, flush=True))


@pytest.fixture(scope="session")
def kube(testbed):
    from tasks.kube import Kube

    return Kube.connect(kubeconfig=testbed.kubeconfig)
