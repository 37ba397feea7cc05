"""Staging's logic without services: planning, manifest, hash cache, multipart journal, the OSS
engine against an in-memory fake of ``oss2.Bucket`` (retries, CRC64 checks, resume, commit
order, credentials), and the NAS backend on a tmp dir."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import oss2
import oss2.exceptions as oe
import pytest
from oss2.utils import Crc64
from pydantic import SecretStr

from tasks import staging as st
from tasks.errors import CredentialsError, StagingError

pytestmark = [pytest.mark.unit,
              # another module may route tidegate loggers to Prefect's API handler, which warns outside a run
              pytest.mark.filterwarnings("ignore:Logger .tidegate.staging. attempted to send logs")]

MiB = 1 << 20
KEY_ID, SECRET = "TGTBUNITKEYID0000", "unit-secret-value-0000"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _blob(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


# -- CRC64 ----------------------------------------------------------------------------------------
def test_crc64_is_oss2s_and_combines():
    a, b = _blob(1000, 1), _blob(3333, 2)
    ref = Crc64()
    ref.update(a + b)
    assert st.crc64(a + b) == ref.crc
    assert st.crc64(b, st.crc64(a)) == ref.crc
    assert st.crc64_combine(st.crc64(a), st.crc64(b), len(b)) == ref.crc
    assert st.crc64(b"") == 0


# -- options --------------------------------------------------------------------------------------
def test_options_bounds_and_env():
    with pytest.raises(StagingError, match="part_size"):
        st.TransferOptions(part_size=MiB)
    with pytest.raises(StagingError, match="workers"):
        st.TransferOptions(workers=0)
    opts = st.TransferOptions.from_env({"TIDEGATE_STAGING_WORKERS": "3", "TIDEGATE_STAGING_PART_MIB": "64"})
    assert (opts.workers, opts.part_size, opts.multipart_threshold) == (3, 64 * MiB, 64 * MiB)
    with pytest.raises(StagingError, match="TIDEGATE_STAGING_WORKERS"):
        st.TransferOptions.from_env({"TIDEGATE_STAGING_WORKERS": "many"})


def test_part_size_keeps_under_10000_parts():
    opts = st.TransferOptions(part_size=8 * MiB)
    assert opts.part_size_for(100 * MiB) == 8 * MiB
    big = 200 * 1024 * MiB  # 200 GiB
    part = opts.part_size_for(big)
    assert part % MiB == 0 and -(-big // part) <= st.MAX_PARTS
    for attempt in range(1, 8):
        assert 0 <= opts.backoff(attempt) <= opts.backoff_max_s


# -- planning -------------------------------------------------------------------------------------
def _lf(rel: str, size: int = 10) -> st.LocalFile:
    return st.LocalFile(rel, Path("/src") / rel, size, 1, 2, 3)


@pytest.mark.parametrize("digest,remote,expected", [
    (None, None, st.Action.UPLOAD),                                       # not there
    (st.Digest(7, "s"), st.RemoteObject(11, 7), st.Action.UPLOAD),        # other size
    (st.Digest(7, "s"), st.RemoteObject(10, None), st.Action.UPLOAD),     # no CRC to compare
    (None, st.RemoteObject(10, 7), st.Action.HASH_FIRST),                 # same size, CRC unknown locally
    (st.Digest(7, "s"), st.RemoteObject(10, 7), st.Action.SKIP),          # same size and CRC
    (st.Digest(8, "s"), st.RemoteObject(10, 7), st.Action.UPLOAD),        # same size, other CRC
])
def test_decide(digest, remote, expected):
    assert st.decide(_lf("a"), digest, remote) is expected


def test_plan_sorts_files_and_finds_stale():
    files = [_lf("a"), _lf("b"), _lf("c"), _lf("d")]
    cached = {"a": st.Digest(1, "x"), "b": st.Digest(2, "y")}
    remote = {"a": st.RemoteObject(10, 1), "b": st.RemoteObject(10, 99), "c": st.RemoteObject(10, 5), "d": None}
    old = st.Manifest((st.ManifestEntry("a", 10, 1, 1, "x"), st.ManifestEntry("gone.bin", 5, 1, 1, "z")))
    plan = st.plan_transfer(files, cached, remote, old)
    assert [f.rel for f, _ in plan.skip] == ["a"]
    assert [f.rel for f in plan.upload] == ["b", "d"]
    assert [f.rel for f in plan.hash_first] == ["c"]
    assert plan.stale == ["gone.bin"]
    assert plan.upload_bytes == 20


# -- manifest -------------------------------------------------------------------------------------
def test_manifest_round_trip_and_rejects_foreign_documents():
    m = st.Manifest((st.ManifestEntry("b/x.bin", 5, 9, 2**64 - 1, "ab"), st.ManifestEntry("a.json", 1, 2, 3, "cd")),
                    created_at="2026-11-28T00:00:00+00:00", run_id="r1", model="tiny")
    blob = m.to_bytes()
    doc = json.loads(blob)
    assert doc["format"] == st.MANIFEST_FORMAT and [f["path"] for f in doc["files"]] == ["a.json", "b/x.bin"]
    assert doc["files"][1]["crc64"] == str(2**64 - 1)  # a string: no JS number holds it
    back = st.Manifest.from_bytes(blob)
    assert back.same_files(m) and back.run_id == "r1" and back.bytes == 6
    assert not back.same_files(st.Manifest(m.files[:1]))
    for bad in (b'{"format": "other"}', b"[]", b'{"format": "tidegate-manifest/1", "files": [{"path": "a"}]}'):
        with pytest.raises(ValueError):
            st.Manifest.from_bytes(bad)


# -- hash cache -----------------------------------------------------------------------------------
def test_hash_cache_survives_restarts_and_notices_changes(tmp_path):
    path = _write(tmp_path / "src" / "w.bin", b"weights")
    f = st.LocalFile.from_stat("w.bin", path, path.stat())
    digest = st.hash_file(path)
    assert digest == st.Digest(st.crc64(b"weights"), hashlib.sha256(b"weights").hexdigest())
    with st.HashCache(tmp_path / "ck") as cache:
        assert cache.get(f) is None
        cache.put(f, digest)
        cache.put(f, digest)  # no duplicate line
    with open(tmp_path / "ck" / st.HashCache.FILE, "a") as fh:
        fh.write('["torn line')
    with st.HashCache(tmp_path / "ck") as cache:
        assert cache.get(f) == digest
        moved = st.LocalFile(f.rel, f.path, f.size, f.mtime_ns + 1, f.ino, f.ctime_ns)
        assert cache.get(moved) is None
    assert len((tmp_path / "ck" / st.HashCache.FILE).read_text().splitlines()) == 2


def test_hash_cache_compacts(tmp_path):
    path = _write(tmp_path / "w.bin", b"x")
    with st.HashCache(tmp_path / "ck") as cache:
        for i in range(200):
            cache.put(st.LocalFile("w", path, 1, i, 0, 0), st.Digest(i, "s"))
    with st.HashCache(tmp_path / "ck") as cache:
        assert cache.get(st.LocalFile("w", path, 1, 199, 0, 0)) == st.Digest(199, "s")
    assert len((tmp_path / "ck" / st.HashCache.FILE).read_text().splitlines()) == 1


# -- journal --------------------------------------------------------------------------------------
def test_journal_records_parts_and_tolerates_a_torn_line(tmp_path):
    j = st.UploadJournal(tmp_path, "endpoint/bucket/prefix")
    f = _lf("m.bin", 100)
    rec = st.UploadRecord("bucket", "prefix/m.bin", "UP1", 100, 1, 16 * MiB)
    j.start(rec)
    j.add_part("prefix/m.bin", 1, "etag1", 2**63, 16 * MiB)
    j.add_part("prefix/m.bin", 2, "etag2", 5, 16 * MiB)
    j.close()
    with open(j.path("prefix/m.bin"), "a") as fh:
        fh.write('[3, "etag')
    back = st.UploadJournal(tmp_path, "endpoint/bucket/prefix").load("prefix/m.bin")
    assert back is not None and back.upload_id == "UP1" and back.matches("bucket", "prefix/m.bin", f)
    assert back.parts == {1: ("etag1", 2**63, 16 * MiB), 2: ("etag2", 5, 16 * MiB)}
    assert not back.matches("bucket", "prefix/m.bin", st.LocalFile("m.bin", f.path, 101, 1))
    j.drop("prefix/m.bin")
    assert j.load("prefix/m.bin") is None
    # another destination, another journal file
    assert st.UploadJournal(tmp_path, "other").path("prefix/m.bin") != j.path("prefix/m.bin")


# -- sources --------------------------------------------------------------------------------------
def test_scan_source(tmp_path):
    root = tmp_path / "model"
    _write(root / "config.json", b"{}")
    _write(root / "sub" / "b.bin", b"bb")
    _write(root / ".git" / "HEAD", b"ref")
    _write(root / ".cache" / "huggingface" / "x.metadata", b"m")
    _write(root / st.MANIFEST_NAME, b"{}")
    _write(tmp_path / "elsewhere" / "shard.safetensors", b"shard")
    (root / "linked.safetensors").symlink_to(tmp_path / "elsewhere" / "shard.safetensors")
    (root / "loop").symlink_to(root)
    files = st.scan_source(st.resolve_source(root))
    assert [f.rel for f in files] == ["config.json", "linked.safetensors", "sub/b.bin"]
    assert files[1].size == 5


def test_resolve_source_errors(tmp_path):
    assert st.resolve_source(f"file://{tmp_path}") == tmp_path.resolve()
    assert st.resolve_source(f"file://localhost{tmp_path}") == tmp_path.resolve()
    with pytest.raises(StagingError, match="does not exist"):
        st.resolve_source(tmp_path / "missing")
    with pytest.raises(StagingError, match="is not a directory"):
        st.resolve_source(_write(tmp_path / "f", b"x"))
    for uri in ("https://huggingface.co/Qwen/x", "oss://bucket/prefix"):  # check_source() parses those
        with pytest.raises(StagingError, match="is not a local directory"):
            st.resolve_source(uri)


# -- result ---------------------------------------------------------------------------------------
def test_report_block_has_the_contract_keys():
    r = st.StagedModel(bytes=2_000_000, files=3, uploaded_bytes=1_000_000, skipped_files=2, seconds=0.5,
                       MBps=2.0, uri="oss://b/p/", manifest_key="p/.tidegate-manifest.json", verified=True,
                       uploaded_files=1)
    block = r.report_block()
    assert {"bytes", "files", "uploaded_bytes", "skipped_files", "seconds", "MBps"} <= set(block)
    assert block["verified"] is True
    assert "\n" not in r.summary() and "2 unchanged" in r.summary() and "verified" in r.summary()


# -- the OSS engine against a fake bucket ---------------------------------------------------------
def _oss_error(cls, status: int, code: str) -> oe.OssError:
    return cls(status, {"x-oss-request-id": "REQ123"}, b"", {"Code": code, "Message": f"fake {code}",
                                                              "OSSAccessKeyId": KEY_ID, "StringToSign": "x"})


class _Result:
    def __init__(self, **kw):
        self.request_id = "REQ"
        self.__dict__.update(kw)


class FakeBucket:
    """The part of ``oss2.Bucket`` staging uses, in memory, with scripted faults: ``faults`` maps
    an operation name to a list of actions consumed one per call (``"503"``, ``"crc"``,
    ``"403"``, ``"nosuchbucket"``, ``"crash"``)."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.upload_keys: dict[str, str] = {}
        self.faults: dict[str, list[str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.counter = 0
        self.dead = False  # after a "crash" every call fails, as in a killed process

    def _fault(self, op: str) -> str | None:
        if self.dead:
            raise KeyboardInterrupt("simulated kill")
        with self.lock:
            self.calls.append((op, ""))
            todo = self.faults.get(op)
            action = todo.pop(0) if todo else None
        if action == "503":
            raise _oss_error(oe.ServerError, 503, "ServiceUnavailable")
        if action == "403":
            raise _oss_error(oe.AccessDenied, 403, "InvalidAccessKeyId")
        if action == "nosuchbucket":
            raise _oss_error(oe.NoSuchBucket, 404, "NoSuchBucket")
        if action == "crash":
            self.dead = True
            raise KeyboardInterrupt("simulated kill")
        return action

    def get_object(self, key):
        self._fault("GetObject")
        if key not in self.objects:
            raise _oss_error(oe.NoSuchKey, 404, "NoSuchKey")
        data = self.objects[key]
        return _Result(read=lambda: data)

    def head_object(self, key):
        action = self._fault("HeadObject")
        if key not in self.objects:
            raise _oss_error(oe.NoSuchKey, 404, "NoSuchKey")
        crc = st.crc64(self.objects[key]) ^ (1 if action == "crc" else 0)
        return _Result(content_length=len(self.objects[key]), server_crc=crc)

    def put_object(self, key, data, headers=None):
        action = self._fault("PutObject")
        self.calls.append(("put", key))
        self.objects[key] = bytes(data)
        return _Result(crc=st.crc64(data) ^ (1 if action == "crc" else 0), etag="e")

    def delete_object(self, key):
        self._fault("DeleteObject")
        self.calls.append(("delete", key))
        self.objects.pop(key, None)

    def init_multipart_upload(self, key):
        self._fault("InitiateMultipartUpload")
        with self.lock:
            self.counter += 1
            uid = f"UP{self.counter}"
        self.uploads[uid] = {}
        self.upload_keys[uid] = key
        return _Result(upload_id=uid)

    def upload_part(self, key, upload_id, n, data):
        action = self._fault("UploadPart")
        if upload_id not in self.uploads:
            raise _oss_error(oe.NoSuchUpload, 404, "NoSuchUpload")
        self.uploads[upload_id][n] = bytes(data)
        return _Result(crc=st.crc64(data) ^ (1 if action == "crc" else 0), etag=hashlib.md5(data).hexdigest())

    def complete_multipart_upload(self, key, upload_id, parts):
        action = self._fault("CompleteMultipartUpload")
        stored = self.uploads.pop(upload_id)
        data = b"".join(stored[p.part_number] for p in parts)
        self.calls.append(("put", key))
        self.objects[key] = data
        return _Result(crc=st.crc64(data) ^ (1 if action == "crc" else 0), etag="m")

    def abort_multipart_upload(self, key, upload_id):
        self.uploads.pop(upload_id, None)

    def list_parts(self, key, upload_id, marker="", max_parts=1000, headers=None):
        self._fault("ListParts")
        if upload_id not in self.uploads:
            raise _oss_error(oe.NoSuchUpload, 404, "NoSuchUpload")
        parts = [oss2.models.PartInfo(n, hashlib.md5(d).hexdigest(), size=len(d))
                 for n, d in sorted(self.uploads[upload_id].items())]
        return _Result(parts=parts, is_truncated=False, next_marker="")


@pytest.fixture
def fake(monkeypatch):
    bucket = FakeBucket()
    monkeypatch.setattr(oss2, "Bucket", lambda *a, **kw: bucket)
    return bucket


@pytest.fixture
def model(tmp_path):
    root = tmp_path / "model"
    _write(root / "config.json", b'{"hidden_size": 8}')
    _write(root / "tokenizer.json", _blob(3000, 3))
    _write(root / "model-00001.safetensors", _blob(13 * MiB + 5, 4))
    _write(root / "model-00002.safetensors", _blob(6 * MiB, 5))
    return root


def _target(prefix: str = "models/tiny", secret: str = SECRET) -> st.OssTarget:
    return st.OssTarget("http://127.0.0.1:1", "bucket", prefix, SecretStr(KEY_ID), SecretStr(secret),
                        credentials_source="environment variables A/B")


OPTS = st.TransferOptions(workers=3, part_size=5 * MiB, multipart_threshold=5 * MiB, backoff_s=0.0,
                          backoff_max_s=0.0)


def _stage(source, tmp_path, **kw):
    return st.stage_model(source, kw.pop("target", _target()), options=kw.pop("options", OPTS),
                          checkpoint_dir=tmp_path / "ck", progress=False, **kw)


def test_fresh_stage_then_noop(fake, model, tmp_path):
    r = _stage(model, tmp_path, run_id="run-1", model="tiny")
    assert (r.files, r.uploaded_files, r.skipped_files, r.verified) == (4, 4, 0, True)
    assert r.uploaded_bytes == r.bytes == sum(p.stat().st_size for p in model.iterdir())
    for p in model.iterdir():
        assert fake.objects[f"models/tiny/{p.name}"] == p.read_bytes()
    manifest = st.Manifest.from_bytes(fake.objects["models/tiny/.tidegate-manifest.json"])
    assert manifest.run_id == "run-1" and len(manifest.files) == 4
    by = manifest.by_path()
    shard = (model / "model-00001.safetensors").read_bytes()
    assert by["model-00001.safetensors"].sha256 == hashlib.sha256(shard).hexdigest()
    assert by["model-00001.safetensors"].crc64 == st.crc64(shard)
    # the manifest is the last write
    puts = [k for op, k in fake.calls if op == "put"]
    assert puts[-1].endswith(st.MANIFEST_NAME)
    fake.calls.clear()
    again = _stage(model, tmp_path)
    assert (again.uploaded_bytes, again.skipped_files, again.uploaded_files, again.hashed_bytes) == (0, 4, 0, 0)
    assert not [c for c in fake.calls if c[0] in ("put", "delete")]


def test_changed_file_only_is_uploaded_and_manifest_withdrawn_first(fake, model, tmp_path):
    _stage(model, tmp_path)
    _write(model / "config.json", b'{"hidden_size": 16}')
    fake.calls.clear()
    r = _stage(model, tmp_path)
    assert (r.uploaded_files, r.uploaded_bytes, r.skipped_files) == (1, len(b'{"hidden_size": 16}'), 3)
    writes = [c for c in fake.calls if c[0] in ("put", "delete")]
    assert writes == [("delete", "models/tiny/.tidegate-manifest.json"), ("put", "models/tiny/config.json"),
                      ("put", "models/tiny/.tidegate-manifest.json")]


def test_removed_file_is_pruned_after_the_commit(fake, model, tmp_path):
    _stage(model, tmp_path)
    (model / "tokenizer.json").unlink()
    fake.calls.clear()
    r = _stage(model, tmp_path)
    assert r.pruned_files == 1 and "models/tiny/tokenizer.json" not in fake.objects
    writes = [c for c in fake.calls if c[0] in ("put", "delete")]
    assert writes == [("put", "models/tiny/.tidegate-manifest.json"), ("delete", "models/tiny/tokenizer.json")]


def test_no_cache_hashes_instead_of_uploading(fake, model, tmp_path):
    _stage(model, tmp_path)
    r = st.stage_model(model, _target(), options=OPTS, checkpoint_dir=tmp_path / "other-ck", progress=False)
    assert (r.uploaded_bytes, r.skipped_files, r.hashed_bytes) == (0, 4, r.bytes)


def test_transient_failures_are_retried(fake, model, tmp_path):
    fake.faults = {"UploadPart": ["503", "503"], "PutObject": ["503"], "HeadObject": ["503"]}
    r = _stage(model, tmp_path)
    assert r.retries >= 3 and r.verified
    assert fake.objects["models/tiny/model-00001.safetensors"] == (model / "model-00001.safetensors").read_bytes()


def test_part_crc_mismatch_is_retried_then_fails_loudly(fake, model, tmp_path):
    fake.faults = {"UploadPart": ["crc"]}
    assert _stage(model, tmp_path).retries == 1
    fake.objects.clear()
    fake.faults = {"PutObject": ["crc"] * 10}
    with pytest.raises(StagingError) as err:
        _stage(model, tmp_path)
    msg = err.value.one_line()
    assert "CRC64 mismatch" in msg and ("config.json" in msg or "tokenizer.json" in msg)
    # no manifest, and no small object that failed its check is left behind
    assert set(fake.objects) <= {"models/tiny/model-00001.safetensors", "models/tiny/model-00002.safetensors"}


def test_whole_object_crc_mismatch_deletes_and_restarts_the_file(fake, model, tmp_path):
    fake.faults = {"CompleteMultipartUpload": ["crc"]}
    r = _stage(model, tmp_path)
    assert r.verified and r.retries >= 1
    shard = (model / "model-00001.safetensors").read_bytes()
    assert fake.objects["models/tiny/model-00001.safetensors"] == shard or \
        fake.objects["models/tiny/model-00002.safetensors"] == (model / "model-00002.safetensors").read_bytes()
    fake.objects.clear()
    fake.faults = {"HeadObject": [None] * 4 + ["crc"] * 40}  # the 4 probes, then every check after an upload
    with pytest.raises(StagingError, match="failed after 2 attempt.*CRC64 check failed"):
        _stage(model, tmp_path, options=replace(OPTS, file_attempts=2))
    assert not fake.objects  # every object that failed its check was deleted, no manifest


def test_wrong_credentials_are_one_line_without_the_secret(fake, model, tmp_path):
    fake.faults = {"GetObject": ["403"]}
    with pytest.raises(CredentialsError) as err:
        _stage(model, tmp_path)
    msg = err.value.one_line()
    assert "InvalidAccessKeyId" in msg and "environment variables A/B" in msg and "REQ123" in msg
    assert SECRET not in msg and KEY_ID not in msg and "\n" not in msg
    fake.faults = {"GetObject": ["nosuchbucket"]}
    with pytest.raises(StagingError, match="bucket 'bucket' does not exist"):
        _stage(model, tmp_path)


def test_empty_credentials(fake, model, tmp_path):
    with pytest.raises(CredentialsError, match="empty"):
        _stage(model, tmp_path, target=_target(secret=""))


def test_resume_after_a_crash_uploads_only_the_missing_parts(fake, model, tmp_path):
    one = replace(OPTS, workers=1)
    fake.faults = {"UploadPart": [None, "crash"]}  # shard 1: part 1 stored, then the process dies
    with pytest.raises(KeyboardInterrupt):
        _stage(model, tmp_path, options=one)
    assert "models/tiny/.tidegate-manifest.json" not in fake.objects
    journal = st.UploadJournal(tmp_path / "ck", _target().target_id)
    records = [journal.load(f"models/tiny/model-0000{i}.safetensors") for i in (1, 2)]
    stored = sum(size for rec in records if rec for _, _, size in rec.parts.values())
    assert stored in (5 * MiB, MiB)  # exactly the one part that made it (which one: thread timing)
    made_it = sum(len(data) for data in fake.objects.values())  # small files PUT before the crash
    fake.dead = False
    r = _stage(model, tmp_path, options=one)
    assert r.resumed_bytes == stored and r.uploaded_bytes == r.bytes - stored - made_it and r.verified
    assert fake.objects["models/tiny/model-00001.safetensors"] == (model / "model-00001.safetensors").read_bytes()
    assert not list((tmp_path / "ck" / "uploads").glob("*.jsonl"))


def test_resume_restarts_when_the_upload_vanished(fake, model, tmp_path):
    one = replace(OPTS, workers=1)
    fake.faults = {"UploadPart": [None, "crash"]}
    with pytest.raises(KeyboardInterrupt):
        _stage(model, tmp_path, options=one)
    fake.dead = False
    fake.uploads.clear()  # the store dropped it (lifecycle rule, abort by someone else)
    r = _stage(model, tmp_path, options=one)
    assert r.resumed_bytes == 0 and r.verified


def test_a_second_run_on_the_same_destination_is_refused(fake, model, tmp_path):
    with st._target_lock(tmp_path / "ck", _target().target_id):
        with pytest.raises(StagingError, match="another staging run"):
            _stage(model, tmp_path)


def test_empty_source(fake, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StagingError, match="no files to stage"):
        _stage(tmp_path / "empty", tmp_path)


def test_stage_model_for_spec_resolves_credentials(fake, model, tmp_path, monkeypatch):
    from tasks.spec import spec_from_dict

    spec = spec_from_dict({"storage": {"kind": "oss", "checkpoint_dir": str(tmp_path / "ck"),
                                       "oss": {"endpoint": "http://127.0.0.1:1", "bucket": "bucket",
                                               "prefix": "models/spec",
                                               "credentials": {"access_key_id_env": "T_KEY_ID",
                                                               "access_key_secret_env": "T_KEY_SECRET"}}}})
    monkeypatch.delenv("T_KEY_ID", raising=False)
    monkeypatch.setenv("TIDEGATE_TESTBED_DIR", str(tmp_path / "no-testbed"))  # no local credentials file
    with pytest.raises(CredentialsError, match="T_KEY_ID"):
        st.stage_model_for_spec(spec, source=model)
    monkeypatch.setenv("T_KEY_ID", KEY_ID)
    monkeypatch.setenv("T_KEY_SECRET", SECRET)
    r = st.stage_model_for_spec(spec, source=str(model), options=OPTS, progress=False)
    assert r.uri == "oss://bucket/models/spec/" and r.files == 4


# -- NAS ------------------------------------------------------------------------------------------
def test_nas_stage_noop_change_and_prune(model, tmp_path):
    dest = tmp_path / "nas" / "Qwen"
    target = st.NasTarget(dest, local=True)
    r = st.stage_model(model, target, options=OPTS, checkpoint_dir=tmp_path / "ck", progress=False)
    assert r.backend == "nas" and r.uploaded_files == 4 and r.verified
    assert "skipped" in r.destination_check and "local" in r.summary()
    for p in model.iterdir():
        assert (dest / p.name).read_bytes() == p.read_bytes()
        assert (dest / p.name).stat().st_mtime_ns == p.stat().st_mtime_ns
    assert not [p for p in dest.iterdir() if ".tidegate-" in p.name and p.name != st.MANIFEST_NAME]
    again = st.stage_model(model, target, options=OPTS, checkpoint_dir=tmp_path / "ck", progress=False)
    assert (again.uploaded_bytes, again.skipped_files) == (0, 4)
    _write(model / "config.json", b'{"hidden_size": 32}')
    (model / "tokenizer.json").unlink()
    third = st.stage_model(model, target, options=OPTS, checkpoint_dir=tmp_path / "ck", progress=False)
    assert (third.uploaded_files, third.pruned_files) == (1, 1)
    assert (dest / "config.json").read_bytes() == b'{"hidden_size": 32}'
    assert not (dest / "tokenizer.json").exists()
    manifest = st.Manifest.from_bytes((dest / st.MANIFEST_NAME).read_bytes())
    assert sorted(manifest.by_path()) == ["config.json", "model-00001.safetensors", "model-00002.safetensors"]


def test_nas_full_destination_keeps_what_was_staged(model, tmp_path, monkeypatch):
    dest = tmp_path / "nas"
    target = st.NasTarget(dest, local=True)
    st.stage_model(model, target, options=OPTS, checkpoint_dir=tmp_path / "ck", progress=False)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    _write(model / "model-00003.safetensors", _blob(MiB, 9))
    real_fsync = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 0 and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(
                ".model-00003"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StagingError) as err:
        st.stage_model(model, target, options=OPTS, checkpoint_dir=tmp_path / "ck", progress=False)
    assert "ENOSPC" in err.value.one_line() and "model-00003.safetensors" in err.value.one_line()
    after = {p.name: p.read_bytes() for p in dest.iterdir()}
    assert after == before  # old files and the old manifest intact, no temp file left
