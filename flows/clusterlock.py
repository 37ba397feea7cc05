"""One validation at a time per cluster: a Prefect global concurrency limit keyed by the cluster.

Two runs against one cluster disturb each other (the second one's pods take the first one's GPUs,
its spill-over is the first one's). ``tidegate deployments register`` creates, for the nightly
spec's cluster, the global concurrency limit ``tidegate-cluster-<key>`` with one slot; every
flow run under Prefect takes that slot for the length of its stages (``hold``): a second run
against the same cluster waits for it (collision strategy *enqueue*), or, when it asked not to
wait (the release gate's ``wait_for_cluster: false``), stops with exit 2 before creating
anything. The key is the API server's URL as the spec's kubeconfig (or the in-cluster service
account) names it, hashed; a limit that does not exist (a run on Prefect's temporary server)
limits nothing.

Example::

    with hold(spec, wait=True):
        execute(...)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import ClusterError

log = logging.getLogger(__name__)
PREFIX = "tidegate-cluster-"


def cluster_server(spec) -> str:
    """The API server URL the spec's cluster section names, read from the kubeconfig (no request)."""
    from kubernetes import client, config

    from tasks.profile import resolve_profile

    c = spec.cluster
    if c.in_cluster:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return f"https://{host}:{port}" if host else "in-cluster"
    cfg = client.Configuration()
    kubeconfig = resolve_profile(spec).kubeconfig
    try:
        config.load_kube_config(config_file=str(Path(kubeconfig).expanduser()) if kubeconfig else None,
                                context=c.context, client_configuration=cfg, persist_config=False)
    except (config.ConfigException, OSError) as exc:
        raise ClusterError(f"cluster.kubeconfig: cannot read the API server from {kubeconfig or '~/.kube/config'}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return cfg.host


def limit_name(spec) -> str:
    """``tidegate-cluster-<12 hex>`` of the spec's API server."""
    return PREFIX + hashlib.sha256(cluster_server(spec).encode()).hexdigest()[:12]


def ensure_limit(spec) -> str:
    """Create the cluster's global concurrency limit (one slot) on the Prefect server if missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    name = limit_name(spec)
    with get_client(sync_client=True) as c:
        try:
            c.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextlib.contextmanager
def hold(spec, *, wait: bool = True, timeout_s: float | None = None) -> Iterator[str]:
    """Hold the cluster's slot while the block runs; ``wait=False``: ClusterError at once when another
    run holds it. Yields the limit's name ("" when the spec names no readable cluster: the stages
    that need one then fail on their own, with their own message)."""
    from prefect.concurrency.sync import concurrency

    try:
        name = limit_name(spec)
    except ClusterError as exc:  # no cluster to name (e.g. only the stage stage): nothing to hold
        log.info("no cluster lock: %s", exc.one_line())
        yield ""
        return
    try:
        cm = concurrency(name, occupy=1, timeout_seconds=(timeout_s if wait else 0.5), strict=False)
        cm.__enter__()
    except TimeoutError:
        raise ClusterError(f"another tidegate run holds cluster {cluster_server(spec)} (concurrency limit {name})",
                           hint="wait for it, or run with wait_for_cluster: true to queue behind it") from None
    try:
        yield name
    finally:
        cm.__exit__(None, None, None)


__all__ = ["PREFIX", "cluster_server", "ensure_limit", "hold", "limit_name"]
