"""Where a run finds its cluster and its OSS credentials: the profile, resolved to values.

Every profile is the same two things: a kubeconfig and (for OSS staging) a credentials source.
``profile: ack`` (any cluster) names them in the spec or takes the defaults ($KUBECONFIG /
~/.kube/config, the environment or a Prefect Secret block). ``profile: local`` is no different:
``tidegate testbed up`` writes a kubeconfig and a credentials file into the local profile
directory (``local_profile_dir()``), and a local spec that names neither gets those. Nothing here
imports the test bed or writes the environment: resolution returns values.

The credentials file is JSON ``{"access_key_id": ..., "access_key_secret": ...}`` (mode 0600),
the same shape as the Prefect Secret block ``storage.oss.credentials.secret_block`` holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.spec import RolloutSpec

LOCAL_DIR_ENV = "TIDEGATE_TESTBED_DIR"
LOCAL_KUBECONFIG = "admin.kubeconfig"
LOCAL_CREDENTIALS = "oss-credentials.json"


def local_profile_dir() -> Path:
    """The local profile's directory: ``$TIDEGATE_TESTBED_DIR``, else
    ``$XDG_STATE_HOME/tidegate/testbed`` (``~/.local/state/tidegate/testbed``)."""
    env = os.environ.get(LOCAL_DIR_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "tidegate" / "testbed"


@dataclass(frozen=True)
class Profile:
    """What a run connects with: the kubeconfig path (None: the client's default or in-cluster)
    and the OSS credentials file to fall back on when the environment has no keys (None: none)."""

    name: str
    kubeconfig: str | None
    credentials_file: str | None


def resolve_profile(spec: RolloutSpec) -> Profile:
    """The profile of ``spec`` as values. The spec's own settings win; ``profile: local`` fills
    what the spec leaves empty from the local profile directory."""
    c = spec.cluster
    creds = spec.storage.oss.credentials
    kubeconfig = c.kubeconfig
    credentials_file = creds.file
    if spec.profile == "local":
        root = local_profile_dir()
        if not (kubeconfig or c.in_cluster):
            kubeconfig = str(root / LOCAL_KUBECONFIG)
        if credentials_file is None:
            credentials_file = str(root / LOCAL_CREDENTIALS)
    return Profile(name=spec.profile, kubeconfig=kubeconfig, credentials_file=credentials_file)


__all__ = ["LOCAL_CREDENTIALS", "LOCAL_DIR_ENV", "LOCAL_KUBECONFIG", "Profile", "local_profile_dir",
           "resolve_profile"]
