"""Issue 5, staging on the test bed's object store: the real ``oss2`` SDK through the OSS
adapter into SeaweedFS. Every test stages under its own ``test-staging-<uuid>/`` prefix of the
shared bucket and deletes it afterwards; faults are injected with the adapter's hooks, scoped
to that prefix, so that other suites running on the same test bed are not disturbed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import oss2
import pytest
import requests
from pydantic import SecretStr

from tasks import staging as st
from tasks.errors import CredentialsError, StagingError

pytestmark = pytest.mark.integration

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
OPTS = st.TransferOptions(workers=4, part_size=8 * MiB, multipart_threshold=8 * MiB, backoff_s=0.05,
                          backoff_max_s=0.2)


@pytest.fixture(scope="module")
def store(testbed):
    from testbed.objectstore import BUCKET, load_keys, oss_endpoint

    key_id, secret = load_keys(testbed.state_dir)
    endpoint = oss_endpoint(testbed.ports)
    bucket = oss2.Bucket(oss2.Auth(key_id, secret), endpoint, BUCKET, enable_crc=False)
    return {"endpoint": endpoint, "bucket_name": BUCKET, "keys": (key_id, secret), "bucket": bucket}


@pytest.fixture
def prefix(store):
    p = f"test-staging-{uuid.uuid4().hex[:10]}"
    yield p
    bucket = store["bucket"]
    keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix=p + "/")]
    for i in range(0, len(keys), 500):
        bucket.batch_delete_objects(keys[i:i + 500])
    for upload in oss2.MultipartUploadIterator(bucket, prefix=p + "/"):
        bucket.abort_multipart_upload(upload.key, upload.upload_id)


def _target(store, prefix: str, secret: str | None = None, bucket: str | None = None) -> st.OssTarget:
    key_id, real = store["keys"]
    return st.OssTarget(store["endpoint"], bucket or store["bucket_name"], prefix, SecretStr(key_id),
                        SecretStr(secret if secret is not None else real),
                        credentials_source="the test bed's key file")


def _fault(store, **spec) -> None:
    requests.post(f"{store['endpoint']}/_tidegate/faults", json=spec, timeout=10).raise_for_status()


@pytest.fixture
def model(tmp_path):
    rng = random.Random(7)
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text('{"hidden_size": 64}\n')
    (root / "tokenizer.json").write_bytes(rng.randbytes(300_000))
    (root / "model-00001-of-00002.safetensors").write_bytes(rng.randbytes(21 * MiB + 123))
    (root / "model-00002-of-00002.safetensors").write_bytes(rng.randbytes(9 * MiB))
    return root


def _stage(model, store, prefix, tmp_path, **kw):
    return st.stage_model(model, kw.pop("target", None) or _target(store, prefix),
                          options=kw.pop("options", OPTS), checkpoint_dir=kw.pop("ckpt", tmp_path / "ck"),
                          progress=False, **kw)


def _assert_stored(store, prefix, model):
    bucket = store["bucket"]
    manifest = st.Manifest.from_bytes(bucket.get_object(f"{prefix}/{st.MANIFEST_NAME}").read())
    local = sorted(p.name for p in model.iterdir())
    assert sorted(manifest.by_path()) == local
    for name in local:
        data = (model / name).read_bytes()
        assert bucket.get_object(f"{prefix}/{name}").read() == data, name
        head = bucket.head_object(f"{prefix}/{name}")
        entry = manifest.by_path()[name]
        assert (head.content_length, head.server_crc) == (len(data), st.crc64(data)) == (entry.size, entry.crc64)


def test_fresh_stage_noop_and_one_changed_file(store, prefix, model, tmp_path):
    r = _stage(model, store, prefix, tmp_path, run_id="it-1")
    assert (r.files, r.uploaded_files, r.skipped_files, r.verified) == (4, 4, 0, True)
    assert r.uploaded_bytes == r.bytes
    _assert_stored(store, prefix, model)

    noop = _stage(model, store, prefix, tmp_path)
    assert (noop.uploaded_bytes, noop.skipped_files, noop.hashed_bytes) == (0, 4, 0)
    assert noop.seconds < 1.0, noop.summary()

    (model / "config.json").write_text('{"hidden_size": 128}\n')
    changed = _stage(model, store, prefix, tmp_path)
    assert (changed.uploaded_files, changed.skipped_files) == (1, 3)
    assert changed.uploaded_bytes == len('{"hidden_size": 128}\n')
    _assert_stored(store, prefix, model)


def test_kill_9_mid_upload_then_resume(store, prefix, tmp_path):
    model = tmp_path / "big"
    model.mkdir()
    (model / "model.safetensors").write_bytes(random.Random(9).randbytes(96 * MiB))
    ckpt = tmp_path / "ck"
    key_id, secret = store["keys"]
    child = subprocess.Popen(
        [sys.executable, "-c", (
            "import os, sys\n"
            "from pydantic import SecretStr\n"
            "from tasks import staging as st\n"
            "t = st.OssTarget(sys.argv[1], sys.argv[2], sys.argv[3], SecretStr(os.environ['K']), "
            "SecretStr(os.environ['S']))\n"
            "st.stage_model(sys.argv[4], t, options=st.TransferOptions(workers=1, part_size=8 << 20, "
            "multipart_threshold=8 << 20), checkpoint_dir=sys.argv[5], progress=False)\n"),
         store["endpoint"], store["bucket_name"], prefix, str(model), str(ckpt)],
        cwd=ROOT, env=dict(os.environ, K=key_id, S=secret), stderr=subprocess.PIPE)
    journal = st.UploadJournal(ckpt, _target(store, prefix).target_id).path(f"{prefix}/model.safetensors")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:  # header + 3 parts
            break
        time.sleep(0.01)
    assert child.poll() is None, f"the upload ended before it could be killed: {child.stderr.read()[-500:]}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    with pytest.raises(oss2.exceptions.NoSuchKey):
        store["bucket"].get_object(f"{prefix}/{st.MANIFEST_NAME}")

    r = _stage(model, store, prefix, tmp_path, ckpt=ckpt)
    assert r.verified and r.resumed_bytes >= 3 * 8 * MiB
    assert r.uploaded_bytes == 96 * MiB - r.resumed_bytes < 96 * MiB
    _assert_stored(store, prefix, model)


def test_a_part_that_fails_twice_is_retried(store, prefix, model, tmp_path):
    _fault(store, op="UploadPart", action="error", times=2, status=503, code="ServiceUnavailable",
           key_prefix=f"{prefix}/")
    r = _stage(model, store, prefix, tmp_path)
    assert r.retries >= 2 and r.verified
    _assert_stored(store, prefix, model)


def test_corrupted_crc_is_detected_deleted_and_retried(store, prefix, model, tmp_path):
    # the store reports a wrong CRC64 for one whole object: it is deleted and uploaded again
    _fault(store, op="CompleteMultipartUpload", action="corrupt_crc", times=1,
           key_prefix=f"{prefix}/model-00001")
    r = _stage(model, store, prefix, tmp_path)
    assert r.retries >= 1 and r.verified
    _assert_stored(store, prefix, model)


def test_corrupted_crc_that_persists_fails_loudly(store, prefix, model, tmp_path):
    _fault(store, op="UploadPart", action="corrupt_crc", times=50, key_prefix=f"{prefix}/model-00002")
    with pytest.raises(StagingError) as err:
        _stage(model, store, prefix, tmp_path, options=replace(OPTS, part_attempts=2))
    msg = err.value.one_line()
    assert "model-00002-of-00002.safetensors" in msg and "CRC64 mismatch" in msg and "\n" not in msg
    with pytest.raises(oss2.exceptions.NoSuchKey):
        store["bucket"].get_object(f"{prefix}/{st.MANIFEST_NAME}")
    with pytest.raises(oss2.exceptions.NoSuchKey):
        store["bucket"].head_object(f"{prefix}/model-00002-of-00002.safetensors")


def test_wrong_credentials_and_missing_bucket(store, prefix, model, tmp_path):
    wrong = "not-the-secret-" + uuid.uuid4().hex
    with pytest.raises(CredentialsError) as err:
        _stage(model, store, prefix, tmp_path, target=_target(store, prefix, secret=wrong))
    msg = err.value.one_line()
    assert "SignatureDoesNotMatch" in msg and "the test bed's key file" in msg and "\n" not in msg
    assert wrong not in msg and store["keys"][1] not in msg and store["keys"][0] not in msg
    with pytest.raises(StagingError, match="does not exist") as err:
        _stage(model, store, prefix, tmp_path, target=_target(store, prefix, bucket=f"no-such-{uuid.uuid4().hex[:8]}"))
    assert "\n" not in err.value.one_line()


def test_the_local_example_spec_stages_tiny_qwen(store, prefix, tmp_path, monkeypatch):
    from tasks.spec import load_spec

    spec = load_spec(ROOT / "examples" / "qwen-chat.local.yaml",
                     overrides=[f"storage.oss.prefix={prefix}", f"storage.checkpoint_dir={tmp_path / 'ck'}"])
    creds = spec.storage.oss.credentials
    monkeypatch.setenv(creds.access_key_id_env, store["keys"][0])
    monkeypatch.setenv(creds.access_key_secret_env, store["keys"][1])
    monkeypatch.chdir(ROOT)
    r = st.stage_model_for_spec(spec, run_id="it-spec", progress=False)
    assert r.verified and r.uri == f"oss://{store['bucket_name']}/{prefix}/" and r.uploaded_bytes == r.bytes
    _assert_stored(store, prefix, ROOT / "examples" / "models" / "tiny-qwen")
    again = st.stage_model_for_spec(spec, progress=False)
    assert again.uploaded_bytes == 0 and again.seconds < 1.0
