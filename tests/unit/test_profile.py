"""Profiles resolve to values: a kubeconfig and a credentials file, never the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks.errors import CredentialsError
from tasks.profile import LOCAL_CREDENTIALS, LOCAL_KUBECONFIG, resolve_profile
from tasks.spec import load_spec

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "examples" / "qwen-chat.local.yaml"
ACK = ROOT / "examples" / "qwen-chat.ack.yaml"


def test_local_profile_names_the_test_beds_files_and_leaves_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDEGATE_TESTBED_DIR", str(tmp_path))
    for name in ("TIDEGATE_OSS_ACCESS_KEY_ID", "TIDEGATE_OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / LOCAL_CREDENTIALS).write_text(json.dumps({"access_key_id": "TGTBKEYID0001",
                                                          "access_key_secret": "s3cr3t-value-123"}))
    before = dict(os.environ)
    spec = load_spec(LOCAL)
    profile = resolve_profile(spec)
    assert profile.kubeconfig == str(tmp_path / LOCAL_KUBECONFIG)
    assert profile.credentials_file == str(tmp_path / LOCAL_CREDENTIALS)
    key_id, secret = spec.storage.oss.credentials.resolve(profile.credentials_file)
    assert (key_id.get_secret_value(), secret.get_secret_value()) == ("TGTBKEYID0001", "s3cr3t-value-123")
    assert dict(os.environ) == before


def test_a_specs_own_kubeconfig_wins_and_other_profiles_get_no_test_bed_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDEGATE_TESTBED_DIR", str(tmp_path))
    own = resolve_profile(load_spec(LOCAL, [f"cluster.kubeconfig={tmp_path / 'mine'}"]))
    assert own.kubeconfig == str(tmp_path / "mine")
    ack = resolve_profile(load_spec(ACK))
    assert ack.credentials_file is None and str(tmp_path) not in str(ack.kubeconfig)


def test_no_credentials_anywhere_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDEGATE_TESTBED_DIR", str(tmp_path))
    for name in ("TIDEGATE_OSS_ACCESS_KEY_ID", "TIDEGATE_OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    spec = load_spec(LOCAL)
    with pytest.raises(CredentialsError, match=str(tmp_path / LOCAL_CREDENTIALS)):
        spec.storage.oss.credentials.resolve(resolve_profile(spec).credentials_file)
