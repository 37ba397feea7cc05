"""The OSS REST dialect in front of SeaweedFS's S3 gateway, so that the real ``oss2`` SDK runs
unchanged against the test bed's object store.

Run as ``python -m testbed.oss_adapter --port P --upstream http://127.0.0.1:S3PORT --keys FILE``.
It listens on loopback only and owns four things:

- **Authentication.** Requests signed the OSS way (V1 ``OSS id:sig``, V2 ``OSS2 ...``, V4
  ``OSS4-HMAC-SHA256 ...``, and V1 presigned URLs) are verified against the test bed's keys;
  a wrong key or signature gets OSS's own 403 error XML. Requests signed the S3 way
  (``AWS4-HMAC-SHA256``, ``AWS``, presigned ``X-Amz-*``) are passed to SeaweedFS byte for byte,
  Host header included, and SeaweedFS checks them against the same key.
- **Translation.** Each OSS operation becomes one S3 call signed with SigV4 (unsigned payload,
  so bodies stream); S3 XML comes back as OSS XML (no namespace, ``.000Z`` timestamps, the
  fields oss2's parsers insist on); ``x-oss-meta-*`` maps to ``x-amz-meta-*`` and back; S3
  error codes become OSS's.
- **CRC64.** ``x-oss-hash-crc64ecma`` (CRC-64/XZ, as ``oss2.utils.Crc64`` computes it) is
  computed while a PUT or UploadPart body streams through (an UploadPartCopy part's is the
  source's stored CRC when it copies the whole source, else read back from the source range
  it copied, pinned to the source's ETag), combined over the parts at
  CompleteMultipartUpload, and kept in a SQLite side table keyed by (bucket, key) *and the
  ETag*, so GET/HEAD report it only for the exact object version it was computed for (an
  object overwritten through the S3 path simply has no CRC header, which oss2 tolerates).
- **Test hooks** under ``/_tidegate/`` (not a valid bucket name, so never an object):
  ``GET /_tidegate/health``; ``GET|DELETE /_tidegate/stats`` (request counts per operation,
  bytes, auth failures); ``GET|POST|DELETE /_tidegate/faults`` to make the next N requests of
  an operation fail (``error``: an OSS error without touching the store; ``corrupt_crc``: a
  wrong ``x-oss-hash-crc64ecma``; ``disconnect``: drop the connection).

Bodies are streamed in both directions through one shared ``aiohttp.ClientSession``; the only
bodies read whole are small XML documents (CompleteMultipartUpload, DeleteMultipleObjects).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import logging
import os
import signal
import sqlite3
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote

import aiohttp
import yarl
from aiohttp import web
from oss2.utils import Crc64

log = logging.getLogger("tidegate.oss_adapter")

ADMIN_PREFIX = "/_tidegate/"
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
OWNER_ID = "tidegate-testbed"
REGION = "oss-cn-testbed"
MAX_CLOCK_SKEW_S = 15 * 60
_CHUNK = 1 << 18

# -- CRC-64/XZ as oss2 computes it ------------------------------------------------------------
# oss2 computes x-oss-hash-crc64ecma with crcmod (oss2.utils.Crc64): ~0.3 GB/s, and it holds
# the GIL, which made it most of this adapter's CPU time. anycrc computes the same CRC at
# several GB/s; it is used when installed and crcmod is the fallback (same values).
try:
    import anycrc

    _FAST = anycrc.Model("CRC64-XZ")
except ImportError:  # pragma: no cover - depends on the environment
    _FAST = None
_COMBINER = Crc64()
CRC_IMPLEMENTATION = "anycrc" if _FAST is not None else "crcmod"


class Crc64Stream:
    """Running CRC-64 (ECMA-182 polynomial, reflected: ``x-oss-hash-crc64ecma``)."""

    __slots__ = ("_crc", "_slow")

    def __init__(self, *, fast: bool = True) -> None:
        self._crc = 0
        self._slow = None if (fast and _FAST is not None) else Crc64()

    def update(self, data: bytes | memoryview) -> None:
        if self._slow is None:
            self._crc = _FAST.calc(data, self._crc)
        else:
            self._slow.update(data)

    @property
    def crc(self) -> int:
        return self._crc if self._slow is None else self._slow.crc


def crc64(data: bytes | memoryview) -> int:
    """CRC-64 of ``data`` as OSS reports it in ``x-oss-hash-crc64ecma``."""
    c = Crc64Stream()
    c.update(data)
    return c.crc


def crc64_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC of A+B from crc(A), crc(B) and len(B)."""
    if _FAST is not None:
        return _FAST.combine(crc1, crc2, len2)
    return _COMBINER.combine(crc1, crc2, len2)


# -- errors -----------------------------------------------------------------------------------
class OssError(Exception):
    """An error answered to the client as OSS error XML (and ``x-oss-err`` for HEAD)."""

    def __init__(self, status: int, code: str, message: str, **extra: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


# S3 error code -> (OSS status, OSS code); codes not listed keep S3's status and code.
_S3_TO_OSS_ERROR: dict[str, tuple[int, str]] = {
    "BadDigest": (400, "InvalidDigest"),
    "XAmzContentSHA256Mismatch": (400, "InvalidDigest"),
    "BucketAlreadyOwnedByYou": (409, "BucketAlreadyExists"),
    "NoSuchVersion": (404, "NoSuchVersion"),
    "MissingContentLength": (411, "MissingContentLength"),
    "InvalidRange": (416, "InvalidRange"),
    "EntityTooSmall": (400, "EntityTooSmall"),
    "InvalidPart": (400, "InvalidPart"),
    "InvalidPartOrder": (400, "InvalidPartOrder"),
    "NotImplemented": (400, "NotImplemented"),
}


def render_error_xml(err: OssError, request_id: str, host_id: str) -> bytes:
    """OSS error document: ``<Error><Code/><Message/><RequestId/><HostId/>...</Error>``."""
    root = ET.Element("Error")
    _el(root, "Code", err.code)
    _el(root, "Message", err.message)
    _el(root, "RequestId", request_id)
    _el(root, "HostId", host_id)
    for k, v in err.extra.items():
        _el(root, k, v)
    return _xml_bytes(root)


# -- request view shared by the signature checks -------------------------------------------
@dataclass
class RequestView:
    """What the OSS signatures cover: method, bucket, key (decoded), query (decoded) and headers."""

    method: str
    bucket: str
    key: str
    params: dict[str, str]
    headers: Mapping[str, str]  # case-insensitive mapping

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""


def split_target(host: str, raw_path: str) -> tuple[str, str]:
    """(bucket, key) of a request, from a virtual-host (``bucket.127.0.0.1``) or path-style URL."""
    hostname = host.rsplit(":", 1)[0] if host and not host.endswith("]") else host
    path = raw_path.split("?", 1)[0]
    if hostname and not _is_ip_or_localhost(hostname):
        first, _, rest = hostname.partition(".")
        if rest and _is_ip_or_localhost(rest):
            return first, unquote(path[1:])
    parts = path[1:].split("/", 1)
    bucket = unquote(parts[0])
    key = unquote(parts[1]) if len(parts) > 1 else ""
    return bucket, key


def _is_ip_or_localhost(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


# -- OSS signature V1 -------------------------------------------------------------------------
# Query parameters that V1 signs (oss2.auth.ProviderAuth._subresource_key_set).
V1_SUBRESOURCES = frozenset("""
response-content-type response-content-language response-cache-control logging
response-content-encoding acl uploadId uploads partNumber group link delete website location
objectInfo objectMeta response-expires response-content-disposition cors lifecycle restore qos
referer stat bucketInfo append position security-token live comp status vod startTime endTime
x-oss-process symlink callback callback-var tagging encryption versions versioning versionId
policy requestPayment x-oss-traffic-limit qosInfo asyncFetch x-oss-request-payer sequential
inventory inventoryId continuation-token worm wormId wormExtend replication replicationLocation
replicationProgress transferAcceleration cname metaQuery x-oss-ac-source-ip
x-oss-ac-subnet-mask x-oss-ac-vpc-id x-oss-ac-forward-allow resourceGroup style styleName
x-oss-async-process regionList x-oss-write-get-object-response bucketArchiveDirectRead
httpsConfig redundancyTransition x-oss-target-redundancy-type
x-oss-redundancy-transition-taskid accessPoint accessPointPolicy publicAccessBlock
x-oss-access-point-name requesterQosInfo qosRequester resourcePoolInfo resourcePool
resourcePoolBuckets""".split())


def v1_canonical_resource(view: RequestView) -> str:
    sub = sorted((k, v) for k, v in view.params.items() if k in V1_SUBRESOURCES)
    query = "&".join(f"{k}={v}" if v else k for k, v in sub)
    base = f"/{view.bucket}/{view.key}" if view.bucket else "/"
    return base + ("?" + query if query else "")


def v1_string_to_sign(view: RequestView, date: str | None = None) -> bytes:
    """The bytes oss2's V1 signer HMAC-SHA1s (``date`` overrides Date, for presigned URLs)."""
    oss_headers = sorted((k.lower(), v) for k, v in view.headers.items() if k.lower().startswith("x-oss-"))
    canon_headers = "".join(f"{k}:{v}\n" for k, v in oss_headers)
    if date is None:
        date = view.header("x-oss-date") or view.header("date")
    return "\n".join([view.method, view.header("content-md5"), view.header("content-type"), date,
                      canon_headers + v1_canonical_resource(view)]).encode()


def v1_signature(secret: str, string_to_sign: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), string_to_sign, hashlib.sha1).digest()).decode()


# -- OSS signature V2 -------------------------------------------------------------------------
def _uri_encode(text: str, keep_slash: bool = False) -> str:
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def v2_string_to_sign(view: RequestView, additional: list[str]) -> bytes:
    additional = sorted(h.lower() for h in additional)
    canon = sorted((k.lower(), v) for k, v in view.headers.items()
                   if k.lower().startswith("x-oss-") or k.lower() in additional)
    resource = _uri_encode(f"/{view.bucket}/{view.key}" if view.bucket else "/")
    params = sorted((_uri_encode(k), _uri_encode(v)) for k, v in view.params.items())
    if params:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in params)
    return (f"{view.method}\n{view.header('content-md5')}\n{view.header('content-type')}\n"
            f"{view.header('date')}\n" + "".join(f"{k}:{v}\n" for k, v in canon)
            + ";".join(additional) + "\n" + resource).encode()


def v2_signature(secret: str, string_to_sign: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()).decode()


# -- OSS signature V4 -------------------------------------------------------------------------
def v4_canonical_request(view: RequestView, additional: list[str], payload_hash: str) -> bytes:
    uri = _uri_encode(f"/{view.bucket}/{view.key}" if view.bucket else "/", keep_slash=True)
    params = sorted((_uri_encode(k), _uri_encode(v)) for k, v in view.params.items())
    query = "&".join(f"{k}={v}" if v else k for k, v in params)
    extra = {h.lower() for h in additional}
    canon = sorted((k.lower(), v) for k, v in view.headers.items()
                   if k.lower().startswith("x-oss-") or k.lower() in ("content-type", "content-md5")
                   or k.lower() in extra)
    headers = "".join(f"{k}:{v}\n" for k, v in canon)
    return f"{view.method}\n{uri}\n{query}\n{headers}\n{';'.join(sorted(extra))}\n{payload_hash}".encode()


def v4_signature(secret: str, amz_datetime: str, scope: str, canonical_request: bytes) -> str:
    date, region, product, _ = scope.split("/")
    string_to_sign = (f"OSS4-HMAC-SHA256\n{amz_datetime}\n{scope}\n"
                      f"{hashlib.sha256(canonical_request).hexdigest()}").encode()
    key = ("aliyun_v4" + secret).encode()
    for part in (date, region, product, "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign, hashlib.sha256).hexdigest()


def _parse_auth_fields(text: str, sep: str, kv: str) -> dict[str, str]:
    out = {}
    for item in text.split(sep):
        k, _, v = item.strip().partition(kv)
        out[k.strip()] = v.strip()
    return out


def _parse_http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _check_skew(ts: float | None, now: float) -> None:
    if ts is None:
        raise OssError(403, "AccessDenied", "Invalid date: the request has no valid Date or x-oss-date header.")
    if abs(now - ts) > MAX_CLOCK_SKEW_S:
        raise OssError(403, "RequestTimeTooSkewed",
                       "The difference between the request time and the current time is too large.")


def verify_oss_signature(view: RequestView, keys: Mapping[str, str], now: float | None = None) -> str:
    """Check the OSS signature of ``view``; return the access key id or raise ``OssError`` (403)."""
    now = time.time() if now is None else now
    auth = view.header("authorization")
    if auth.startswith("OSS "):
        key_id, _, sig = auth[4:].strip().rpartition(":")
        secret = _secret(keys, key_id)
        sts = v1_string_to_sign(view)
        _check_skew(_parse_http_date(view.header("x-oss-date") or view.header("date")), now)
        _compare(sig, v1_signature(secret, sts), key_id, sts)
        return key_id
    if auth.startswith("OSS2 "):
        fields = _parse_auth_fields(auth[5:], ",", ":")
        key_id = fields.get("AccessKeyId", "")
        secret = _secret(keys, key_id)
        additional = [h for h in fields.get("AdditionalHeaders", "").split(";") if h]
        sts = v2_string_to_sign(view, additional)
        _check_skew(_parse_http_date(view.header("date")), now)
        _compare(fields.get("Signature", ""), v2_signature(secret, sts), key_id, sts)
        return key_id
    if auth.startswith("OSS4-HMAC-SHA256 "):
        fields = _parse_auth_fields(auth[len("OSS4-HMAC-SHA256 "):], ",", "=")
        key_id, _, scope = fields.get("Credential", "").partition("/")
        if scope.count("/") != 3 or not scope.endswith("/aliyun_v4_request"):
            raise OssError(400, "InvalidArgument", "Invalid credential scope in the Authorization header.")
        secret = _secret(keys, key_id)
        amz_datetime = view.header("x-oss-date")
        try:
            ts = dt.datetime.strptime(amz_datetime, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            ts = None
        _check_skew(ts, now)
        if not amz_datetime.startswith(scope.split("/")[0]):
            raise OssError(403, "SignatureDoesNotMatch", "x-oss-date does not match the credential scope date.")
        additional = [h for h in fields.get("AdditionalHeaders", "").split(";") if h]
        canonical = v4_canonical_request(view, additional, view.header("x-oss-content-sha256") or UNSIGNED_PAYLOAD)
        _compare(fields.get("Signature", ""), v4_signature(secret, amz_datetime, scope, canonical), key_id,
                 canonical)
        return key_id
    if "OSSAccessKeyId" in view.params and "Signature" in view.params:
        key_id = view.params["OSSAccessKeyId"]
        secret = _secret(keys, key_id)
        expires = view.params.get("Expires", "")
        if not expires.isdigit():
            raise OssError(403, "AccessDenied", "Expires must be a number of seconds since the epoch.")
        if int(expires) < now:
            raise OssError(403, "AccessDenied", "Request has expired.", Expires=expires)
        signed = RequestView(view.method, view.bucket, view.key,
                             {k: v for k, v in view.params.items() if k not in ("OSSAccessKeyId", "Signature",
                                                                                "Expires")},
                             view.headers)
        sts = v1_string_to_sign(signed, date=expires)
        _compare(view.params["Signature"], v1_signature(secret, sts), key_id, sts)
        return key_id
    if auth:
        raise OssError(400, "InvalidArgument", "Authorization header is invalid.")
    raise OssError(403, "AccessDenied", "You have no right to access this object because of bucket acl.")


def _secret(keys: Mapping[str, str], key_id: str) -> str:
    secret = keys.get(key_id)
    if secret is None:
        raise OssError(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.",
                       OSSAccessKeyId=key_id)
    return secret


def _compare(given: str, expected: str, key_id: str, signed: bytes) -> None:
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise OssError(403, "SignatureDoesNotMatch",
                       "The request signature we calculated does not match the signature you provided. "
                       "Check your key and signing method.",
                       OSSAccessKeyId=key_id, SignatureProvided=given,
                       StringToSign=signed.decode(errors="replace"),
                       StringToSignBytes=" ".join(f"{b:02X}" for b in signed))


# -- AWS SigV4 (the adapter's own calls to SeaweedFS) ---------------------------------------
def s3_quote_path(bucket: str, key: str = "") -> str:
    """The URL path of an S3 path-style request, encoded as SigV4 canonicalises it."""
    if not bucket:
        return "/"
    if not key:
        return "/" + _uri_encode(bucket)
    return "/" + _uri_encode(bucket) + "/" + _uri_encode(key, keep_slash=True)


def s3_canonical_query(query: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted((_uri_encode(k), _uri_encode(v)) for k, v in query))


def sign_s3_v4(method: str, host: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str],
               access_key_id: str, secret: str, *, region: str = "us-east-1", service: str = "s3",
               payload_hash: str = UNSIGNED_PAYLOAD, amz_date: str | None = None) -> dict[str, str]:
    """Headers (lower-case) for an AWS SigV4-signed request: ``headers`` plus host, x-amz-date,
    x-amz-content-sha256 and authorization. ``path`` must already be URI-encoded."""
    amz_date = amz_date or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = {k.lower(): str(v).strip() for k, v in headers.items()}
    out["host"] = host
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_hash
    signed = sorted(out)
    canonical = "\n".join([method, path, s3_canonical_query(query),
                           "".join(f"{k}:{' '.join(out[k].split())}\n" for k in signed),
                           ";".join(signed), payload_hash])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, "
                            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    return out


# -- XML --------------------------------------------------------------------------------------
def _el(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = str(text)
    return node


def _xml_bytes(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def parse_s3_xml(body: bytes) -> ET.Element:
    """Parse an S3 document and drop its namespace from every tag."""
    root = ET.fromstring(body)
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]
    return root


def _text(node: ET.Element, path: str, default: str = "") -> str:
    child = node.find(path)
    return default if child is None or child.text is None else child.text


def oss_time(s3_time: str) -> str:
    """``2026-11-28T20:39:47Z`` or ``...47.123456Z`` -> ``2026-11-28T20:39:47.000Z`` (what oss2 parses)."""
    if not s3_time:
        return "1970-01-01T00:00:00.000Z"
    return s3_time[:19] + ".000Z"


def object_type(etag: str) -> str:
    return "Multipart" if "-" in etag else "Normal"


def _enc(value: str, url: bool) -> str:
    return quote(value, safe="") if url else value


def render_list_objects(s3: ET.Element, bucket: str, params: Mapping[str, str], v2: bool) -> bytes:
    """OSS ListBucketResult (v1 or v2) from S3's; ``encoding-type=url`` encodes keys as OSS does."""
    url = params.get("encoding-type") == "url"
    root = ET.Element("ListBucketResult")
    _el(root, "Name", bucket)
    _el(root, "Prefix", _enc(params.get("prefix", ""), url))
    if v2:
        if params.get("continuation-token"):
            _el(root, "ContinuationToken", params["continuation-token"])
        if params.get("start-after"):
            _el(root, "StartAfter", _enc(params["start-after"], url))
    else:
        _el(root, "Marker", _enc(params.get("marker", ""), url))
    _el(root, "MaxKeys", _text(s3, "MaxKeys", params.get("max-keys", "100")))
    _el(root, "Delimiter", _enc(params.get("delimiter", ""), url))
    if url:
        _el(root, "EncodingType", "url")
    truncated = _text(s3, "IsTruncated", "false").lower() == "true"
    _el(root, "IsTruncated", "true" if truncated else "false")
    contents = s3.findall("Contents")
    prefixes = [_text(p, "Prefix") for p in s3.findall("CommonPrefixes")]
    if truncated:
        if v2:
            _el(root, "NextContinuationToken", _text(s3, "NextContinuationToken"))
        else:
            last = max([_text(c, "Key") for c in contents] + prefixes)
            _el(root, "NextMarker", _enc(_text(s3, "NextMarker") or last, url))
    if v2:
        _el(root, "KeyCount", len(contents) + len(prefixes))
    for c in contents:
        node = _el(root, "Contents")
        key = _text(c, "Key")
        etag = _text(c, "ETag")
        _el(node, "Key", _enc(key, url))
        _el(node, "LastModified", oss_time(_text(c, "LastModified")))
        _el(node, "ETag", etag)
        _el(node, "Type", object_type(etag))
        _el(node, "Size", _text(c, "Size", "0"))
        _el(node, "StorageClass", "Standard")
        if not v2 or params.get("fetch-owner") == "true":
            owner = _el(node, "Owner")
            _el(owner, "ID", OWNER_ID)
            _el(owner, "DisplayName", OWNER_ID)
    for p in prefixes:
        _el(_el(root, "CommonPrefixes"), "Prefix", _enc(p, url))
    return _xml_bytes(root)


def render_list_parts(s3: ET.Element, bucket: str, key: str, upload_id: str,
                      part_crcs: Mapping[int, tuple[str, int, int]]) -> bytes:
    """OSS ListPartsResult; ``NextPartNumberMarker`` is always present (oss2 requires it)."""
    root = ET.Element("ListPartsResult")
    _el(root, "Bucket", bucket)
    _el(root, "Key", key)
    _el(root, "UploadId", upload_id)
    marker = _text(s3, "PartNumberMarker", "0") or "0"
    _el(root, "PartNumberMarker", marker)
    parts = s3.findall("Part")
    next_marker = _text(s3, "NextPartNumberMarker") or (_text(parts[-1], "PartNumber") if parts else marker)
    _el(root, "NextPartNumberMarker", next_marker)
    _el(root, "MaxParts", _text(s3, "MaxParts", "1000"))
    _el(root, "IsTruncated", "true" if _text(s3, "IsTruncated", "false").lower() == "true" else "false")
    for p in parts:
        node = _el(root, "Part")
        number = _text(p, "PartNumber")
        etag = _text(p, "ETag")
        _el(node, "PartNumber", number)
        _el(node, "LastModified", oss_time(_text(p, "LastModified")))
        _el(node, "ETag", etag)
        known = part_crcs.get(int(number))
        if known and _etag_eq(known[0], etag):
            _el(node, "HashCrc64ecma", known[2])
        _el(node, "Size", _text(p, "Size", "0"))
    return _xml_bytes(root)


def render_list_uploads(s3: ET.Element, bucket: str, params: Mapping[str, str]) -> bytes:
    url = params.get("encoding-type") == "url"
    root = ET.Element("ListMultipartUploadsResult")
    _el(root, "Bucket", bucket)
    if url:
        _el(root, "EncodingType", "url")
    _el(root, "KeyMarker", _enc(params.get("key-marker", ""), url))
    _el(root, "UploadIdMarker", params.get("upload-id-marker", ""))
    _el(root, "NextKeyMarker", _enc(_text(s3, "NextKeyMarker"), url))
    _el(root, "NextUploadIdMarker", _text(s3, "NextUploadIdMarker"))
    _el(root, "Delimiter", _enc(params.get("delimiter", ""), url))
    _el(root, "Prefix", _enc(params.get("prefix", ""), url))
    _el(root, "MaxUploads", _text(s3, "MaxUploads", params.get("max-uploads", "1000")))
    _el(root, "IsTruncated", "true" if _text(s3, "IsTruncated", "false").lower() == "true" else "false")
    for u in s3.findall("Upload"):
        node = _el(root, "Upload")
        _el(node, "Key", _enc(_text(u, "Key"), url))
        _el(node, "UploadId", _text(u, "UploadId"))
        _el(node, "StorageClass", "Standard")
        _el(node, "Initiated", oss_time(_text(u, "Initiated")))
    for p in s3.findall("CommonPrefixes"):
        _el(_el(root, "CommonPrefixes"), "Prefix", _enc(_text(p, "Prefix"), url))
    return _xml_bytes(root)


def render_bucket_info(bucket: str, creation_date: str, endpoint_host: str) -> bytes:
    root = ET.Element("BucketInfo")
    b = _el(root, "Bucket")
    _el(b, "AccessMonitor", "Disabled")
    _el(b, "CreationDate", oss_time(creation_date))
    _el(b, "CrossRegionReplication", "Disabled")
    _el(b, "DataRedundancyType", "LRS")
    _el(b, "ExtranetEndpoint", endpoint_host)
    _el(b, "IntranetEndpoint", endpoint_host)
    _el(b, "Location", REGION)
    _el(b, "Name", bucket)
    _el(b, "ResourceGroupId", "rg-testbed")
    _el(b, "StorageClass", "Standard")
    _el(b, "TransferAcceleration", "Disabled")
    owner = _el(b, "Owner")
    _el(owner, "DisplayName", OWNER_ID)
    _el(owner, "ID", OWNER_ID)
    _el(_el(b, "AccessControlList"), "Grant", "private")
    _el(b, "Comment", "")
    _el(b, "Versioning", "")
    return _xml_bytes(root)


def _etag_eq(a: str, b: str) -> bool:
    return a.strip('"').lower() == b.strip('"').lower()


# -- side table: CRCs of objects and parts -----------------------------------------------------
class CrcStore:
    """Object and part CRC64s, each tied to the ETag it was computed for."""

    def __init__(self, path: Path | str):
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS objects (bucket TEXT, key TEXT, etag TEXT, size INTEGER, "
                        "crc TEXT, PRIMARY KEY (bucket, key))")
        self.db.execute("CREATE TABLE IF NOT EXISTS parts (upload_id TEXT, part INTEGER, etag TEXT, size INTEGER, "
                        "crc TEXT, PRIMARY KEY (upload_id, part))")

    def put_object(self, bucket: str, key: str, etag: str, size: int, crc: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?)", (bucket, key, etag.strip('"'), size,
                                                                              str(crc)))

    def object_crc(self, bucket: str, key: str, etag: str) -> int | None:
        row = self.db.execute("SELECT etag, crc FROM objects WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        return int(row[1]) if row and _etag_eq(row[0], etag) else None

    def delete_object(self, bucket: str, key: str) -> None:
        self.db.execute("DELETE FROM objects WHERE bucket=? AND key=?", (bucket, key))

    def put_part(self, upload_id: str, part: int, etag: str, size: int, crc: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO parts VALUES (?,?,?,?,?)", (upload_id, part, etag.strip('"'), size,
                                                                            str(crc)))

    def parts(self, upload_id: str) -> dict[int, tuple[str, int, int]]:
        rows = self.db.execute("SELECT part, etag, size, crc FROM parts WHERE upload_id=?", (upload_id,))
        return {r[0]: (r[1], r[2], int(r[3])) for r in rows}

    def drop_upload(self, upload_id: str) -> None:
        self.db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))

    def close(self) -> None:
        self.db.close()


# -- test hooks ---------------------------------------------------------------------------------
FAULT_ACTIONS = ("error", "corrupt_crc", "disconnect")


@dataclass
class Fault:
    """Make the next ``times`` requests of ``op`` (e.g. ``UploadPart``) misbehave."""

    op: str
    action: str = "error"
    times: int = 1
    status: int = 500
    code: str = "InternalError"
    key_prefix: str = ""

    def matches(self, op: str, key: str) -> bool:
        return self.times > 0 and self.op == op and key.startswith(self.key_prefix)


@dataclass
class Stats:
    """What ``GET /_tidegate/stats`` reports: OSS requests per operation (after authentication),
    failures per operation, body bytes in and out, rejected signatures, S3 pass-through requests."""

    ops: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    auth_failures: int = 0
    passthrough: int = 0

    def as_dict(self) -> dict:
        return {"ops": dict(self.ops), "failed": dict(self.failed), "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "auth_failures": self.auth_failures, "passthrough": self.passthrough}


# -- header translation -------------------------------------------------------------------------
_HOP_BY_HOP = frozenset(["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailers", "transfer-encoding", "upgrade"])
_ENTITY_HEADERS = ("content-type", "content-md5", "cache-control", "content-disposition", "content-encoding",
                   "content-language", "expires")
_GET_HEADERS = ("range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
_RESPONSE_HEADERS = ("Content-Type", "Content-Range", "ETag", "Last-Modified", "Accept-Ranges", "Cache-Control",
                     "Content-Disposition", "Content-Encoding", "Content-Language", "Expires")
_RESPONSE_PARAMS = ("response-content-type", "response-content-language", "response-expires",
                    "response-cache-control", "response-content-disposition", "response-content-encoding")


def oss_to_s3_headers(headers: Mapping[str, str], names: Iterable[str] = _ENTITY_HEADERS) -> dict[str, str]:
    out = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk.startswith("x-oss-meta-"):
            out["x-amz-meta-" + lk[len("x-oss-meta-"):]] = v
        elif lk in names:
            out[lk] = v
    return out


def s3_to_oss_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name in _RESPONSE_HEADERS:
        if name in headers:
            out[name] = headers[name]
    for k, v in headers.items():
        if k.lower().startswith("x-amz-meta-"):
            out["x-oss-meta-" + k[len("x-amz-meta-"):].lower()] = v
    etag = headers.get("ETag", "")
    if etag:
        out["x-oss-object-type"] = object_type(etag)
        out["x-oss-storage-class"] = "Standard"
    return out


# -- copies ---------------------------------------------------------------------------------------
def parse_copy_source(value: str) -> tuple[str, str]:
    """(bucket, key) of ``x-oss-copy-source: /bucket/key`` (key URL-encoded; a ``?versionId=`` is
    ignored: the test bed's store keeps no versions)."""
    bucket, _, key = value.split("?", 1)[0].lstrip("/").partition("/")
    if not value.startswith("/") or not bucket or not key:
        raise OssError(400, "InvalidArgument", f"x-oss-copy-source must be /bucket/key, not {value!r}")
    return bucket, unquote(key)


def s3_copy_source(bucket: str, key: str) -> str:
    return f"{_uri_encode(bucket)}/{_uri_encode(key, keep_slash=True)}"


def parse_copy_range(value: str, size: int) -> tuple[int, int]:
    """First and last byte (inclusive) that ``x-oss-copy-source-range`` selects of a ``size``-byte
    source: ``bytes=a-b``, ``bytes=a-`` (to the end) or ``bytes=-n`` (the last n); no header
    selects the whole source. A range that is malformed or not inside the source is an
    ``InvalidArgument`` (OSS never copies less than was asked for)."""
    if not value:
        return 0, size - 1
    unit, _, spec = value.strip().partition("=")
    first_s, dash, last_s = spec.strip().partition("-")
    digits = all(x.isdigit() for x in (first_s, last_s) if x)
    if unit.strip().lower() != "bytes" or not dash or not (first_s or last_s) or not digits:
        raise OssError(400, "InvalidArgument", f"x-oss-copy-source-range {value!r} is not bytes=first-last.")
    if not first_s:
        first, last = size - int(last_s), size - 1
    else:
        first, last = int(first_s), int(last_s) if last_s else size - 1
    if not 0 <= first <= last < size:
        raise OssError(400, "InvalidArgument", f"x-oss-copy-source-range {value!r} is not within the source "
                                               f"object ({size} bytes).")
    return first, last


def check_copy_preconditions(headers: Mapping[str, str], etag: str, last_modified: str) -> None:
    """Raise OSS's 412 ``PreconditionFailed`` unless the source (its ETag and Last-Modified)
    meets every ``x-oss-copy-source-if-*`` header of the request."""
    modified = _parse_http_date(last_modified)

    def failed(name: str) -> OssError:
        return OssError(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.",
                        Condition=name)

    if_match = headers.get("x-oss-copy-source-if-match")
    if if_match is not None and not any(_etag_eq(t.strip(), etag) for t in if_match.split(",")):
        raise failed("x-oss-copy-source-if-match")
    if_none_match = headers.get("x-oss-copy-source-if-none-match")
    if if_none_match is not None and any(_etag_eq(t.strip(), etag) for t in if_none_match.split(",")):
        raise failed("x-oss-copy-source-if-none-match")
    since = _parse_http_date(headers.get("x-oss-copy-source-if-unmodified-since", ""))
    if since is not None and modified is not None and modified > since:
        raise failed("x-oss-copy-source-if-unmodified-since")
    since = _parse_http_date(headers.get("x-oss-copy-source-if-modified-since", ""))
    if since is not None and modified is not None and modified <= since:
        raise failed("x-oss-copy-source-if-modified-since")


def _source_changed(bucket: str, key: str) -> OssError:
    return OssError(412, "PreconditionFailed", f"the copy source /{bucket}/{key} changed while it was being copied.",
                    Condition="x-oss-copy-source-if-match")


def _retrieve(task: asyncio.Future) -> None:
    """Mark a task's exception as seen when nobody awaits it (the copy it ran beside failed)."""
    if not task.cancelled():
        task.exception()


# -- the adapter ----------------------------------------------------------------------------------
class _Meter:
    """CRC64 and byte count of one request body as it streams through."""

    __slots__ = ("crc", "size")

    def __init__(self) -> None:
        self.crc = Crc64Stream()
        self.size = 0


@dataclass
class Ctx:
    request: web.Request
    view: RequestView
    op: str
    request_id: str
    fault: Fault | None = None

    def response_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """Add the request id (and apply a ``corrupt_crc`` fault) before a response is sent."""
        headers["x-oss-request-id"] = self.request_id
        headers.setdefault("Server", "AliyunOSS")
        if self.fault and self.fault.action == "corrupt_crc" and "x-oss-hash-crc64ecma" in headers:
            headers["x-oss-hash-crc64ecma"] = str(int(headers["x-oss-hash-crc64ecma"]) ^ 1)
        return headers


class Adapter:
    """OSS on the front, SeaweedFS S3 behind; see the module docstring."""

    def __init__(self, upstream: str, keys: Mapping[str, str], db_path: Path | str, *,
                 upstream_key: tuple[str, str] | None = None, pool_size: int = 64):
        self.upstream = yarl.URL(upstream)
        self.upstream_host = f"{self.upstream.host}:{self.upstream.port}"
        self.keys = dict(keys)
        if not self.keys:
            raise ValueError("no access keys configured")
        self.upstream_key = upstream_key or next(iter(self.keys.items()))
        self.store = CrcStore(db_path)
        self.stats = Stats()
        self.faults: list[Fault] = []
        self.pool_size = pool_size
        self.session: aiohttp.ClientSession | None = None

    # lifecycle
    async def start(self, _app: web.Application | None = None) -> None:
        connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=self.pool_size, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                                                           sock_read=600))

    async def close(self, _app: web.Application | None = None) -> None:
        if self.session:
            await self.session.close()
        self.store.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 << 20)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.close)
        return app

    # upstream
    async def s3(self, method: str, bucket: str, key: str = "", query: Iterable[tuple[str, str]] = (),
                 headers: Mapping[str, str] | None = None, data=None,
                 payload_hash: str = UNSIGNED_PAYLOAD) -> aiohttp.ClientResponse:
        """One SigV4-signed call to SeaweedFS; the caller releases the response."""
        assert self.session is not None
        query = list(query)
        path = s3_quote_path(bucket, key)
        qs = s3_canonical_query(query)
        signed = sign_s3_v4(method, self.upstream_host, path, query, headers or {}, *self.upstream_key,
                            payload_hash=payload_hash)
        url = yarl.URL(f"{self.upstream}{path}" + (f"?{qs}" if qs else ""), encoded=True)
        return await self.session.request(method, url, headers=signed, data=data, allow_redirects=False,
                                          skip_auto_headers=("Content-Type",))

    async def s3_xml(self, method: str, bucket: str, key: str = "", query: Iterable[tuple[str, str]] = (),
                     headers: Mapping[str, str] | None = None, body: bytes | None = None) -> ET.Element:
        """An S3 call whose answer is a small XML document; S3 errors become ``OssError``."""
        payload = hashlib.sha256(body or b"").hexdigest()
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["content-length"] = str(len(body))
        async with await self.s3(method, bucket, key, query, hdrs, body, payload_hash=payload) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise self._s3_error(resp.status, data)
        root = parse_s3_xml(data) if data.strip() else ET.Element("Empty")
        if root.tag == "Error":  # S3 may report a failed CompleteMultipartUpload with status 200
            raise self._s3_error(500, data)
        return root

    async def s3_ok(self, method: str, bucket: str, key: str = "", query: Iterable[tuple[str, str]] = (),
                    headers: Mapping[str, str] | None = None) -> Mapping[str, str]:
        async with await self.s3(method, bucket, key, query, headers) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise self._s3_error(resp.status, data)
            return resp.headers

    @staticmethod
    def _s3_error(status: int, body: bytes) -> OssError:
        code, message = "", ""
        if body:
            try:
                root = parse_s3_xml(body)
                code, message = _text(root, "Code"), _text(root, "Message")
            except ET.ParseError:
                message = body[:200].decode(errors="replace")
        if not code:
            code = {400: "InvalidArgument", 403: "AccessDenied", 404: "NoSuchKey", 409: "Conflict",
                    412: "PreconditionFailed", 416: "InvalidRange"}.get(status, "InternalError")
        status, code = _S3_TO_OSS_ERROR.get(code, (status, code))
        return OssError(status, code, message or f"the store answered {status} {code}")

    # entry point
    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = uuid.uuid4().hex[:24].upper()
        raw_path = request.raw_path
        if raw_path.startswith(ADMIN_PREFIX):
            return await self.admin(request)
        auth = request.headers.get("Authorization", "")
        raw_query = raw_path.partition("?")[2]
        if (auth.startswith(("AWS4-HMAC-SHA256 ", "AWS ")) or "X-Amz-Algorithm=" in raw_query
                or "AWSAccessKeyId=" in raw_query):
            return await self.passthrough(request, request_id)
        bucket, key = split_target(request.host, raw_path)
        params = dict(parse_qsl(raw_query, keep_blank_values=True))
        view = RequestView(request.method, bucket, key, params, request.headers)
        op = "Unknown"
        try:
            try:
                verify_oss_signature(view, self.keys)
            except OssError:
                self.stats.auth_failures += 1
                raise
            op = classify(view)
            self.stats.ops[op] += 1
            ctx = Ctx(request, view, op, request_id, self._take_fault(op, key))
            if ctx.fault and ctx.fault.action == "error":
                await _drain(request)
                raise OssError(ctx.fault.status, ctx.fault.code, f"fault injected by the test bed ({op})")
            if ctx.fault and ctx.fault.action == "disconnect":
                if request.transport:
                    request.transport.close()
                return web.Response(status=500)
            resp = await getattr(self, "op_" + op)(ctx)
            if not resp.prepared:
                ctx.response_headers(resp.headers)  # type: ignore[arg-type]
            return resp
        except OssError as err:
            self.stats.failed[op] += 1
            return self._error_response(err, request, request_id, bucket)
        except aiohttp.ClientError as exc:
            self.stats.failed[op] += 1
            log.warning("%s %s: upstream failed: %s", op, raw_path[:120], exc)
            return self._error_response(OssError(503, "ServiceUnavailable", f"the store is unreachable: {exc}"),
                                        request, request_id, bucket)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must still answer OSS error XML with a request id
            self.stats.failed[op] += 1
            log.exception("%s %s: internal error", op, raw_path[:120])
            return self._error_response(OssError(500, "InternalError", f"adapter error: {exc!r}"), request,
                                        request_id, bucket)

    def _take_fault(self, op: str, key: str) -> Fault | None:
        for f in self.faults:
            if f.matches(op, key):
                f.times -= 1
                if f.times <= 0:
                    self.faults.remove(f)
                return f
        return None

    def _error_response(self, err: OssError, request: web.Request, request_id: str, bucket: str) -> web.Response:
        host_id = f"{bucket}.{request.host}" if bucket else request.host
        body = render_error_xml(err, request_id, host_id)
        headers = {"x-oss-request-id": request_id, "Server": "AliyunOSS"}
        if request.method == "HEAD":
            headers["x-oss-err"] = base64.b64encode(body).decode()
            return web.Response(status=err.status, headers=headers)
        return web.Response(status=err.status, body=body, content_type="application/xml", headers=headers)

    # admin
    async def admin(self, request: web.Request) -> web.Response:
        what = request.path[len(ADMIN_PREFIX):].strip("/")
        if what == "health":
            try:
                async with self.session.get(self.upstream / "healthz") as r:  # type: ignore[union-attr]
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            return web.json_response({"ok": ok, "upstream": str(self.upstream), "crc64": CRC_IMPLEMENTATION},
                                     status=200 if ok else 503)
        if what == "stats":
            if request.method == "DELETE":
                self.stats = Stats()
            return web.json_response(self.stats.as_dict())
        if what == "faults":
            if request.method == "POST":
                try:
                    spec = await request.json()
                    items = spec if isinstance(spec, list) else [spec]
                    new = [Fault(**item) for item in items]
                except (ValueError, TypeError) as exc:
                    return web.json_response({"error": f"bad fault spec: {exc}"}, status=400)
                bad = [f.action for f in new if f.action not in FAULT_ACTIONS]
                if bad:
                    return web.json_response({"error": f"unknown action {bad[0]!r}; valid: {FAULT_ACTIONS}"},
                                             status=400)
                self.faults.extend(new)
            elif request.method == "DELETE":
                self.faults.clear()
            return web.json_response([f.__dict__ for f in self.faults])
        return web.json_response({"error": "unknown admin path; valid: health, stats, faults"}, status=404)

    # pass-through of S3-signed requests
    async def passthrough(self, request: web.Request, request_id: str) -> web.StreamResponse:
        assert self.session is not None
        self.stats.passthrough += 1
        # Expect is never signed (SigV4 clients leave it out) and aiohttp already answered it
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "expect"}
        has_body = request.content_length not in (None, 0) or request.headers.get("Transfer-Encoding", "") == "chunked"
        url = yarl.URL(f"{self.upstream}{request.raw_path}", encoded=True)
        data = self._counted(request, None) if has_body else None
        try:
            up = await self.session.request(request.method, url, headers=headers, data=data, allow_redirects=False,
                                            skip_auto_headers=("Content-Type", "User-Agent", "Accept",
                                                               "Accept-Encoding"))
        except aiohttp.ClientError as exc:
            return self._error_response(OssError(503, "ServiceUnavailable", f"the store is unreachable: {exc}"),
                                        request, request_id, "")
        async with up:
            out_headers = {k: v for k, v in up.headers.items()
                           if k.lower() not in _HOP_BY_HOP and k.lower() not in ("content-length", "date", "server")}
            out_headers["x-oss-request-id"] = request_id
            return await self._stream_back(request, up, up.status, out_headers)

    async def _counted(self, request: web.Request, meter: _Meter | None) -> AsyncIterator[bytes]:
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return
            self.stats.bytes_in += len(chunk)
            if meter is not None:
                meter.crc.update(chunk)
                meter.size += len(chunk)
            yield chunk

    async def _stream_back(self, request: web.Request, up: aiohttp.ClientResponse, status: int,
                           headers: Mapping[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers=headers)
        if up.content_length is not None:
            resp.content_length = up.content_length
        await resp.prepare(request)
        if request.method != "HEAD":
            try:
                while True:
                    chunk = await up.content.readany()
                    if not chunk:
                        break
                    self.stats.bytes_out += len(chunk)
                    await resp.write(chunk)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # the status line is gone: cutting the connection short is how the client learns
                log.warning("%s: the store failed mid-body: %s", request.path[:120], exc)
                if request.transport:
                    request.transport.close()
                return resp
        await resp.write_eof()
        return resp

    # -- service and bucket operations
    async def op_ListBuckets(self, ctx: Ctx) -> web.Response:
        s3 = await self.s3_xml("GET", "")
        root = ET.Element("ListAllMyBucketsResult")
        owner = _el(root, "Owner")
        _el(owner, "ID", OWNER_ID)
        _el(owner, "DisplayName", OWNER_ID)
        buckets = _el(root, "Buckets")
        for b in s3.findall("Buckets/Bucket"):
            node = _el(buckets, "Bucket")
            _el(node, "CreationDate", oss_time(_text(b, "CreationDate")))
            _el(node, "ExtranetEndpoint", ctx.request.host)
            _el(node, "IntranetEndpoint", ctx.request.host)
            _el(node, "Location", REGION)
            _el(node, "Name", _text(b, "Name"))
            _el(node, "Region", REGION.removeprefix("oss-"))
            _el(node, "StorageClass", "Standard")
        return _xml_response(_xml_bytes(root))

    async def op_CreateBucket(self, ctx: Ctx) -> web.Response:
        await _drain(ctx.request)
        try:
            await self.s3_ok("PUT", ctx.view.bucket)
        except OssError as err:
            if err.code != "BucketAlreadyExists" or not await self._bucket_exists(ctx.view.bucket):
                raise
        return web.Response(status=200, headers={"Location": f"/{ctx.view.bucket}"})

    async def op_DeleteBucket(self, ctx: Ctx) -> web.Response:
        await self.s3_ok("DELETE", ctx.view.bucket)
        return web.Response(status=204)

    async def _bucket_exists(self, bucket: str) -> bool:
        async with await self.s3("HEAD", bucket) as resp:
            return resp.status == 200

    async def _require_bucket(self, bucket: str) -> None:
        if not await self._bucket_exists(bucket):
            raise OssError(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket)

    async def op_HeadBucket(self, ctx: Ctx) -> web.Response:
        await self._require_bucket(ctx.view.bucket)
        return web.Response(status=200)

    async def op_GetBucketInfo(self, ctx: Ctx) -> web.Response:
        s3 = await self.s3_xml("GET", "")
        for b in s3.findall("Buckets/Bucket"):
            if _text(b, "Name") == ctx.view.bucket:
                return _xml_response(render_bucket_info(ctx.view.bucket, _text(b, "CreationDate"), ctx.request.host))
        raise OssError(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=ctx.view.bucket)

    async def op_GetBucketLocation(self, ctx: Ctx) -> web.Response:
        await self._require_bucket(ctx.view.bucket)
        root = ET.Element("LocationConstraint")
        root.text = REGION
        return _xml_response(_xml_bytes(root))

    async def op_GetBucketAcl(self, ctx: Ctx) -> web.Response:
        await self._require_bucket(ctx.view.bucket)
        root = ET.Element("AccessControlPolicy")
        owner = _el(root, "Owner")
        _el(owner, "ID", OWNER_ID)
        _el(owner, "DisplayName", OWNER_ID)
        _el(_el(root, "AccessControlList"), "Grant", "private")
        return _xml_response(_xml_bytes(root))

    async def op_ListObjects(self, ctx: Ctx) -> web.Response:
        p = ctx.view.params
        query = [(k, p[k]) for k in ("prefix", "delimiter", "marker", "max-keys") if p.get(k)]
        s3 = await self.s3_xml("GET", ctx.view.bucket, query=query)
        return _xml_response(render_list_objects(s3, ctx.view.bucket, p, v2=False))

    async def op_ListObjectsV2(self, ctx: Ctx) -> web.Response:
        p = ctx.view.params
        query = [("list-type", "2")] + [(k, p[k]) for k in ("prefix", "delimiter", "continuation-token",
                                                             "start-after", "max-keys") if p.get(k)]
        s3 = await self.s3_xml("GET", ctx.view.bucket, query=query)
        return _xml_response(render_list_objects(s3, ctx.view.bucket, p, v2=True))

    async def op_ListMultipartUploads(self, ctx: Ctx) -> web.Response:
        p = ctx.view.params
        query = [("uploads", "")] + [(k, p[k]) for k in ("prefix", "delimiter", "key-marker", "upload-id-marker",
                                                         "max-uploads") if p.get(k)]
        s3 = await self.s3_xml("GET", ctx.view.bucket, query=query)
        return _xml_response(render_list_uploads(s3, ctx.view.bucket, p))

    async def op_DeleteMultipleObjects(self, ctx: Ctx) -> web.Response:
        try:
            doc = parse_s3_xml(await ctx.request.read())
        except ET.ParseError as exc:
            raise OssError(400, "MalformedXML", f"The XML you provided was not well-formed: {exc}") from exc
        url = ctx.view.params.get("encoding-type") == "url"
        keys = [_text(o, "Key") for o in doc.findall("Object")]
        quiet = _text(doc, "Quiet", "false").lower() == "true"
        req = ET.Element("Delete", xmlns=S3_NS)
        _el(req, "Quiet", "true" if quiet else "false")
        for k in keys:
            _el(_el(req, "Object"), "Key", k)
        body = _xml_bytes(req)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - S3 requires Content-MD5
        s3 = await self.s3_xml("POST", ctx.view.bucket, query=[("delete", "")],
                               headers={"content-md5": md5, "content-type": "application/xml"}, body=body)
        root = ET.Element("DeleteResult")
        if url:
            _el(root, "EncodingType", "url")
        errors = s3.findall("Error")
        failed = {_text(e, "Key") for e in errors}
        for k in keys:
            if k not in failed:
                self.store.delete_object(ctx.view.bucket, k)
        if not quiet:
            for d in s3.findall("Deleted"):
                _el(_el(root, "Deleted"), "Key", _enc(_text(d, "Key"), url))
        if errors:
            first = errors[0]
            raise OssError(500, _text(first, "Code", "InternalError"),
                           f"could not delete {_text(first, 'Key')!r}: {_text(first, 'Message')}")
        return _xml_response(_xml_bytes(root))

    # -- object operations
    async def op_PutObject(self, ctx: Ctx) -> web.Response:
        v = ctx.view
        if v.header("x-oss-forbid-overwrite").lower() == "true" and await self._object_head(v.bucket, v.key):
            await _drain(ctx.request)
            raise OssError(409, "FileAlreadyExists", "The object you specified already exists and can not be "
                                                     "overwritten.")
        meter = _Meter()
        etag = await self._put_streaming(ctx, v.bucket, v.key, [], oss_to_s3_headers(v.headers), meter)
        self.store.put_object(v.bucket, v.key, etag, meter.size, meter.crc.crc)
        return web.Response(status=200, headers={"ETag": etag, "x-oss-hash-crc64ecma": str(meter.crc.crc)})

    async def _put_streaming(self, ctx: Ctx, bucket: str, key: str, query: list[tuple[str, str]],
                             headers: dict[str, str], meter: _Meter) -> str:
        """Stream the request body to an S3 PUT, metering it; the ETag S3 answered."""
        request = ctx.request
        length = request.content_length
        if length is None and request.headers.get("Transfer-Encoding", "") != "chunked":
            length = 0
        if length is not None:
            headers["content-length"] = str(length)
        body = self._counted(request, meter) if length != 0 else b""
        async with await self.s3("PUT", bucket, key, query, headers, body) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise self._s3_error(resp.status, data)
            etag = resp.headers.get("ETag", "")
        if length is not None and meter.size != length:
            raise OssError(400, "IncompleteBody", f"received {meter.size} of {length} bytes")
        return etag

    async def op_CopyObject(self, ctx: Ctx) -> web.Response:
        v = ctx.view
        src_bucket, src_key = parse_copy_source(v.header("x-oss-copy-source"))
        headers = oss_to_s3_headers(v.headers)
        headers["x-amz-copy-source"] = s3_copy_source(src_bucket, src_key)
        for k, val in v.headers.items():
            lk = k.lower()
            if lk.startswith("x-oss-copy-source-if-") or lk == "x-oss-metadata-directive":
                headers["x-amz-" + lk[len("x-oss-"):]] = val
        src_head = await self._object_head(src_bucket, src_key)
        src_crc = self.store.object_crc(src_bucket, src_key, src_head.get("ETag", "")) if src_head else None
        s3 = await self.s3_xml("PUT", v.bucket, v.key, headers=headers)
        etag = _text(s3, "ETag")
        out = {"ETag": etag}
        if src_crc is not None and src_head is not None:
            self.store.put_object(v.bucket, v.key, etag, int(src_head.get("Content-Length", 0)), src_crc)
            out["x-oss-hash-crc64ecma"] = str(src_crc)
        root = ET.Element("CopyObjectResult")
        _el(root, "ETag", etag)
        _el(root, "LastModified", oss_time(_text(s3, "LastModified")))
        return _xml_response(_xml_bytes(root), headers=out)

    async def _object_head(self, bucket: str, key: str) -> Mapping[str, str] | None:
        async with await self.s3("HEAD", bucket, key) as resp:
            if resp.status == 404:
                return None
            if resp.status >= 300:
                raise self._s3_error(resp.status, b"")
            return resp.headers

    async def _not_found(self, bucket: str) -> OssError:
        if not await self._bucket_exists(bucket):
            return OssError(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket)
        return OssError(404, "NoSuchKey", "The specified key does not exist.")

    def _object_headers(self, bucket: str, key: str, s3_headers: Mapping[str, str]) -> dict[str, str]:
        headers = s3_to_oss_headers(s3_headers)
        crc = self.store.object_crc(bucket, key, s3_headers.get("ETag", ""))
        if crc is not None:
            headers["x-oss-hash-crc64ecma"] = str(crc)
        return headers

    async def op_GetObject(self, ctx: Ctx) -> web.StreamResponse:
        v = ctx.view
        query = [(k, v.params[k]) for k in _RESPONSE_PARAMS if k in v.params]
        headers = {k: v.headers[k] for k in _GET_HEADERS if k in v.headers}
        up = await self.s3("GET", v.bucket, v.key, query, headers)
        async with up:
            if up.status == 404:
                raise await self._not_found(v.bucket)
            if up.status >= 300 and up.status != 304:
                raise self._s3_error(up.status, await up.read())
            headers = ctx.response_headers(self._object_headers(v.bucket, v.key, up.headers))
            return await self._stream_back(ctx.request, up, up.status, headers)

    async def op_HeadObject(self, ctx: Ctx) -> web.StreamResponse:
        v = ctx.view
        headers = {k: v.headers[k] for k in _GET_HEADERS if k in v.headers and k != "range"}
        async with await self.s3("HEAD", v.bucket, v.key, headers=headers) as up:
            if up.status == 404:
                raise await self._not_found(v.bucket)
            if up.status >= 300 and up.status != 304:
                raise self._s3_error(up.status, b"")
            headers = ctx.response_headers(self._object_headers(v.bucket, v.key, up.headers))
            return await self._stream_back(ctx.request, up, up.status, headers)

    op_GetObjectMeta = op_HeadObject

    async def op_DeleteObject(self, ctx: Ctx) -> web.Response:
        await self.s3_ok("DELETE", ctx.view.bucket, ctx.view.key)
        self.store.delete_object(ctx.view.bucket, ctx.view.key)
        return web.Response(status=204)

    # -- multipart
    async def op_InitiateMultipartUpload(self, ctx: Ctx) -> web.Response:
        v = ctx.view
        await _drain(ctx.request)
        s3 = await self.s3_xml("POST", v.bucket, v.key, query=[("uploads", "")],
                               headers=oss_to_s3_headers(v.headers))
        root = ET.Element("InitiateMultipartUploadResult")
        _el(root, "Bucket", v.bucket)
        _el(root, "Key", v.key)
        _el(root, "UploadId", _text(s3, "UploadId"))
        return _xml_response(_xml_bytes(root))

    async def op_UploadPart(self, ctx: Ctx) -> web.Response:
        v = ctx.view
        upload_id, part = v.params["uploadId"], v.params["partNumber"]
        if not part.isdigit() or not 1 <= int(part) <= 10000:
            raise OssError(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive.")
        meter = _Meter()
        headers = {k: val for k, val in oss_to_s3_headers(v.headers, ("content-md5",)).items()
                   if not k.startswith("x-amz-meta-")}
        etag = await self._put_streaming(ctx, v.bucket, v.key, [("partNumber", part), ("uploadId", upload_id)],
                                         headers, meter)
        self.store.put_part(upload_id, int(part), etag, meter.size, meter.crc.crc)
        return web.Response(status=200, headers={"ETag": etag, "x-oss-hash-crc64ecma": str(meter.crc.crc)})

    async def op_UploadPartCopy(self, ctx: Ctx) -> web.Response:
        """A part copied from an object: S3 UploadPartCopy pinned to the source's ETag as HEAD saw
        it, so the part's CRC (stored for CompleteMultipartUpload) is that of the bytes copied."""
        v = ctx.view
        upload_id, part = v.params["uploadId"], v.params["partNumber"]
        if not part.isdigit() or not 1 <= int(part) <= 10000:
            raise OssError(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive.")
        await _drain(ctx.request)
        src_bucket, src_key = parse_copy_source(v.header("x-oss-copy-source"))
        src_head = await self._object_head(src_bucket, src_key)
        if src_head is None:
            raise await self._not_found(src_bucket)
        src_etag = src_head.get("ETag", "")
        check_copy_preconditions(v.headers, src_etag, src_head.get("Last-Modified", ""))
        size = int(src_head.get("Content-Length", "0"))
        range_header = v.header("x-oss-copy-source-range")
        first, last = parse_copy_range(range_header, size)
        headers = {"x-amz-copy-source": s3_copy_source(src_bucket, src_key),
                   "x-amz-copy-source-if-match": src_etag}
        if range_header:
            headers["x-amz-copy-source-range"] = f"bytes={first}-{last}"
        known = self.store.object_crc(src_bucket, src_key, src_etag) if (first, last) == (0, size - 1) else None
        reading = None
        if known is None:  # read the range while the store copies it
            reading = asyncio.ensure_future(self._crc_of_range(src_bucket, src_key, src_etag, first, last))
            reading.add_done_callback(_retrieve)
        try:
            s3 = await self.s3_xml("PUT", v.bucket, v.key, [("partNumber", part), ("uploadId", upload_id)], headers)
        except BaseException:
            if reading is not None:
                reading.cancel()
            raise
        crc = known if reading is None else await reading
        etag = _text(s3, "ETag")
        self.store.put_part(upload_id, int(part), etag, last - first + 1, crc)
        root = ET.Element("CopyPartResult")
        _el(root, "LastModified", oss_time(_text(s3, "LastModified")))
        _el(root, "ETag", etag)
        return _xml_response(_xml_bytes(root), headers={"ETag": etag, "x-oss-hash-crc64ecma": str(crc)})

    async def _crc_of_range(self, bucket: str, key: str, etag: str, first: int, last: int) -> int:
        """CRC of bytes ``first..last`` of an object, read only if its ETag is still ``etag``."""
        if last < first:
            return crc64(b"")
        c, size = Crc64Stream(), 0
        headers = {"if-match": etag, "range": f"bytes={first}-{last}"}
        async with await self.s3("GET", bucket, key, headers=headers) as resp:
            if resp.status == 412 or (resp.status < 300 and not _etag_eq(resp.headers.get("ETag", ""), etag)):
                raise _source_changed(bucket, key)
            if resp.status == 404:
                raise await self._not_found(bucket)
            if resp.status >= 300:
                raise self._s3_error(resp.status, await resp.read())
            async for chunk in resp.content.iter_chunked(_CHUNK):
                c.update(chunk)
                size += len(chunk)
        if size != last - first + 1:
            raise OssError(500, "InternalError", f"read {size} bytes of the source range {first}-{last} of "
                                                 f"/{bucket}/{key}, expected {last - first + 1}")
        return c.crc

    async def _all_parts(self, bucket: str, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        parts: list[tuple[int, str, int]] = []
        marker = "0"
        while True:
            s3 = await self.s3_xml("GET", bucket, key, query=[("uploadId", upload_id), ("part-number-marker", marker)])
            for p in s3.findall("Part"):
                parts.append((int(_text(p, "PartNumber")), _text(p, "ETag"), int(_text(p, "Size", "0"))))
            if _text(s3, "IsTruncated", "false").lower() != "true" or not parts:
                return parts
            marker = _text(s3, "NextPartNumberMarker") or str(parts[-1][0])

    async def op_CompleteMultipartUpload(self, ctx: Ctx) -> web.Response:
        v = ctx.view
        upload_id = v.params["uploadId"]
        body = await ctx.request.read()
        if body.strip():
            try:
                doc = parse_s3_xml(body)
                listed = [(int(_text(p, "PartNumber")), _text(p, "ETag")) for p in doc.findall("Part")]
            except (ET.ParseError, ValueError) as exc:
                raise OssError(400, "MalformedXML", f"The XML you provided was not well-formed: {exc}") from exc
        elif v.header("x-oss-complete-all").lower() == "yes":
            listed = [(n, etag) for n, etag, _ in await self._all_parts(v.bucket, v.key, upload_id)]
        else:
            raise OssError(400, "MalformedXML", "CompleteMultipartUpload needs a part list or x-oss-complete-all: yes")
        req = ET.Element("CompleteMultipartUpload", xmlns=S3_NS)
        for n, etag in listed:
            part = _el(req, "Part")
            _el(part, "PartNumber", n)
            _el(part, "ETag", etag if etag.startswith('"') else f'"{etag}"')
        known = self.store.parts(upload_id)
        try:
            s3 = await self.s3_xml("POST", v.bucket, v.key, query=[("uploadId", upload_id)],
                                   headers={"content-type": "application/xml"}, body=_xml_bytes(req))
        except OssError as err:
            if err.code == "EntityTooSmall":
                # OSS accepts parts down to 100 KiB; SeaweedFS (like S3) wants 5 MiB but for the last
                err.message = ("every part but the last must be at least 5 MiB on the test bed's store "
                               "(SeaweedFS); OSS itself accepts 100 KiB")
            raise
        etag = _text(s3, "ETag")
        crc, size = 0, 0
        for n, part_etag in listed:
            entry = known.get(n)
            if entry is None or not _etag_eq(entry[0], part_etag):
                crc_size = await self._crc_of_object(v.bucket, v.key)
                crc, size = crc_size
                break
            crc = crc64_combine(crc, entry[2], entry[1])
            size += entry[1]
        self.store.put_object(v.bucket, v.key, etag, size, crc)
        self.store.drop_upload(upload_id)
        root = ET.Element("CompleteMultipartUploadResult")
        if v.params.get("encoding-type") == "url":
            _el(root, "EncodingType", "url")
        _el(root, "Location", f"http://{ctx.request.host}/{v.bucket}/{quote(v.key)}")
        _el(root, "Bucket", v.bucket)
        _el(root, "Key", _enc(v.key, v.params.get("encoding-type") == "url"))
        _el(root, "ETag", etag)
        return _xml_response(_xml_bytes(root), headers={"ETag": etag, "x-oss-hash-crc64ecma": str(crc)})

    async def _crc_of_object(self, bucket: str, key: str) -> tuple[int, int]:
        """Read an object back to compute its CRC (parts uploaded around the adapter)."""
        c, size = Crc64Stream(), 0
        async with await self.s3("GET", bucket, key) as resp:
            if resp.status >= 300:
                raise self._s3_error(resp.status, await resp.read())
            async for chunk in resp.content.iter_chunked(_CHUNK):
                c.update(chunk)
                size += len(chunk)
        return c.crc, size

    async def op_AbortMultipartUpload(self, ctx: Ctx) -> web.Response:
        upload_id = ctx.view.params["uploadId"]
        await self.s3_ok("DELETE", ctx.view.bucket, ctx.view.key, query=[("uploadId", upload_id)])
        self.store.drop_upload(upload_id)
        return web.Response(status=204)

    async def op_ListParts(self, ctx: Ctx) -> web.Response:
        v = ctx.view
        upload_id = v.params["uploadId"]
        query = [("uploadId", upload_id)] + [(k, v.params[k]) for k in ("max-parts", "part-number-marker")
                                             if v.params.get(k)]
        s3 = await self.s3_xml("GET", v.bucket, v.key, query=query)
        return _xml_response(render_list_parts(s3, v.bucket, v.key, upload_id, self.store.parts(upload_id)))


def classify(view: RequestView) -> str:
    """The OSS operation a request asks for; unsupported ones raise ``OssError`` (NotImplemented)."""
    m, p = view.method, view.params
    if not view.bucket:
        if m == "GET":
            return "ListBuckets"
    elif not view.key:
        table = {
            ("GET", "bucketInfo"): "GetBucketInfo", ("GET", "location"): "GetBucketLocation",
            ("GET", "acl"): "GetBucketAcl", ("GET", "uploads"): "ListMultipartUploads",
            ("POST", "delete"): "DeleteMultipleObjects",
        }
        for (method, sub), op in table.items():
            if m == method and sub in p:
                return op
        if not (set(p) & (V1_SUBRESOURCES - {"continuation-token"})):
            if m == "GET":
                return "ListObjectsV2" if p.get("list-type") == "2" else "ListObjects"
            if m == "PUT":
                return "CreateBucket"
            if m == "DELETE":
                return "DeleteBucket"
            if m == "HEAD":
                return "HeadBucket"
    else:
        if "uploadId" in p:
            if m == "PUT" and "partNumber" in p:
                return "UploadPartCopy" if "x-oss-copy-source" in view.headers else "UploadPart"
            op = {"GET": "ListParts", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(m)
            if op and "partNumber" not in p:
                return op
        elif m == "POST" and "uploads" in p:
            return "InitiateMultipartUpload"
        elif m == "HEAD" and "objectMeta" in p:
            return "GetObjectMeta"
        elif not (set(p) & (V1_SUBRESOURCES - {"versionId"} - set(_RESPONSE_PARAMS))):
            if m == "PUT":
                return "CopyObject" if "x-oss-copy-source" in view.headers else "PutObject"
            op = {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(m)
            if op:
                return op
    sub = ",".join(sorted(set(p) & V1_SUBRESOURCES)) or "-"
    raise OssError(400, "NotImplemented", f"The test bed's OSS adapter does not implement {m} with "
                                          f"subresource {sub} on {'object' if view.key else 'bucket'}.")


def _xml_response(body: bytes, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=200, body=body, content_type="application/xml", headers=headers)


async def _drain(request: web.Request) -> None:
    while await request.content.readany():
        pass


# -- command line ---------------------------------------------------------------------------------
def read_keys_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments allowed) into a dict."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip().strip('"').strip("'")
    return out


async def serve(args: argparse.Namespace) -> None:
    env = read_keys_file(Path(args.keys))
    key_id, secret = env["TIDEGATE_OSS_ACCESS_KEY_ID"], env["TIDEGATE_OSS_ACCESS_KEY_SECRET"]
    db = Path(args.db) if args.db else Path(args.keys).with_name("oss-adapter.sqlite")
    adapter = Adapter(args.upstream, {key_id: secret}, db, pool_size=args.pool)
    runner = web.AppRunner(adapter.app(), access_log=None, auto_decompress=False, handle_signals=False,
                           read_bufsize=1 << 21)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=256)
    await site.start()
    log.info("OSS adapter on http://%s:%d -> %s (crc table %s, crc64 by %s)", args.host, args.port, args.upstream,
             db, CRC_IMPLEMENTATION)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m testbed.oss_adapter", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="listen address (loopback only by design)")
    ap.add_argument("--port", type=int, required=True, help="listen port")
    ap.add_argument("--upstream", required=True, help="SeaweedFS S3 endpoint, e.g. http://127.0.0.1:17334")
    ap.add_argument("--keys", required=True, help="KEY=value file with TIDEGATE_OSS_ACCESS_KEY_ID/_SECRET")
    ap.add_argument("--db", default=None, help="CRC side table (default: oss-adapter.sqlite beside --keys)")
    ap.add_argument("--pool", type=int, default=64, help="upstream connection pool size")
    ap.add_argument("--log-level", default=os.environ.get("TIDEGATE_OSS_ADAPTER_LOG", "INFO"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
