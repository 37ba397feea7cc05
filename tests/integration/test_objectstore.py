"""Issue 5, the test bed's object store: the real oss2 SDK against SeaweedFS through the OSS
adapter, started here once per module (the same COMPONENTS ``tidegate testbed up`` starts) on
free loopback ports in a tmp dir, and stopped at the end with nothing left listening."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import stat
import time
import urllib.request
from pathlib import Path

import oss2
import pytest
import requests

from testbed import objectstore
from testbed.config import Ports, TestbedConfig
from testbed.oss_adapter import Crc64Stream, crc64, s3_quote_path, sign_s3_v4
from testbed.procs import port_free

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
PART = 8 * MiB


def _free_http_port(taken: set[int]) -> int:
    """A port below the ephemeral range whose SeaweedFS gRPC twin (+10000) is free too, and
    clear of the ports a running test bed uses by default."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    testbed_defaults = set(Ports().model_dump().values())
    while True:
        port = rng.randrange(12000, 17900)
        pair = {port, port + objectstore.GRPC_PORT_OFFSET}
        if taken & pair or testbed_defaults & pair:
            continue
        if port_free(port) and port_free(port + objectstore.GRPC_PORT_OFFSET):
            taken.update({port, port + objectstore.GRPC_PORT_OFFSET})
            return port


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    taken: set[int] = set()
    names = ("oss", "seaweed_s3", "seaweed_master", "seaweed_volume", "seaweed_filer")
    ports = Ports(**{n: _free_http_port(taken) for n in names})
    cfg = TestbedConfig(state_dir=tmp_path_factory.mktemp("objectstore"), ports=ports)
    t0 = time.monotonic()
    timings = objectstore.start(cfg, log=lambda m: print(m, flush=True))
    print(f"object store up in {time.monotonic() - t0:.1f}s: {timings}")
    try:
        yield cfg
    finally:
        objectstore.stop(cfg, graceful=False)
        busy = [p for p in objectstore.seaweed_ports(ports) + [ports.oss] if not port_free(p)]
        assert not busy, f"ports still listening after stop: {busy}"


@pytest.fixture(scope="module")
def keys(store):
    return objectstore.load_keys(store.state_dir)


@pytest.fixture(scope="module")
def bucket(store, keys):
    return oss2.Bucket(oss2.Auth(*keys), objectstore.oss_endpoint(store.ports), objectstore.BUCKET,
                       session=oss2.Session(pool_size=8))


def _admin(cfg: TestbedConfig, what: str, method: str = "GET", payload=None):
    url = f"{objectstore.oss_endpoint(cfg.ports)}/_tidegate/{what}"
    resp = requests.request(method, url, json=payload, timeout=10)
    resp.raise_for_status()
    return resp.json()


def _random_file(path: Path, size: int) -> tuple[str, int]:
    """Write ``size`` random bytes; (sha256, crc64) of them."""
    sha, crc = hashlib.sha256(), Crc64Stream()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            f.write(block)
            sha.update(block)
            crc.update(block)
            left -= len(block)
    return sha.hexdigest(), crc.crc


def _sha256_of_object(bucket: oss2.Bucket, key: str, dest: Path) -> str:
    bucket.get_object_to_file(key, str(dest))
    sha = hashlib.sha256()
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            sha.update(block)
    return sha.hexdigest()


# -- the brief's headline checks ---------------------------------------------------------------
def test_resumable_upload_100mib_and_byte_for_byte_download(store, bucket, tmp_path):
    src = tmp_path / "weights.bin"
    sha, crc = _random_file(src, 100 * MiB)
    _admin(store, "stats", "DELETE")
    t0 = time.perf_counter()
    result = oss2.resumable_upload(bucket, "models/big/weights.bin", str(src),
                                   store=oss2.ResumableStore(root=str(tmp_path / "cp")),
                                   multipart_threshold=MiB, part_size=PART, num_threads=4)
    seconds = time.perf_counter() - t0
    print(f"resumable_upload 100 MiB: {seconds:.2f}s, {100 * MiB / 1e6 / seconds:.1f} MB/s")
    assert result.crc == crc  # oss2 already compared it with the combined part CRCs
    assert _admin(store, "stats")["ops"]["UploadPart"] == 13
    head = bucket.head_object("models/big/weights.bin")
    assert head.content_length == 100 * MiB and head.server_crc == crc and head.object_type == "Multipart"
    t0 = time.perf_counter()
    assert _sha256_of_object(bucket, "models/big/weights.bin", tmp_path / "back.bin") == sha
    print(f"get_object_to_file 100 MiB: {time.perf_counter() - t0:.2f}s")
    ranged = bucket.get_object("models/big/weights.bin", byte_range=(PART - 5, PART + 4)).read()
    with open(src, "rb") as f:
        f.seek(PART - 5)
        assert ranged == f.read(10)


def test_interrupted_multipart_upload_resumes(store, bucket, tmp_path):
    src = tmp_path / "shard.bin"
    sha, crc = _random_file(src, 6 * PART)
    checkpoints = oss2.ResumableStore(root=str(tmp_path / "cp"))
    key = "models/resume/shard.bin"

    class Killed(Exception):
        pass

    def kill_after_two_parts(done: int, total: int) -> None:
        if done >= 2 * PART:
            raise Killed

    with pytest.raises(Killed):
        oss2.resumable_upload(bucket, key, str(src), store=checkpoints, multipart_threshold=MiB, part_size=PART,
                              num_threads=1, progress_callback=kill_after_two_parts)
    assert not bucket.object_exists(key)
    uploads = [u for u in bucket.list_multipart_uploads(prefix=key).upload_list if u.key == key]
    assert len(uploads) == 1
    done_before = len(bucket.list_parts(key, uploads[0].upload_id).parts)
    assert 1 <= done_before < 6

    _admin(store, "stats", "DELETE")
    oss2.resumable_upload(bucket, key, str(src), store=checkpoints, multipart_threshold=MiB, part_size=PART,
                          num_threads=4)
    ops = _admin(store, "stats")["ops"]
    assert ops["UploadPart"] == 6 - done_before, ops
    assert "InitiateMultipartUpload" not in ops  # it resumed the same upload
    assert bucket.head_object(key).server_crc == crc  # combined over parts of both runs
    assert _sha256_of_object(bucket, key, tmp_path / "back.bin") == sha


def test_wrong_key_is_rejected_with_oss_errors(store, keys, bucket):
    bucket.put_object("auth/probe", b"x")
    endpoint = objectstore.oss_endpoint(store.ports)
    wrong_secret = oss2.Bucket(oss2.Auth(keys[0], "not-the-secret"), endpoint, objectstore.BUCKET)
    with pytest.raises(oss2.exceptions.ServerError) as bad_sig:
        wrong_secret.get_object("auth/probe")
    assert (bad_sig.value.status, bad_sig.value.code) == (403, "SignatureDoesNotMatch")
    assert bad_sig.value.request_id
    unknown = oss2.Bucket(oss2.Auth("NO-SUCH-KEY-ID", keys[1]), endpoint, objectstore.BUCKET)
    with pytest.raises(oss2.exceptions.ServerError) as bad_id:
        unknown.put_object("auth/other", b"y")
    assert (bad_id.value.status, bad_id.value.code) == (403, "InvalidAccessKeyId")
    with pytest.raises(oss2.exceptions.ServerError) as on_head:  # HEAD errors come in x-oss-err
        wrong_secret.head_object("auth/probe")
    assert (on_head.value.status, on_head.value.code) == (403, "SignatureDoesNotMatch")
    anonymous = oss2.Bucket(oss2.AnonymousAuth(), endpoint, objectstore.BUCKET)
    with pytest.raises(oss2.exceptions.AccessDenied):
        anonymous.get_object("auth/probe")
    assert not bucket.object_exists("auth/other")


@pytest.mark.parametrize("auth_cls", [oss2.Auth, oss2.AuthV2, oss2.AuthV4])
def test_signature_versions(store, keys, auth_cls):
    b = oss2.Bucket(auth_cls(*keys), objectstore.oss_endpoint(store.ports), objectstore.BUCKET, region="cn-testbed")
    key = f"auth/{auth_cls.__name__}/a b+ü.txt"
    b.put_object(key, b"signed", headers={"x-oss-meta-origin": "tidegate"})
    got = b.get_object(key)
    assert got.read() == b"signed" and got.headers["x-oss-meta-origin"] == "tidegate"
    assert key in [o.key for o in b.list_objects_v2(prefix=f"auth/{auth_cls.__name__}/").object_list]


def test_crc64_headers_for_put_and_multipart(bucket):
    data = os.urandom(3 * MiB + 17)
    put = bucket.put_object("crc/single", data)
    assert put.crc == crc64(data)
    assert bucket.get_object("crc/single").server_crc == crc64(data)

    body = os.urandom(5 * MiB + 3 * MiB + 11)
    upload_id = bucket.init_multipart_upload("crc/multi").upload_id
    parts = []
    for number, (start, end) in enumerate([(0, 5 * MiB), (5 * MiB, len(body))], start=1):
        chunk = body[start:end]
        r = bucket.upload_part("crc/multi", upload_id, number, chunk)
        assert r.crc == crc64(chunk)
        parts.append(oss2.models.PartInfo(number, r.etag, size=len(chunk), part_crc=r.crc))
    done = bucket.complete_multipart_upload("crc/multi", upload_id, parts)
    assert done.crc == crc64(body)
    got = bucket.get_object("crc/multi")
    assert got.read() == body and got.server_crc == got.client_crc == crc64(body)

    copied = bucket.copy_object(objectstore.BUCKET, "crc/multi", "crc/copy")
    assert copied.crc == crc64(body) == bucket.head_object("crc/copy").server_crc


def test_upload_part_copy_of_two_ranges_keeps_bytes_and_crc64(store, bucket):
    source = os.urandom(PART + 3 * MiB + 7)
    src = bucket.put_object("copy/source a+ü.bin", source)
    _admin(store, "stats", "DELETE")
    upload_id = bucket.init_multipart_upload("copy/target").upload_id
    ranges = [(0, PART - 1), (PART, len(source) - 1)]
    parts = []
    for number, (first, last) in enumerate(ranges, start=1):
        r = bucket.upload_part_copy(objectstore.BUCKET, "copy/source a+ü.bin", (first, last), "copy/target",
                                    upload_id, number, headers={"x-oss-copy-source-if-match": f'"{src.etag}"'})
        assert r.etag and r.crc == crc64(source[first:last + 1])
        parts.append(oss2.models.PartInfo(number, r.etag))
    listed = bucket.list_parts("copy/target", upload_id).parts
    assert [(p.part_number, p.etag, p.size) for p in listed] == [(1, parts[0].etag, PART),
                                                                 (2, parts[1].etag, len(source) - PART)]
    done = bucket.complete_multipart_upload("copy/target", upload_id, parts)
    assert done.crc == src.crc == crc64(source)
    got = bucket.get_object("copy/target")
    assert got.read() == source and got.server_crc == crc64(source)
    assert _admin(store, "stats")["ops"]["UploadPartCopy"] == 2

    # no range: the whole source as one part; its CRC comes from the side table, no read-back
    upload_id = bucket.init_multipart_upload("copy/whole").upload_id
    whole = bucket.upload_part_copy(objectstore.BUCKET, "copy/target", None, "copy/whole", upload_id, 1)
    assert whole.crc == crc64(source)
    done = bucket.complete_multipart_upload("copy/whole", upload_id, [oss2.models.PartInfo(1, whole.etag)])
    assert done.crc == crc64(source) == bucket.head_object("copy/whole").server_crc


def test_upload_part_copy_errors_are_oss_errors(store, keys, bucket):
    bucket.put_object("copy/errors/src", b"0123456789")
    upload_id = bucket.init_multipart_upload("copy/errors/dst").upload_id

    def copy(key="copy/errors/src", byte_range=None, headers=None, source_bucket=objectstore.BUCKET):
        return bucket.upload_part_copy(source_bucket, key, byte_range, "copy/errors/dst", upload_id, 1,
                                       headers=headers)

    with pytest.raises(oss2.exceptions.NoSuchKey):
        copy(key="copy/errors/missing")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        copy(source_bucket="no-such-bucket")
    with pytest.raises(oss2.exceptions.InvalidArgument):
        copy(byte_range=(5, 10))  # past the last byte
    with pytest.raises(oss2.exceptions.InvalidArgument):
        copy(byte_range=(6, 5))
    with pytest.raises(oss2.exceptions.PreconditionFailed):
        copy(headers={"x-oss-copy-source-if-match": '"0123456789abcdef0123456789abcdef"'})
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.upload_part_copy(objectstore.BUCKET, "copy/errors/src", None, "copy/errors/dst", "no-such-upload", 1)
    assert copy(byte_range=(2, 4)).crc == crc64(b"234")  # the upload is still usable
    bucket.abort_multipart_upload("copy/errors/dst", upload_id)


def test_list_objects_v1_v2_with_prefix_and_paging(bucket):
    keys = [f"listing/m/{i:02d}.bin" for i in range(5)] + ["listing/m/sub/x.bin", "listing/other.bin"]
    for k in keys:
        bucket.put_object(k, k.encode())
    v1 = bucket.list_objects(prefix="listing/m/", delimiter="/")
    assert [o.key for o in v1.object_list] == keys[:5] and v1.prefix_list == ["listing/m/sub/"]
    v2 = bucket.list_objects_v2(prefix="listing/m/", delimiter="/")
    assert [o.key for o in v2.object_list] == keys[:5] and v2.prefix_list == ["listing/m/sub/"]
    assert [o.key for o in oss2.ObjectIterator(bucket, prefix="listing/", max_keys=2)] == sorted(keys)
    assert [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="listing/", max_keys=2)] == sorted(keys)
    assert all(o.size > 0 and o.last_modified > 0 for o in oss2.ObjectIteratorV2(bucket, prefix="listing/"))
    result = bucket.batch_delete_objects(keys)
    assert sorted(result.deleted_keys) == sorted(keys)
    assert not bucket.list_objects(prefix="listing/").object_list


def test_missing_objects_and_buckets(store, keys, bucket):
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object("nothing/here")
    assert not bucket.object_exists("nothing/here")
    assert bucket.get_bucket_info().name == objectstore.BUCKET
    nowhere = oss2.Bucket(oss2.Auth(*keys), objectstore.oss_endpoint(store.ports), "no-such-bucket")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        nowhere.put_object("k", b"v")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        nowhere.get_bucket_info()
    upload_id = bucket.init_multipart_upload("nothing/upload").upload_id
    bucket.abort_multipart_upload("nothing/upload", upload_id)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.list_parts("nothing/upload", upload_id)


def test_s3_sigv4_requests_pass_through(store, keys, bucket):
    host = f"127.0.0.1:{store.ports.oss}"
    path = s3_quote_path(objectstore.BUCKET, "s3/through adapter.bin")
    body = os.urandom(256 * 1024)
    headers = sign_s3_v4("PUT", host, path, [], {"content-length": str(len(body))}, *keys,
                         payload_hash=hashlib.sha256(body).hexdigest())
    put = requests.put(f"http://{host}{path}", data=body, headers=headers, timeout=30)
    assert put.status_code == 200, put.text
    assert put.headers["x-oss-request-id"]
    assert bucket.get_object("s3/through adapter.bin").read() == body  # same store, OSS side
    listing = requests.get(f"http://{host}/{objectstore.BUCKET}?list-type=2&prefix=s3%2F", timeout=30,
                           headers=sign_s3_v4("GET", host, f"/{objectstore.BUCKET}",
                                              [("list-type", "2"), ("prefix", "s3/")], {}, *keys))
    assert listing.status_code == 200 and b"s3/through adapter.bin" in listing.content
    forged = sign_s3_v4("GET", host, path, [], {}, keys[0], "not-the-secret")
    denied = requests.get(f"http://{host}{path}", headers=forged, timeout=30)
    assert denied.status_code == 403 and b"SignatureDoesNotMatch" in denied.content  # SeaweedFS checked it
    assert _admin(store, "stats")["passthrough"] >= 3


def test_botocore_s3_client_passes_through(store, keys):
    botocore_session = pytest.importorskip(
        "botocore.session", reason="botocore is not installed (not a tidegate dependency); the SigV4 "
                                   "pass-through is covered by test_s3_sigv4_requests_pass_through")
    client = botocore_session.get_session().create_client(
        "s3", endpoint_url=objectstore.oss_endpoint(store.ports), aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1], region_name="us-east-1")
    client.put_object(Bucket=objectstore.BUCKET, Key="s3/botocore", Body=b"boto")
    assert client.get_object(Bucket=objectstore.BUCKET, Key="s3/botocore")["Body"].read() == b"boto"


def test_fault_hooks_for_staging_tests(store, bucket):
    _admin(store, "faults", "POST", {"op": "PutObject", "action": "error", "times": 1, "key_prefix": "faults/"})
    with pytest.raises(oss2.exceptions.ServerError) as failed:
        bucket.put_object("faults/a", b"1")
    assert (failed.value.status, failed.value.code) == (500, "InternalError")
    bucket.put_object("faults/a", b"1")  # the fault was used up
    _admin(store, "faults", "POST", {"op": "PutObject", "action": "corrupt_crc", "times": 1})
    with pytest.raises(oss2.exceptions.InconsistentError):
        bucket.put_object("faults/b", b"2")
    assert _admin(store, "faults") == []


def test_keys_status_and_files(store, keys):
    env = store.state_dir / objectstore.KEYS_FILE
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE((store.state_dir / objectstore.S3_CONFIG_FILE).stat().st_mode) == 0o600
    status = objectstore.COMPONENTS[1].extra_status(store)
    assert status["oss"]["endpoint"] == objectstore.oss_endpoint(store.ports)
    assert status["oss"]["keys"]["file"] == str(env)
    text = json.dumps(status)
    assert keys[0] not in text and keys[1] not in text
    assert objectstore.ensure_keys(store.state_dir) == keys  # stable across restarts
    with urllib.request.urlopen(f"{objectstore.oss_endpoint(store.ports)}/_tidegate/health", timeout=5) as r:
        assert json.load(r)["ok"] is True


def test_ports_are_loopback_only(store):
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":
                addr, port = cols[1].rsplit(":", 1)
                listening.append((addr, int(port, 16)))
    ours = set(objectstore.seaweed_ports(store.ports) + [store.ports.oss])
    exposed = [(a, p) for a, p in listening if p in ours and a not in ("0100007F", "00000000000000000000000001000000")]
    assert not exposed, exposed
    with socket.create_connection(("127.0.0.1", store.ports.oss), timeout=2):
        pass
