"""Staging's sources and destination checks without services: parsing a model source
(``check_source``), the spec fields ``model.sha256`` and ``storage.nas.local``, the mount-table
check of a NAS destination (pure, on fake ``/proc/self/mounts`` texts), and the server-side copy
of an ``oss://`` source against an in-memory fake of two ``oss2.Bucket``s."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import oss2
import oss2.exceptions as oe
import pytest
from pydantic import SecretStr

from tasks import staging as st
from tasks.errors import SpecError, StagingError
from tests.unit.test_staging import (
    KEY_ID,
    SECRET,
    FakeBucket,
    _blob,
    _oss_error,
    _Result,
    _write,
)

pytestmark = [pytest.mark.unit,
              pytest.mark.filterwarnings("ignore:Logger .tidegate.staging. attempted to send logs")]

MiB = 1 << 20
SERVER = "0a1b2c-xyz.cn-shanghai.nas.aliyuncs.com"


# -- check_source ---------------------------------------------------------------------------------
def test_check_source_local_oss_and_http(tmp_path):
    local = st.check_source(tmp_path)
    assert (local.kind, local.path) == ("local", tmp_path.resolve())
    assert st.check_source(f"file://{tmp_path}").path == tmp_path.resolve()

    oss = st.check_source("oss://weights-src/qwen/7b/", storage_kind="oss")
    assert (oss.kind, oss.bucket, oss.prefix, oss.uri) == ("oss", "weights-src", "qwen/7b", "oss://weights-src/qwen/7b/")
    assert st.check_source("oss://weights-src").uri == "oss://weights-src/"

    http = st.check_source("https://files.example.com:8443/m/model%20v2.safetensors?X-Sig=secret123")
    assert (http.kind, http.file_name) == ("http", "model v2.safetensors")
    assert http.shown == "https://files.example.com:8443/m/model%20v2.safetensors?..."  # never the signature


@pytest.mark.parametrize("source,storage_kind,message", [
    ("oss://Bad_Bucket/x", None, "is not an OSS bucket name"),
    ("oss://bucket-a/a/../b", None, "must not have '.', '..' or empty segments"),
    ("oss://bucket-a/models", "nas", "needs storage.kind oss (it is nas)"),
    ("https://example.com/models/", None, "names no file"),
    ("https://example.com", None, "names no file"),
    ("https://user:pw@example.com/m.bin", None, "must not carry credentials"),
    ("http://example.com:99999/m.bin", None, "not a valid URL"),
    ("https://example.com/.tidegate-manifest.json", None, "reserves"),
    ("s3://bucket/x", None, "unknown scheme 's3'"),
])
def test_check_source_refuses(source, storage_kind, message, tmp_path):
    with pytest.raises(StagingError, match=re.escape(message)) as err:
        st.check_source(source, storage_kind=storage_kind)
    assert "pw" not in err.value.one_line()


def test_check_source_does_no_network_io(monkeypatch):
    def refuse(*_a, **_kw):
        raise AssertionError("check_source must not touch the network")

    monkeypatch.setattr(oss2, "Bucket", refuse)
    monkeypatch.setattr(st.httpx, "Client", refuse)
    st.check_source("oss://weights-src/qwen", storage_kind="oss")
    st.check_source("https://203.0.113.1/model.safetensors")


# -- the spec fields ------------------------------------------------------------------------------
def test_spec_model_sha256_and_nas_local():
    from tasks.spec import spec_from_dict

    digest = hashlib.sha256(b"weights").hexdigest()
    spec = spec_from_dict({"model": {"source": "https://example.com/m.bin", "sha256": digest.upper()},
                           "storage": {"kind": "nas", "nas": {"server": SERVER, "local": True}}})
    assert spec.model.sha256 == digest and spec.storage.nas.local is True
    assert spec_from_dict({"storage": {"kind": "nas", "nas": {"server": SERVER}}}).storage.nas.local is False
    with pytest.raises(SpecError, match="model.sha256: must be 64 hexadecimal digits"):
        spec_from_dict({"model": {"source": "https://example.com/m.bin", "sha256": "abc"}})
    with pytest.raises(SpecError, match=r"model.sha256: applies to an http\(s\):// source"):
        spec_from_dict({"model": {"source": "oss://bucket-a/m", "sha256": digest}})


# -- the NAS mount check (pure) -------------------------------------------------------------------
MOUNTS = f"""\
overlay / overlay rw,relatime,lowerdir=/a:/b 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /mnt/scratch tmpfs rw,size=65536k 0 0
{SERVER}:/ /mnt/nas nfs4 rw,relatime,vers=4.0,proto=tcp 0 0
{SERVER}:/models /mnt/models/Qwen nfs rw,vers=3,nolock,proto=tcp 0 0
other.nas.example.com:/models /mnt/other nfs4 rw 0 0
{SERVER}:/with\\040space /mnt/my\\040models nfs4 rw 0 0
[fd00::1]:/v6 /mnt/v6 nfs4 rw 0 0
"""


def test_parse_mounts_decodes_escapes_and_nfs_exports():
    mounts = st.parse_mounts(MOUNTS + "garbage\n\n")
    assert len(mounts) == 8
    spaced = mounts[6]
    assert (spaced.source, spaced.mount_point) == (f"{SERVER}:/with space", "/mnt/my models")
    assert mounts[3].export == (SERVER, "/")
    assert mounts[7].export == ("fd00::1", "/v6")
    assert mounts[0].export is None and mounts[2].export is None


def test_containing_mount_is_the_longest_and_the_last_mounted():
    mounts = st.parse_mounts(MOUNTS + "tmpfs /mnt/nas tmpfs rw 0 0\n")
    assert st.containing_mount("/mnt/models/Qwen/sub", mounts).mount_point == "/mnt/models/Qwen"
    assert st.containing_mount("/mnt/models/Qwenx", mounts).mount_point == "/"  # a prefix is no parent
    assert st.containing_mount("/mnt/nas/x", mounts).fstype == "tmpfs"  # mounted over the NFS one
    assert st.containing_mount("/srv", []) is None


@pytest.mark.parametrize("directory,path,described", [
    ("/mnt/models/Qwen", "/models", f"nfs mount of {SERVER}:/models at /mnt/models/Qwen"),
    ("/mnt/models/Qwen/", "/models/", f"nfs mount of {SERVER}:/models at /mnt/models/Qwen"),
    ("/mnt/nas/models/Qwen", "/models/Qwen", f"nfs4 mount of {SERVER}:/ at /mnt/nas (directory {SERVER}:/models/Qwen)"),
    ("/mnt/my models", "/with space", f"nfs4 mount of {SERVER}:/with space at /mnt/my models"),
])
def test_check_nas_mount_accepts_the_nas_directory(directory, path, described):
    assert st.check_nas_mount(directory, SERVER, path, st.parse_mounts(MOUNTS)) == described


@pytest.mark.parametrize("directory,path,problem", [
    # not a mount: the directory lies on the container's root file system
    ("/srv/models/Qwen", "/models", ("NAS destination /srv/models/Qwen: is not a mount: it lies on the overlay mount "
                                     f"of overlay at /, not on NFS; expected an nfs/nfs4 mount of {SERVER}:/models")),
    ("/mnt/scratch", "/models", ("NAS destination /mnt/scratch: is a tmpfs mount of tmpfs at /mnt/scratch, not on "
                                 f"NFS; expected an nfs/nfs4 mount of {SERVER}:/models")),
    # the NAS, but another directory of it: the pods would not see what staging writes
    ("/mnt/nas/Qwen", "/", (f"NAS destination /mnt/nas/Qwen: on the nfs4 mount of {SERVER}:/ at /mnt/nas, i.e. "
                            f"{SERVER}:/Qwen; expected {SERVER}:/")),
    ("/mnt/other", "/models", ("NAS destination /mnt/other: on the nfs4 mount of other.nas.example.com:/models at "
                               f"/mnt/other, i.e. other.nas.example.com:/models; expected {SERVER}:/models")),
])
def test_check_nas_mount_refuses_anything_else(directory, path, problem):
    with pytest.raises(StagingError) as err:
        st.check_nas_mount(directory, SERVER, path, st.parse_mounts(MOUNTS))
    assert err.value.one_line().startswith(problem)
    assert "storage.nas.local: true" in err.value.one_line() and err.value.exit_code == 2


def test_check_nas_mount_without_a_mount_table():
    with pytest.raises(StagingError, match="not a mount"):
        st.check_nas_mount("/mnt/models/Qwen", SERVER, "/models", [])


def test_nas_destination_check_reads_the_mount_table(tmp_path):
    mounts = _write(tmp_path / "mounts", MOUNTS.encode())
    ok = st.NasTarget(Path("/mnt/models/Qwen"), server=SERVER, export_path="/models")
    assert st.nas_destination_check(ok, mounts).startswith("NAS nfs mount of")
    local = st.NasTarget(tmp_path / "dest", local=True)
    assert "skipped" in st.nas_destination_check(local, tmp_path / "no-such-file")
    with pytest.raises(StagingError, match="no NAS server:path"):
        st.nas_destination_check(st.NasTarget(tmp_path / "dest"), mounts)
    with pytest.raises(StagingError, match="cannot read"):
        st.nas_destination_check(ok, tmp_path / "no-such-file")


def test_a_refused_nas_destination_gets_nothing_written(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "MOUNTS_FILE", _write(tmp_path / "mounts", MOUNTS.encode()))
    model = tmp_path / "model"
    _write(model / "config.json", b"{}")
    dest = tmp_path / "dest" / "Qwen"
    with pytest.raises(StagingError, match="is not a mount"):
        st.stage_model(model, st.NasTarget(dest, server=SERVER, export_path="/models"),
                       checkpoint_dir=tmp_path / "ck", progress=False)
    assert not (tmp_path / "dest").exists()


# -- oss:// sources against fake buckets ----------------------------------------------------------
class CopyBucket(FakeBucket):
    """A ``FakeBucket`` in a ``Store`` of several, with what an ``oss://`` source needs: listing,
    HEAD with an ETag, ranged reads, CopyObject and UploadPartCopy (``x-oss-copy-source-if-match``
    honoured). Faults as in ``FakeBucket`` (``"crc"`` on a copy reports a wrong CRC64)."""

    def __init__(self, store: Store, name: str):
        super().__init__()
        self.store, self.name = store, name
        self.mtime: dict[str, int] = {}

    def put(self, key: str, data: bytes, mtime: int = 1_700_000_000) -> None:
        self.objects[key] = data
        self.mtime[key] = mtime

    @staticmethod
    def etag(data: bytes) -> str:
        return hashlib.md5(data).hexdigest().upper()

    def head_object(self, key):
        action = self._fault("HeadObject")
        if key not in self.objects:
            raise _oss_error(oe.NoSuchKey, 404, "NoSuchKey")
        data = self.objects[key]
        crc = st.crc64(data) ^ (1 if action == "crc" else 0)
        return _Result(content_length=len(data), server_crc=None if action == "nocrc" else crc, etag=self.etag(data))

    def get_object(self, key):
        self._fault("GetObject")
        if key not in self.objects:
            raise _oss_error(oe.NoSuchKey, 404, "NoSuchKey")
        data, pos = self.objects[key], [0]
        self.store.reads.append((self.name, key))

        def read(n=None):
            chunk = data[pos[0]:] if n is None else data[pos[0]:pos[0] + n]
            pos[0] += len(chunk)
            return chunk

        return _Result(read=read)

    def list_objects_v2(self, prefix="", continuation_token="", max_keys=100, **_kw):
        self._fault("ListObjects")
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > continuation_token)
        page = keys[:max_keys]
        infos = [oss2.models.SimplifiedObjectInfo(k, self.mtime.get(k, 1), self.etag(self.objects[k]), "Normal",
                                                  len(self.objects[k]), "Standard") for k in page]
        more = len(keys) > max_keys
        return _Result(object_list=infos, is_truncated=more, next_continuation_token=page[-1] if more else "")

    def _source(self, bucket: str, key: str, headers) -> bytes:
        src = self.store.buckets[bucket]
        if key not in src.objects:
            raise _oss_error(oe.NoSuchKey, 404, "NoSuchKey")
        want = (headers or {}).get("x-oss-copy-source-if-match")
        if want is not None and want.strip('"') != self.etag(src.objects[key]):
            raise _oss_error(oe.PreconditionFailed, 412, "PreconditionFailed")
        return src.objects[key]

    def copy_object(self, source_bucket_name, source_key, target_key, headers=None):
        action = self._fault("CopyObject")
        data = self._source(source_bucket_name, source_key, headers)
        self.calls.append(("copy", target_key))
        self.objects[target_key] = data
        return _Result(crc=st.crc64(data) ^ (1 if action == "crc" else 0), etag=self.etag(data))

    def upload_part_copy(self, source_bucket_name, source_key, byte_range, target_key, target_upload_id,
                         target_part_number, headers=None):
        self._fault("UploadPartCopy")
        data = self._source(source_bucket_name, source_key, headers)
        first, last = byte_range
        part = data[first:last + 1]
        self.uploads[target_upload_id][target_part_number] = part
        self.calls.append(("part-copy", target_key))
        return _Result(etag=hashlib.md5(part).hexdigest())


class Store:
    def __init__(self):
        self.buckets: dict[str, CopyBucket] = {}
        self.reads: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def bucket(self, name: str) -> CopyBucket:
        with self.lock:
            return self.buckets.setdefault(name, CopyBucket(self, name))


@pytest.fixture
def store(monkeypatch):
    s = Store()
    monkeypatch.setattr(oss2, "Bucket", lambda _auth, _endpoint, name, **_kw: s.bucket(name))
    return s


SRC = "weights-src"
OPTS = st.TransferOptions(workers=3, part_size=5 * MiB, multipart_threshold=5 * MiB, backoff_s=0.0,
                          backoff_max_s=0.0)
SHARD = _blob(12 * MiB + 7, 11)  # 3 parts of 5 MiB


@pytest.fixture
def source(store):
    b = store.bucket(SRC)
    b.put("hub/qwen/config.json", b'{"hidden_size": 8}')
    b.put("hub/qwen/tokenizer.json", _blob(3000, 12))
    b.put("hub/qwen/model-00001.safetensors", SHARD)
    b.put("hub/qwen/sub/", b"")                              # a directory marker
    b.put("hub/qwen/.git/HEAD", b"ref")                      # left out, as from a directory
    b.put("hub/qwen/.tidegate-manifest.json.tmp", b"x")      # staging's own
    b.put("hub/qwenx/other.bin", b"not under the prefix")
    return b


def _target(prefix: str = "models/tiny") -> st.OssTarget:
    return st.OssTarget("http://127.0.0.1:1", "bucket", prefix, SecretStr(KEY_ID), SecretStr(SECRET),
                        credentials_source="environment variables A/B")


def _copy(tmp_path, source_uri: str = f"oss://{SRC}/hub/qwen", **kw):
    return st.stage_model(source_uri, kw.pop("target", _target()), options=kw.pop("options", OPTS),
                          checkpoint_dir=tmp_path / "ck", progress=False, **kw)


def _staged(store, prefix: str = "models/tiny") -> dict[str, bytes]:
    return {k[len(prefix) + 1:]: v for k, v in store.bucket("bucket").objects.items() if k.startswith(prefix + "/")}


def test_oss_source_is_copied_server_side_then_a_noop(store, source, tmp_path):
    r = _copy(tmp_path, run_id="copy-1", model="tiny")
    assert (r.files, r.uploaded_files, r.skipped_files, r.verified, r.source_kind) == (3, 3, 0, True, "oss")
    assert r.uploaded_bytes == r.bytes == r.hashed_bytes  # no manifest at the source: read once for SHA-256
    target = store.bucket("bucket")
    objects = _staged(store)
    assert set(objects) == {"config.json", "tokenizer.json", "model-00001.safetensors", st.MANIFEST_NAME}
    assert objects["model-00001.safetensors"] == SHARD
    assert [c for c in target.calls if c[0] == "part-copy"] == [("part-copy", "models/tiny/model-00001.safetensors")] * 3
    assert ("copy", "models/tiny/config.json") in target.calls
    assert target.calls.count(("PutObject", "")) == 1 and not target.calls.count(("UploadPart", ""))  # the manifest
    manifest = st.Manifest.from_bytes(objects[st.MANIFEST_NAME])
    entry = manifest.by_path()["model-00001.safetensors"]
    assert (entry.size, entry.crc64, entry.sha256) == (len(SHARD), st.crc64(SHARD), hashlib.sha256(SHARD).hexdigest())
    assert manifest.run_id == "copy-1" and "copied server-side" in r.summary()

    target.calls.clear()
    store.reads.clear()
    again = _copy(tmp_path)
    assert (again.uploaded_bytes, again.skipped_files, again.hashed_bytes) == (0, 3, 0)
    assert not [c for c in target.calls if c[0] in ("put", "copy", "part-copy", "delete")]
    assert not [key for _, key in store.reads if not key.endswith(st.MANIFEST_NAME)]  # SHA-256s from the manifest


def test_a_source_staged_by_tidegate_is_copied_without_reading(store, tmp_path):
    # stage a prefix once (it gets a manifest), then use it as the source of another prefix
    b = store.bucket("bucket")
    b.put("cache/qwen/model-00001.safetensors", SHARD)
    b.put("cache/qwen/config.json", b"{}")
    _copy(tmp_path, "oss://bucket/cache/qwen", target=_target("cache/staged"))  # reads once
    store.reads.clear()
    r = _copy(tmp_path, "oss://bucket/cache/staged", target=_target("models/from-staged"))
    assert r.hashed_bytes == 0 and r.uploaded_files == 2
    assert not [k for _, k in store.reads if not k.endswith(st.MANIFEST_NAME)]


def test_a_changed_source_object_is_the_only_copy_and_the_manifest_goes_first(store, source, tmp_path):
    _copy(tmp_path)
    source.put("hub/qwen/config.json", b'{"hidden_size": 16}', mtime=1_700_000_100)
    source.put("hub/qwen/extra.json", b"[]")
    del source.objects["hub/qwen/tokenizer.json"]
    target = store.bucket("bucket")
    target.calls.clear()
    r = _copy(tmp_path)
    assert (r.uploaded_files, r.skipped_files, r.pruned_files) == (2, 1, 1)
    writes = [c for c in target.calls if c[0] in ("put", "copy", "part-copy", "delete")]
    assert writes[0] == ("delete", f"models/tiny/{st.MANIFEST_NAME}")
    assert writes[-2:] == [("put", f"models/tiny/{st.MANIFEST_NAME}"), ("delete", "models/tiny/tokenizer.json")]
    assert _staged(store)["config.json"] == b'{"hidden_size": 16}'


def test_a_copy_that_fails_its_crc_check_is_copied_again(store, source, tmp_path):
    store.bucket("bucket").faults = {"CopyObject": ["crc"]}
    r = _copy(tmp_path)
    assert r.verified and r.retries >= 1
    assert _staged(store)["config.json"] == b'{"hidden_size": 8}'
    store.bucket("bucket").objects.clear()
    store.bucket("bucket").faults = {"CopyObject": ["crc"] * 20}
    with pytest.raises(StagingError, match="failed after 2 attempt.*CRC64 check failed"):
        _copy(tmp_path, options=replace(OPTS, file_attempts=2))
    assert f"models/tiny/{st.MANIFEST_NAME}" not in store.bucket("bucket").objects


def test_transient_copy_errors_are_retried_and_listing_pages(store, source, tmp_path, monkeypatch):
    monkeypatch.setattr(st, "_LIST_PAGE", 2)
    store.bucket("bucket").faults = {"UploadPartCopy": ["503"], "CopyObject": ["503"]}
    source.faults = {"ListObjects": ["503"]}
    r = _copy(tmp_path)
    assert r.verified and r.files == 3 and r.retries >= 2


def test_a_source_object_replaced_during_the_copy_is_refused(store, source, tmp_path, monkeypatch):
    real = CopyBucket.copy_object

    def replaced_first(self, bucket, key, target_key, headers=None):
        self.store.buckets[bucket].objects[key] = b"new"  # between the probe and the copy
        return real(self, bucket, key, target_key, headers)

    monkeypatch.setattr(CopyBucket, "copy_object", replaced_first)
    with pytest.raises(StagingError, match="PreconditionFailed"):
        _copy(tmp_path)


def test_a_source_without_crc64_is_read_and_still_verified(store, source, tmp_path):
    source.faults = {"HeadObject": ["nocrc"] * 3}
    r = _copy(tmp_path)
    assert r.verified and r.hashed_bytes == r.bytes


@pytest.mark.parametrize("source_uri,target,message", [
    (f"oss://{SRC}/nothing-here", _target(), "no objects to stage"),
    ("oss://bucket/models", _target("models/tiny"), "overlaps the staging destination"),
    ("oss://bucket/models/tiny/sub", _target("models/tiny"), "overlaps the staging destination"),
    ("oss://bucket/models/tiny", _target("models/tiny"), "overlaps the staging destination"),
])
def test_oss_source_refusals(store, source, tmp_path, source_uri, target, message):
    with pytest.raises(StagingError, match=message):
        _copy(tmp_path, source_uri, target=target)


def test_oss_source_errors_name_the_source_bucket(store, source, tmp_path):
    source.faults = {"ListObjects": ["nosuchbucket"]}
    with pytest.raises(StagingError, match=f"model source oss://{SRC}/hub/qwen/: list objects: bucket '{SRC}' "
                                           "does not exist"):
        _copy(tmp_path)


def test_oss_source_needs_an_oss_target_and_sha256_needs_http(store, source, tmp_path):
    with pytest.raises(StagingError, match="needs storage.kind oss"):
        _copy(tmp_path, target=st.NasTarget(tmp_path / "nas", local=True))
    assert not (tmp_path / "nas").exists()
    with pytest.raises(StagingError, match=r"sha256 applies to an http\(s\):// source"):
        _copy(tmp_path, sha256="0" * 64)


def test_pure_helpers_of_the_copy():
    assert [st.source_rel_staged(r) for r in ("a.bin", "d/a.bin", "d/", "", ".git/x", "a/.cache/b",
                                               st.MANIFEST_NAME, "x/.tidegate-tmp")] == \
        [True, True, False, False, False, False, False, False]
    objs = [st.SourceObject("a", "p/a", 10, "e", 1, crc64=5), st.SourceObject("b", "p/b", 10, "e", 1, crc64=6),
            st.SourceObject("c", "p/c", 10, "e", 1, crc64=None)]
    old = st.Manifest((st.ManifestEntry("a", 10, 9, 5, "sha-a"), st.ManifestEntry("b", 10, 9, 7, "stale"),
                       st.ManifestEntry("gone", 1, 1, 1, "g")))
    src = st.Manifest((st.ManifestEntry("b", 10, 9, 6, "sha-b"),))
    filled = st.fill_from_manifests(objs, old, src)
    assert [o.sha256 for o in filled] == ["sha-a", "sha-b", None]
    plan = st.plan_copy(filled, {"a": st.RemoteObject(10, 5), "b": st.RemoteObject(10, None), "c": None}, old)
    assert ([o.rel for o in plan.skip], [o.rel for o in plan.copy], plan.stale) == (["a"], ["b", "c"], ["gone"])
    assert plan.copy_bytes == 20


def test_report_block_and_summary_of_the_new_fields():
    r = st.StagedModel(bytes=10, files=1, uploaded_bytes=10, skipped_files=0, seconds=0.5, MBps=0.0, uri="file:///x/",
                       manifest_key="/x/.tidegate-manifest.json", verified=True, uploaded_files=1, backend="nas",
                       source_kind="http", downloaded_bytes=10,
                       destination_check="NAS mount check skipped: storage.nas.local is true")
    assert "downloaded 0.0 MB" in r.summary() and r.summary().endswith("storage.nas.local is true")
    json.dumps(r.report_block())  # whatever StagingBlock lists, it stays valid
