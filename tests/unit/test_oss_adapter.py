"""The OSS adapter's pure logic: signature checks against oss2's own signers, OSS XML that
oss2's own parsers accept, error documents, CRC64 as oss2 computes it. No services."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from urllib.parse import parse_qsl

import oss2
import oss2.utils
import pytest
import requests
from multidict import CIMultiDict
from oss2 import http, xml_utils
from oss2.models import (
    ListMultipartUploadsResult,
    ListObjectsResult,
    ListObjectsV2Result,
    ListPartsResult,
)

from testbed import oss_adapter as oa

pytestmark = pytest.mark.unit

KEY_ID, SECRET = "TGTBTESTKEY", "test-secret"
HOST = "127.0.0.1:18333"
FIXED_DATE = "Sat, 28 Nov 2026 20:00:00 GMT"


def _signed(auth, method: str, bucket: str, key: str, *, params=None, headers=None, region=None) -> http.Request:
    """An oss2 request for bucket/key, signed by ``auth`` exactly as oss2.Bucket would."""
    url = oss2.api._UrlMaker(f"http://{HOST}", False, False)(bucket, key)
    req = http.Request(method, url, params=params or {}, headers=headers or {}, region=region, product="oss")
    auth._sign_request(req, bucket, key)
    return req


def _view(req: http.Request) -> oa.RequestView:
    """What the adapter sees of ``req`` once requests has put it on the wire."""
    headers = {k: v for k, v in req.headers.items() if v is not None}
    wire = requests.Request(req.method, req.url, params=req.params, headers=headers).prepare()
    raw = wire.path_url
    bucket, key = oa.split_target(HOST, raw)
    params = dict(parse_qsl(raw.partition("?")[2], keep_blank_values=True))
    return oa.RequestView(req.method, bucket, key, params, CIMultiDict(wire.headers))


MULTIPART_PUT = dict(params={"partNumber": "3", "uploadId": "abc_123"},
                     headers={"Content-Type": "application/octet-stream", "x-oss-meta-sha256": "deadbeef",
                              "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="})


# -- signature V1 -------------------------------------------------------------------------------
def test_v1_known_vector(monkeypatch):
    monkeypatch.setattr(oss2.utils, "http_date", lambda *a: FIXED_DATE)
    req = _signed(oss2.Auth(KEY_ID, SECRET), "PUT", "tidegate-models", "models/qwen/model-00001.safetensors",
                  **MULTIPART_PUT)
    # computed once with oss2 2.19.1's own signer; the adapter must agree byte for byte
    assert req.headers["authorization"] == "OSS TGTBTESTKEY:mHxZP0x7bvtW1VM+KF6YidZagMI="
    view = _view(req)
    assert view.key == "models/qwen/model-00001.safetensors"
    assert oa.v1_string_to_sign(view) == (
        b"PUT\n1B2M2Y8AsgTpgAmY7PhCfg==\napplication/octet-stream\n" + FIXED_DATE.encode()
        + b"\nx-oss-meta-sha256:deadbeef\n/tidegate-models/models/qwen/model-00001.safetensors"
        b"?partNumber=3&uploadId=abc_123")
    now = time.mktime(time.strptime(FIXED_DATE, "%a, %d %b %Y %H:%M:%S GMT")) - time.timezone
    assert oa.verify_oss_signature(view, {KEY_ID: SECRET}, now=now) == KEY_ID


@pytest.mark.parametrize("method,bucket,key,params", [
    ("GET", "tidegate-models", "", {"prefix": "models/", "max-keys": "100", "encoding-type": "url"}),
    ("GET", "tidegate-models", "", {"bucketInfo": ""}),
    ("POST", "tidegate-models", "a b/ü+%.bin", {"uploads": ""}),
    ("GET", "tidegate-models", "weights/x", {"uploadId": "u-1", "max-parts": "1000"}),
    ("HEAD", "tidegate-models", "weights/x", {"objectMeta": ""}),
    ("GET", "", "", {}),
])
def test_v1_verifies_oss2_requests(method, bucket, key, params):
    req = _signed(oss2.Auth(KEY_ID, SECRET), method, bucket, key, params=params)
    assert oa.verify_oss_signature(_view(req), {KEY_ID: SECRET}) == KEY_ID


def test_v1_wrong_secret_and_unknown_key():
    req = _signed(oss2.Auth(KEY_ID, "not-the-secret"), "GET", "tidegate-models", "k")
    with pytest.raises(oa.OssError) as bad:
        oa.verify_oss_signature(_view(req), {KEY_ID: SECRET})
    assert (bad.value.status, bad.value.code) == (403, "SignatureDoesNotMatch")
    assert bad.value.extra["StringToSign"].endswith("/tidegate-models/k")
    req = _signed(oss2.Auth("SOMEONE-ELSE", SECRET), "GET", "tidegate-models", "k")
    with pytest.raises(oa.OssError) as unknown:
        oa.verify_oss_signature(_view(req), {KEY_ID: SECRET})
    assert (unknown.value.status, unknown.value.code) == (403, "InvalidAccessKeyId")


def test_v1_tampered_request_and_clock_skew():
    req = _signed(oss2.Auth(KEY_ID, SECRET), "PUT", "tidegate-models", "k", **MULTIPART_PUT)
    view = _view(req)
    view.params["partNumber"] = "4"
    with pytest.raises(oa.OssError, match="SignatureDoesNotMatch"):
        oa.verify_oss_signature(view, {KEY_ID: SECRET})
    req = _signed(oss2.Auth(KEY_ID, SECRET), "GET", "tidegate-models", "k")
    with pytest.raises(oa.OssError) as skew:
        oa.verify_oss_signature(_view(req), {KEY_ID: SECRET}, now=time.time() + 3600)
    assert skew.value.code == "RequestTimeTooSkewed"


def test_anonymous_request_is_denied():
    req = _signed(oss2.AnonymousAuth(), "GET", "tidegate-models", "k")
    with pytest.raises(oa.OssError) as denied:
        oa.verify_oss_signature(_view(req), {KEY_ID: SECRET})
    assert (denied.value.status, denied.value.code) == (403, "AccessDenied")


def test_v1_presigned_url():
    bucket = oss2.Bucket(oss2.Auth(KEY_ID, SECRET), f"http://{HOST}", "tidegate-models")
    url = bucket.sign_url("GET", "dir/file name.bin", 60)
    raw = url.split(HOST, 1)[1]
    b, k = oa.split_target(HOST, raw)
    params = dict(parse_qsl(raw.partition("?")[2], keep_blank_values=True))
    view = oa.RequestView("GET", b, k, params, CIMultiDict())
    assert oa.verify_oss_signature(view, {KEY_ID: SECRET}) == KEY_ID
    with pytest.raises(oa.OssError, match="expired"):
        oa.verify_oss_signature(view, {KEY_ID: SECRET}, now=time.time() + 120)


# -- signature V2 and V4 ------------------------------------------------------------------------
@pytest.mark.parametrize("auth_cls", [oss2.AuthV2, oss2.AuthV4])
@pytest.mark.parametrize("method,key,params", [
    ("PUT", "models/a b+ü.safetensors", {"partNumber": "1", "uploadId": "x/y"}),
    ("GET", "", {"list-type": "2", "prefix": "models/", "continuation-token": "t+/="}),
    ("DELETE", "k", {}),
])
def test_v2_v4_verify_oss2_requests(auth_cls, method, key, params):
    req = _signed(auth_cls(KEY_ID, SECRET), method, "tidegate-models", key, params=params,
                  headers={"Content-Type": "text/plain", "x-oss-meta-a": "1"}, region="cn-hangzhou")
    assert oa.verify_oss_signature(_view(req), {KEY_ID: SECRET}) == KEY_ID
    bad = _signed(auth_cls(KEY_ID, "other"), method, "tidegate-models", key, params=params, region="cn-hangzhou")
    with pytest.raises(oa.OssError, match="SignatureDoesNotMatch"):
        oa.verify_oss_signature(_view(bad), {KEY_ID: SECRET})


# -- AWS SigV4 (the adapter's own calls) ----------------------------------------------------
def test_sigv4_matches_aws_published_example():
    # "GET Object" example of AWS's Signature Version 4 documentation for S3
    headers = oa.sign_s3_v4("GET", "examplebucket.s3.amazonaws.com", "/test.txt", [], {"range": "bytes=0-9"},
                            "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                            payload_hash="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                            amz_date="20130524T000000Z")
    assert headers["authorization"].endswith(
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_s3_paths_are_encoded_once():
    assert oa.s3_quote_path("") == "/"
    assert oa.s3_quote_path("b") == "/b"
    assert oa.s3_quote_path("b", "dir/a b+ü~.bin") == "/b/dir/a%20b%2B%C3%BC~.bin"
    assert oa.s3_canonical_query([("uploadId", "a/b"), ("partNumber", "2")]) == "partNumber=2&uploadId=a%2Fb"


# -- request routing ----------------------------------------------------------------------------
def test_split_target_path_and_virtual_host():
    assert oa.split_target("127.0.0.1:18333", "/tidegate-models/a%2Fb%20c?x=1") == ("tidegate-models", "a/b c")
    assert oa.split_target("127.0.0.1:18333", "/tidegate-models/a/b") == ("tidegate-models", "a/b")
    assert oa.split_target("127.0.0.1:18333", "/tidegate-models") == ("tidegate-models", "")
    assert oa.split_target("127.0.0.1:18333", "/") == ("", "")
    assert oa.split_target("tidegate-models.127.0.0.1:18333", "/a%2Fb") == ("tidegate-models", "a/b")
    assert oa.split_target("tidegate-models.localhost", "/") == ("tidegate-models", "")
    assert oa.split_target("localhost:18333", "/bkt/k") == ("bkt", "k")


@pytest.mark.parametrize("method,key,params,headers,op", [
    ("PUT", "k", {}, {}, "PutObject"),
    ("PUT", "k", {}, {"x-oss-copy-source": "/b/src"}, "CopyObject"),
    ("PUT", "k", {"partNumber": "1", "uploadId": "u"}, {}, "UploadPart"),
    ("PUT", "k", {"partNumber": "1", "uploadId": "u"}, {"x-oss-copy-source": "/b/src"}, "UploadPartCopy"),
    ("POST", "k", {"uploads": ""}, {}, "InitiateMultipartUpload"),
    ("POST", "k", {"uploadId": "u"}, {}, "CompleteMultipartUpload"),
    ("DELETE", "k", {"uploadId": "u"}, {}, "AbortMultipartUpload"),
    ("GET", "k", {"uploadId": "u", "max-parts": "1"}, {}, "ListParts"),
    ("GET", "k", {"response-content-type": "text/plain"}, {}, "GetObject"),
    ("HEAD", "k", {}, {}, "HeadObject"),
    ("HEAD", "k", {"objectMeta": ""}, {}, "GetObjectMeta"),
    ("DELETE", "k", {}, {}, "DeleteObject"),
    ("GET", "", {"prefix": "a"}, {}, "ListObjects"),
    ("GET", "", {"list-type": "2", "continuation-token": "t"}, {}, "ListObjectsV2"),
    ("GET", "", {"uploads": ""}, {}, "ListMultipartUploads"),
    ("GET", "", {"bucketInfo": ""}, {}, "GetBucketInfo"),
    ("POST", "", {"delete": "", "encoding-type": "url"}, {}, "DeleteMultipleObjects"),
    ("PUT", "", {}, {}, "CreateBucket"),
])
def test_classify(method, key, params, headers, op):
    assert oa.classify(oa.RequestView(method, "b", key, params, CIMultiDict(headers))) == op


def test_classify_rejects_what_it_does_not_implement():
    with pytest.raises(oa.OssError) as err:
        oa.classify(oa.RequestView("POST", "b", "k", {"append": "", "position": "0"}, CIMultiDict()))
    assert err.value.code == "NotImplemented" and "append" in err.value.message


# -- UploadPartCopy's headers -------------------------------------------------------------------
def test_copy_source_is_decoded_as_oss2_encodes_it():
    req = _signed(oss2.Auth(KEY_ID, SECRET), "PUT", "dst", "k", params={"partNumber": "1", "uploadId": "u"},
                  headers={"x-oss-copy-source": "/src-bucket/" + oss2.compat.urlquote("a b/ü+%.bin", "")})
    assert oa.parse_copy_source(_view(req).header("x-oss-copy-source")) == ("src-bucket", "a b/ü+%.bin")
    assert oa.parse_copy_source("/b/k?versionId=v1") == ("b", "k")
    for bad in ("", "/", "/b", "/b/", "b/k"):
        with pytest.raises(oa.OssError) as err:
            oa.parse_copy_source(bad)
        assert (err.value.status, err.value.code) == (400, "InvalidArgument")


@pytest.mark.parametrize("value,expected", [
    ("", (0, 99)), ("bytes=0-99", (0, 99)), ("bytes=10-19", (10, 19)), ("bytes=99-99", (99, 99)),
    ("bytes=90-", (90, 99)), ("bytes=-10", (90, 99)), ("bytes=-100", (0, 99)),
])
def test_copy_range_within_the_source(value, expected):
    assert oa.parse_copy_range(value, 100) == expected


@pytest.mark.parametrize("value", ["bytes=0-100", "bytes=20-10", "bytes=100-", "bytes=-101", "bytes=-0",
                                   "bytes=a-b", "bytes=1-2,4-5", "bytes=-", "items=0-9", "0-9", "bytes=+1-9"])
def test_copy_range_outside_the_source_or_malformed_is_invalid_argument(value):
    with pytest.raises(oa.OssError) as err:
        oa.parse_copy_range(value, 100)
    assert (err.value.status, err.value.code) == (400, "InvalidArgument")


def test_copy_preconditions():
    etag, modified = '"abc"', "Sat, 28 Nov 2026 20:00:00 GMT"
    earlier, later = "Sat, 28 Nov 2026 19:00:00 GMT", "Sat, 28 Nov 2026 21:00:00 GMT"
    ok = [{}, {"x-oss-copy-source-if-match": '"abc"'}, {"x-oss-copy-source-if-match": "ABC"},
          {"x-oss-copy-source-if-none-match": '"xyz"'}, {"x-oss-copy-source-if-unmodified-since": modified},
          {"x-oss-copy-source-if-modified-since": earlier}]
    for headers in ok:
        oa.check_copy_preconditions(CIMultiDict(headers), etag, modified)
    failing = [("x-oss-copy-source-if-match", '"xyz"'), ("x-oss-copy-source-if-none-match", '"abc"'),
               ("x-oss-copy-source-if-unmodified-since", earlier), ("x-oss-copy-source-if-modified-since", later)]
    for name, value in failing:
        with pytest.raises(oa.OssError) as err:
            oa.check_copy_preconditions(CIMultiDict({name: value}), etag, modified)
        assert (err.value.status, err.value.code, err.value.extra) == (412, "PreconditionFailed",
                                                                       {"Condition": name})
        body = oa.render_error_xml(err.value, "R", "H")
        assert isinstance(oss2.exceptions.make_exception(_FakeResp(412, body)), oss2.exceptions.PreconditionFailed)


# -- OSS XML that oss2's parsers accept ---------------------------------------------------------
S3_LIST_PARTS = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key>
<UploadId>u</UploadId><PartNumberMarker>0</PartNumberMarker><MaxParts>1000</MaxParts>
<IsTruncated>false</IsTruncated>
<Part><PartNumber>1</PartNumber><LastModified>2026-11-28T20:39:47Z</LastModified>
<ETag>"e1"</ETag><Size>8388608</Size></Part>
<Part><PartNumber>2</PartNumber><LastModified>2026-11-28T20:39:48.123456Z</LastModified>
<ETag>"e2"</ETag><Size>5</Size></Part></ListPartsResult>"""


def test_list_parts_has_the_fields_oss2_requires():
    s3 = oa.parse_s3_xml(S3_LIST_PARTS)
    body = oa.render_list_parts(s3, "b", "k", "u", {1: ("e1", 8388608, 42)})
    assert b"xmlns" not in body
    result = xml_utils.parse_list_parts(ListPartsResult(_FakeResp()), body)
    assert [(p.part_number, p.etag, p.size) for p in result.parts] == [(1, "e1", 8388608), (2, "e2", 5)]
    assert result.next_marker == "2" and result.is_truncated is False
    assert ET.fromstring(body).find("Part/HashCrc64ecma").text == "42"


S3_LIST_V2 = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>m/</Prefix>
<MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken>
<Contents><Key>m/a b</Key><LastModified>2026-11-28T20:39:47Z</LastModified><ETag>"x"</ETag><Size>3</Size>
<StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>m/c</Key><LastModified>2026-11-28T20:39:47Z</LastModified><ETag>"y-2"</ETag><Size>9</Size></Contents>
<CommonPrefixes><Prefix>m/d/</Prefix></CommonPrefixes></ListBucketResult>"""


@pytest.mark.parametrize("v2", [False, True])
def test_list_objects_parse_with_oss2(v2):
    s3 = oa.parse_s3_xml(S3_LIST_V2)
    params = {"prefix": "m/", "encoding-type": "url", "max-keys": "2"}
    body = oa.render_list_objects(s3, "b", params, v2=v2)
    if v2:
        result = xml_utils.parse_list_objects_v2(ListObjectsV2Result(_FakeResp()), body)
        assert result.next_continuation_token == "tok"
    else:
        result = xml_utils.parse_list_objects(ListObjectsResult(_FakeResp()), body)
        assert result.next_marker == "m/d/"
    assert [(o.key, o.size, o.type) for o in result.object_list] == [("m/a b", 3, "Normal"), ("m/c", 9, "Multipart")]
    assert result.object_list[0].last_modified == 1795898387
    assert result.prefix_list == ["m/d/"]


def test_list_uploads_parse_with_oss2():
    s3 = oa.parse_s3_xml(b"""<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
        <Bucket>b</Bucket><IsTruncated>false</IsTruncated>
        <Upload><Key>k</Key><UploadId>u1</UploadId><Initiated>2026-11-28T20:39:47Z</Initiated></Upload>
        </ListMultipartUploadsResult>""")
    body = oa.render_list_uploads(s3, "b", {"encoding-type": "url"})
    result = xml_utils.parse_list_multipart_uploads(ListMultipartUploadsResult(_FakeResp()), body)
    assert [(u.key, u.upload_id) for u in result.upload_list] == [("k", "u1")]


def test_bucket_info_parses_with_oss2():
    result = oss2.models.GetBucketInfoResult(_FakeResp())
    xml_utils.parse_get_bucket_info(result, oa.render_bucket_info("b", "2026-11-28T20:39:47Z", HOST))
    assert (result.name, result.location, result.storage_class) == ("b", oa.REGION, "Standard")


# -- errors -------------------------------------------------------------------------------------
def test_error_xml_shape_and_oss2_exception_class():
    err = oa.OssError(404, "NoSuchKey", "The specified key does not exist.", Key="k")
    body = oa.render_error_xml(err, "REQ0123", "b.127.0.0.1")
    root = ET.fromstring(body)
    assert root.tag == "Error" and root.attrib == {}
    assert [c.tag for c in root][:4] == ["Code", "Message", "RequestId", "HostId"]
    exc = oss2.exceptions.make_exception(_FakeResp(404, body, {"x-oss-request-id": "REQ0123"}))
    assert isinstance(exc, oss2.exceptions.NoSuchKey) and exc.request_id == "REQ0123"
    sig = oss2.exceptions.make_exception(
        _FakeResp(403, oa.render_error_xml(oa.OssError(403, "SignatureDoesNotMatch", "m"), "R", "H")))
    assert isinstance(sig, oss2.exceptions.SignatureDoesNotMatch)


def test_s3_errors_map_to_oss_codes():
    def s3_error(code: str, status: int) -> oa.OssError:
        return oa.Adapter._s3_error(status, f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode())

    assert (s3_error("BadDigest", 400).code, s3_error("BadDigest", 400).status) == ("InvalidDigest", 400)
    assert s3_error("NoSuchUpload", 404).code == "NoSuchUpload"
    assert s3_error("InvalidPart", 400).code == "InvalidPart"
    assert oa.Adapter._s3_error(404, b"").code == "NoSuchKey"


# -- CRC64 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
def test_crc64_matches_oss2(fast):
    data = os.urandom(300_001)
    reference = oss2.utils.Crc64()
    reference.update(data)
    stream = oa.Crc64Stream(fast=fast)
    for i in range(0, len(data), 65_536):
        stream.update(memoryview(data)[i:i + 65_536])
    assert stream.crc == reference.crc == oa.crc64(data)
    a, b = data[:123_457], data[123_457:]
    assert oa.crc64_combine(oa.crc64(a), oa.crc64(b), len(b)) == reference.crc
    assert oa.crc64(b"") == 0


class _FakeResp:
    """Just enough of oss2.http.Response for oss2's result classes and make_exception."""

    def __init__(self, status: int = 200, body: bytes = b"", headers: dict | None = None):
        self.status = status
        self.headers = oss2.CaseInsensitiveDict(headers or {})
        self.request_id = self.headers.get("x-oss-request-id", "")
        self._body = body

    def read(self, amt=None):
        body, self._body = self._body, b""
        return body
