"""Issue 5, staging on the test bed's object store: the real ``oss2`` SDK through the OSS
adapter into SeaweedFS. Every test stages under its own ``test-staging-<uuid>/`` prefix of the
shared bucket and deletes it afterwards; faults are injected with the adapter's hooks, scoped
to that prefix, so that other suites running on the same test bed are not disturbed."""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
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


# -- issue 16: remote sources and the NAS check ---------------------------------------------------
@pytest.fixture
def source_bucket(store):
    """A bucket of its own on the test bed as an ``oss://`` source, deleted afterwards."""
    key_id, secret = store["keys"]
    name = f"tg-src-{uuid.uuid4().hex[:10]}"
    bucket = oss2.Bucket(oss2.Auth(key_id, secret), store["endpoint"], name, enable_crc=False)
    bucket.create_bucket()
    yield bucket
    keys = [o.key for o in oss2.ObjectIteratorV2(bucket)]
    for i in range(0, len(keys), 500):
        bucket.batch_delete_objects(keys[i:i + 500])
    bucket.delete_bucket()


def test_oss_source_is_copied_server_side_incrementally(store, prefix, source_bucket, tmp_path):
    rng = random.Random(16)
    files = {"config.json": b'{"hidden_size": 64}\n', "tokenizer.json": rng.randbytes(200_000),
             "model.safetensors": rng.randbytes(6 * MiB + 17)}  # below OPTS' multipart threshold (see the note)
    for name, data in files.items():
        source_bucket.put_object(f"hub/qwen/{name}", data)
    source_bucket.put_object("hub/qwen/.git/HEAD", b"ref")
    uri = f"oss://{source_bucket.bucket_name}/hub/qwen"

    r = _stage(uri, store, prefix, tmp_path, run_id="it-copy")
    assert (r.files, r.uploaded_files, r.skipped_files, r.verified, r.source_kind) == (3, 3, 0, True, "oss")
    assert r.hashed_bytes == r.bytes  # the source has no manifest: each object read once for its SHA-256
    bucket = store["bucket"]
    manifest = st.Manifest.from_bytes(bucket.get_object(f"{prefix}/{st.MANIFEST_NAME}").read())
    assert sorted(manifest.by_path()) == sorted(files)
    for name, data in files.items():
        assert bucket.get_object(f"{prefix}/{name}").read() == data
        head, entry = bucket.head_object(f"{prefix}/{name}"), manifest.by_path()[name]
        assert (head.content_length, head.server_crc) == (len(data), st.crc64(data)) == (entry.size, entry.crc64)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()

    noop = _stage(uri, store, prefix, tmp_path)
    assert (noop.uploaded_bytes, noop.skipped_files, noop.hashed_bytes) == (0, 3, 0)

    source_bucket.put_object("hub/qwen/config.json", b'{"hidden_size": 128}\n')
    changed = _stage(uri, store, prefix, tmp_path)
    assert (changed.uploaded_files, changed.skipped_files) == (1, 2)
    assert bucket.get_object(f"{prefix}/config.json").read() == b'{"hidden_size": 128}\n'


def test_oss_source_above_the_multipart_threshold_is_copied_in_parts(store, prefix, source_bucket, tmp_path):
    data = random.Random(17).randbytes(OPTS.multipart_threshold + 3 * MiB)  # 2 parts of 8 MiB
    source_bucket.put_object("big/model.safetensors", data)
    r = _stage(f"oss://{source_bucket.bucket_name}/big", store, prefix, tmp_path)
    assert r.verified and r.uploaded_bytes == len(data)
    assert store["bucket"].get_object(f"{prefix}/model.safetensors").read() == data


class _FileServer(http.server.ThreadingHTTPServer):
    """One file at ``/files/<name>`` on 127.0.0.1, with ETag, Range/If-Range and If-None-Match;
    ``drop_after``: the next response stops after that many body bytes and closes the connection;
    ``unavailable``: the requests after that drop get a 503."""

    daemon_threads = True

    def __init__(self, name: str, data: bytes):
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.name, self.data = name, data
        self.etag = f'"{hashlib.md5(data).hexdigest()}"'
        self.drop_after: int | None = None
        self.unavailable = False
        self.requests: list[dict[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/files/{self.name}"


class _FileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FileServer

    def do_GET(self) -> None:  # the name http.server calls
        srv, data = self.server, self.server.data
        srv.requests.append({h: self.headers.get(h) for h in ("Range", "If-Range", "If-None-Match")})
        if self.path.split("?")[0] != f"/files/{srv.name}":
            self.send_error(404)
            return
        if srv.unavailable and srv.drop_after is None:
            self.send_error(503)
            return
        if self.headers.get("If-None-Match") == srv.etag:
            self.send_response(304)
            self.send_header("ETag", srv.etag)
            self.end_headers()
            return
        start, wanted = 0, re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and self.headers.get("If-Range") in (None, srv.etag):
            start = int(wanted.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", srv.etag)
        self.end_headers()
        body = data[start:]
        if srv.drop_after is not None:
            cut, srv.drop_after = srv.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # mid-file, as a broken link
            return
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def file_server():
    data = random.Random(1616).randbytes(3 * MiB + 5)
    srv = _FileServer("model.safetensors", data)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


HTTP_OPTS = replace(OPTS, timeout_s=10)


def test_http_source_resumes_with_range_after_a_drop_and_is_staged(store, prefix, file_server, tmp_path):
    data = file_server.data
    sha = hashlib.sha256(data).hexdigest()
    file_server.drop_after = MiB + 3
    r = _stage(file_server.url, store, prefix, tmp_path, options=HTTP_OPTS, sha256=sha)
    first, second = file_server.requests[:2]
    kept = int(re.fullmatch(r"bytes=(\d+)-", second["Range"] or "").group(1))  # what reached the file
    assert first["Range"] is None and 0 < kept <= MiB + 3
    assert second["If-Range"] == file_server.etag and len(file_server.requests) == 2
    assert (r.files, r.uploaded_files, r.verified, r.source_kind) == (1, 1, True, "http")
    assert r.downloaded_bytes == len(data)  # the first part once, then only the rest
    assert store["bucket"].get_object(f"{prefix}/model.safetensors").read() == data
    manifest = st.Manifest.from_bytes(store["bucket"].get_object(f"{prefix}/{st.MANIFEST_NAME}").read())
    assert manifest.by_path()["model.safetensors"].sha256 == sha

    # pinned by its SHA-256, the cached download is used without asking the server
    again = _stage(file_server.url, store, prefix, tmp_path, options=HTTP_OPTS, sha256=sha)
    assert (again.downloaded_bytes, again.uploaded_bytes, again.skipped_files) == (0, 0, 1)
    assert len(file_server.requests) == 2
    # not pinned: a conditional GET, answered 304
    third = _stage(file_server.url, store, prefix, tmp_path, options=HTTP_OPTS)
    assert (third.downloaded_bytes, third.uploaded_bytes) == (0, 0)
    assert file_server.requests[-1]["If-None-Match"] == file_server.etag


def test_http_download_resumes_in_the_next_run(store, prefix, file_server, tmp_path):
    file_server.drop_after, file_server.unavailable = 2 * MiB, True
    with pytest.raises(StagingError, match="download failed after 1 attempt.*HTTP 503"):
        _stage(file_server.url, store, prefix, tmp_path, options=replace(HTTP_OPTS, part_attempts=1))
    with pytest.raises(oss2.exceptions.NoSuchKey):
        store["bucket"].get_object(f"{prefix}/{st.MANIFEST_NAME}")
    file_server.unavailable = False
    file_server.requests.clear()
    r = _stage(file_server.url, store, prefix, tmp_path, options=HTTP_OPTS)
    kept = int(re.fullmatch(r"bytes=(\d+)-", file_server.requests[-1]["Range"] or "").group(1))
    assert 0 < kept <= 2 * MiB and len(file_server.requests) == 1
    assert r.downloaded_bytes == len(file_server.data) - kept and r.verified
    assert store["bucket"].get_object(f"{prefix}/model.safetensors").read() == file_server.data


def test_http_source_with_a_wrong_sha256_stages_nothing(store, prefix, file_server, tmp_path):
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(StagingError) as err:
        _stage(file_server.url + "?X-Signature=s3cr3t", store, prefix, tmp_path, options=HTTP_OPTS, sha256=wrong)
    msg = err.value.one_line()
    got = hashlib.sha256(file_server.data).hexdigest()
    assert f"model source {file_server.url}?...: SHA-256 mismatch: expected {wrong}, got {got}" in msg
    assert "s3cr3t" not in msg and "nothing was staged" in msg
    assert not list(oss2.ObjectIteratorV2(store["bucket"], prefix=prefix + "/"))


def test_nas_staging_into_a_local_directory_needs_local_true(tmp_path):
    from tasks.spec import spec_from_dict
    from tasks.spec.service import ServiceSpec

    dest = tmp_path / "nas" / "Qwen"
    model_dir = ROOT / "examples" / "models" / "tiny-qwen"
    storage = {"kind": "nas", "mount_path": str(dest), "checkpoint_dir": str(tmp_path / "ck"),
               "nas": {"server": "0a1b2c-xyz.cn-shanghai.nas.aliyuncs.com", "path": "/models"}}
    command = ServiceSpec.model_fields["command"].default.replace("/mnt/models/Qwen", str(dest))
    doc = {"model": {"source": str(model_dir)}, "storage": storage, "service": {"command": command}}
    spec = spec_from_dict(doc)
    with pytest.raises(StagingError) as err:
        st.stage_model_for_spec(spec, progress=False)
    msg = err.value.one_line()
    assert f"NAS destination {dest.resolve()}: is not a mount" in msg or "not on NFS" in msg
    assert "expected an nfs/nfs4 mount of 0a1b2c-xyz.cn-shanghai.nas.aliyuncs.com:/models" in msg
    assert err.value.exit_code == 2 and not (tmp_path / "nas").exists()  # nothing written

    storage["nas"]["local"] = True
    r = st.stage_model_for_spec(spec_from_dict(doc), options=OPTS, progress=False)
    assert r.verified and r.backend == "nas" and (dest / st.MANIFEST_NAME).exists()
    assert r.destination_check == "NAS mount check skipped: storage.nas.local is true (a local directory on purpose)"
