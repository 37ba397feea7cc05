"""Staging: model weights from a local directory, an ``oss://`` prefix or an ``http(s)://``
file to OSS (``oss2``) or a NAS mount, fast, resumable, verified and incremental.

Sources (:func:`check_source` parses one without network I/O):

- a local directory (or ``file://``): staged as described below;
- ``oss://bucket/prefix``: copied server-side (CopyObject, UploadPartCopy above the multipart
  threshold) into the target bucket, with the target's endpoint and key (OSS targets only); an
  object is skipped when the target holds one of the same size and CRC64, and verified by HEAD
  after its copy like an upload. SHA-256s for the manifest come from the target's previous
  manifest or the source's own (a prefix staged by tidegate), else each object is read once;
- ``http(s)://host/.../<file>``: one file, downloaded into ``<checkpoint_dir>/downloads`` (HTTP
  Range resume after a dropped connection or a restart, guarded by ``If-Range``), checked against
  ``sha256`` when one is given (a mismatch stages nothing), then staged as ``<file>``.

A NAS destination is checked first: it must be an nfs/nfs4 mount of the spec's ``server:path``
in ``/proc/self/mounts`` (:func:`check_nas_mount`), unless the target says it is local on purpose.

One run goes ``scan -> probe -> plan -> upload -> verify -> commit``:

1. **scan** the source tree (regular files, symlinks followed; ``.git``, ``.cache`` and
   ``.tidegate`` directories left out) and look each file up in the local hash cache, keyed by
   (path, size, mtime_ns) and checked against inode and ctime, so that unchanged files are
   never read again;
2. **probe** the destination: read the manifest ``<prefix>/.tidegate-manifest.json`` and HEAD
   (OSS) or stat (NAS) every file's object;
3. **plan** (pure, :func:`plan_transfer`): a file is skipped only when the destination holds an
   object of the same size whose CRC64 equals the local one; a file whose size matches but whose
   CRC64 is not cached is hashed first and then skipped or uploaded;
4. **upload** the rest through one bounded pool of workers shared by all files and parts
   (multipart above a threshold, per-part retries with backoff, per-file restarts), reading
   each file once: a worker reads its part, computes the part's CRC64 (compared with the one
   the store computes) and hands the bytes to a hasher thread that feeds each file's SHA-256
   in part order, then uploads at once;
5. **verify** every uploaded object after it completes (HEAD: size and CRC64, also after a
   resume, when oss2 itself would skip the check); a mismatch deletes the object and restarts
   the file, and never counts as staged;
6. **commit**: write the manifest last, then (``prune``) delete objects that only the previous
   manifest listed.

Invariants:

- A staged prefix is either certified by a manifest that matches every object it lists, or has
  no manifest. The previous manifest is withdrawn just before the first object it lists is
  replaced (a multipart object is replaced only at CompleteMultipartUpload, after all its parts
  matched their CRC64), and the new one is written only after every object verified. A failed
  run that replaced nothing leaves the previous manifest in place.
- Resume across process restarts: every multipart upload keeps a journal (upload id, part size,
  and each finished part's ETag and locally computed CRC64) in ``<checkpoint_dir>/uploads``;
  a re-run keeps the parts the store still lists with the same ETag, re-reads them only to
  hash (their CRC64 is checked against the journal), and uploads the others.
- Memory is bounded by ``workers x part_size`` (no whole-file buffering above the multipart
  threshold).
- Failures raise :class:`~tasks.errors.StagingError` (or ``CredentialsError``) with one line
  naming the file and the cause (OSS error code, HTTP status, request id); the access key never
  appears in a message, a log line, the manifest or the report.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import contextvars
import enum
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import posixpath
import queue
import random
import re
import stat
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anycrc
import httpx
import oss2
import oss2.exceptions as oss_errors

from tasks import console
from tasks.errors import CredentialsError, StagingError, TidegateError
from tasks.profile import resolve_profile
from tasks.report_model import StagingBlock
from tasks.spec.base import _BUCKET

if TYPE_CHECKING:  # staging needs only .get_secret_value(); pydantic stays out of its import time
    from pydantic import SecretStr

log = logging.getLogger("tidegate.staging")
# oss2 logs request headers (Authorization) at DEBUG and error details (which name the access key
# id on a signature mismatch) at INFO: staging reports errors itself, without them
if logging.getLogger("oss2").level < logging.WARNING:
    logging.getLogger("oss2").setLevel(logging.WARNING)

MiB = 1 << 20
MANIFEST_NAME = ".tidegate-manifest.json"
MANIFEST_FORMAT = "tidegate-manifest/1"
EXCLUDED_DIRS = frozenset({".git", ".cache", ".tidegate"})
MIN_PART_SIZE = 5 * MiB  # S3-compatible stores (the test bed's SeaweedFS) reject smaller parts
MAX_PARTS = 10_000
READ_AHEAD = 1  # parts read ahead of the upload slots
PROBE_WORKERS = 16  # HEADs (OSS) or stats (NAS) of the destination in flight while planning
DEFAULT_CHECKPOINT_DIR = Path.home() / ".cache" / "tidegate" / "staging"
_READ_CHUNK = 8 * MiB
_CRC = anycrc.Model("CRC64-XZ")  # = OSS's x-oss-hash-crc64ecma
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                               "InvalidSecurityToken", "SecurityTokenExpired"})
_RETRYABLE_CODES = frozenset({"RequestTimeout", "SlowDown", "ServiceUnavailable", "InternalError",
                              "RequestTimeTooSkewed", "IncompleteBody"})


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-64/XZ (OSS's ``x-oss-hash-crc64ecma``) of ``data``, continuing from ``crc``."""
    return _CRC.calc(data, crc)


def crc64_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC64 of A+B from crc64(A), crc64(B) and len(B)."""
    return _CRC.combine(crc1, crc2, len2)


# -- results and options ------------------------------------------------------------------------
@dataclass(frozen=True)
class StagedModel:
    """What one staging run did. ``MBps`` is decimal megabytes uploaded per second of the run."""

    bytes: int
    files: int
    uploaded_bytes: int
    skipped_files: int
    seconds: float
    MBps: float
    uri: str
    manifest_key: str
    verified: bool
    uploaded_files: int = 0
    resumed_bytes: int = 0
    hashed_bytes: int = 0
    retries: int = 0
    pruned_files: int = 0
    backend: str = "oss"
    source_kind: str = "local"
    """local, oss (copied server-side) or http (downloaded, then staged)."""
    downloaded_bytes: int = 0
    """Bytes an http(s) source downloaded in this run (0 when the cached download was still current)."""
    destination_check: str = ""
    """NAS: the mount the destination was found on, or that the check was skipped (local on purpose)."""

    def report_block(self) -> dict[str, Any]:
        """The ``staging`` block of report.json (contract keys first, then details), as the
        report model's ``StagingBlock`` has it."""
        return StagingBlock(**{k: getattr(self, k) for k in StagingBlock.model_fields}).model_dump(mode="json")

    def summary(self) -> str:
        """One line for logs and the CLI."""
        state = "verified" if self.verified else "NOT verified"
        moved = (f"uploaded {self.uploaded_files} file(s), {_mb(self.uploaded_bytes)} in {self.seconds:.2f} s "
                 f"({self.MBps:.1f} MB/s)" if self.uploaded_files else f"nothing to upload ({self.seconds:.2f} s)")
        extra = f", resumed {_mb(self.resumed_bytes)}" if self.resumed_bytes else ""
        extra += f", {self.retries} retries" if self.retries else ""
        extra += f", pruned {self.pruned_files}" if self.pruned_files else ""
        extra += f", downloaded {_mb(self.downloaded_bytes)}" if self.downloaded_bytes else ""
        if self.source_kind == "oss":
            moved = moved.replace("uploaded", "copied server-side", 1)
        check = f"; {self.destination_check}" if self.destination_check else ""
        return (f"staged {self.files} files ({_mb(self.bytes)}) to {self.uri}: {moved}, "
                f"{self.skipped_files} unchanged{extra}; {state}{check}")


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class TransferOptions:
    """How hard staging pushes. Environment overrides: ``TIDEGATE_STAGING_WORKERS``,
    ``TIDEGATE_STAGING_PART_MIB``, ``TIDEGATE_STAGING_THRESHOLD_MIB``."""

    workers: int = 8
    """Uploads (parts or small files) in flight at once, across all files; one more part is read
    ahead. Memory is about (workers + 2) x part_size."""
    part_size: int = 16 * MiB
    """Multipart part size; raised for files that would need more than 10,000 parts."""
    multipart_threshold: int = 16 * MiB
    """Files larger than this are uploaded in parts; smaller ones with one PUT."""
    part_attempts: int = 4
    """Attempts per request (part, PUT, complete) on retryable errors, with backoff."""
    file_attempts: int = 3
    """Attempts per file when a whole object fails its CRC64 check or its upload vanished."""
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    timeout_s: float = 60.0
    """Connect and read timeout of one request."""
    prune: bool = True
    """After the commit, delete objects that only the previous manifest listed."""

    def __post_init__(self) -> None:
        checks = [
            ("workers", 1 <= self.workers <= 128, "between 1 and 128"),
            ("part_size", MIN_PART_SIZE <= self.part_size <= 5 * 1024 * MiB, "between 5 MiB and 5 GiB"),
            ("multipart_threshold", self.multipart_threshold >= self.part_size, ">= part_size"),
            ("part_attempts", 1 <= self.part_attempts <= 20, "between 1 and 20"),
            ("file_attempts", 1 <= self.file_attempts <= 10, "between 1 and 10"),
            ("backoff_s", 0 <= self.backoff_s <= self.backoff_max_s, "between 0 and backoff_max_s"),
            ("timeout_s", 1 <= self.timeout_s <= 3600, "between 1 and 3600"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise StagingError(f"staging option {name}={getattr(self, name)!r}: must be {rule}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> TransferOptions:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var, name, scale in (("TIDEGATE_STAGING_WORKERS", "workers", 1),
                                 ("TIDEGATE_STAGING_PART_MIB", "part_size", MiB),
                                 ("TIDEGATE_STAGING_THRESHOLD_MIB", "multipart_threshold", MiB)):
            raw = env.get(var)
            if raw:
                try:
                    values[name] = int(raw) * scale
                except ValueError:
                    raise StagingError(f"{var}={raw!r}: must be an integer") from None
        if "part_size" in values and "multipart_threshold" not in values:
            values["multipart_threshold"] = max(cls.multipart_threshold, values["part_size"])
        values.update(overrides)
        return cls(**values)

    def part_size_for(self, size: int) -> int:
        """Part size for a file of ``size`` bytes: the option, raised (in MiB steps) so that
        the file needs at most 10,000 parts."""
        need = -(-size // MAX_PARTS)
        return max(self.part_size, -(-need // MiB) * MiB)

    def backoff(self, attempt: int) -> float:
        """Sleep before retry ``attempt`` (1-based): exponential with full jitter."""
        return random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


# -- local files and their digests ---------------------------------------------------------------
@dataclass(frozen=True)
class LocalFile:
    """One regular file of the source tree; ``rel`` uses ``/`` whatever the platform."""

    rel: str
    path: Path
    size: int
    mtime_ns: int
    ino: int = 0
    ctime_ns: int = 0

    @classmethod
    def from_stat(cls, rel: str, path: Path, st: os.stat_result) -> LocalFile:
        return cls(rel, path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass(frozen=True)
class Digest:
    crc64: int
    sha256: str


@dataclass(frozen=True)
class ModelSource:
    """What a model source names (see :func:`check_source`): ``kind`` is ``local`` (``path``),
    ``oss`` (``bucket``, ``prefix``) or ``http`` (``url``, ``file_name``)."""

    kind: str
    text: str
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""
    url: str = ""
    file_name: str = ""

    @property
    def shown(self) -> str:
        """The source for messages and logs: a URL without its query, which may carry a signature."""
        return _show_url(self.url) if self.kind == "http" else self.text

    @property
    def uri(self) -> str:
        if self.kind == "oss":
            return f"oss://{self.bucket}/{self.prefix}/" if self.prefix else f"oss://{self.bucket}/"
        return self.shown


def _show_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")


def check_source(source: str | Path, *, storage_kind: str | None = None) -> ModelSource:
    """Parse and check a model source without network I/O (safe before a run):

    - a local directory or ``file://`` URI: it must exist and be a directory;
    - ``oss://bucket/prefix``: a valid bucket name and key prefix; with ``storage_kind`` given it
      must be ``oss`` (the objects are copied server-side into ``storage.oss``);
    - ``http(s)://host/.../<file>``: a host, no ``user:password@``, and a file name at the end of
      the path (one file; the name it is staged as).

    Raises ``StagingError`` saying what is wrong.

    Example::

        check_source("oss://weights/qwen/7b", storage_kind="oss").uri   # 'oss://weights/qwen/7b/'
        check_source("https://example.com/m/model.gguf").file_name      # 'model.gguf'
    """
    text = str(source)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return ModelSource("local", text, path=resolve_source(source))
    if scheme == "file":
        return ModelSource("local", text, path=resolve_source(source))
    if scheme == "oss":
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET.match(bucket):
            raise StagingError(f"model source {text}: {bucket!r} is not an OSS bucket name (3-63 lowercase "
                               f"letters, digits and '-')")
        if prefix and (any(part in ("", ".", "..") for part in prefix.split("/")) or "\\" in prefix
                       or "\x00" in prefix):
            raise StagingError(f"model source {text}: the key prefix must not have '.', '..' or empty segments")
        if storage_kind is not None and storage_kind != "oss":
            raise StagingError(f"model source {text}: an oss:// source is copied server-side into storage.oss "
                               f"and needs storage.kind oss (it is {storage_kind})",
                               hint="download the weights to a local directory and stage that, or stage to OSS")
        return ModelSource("oss", text, bucket=bucket, prefix=prefix)
    if scheme in ("http", "https"):
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise StagingError(f"model source {_show_url(text)}: not a valid URL ({exc})") from None
        shown = _show_url(text)
        if "@" in parts.netloc:
            raise StagingError(f"model source {shown}: must not carry credentials (user:password@)")
        if not parts.hostname:
            raise StagingError(f"model source {shown}: has no host")
        name = urllib.parse.unquote(parts.path.rpartition("/")[2])
        if not name or name in (".", "..") or "/" in name or "\x00" in name:
            raise StagingError(f"model source {shown}: names no file (an http(s) source is one file, "
                               f"e.g. https://host/models/model.safetensors)")
        if name == MANIFEST_NAME or ".tidegate-" in name:
            raise StagingError(f"model source {shown}: {name!r} is a name staging reserves")
        return ModelSource("http", text, url=text, file_name=name)
    raise StagingError(f"model source {text}: unknown scheme {scheme!r}; use a local directory, file://, "
                       f"oss:// or http(s)://")


def resolve_source(source: str | Path) -> Path:
    """The local directory a source names: a path (relative to the working directory) or
    ``file://``. Remote sources (``oss://``, ``http(s)://``) are no directory: use
    :func:`check_source` for those."""
    text = str(source)
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme == "file":
            text = rest[len("localhost"):] if rest.startswith("localhost/") else rest
        elif scheme in ("http", "https", "oss"):
            raise StagingError(f"model source {text}: a {scheme}:// source is not a local directory")
        else:
            raise StagingError(f"model source {text}: unknown scheme {scheme!r}; use a local directory, "
                               f"file://, oss:// or http(s)://")
    root = Path(text).expanduser()
    if not root.exists():
        raise StagingError(f"model source {root}: does not exist")
    if not root.is_dir():
        raise StagingError(f"model source {root}: is not a directory")
    return root.resolve()


def scan_source(root: Path) -> list[LocalFile]:
    """Regular files under ``root`` (symlinks followed, loops ignored), sorted by path."""
    files: list[LocalFile] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(directory: Path, prefix: str) -> None:
        try:
            st = directory.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:
                return
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise StagingError(f"model source {directory}: cannot list: {exc.strerror or exc}") from None
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                log.warning("staging: skipping %s: broken symlink or unreadable", rel)
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.name not in EXCLUDED_DIRS:
                    walk(Path(entry.path), rel + "/")
            elif stat.S_ISREG(st.st_mode):
                if rel != MANIFEST_NAME and ".tidegate-" not in entry.name:
                    files.append(LocalFile.from_stat(rel, Path(entry.path), st))

    walk(root, "")
    files.sort(key=lambda f: f.rel)
    return files


def hash_file(path: Path, *, expect_size: int | None = None) -> Digest:
    """CRC64 and SHA-256 of a file in one read."""
    crc, sha, size = 0, hashlib.sha256(), 0
    try:
        with open(path, "rb", buffering=0) as fh:
            buf = bytearray(_READ_CHUNK)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                crc = crc64(view[:n], crc)
                sha.update(view[:n])
                size += n
    except OSError as exc:
        raise StagingError(f"staging {path.name}: cannot read {path}: {exc.strerror or exc}") from None
    if expect_size is not None and size != expect_size:
        raise StagingError(f"staging {path.name}: file changed while it was read ({size} != {expect_size} bytes)")
    return Digest(crc, sha.hexdigest())


class HashCache:
    """Digests of local files, so that a re-run reads no unchanged file.

    An append-only JSON-lines file ``<dir>/hashes.jsonl`` (the last line for a path wins; a torn
    last line is ignored). An entry is valid while the file's size, mtime_ns, inode and ctime_ns
    are what they were when it was hashed. ``directory=None`` keeps it in memory only.
    """

    FILE = "hashes.jsonl"

    def __init__(self, directory: Path | None):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, int, int, int, Digest]] = {}
        self._fd: int | None = None
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.FILE
        lines = 0
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    lines += 1
                    try:
                        p, size, mtime, ino, ctime, crc, sha = json.loads(line)
                        self._entries[p] = (size, mtime, ino, ctime, Digest(int(crc), sha))
                    except (ValueError, TypeError):
                        continue
        except FileNotFoundError:
            pass
        if lines > 2 * len(self._entries) + 64:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text("".join(self._line(p, *e) for p, e in self._entries.items()), encoding="utf-8")
            os.replace(tmp, path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @staticmethod
    def _line(path: str, size: int, mtime: int, ino: int, ctime: int, d: Digest) -> str:
        return json.dumps([path, size, mtime, ino, ctime, str(d.crc64), d.sha256]) + "\n"

    def get(self, f: LocalFile) -> Digest | None:
        entry = self._entries.get(str(f.path))
        if entry and entry[:4] == (f.size, f.mtime_ns, f.ino, f.ctime_ns):
            return entry[4]
        return None

    def put(self, f: LocalFile, digest: Digest) -> None:
        entry = (f.size, f.mtime_ns, f.ino, f.ctime_ns, digest)
        with self._lock:
            if self._entries.get(str(f.path)) == entry:
                return
            self._entries[str(f.path)] = entry
            if self._fd is not None:
                os.write(self._fd, self._line(str(f.path), *entry).encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the manifest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestEntry:
    path: str
    size: int
    mtime_ns: int
    crc64: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """``<prefix>/.tidegate-manifest.json``: the commit marker of a staged model.

    CRC64 values are decimal strings in JSON (as in the ``x-oss-hash-crc64ecma`` header), since
    they do not fit a JavaScript number.
    """

    files: tuple[ManifestEntry, ...]
    created_at: str = ""
    run_id: str | None = None
    model: str | None = None

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.files)

    def by_path(self) -> dict[str, ManifestEntry]:
        return {e.path: e for e in self.files}

    def same_files(self, other: Manifest | None) -> bool:
        return other is not None and sorted(self.files, key=lambda e: e.path) == sorted(other.files,
                                                                                       key=lambda e: e.path)

    def to_bytes(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT, "created_at": self.created_at, "run_id": self.run_id,
            "model": self.model, "tool": "tidegate", "files_count": len(self.files), "bytes": self.bytes,
            "files": [{"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns, "crc64": str(e.crc64),
                       "sha256": e.sha256} for e in sorted(self.files, key=lambda e: e.path)],
        }
        return (json.dumps(doc, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Manifest:
        """Parse a manifest; ``ValueError`` if it is not one this version understands."""
        doc = json.loads(blob)
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} document")
        try:
            files = tuple(ManifestEntry(str(f["path"]), int(f["size"]), int(f["mtime_ns"]), int(f["crc64"]),
                                        str(f["sha256"])) for f in doc["files"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed file entry ({exc})") from None
        return cls(files, str(doc.get("created_at", "")), doc.get("run_id"), doc.get("model"))


# -- planning (pure) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteObject:
    """What the destination holds for one file: its size and, when known, its CRC64."""

    size: int
    crc64: int | None


class Action(enum.Enum):
    SKIP = "skip"
    UPLOAD = "upload"
    HASH_FIRST = "hash-first"  # same size, local CRC64 unknown: hash, then skip or upload


def decide(local: LocalFile, digest: Digest | None, remote: RemoteObject | None) -> Action:
    """Skip only when the destination's size and CRC64 equal the local ones."""
    if remote is None or remote.size != local.size or remote.crc64 is None:
        return Action.UPLOAD
    if digest is None:
        return Action.HASH_FIRST
    return Action.SKIP if digest.crc64 == remote.crc64 else Action.UPLOAD


@dataclass
class Plan:
    skip: list[tuple[LocalFile, Digest]] = field(default_factory=list)
    upload: list[LocalFile] = field(default_factory=list)
    hash_first: list[LocalFile] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    """Paths the previous manifest lists that the source no longer has."""

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.upload)


def plan_transfer(files: Sequence[LocalFile], cached: Mapping[str, Digest],
                  remote: Mapping[str, RemoteObject | None], manifest: Manifest | None) -> Plan:
    """Sort every local file into skip / upload / hash-first (see :func:`decide`)."""
    plan = Plan()
    for f in files:
        digest = cached.get(f.rel)
        action = decide(f, digest, remote.get(f.rel))
        if action is Action.SKIP:
            assert digest is not None
            plan.skip.append((f, digest))
        elif action is Action.HASH_FIRST:
            plan.hash_first.append(f)
        else:
            plan.upload.append(f)
    if manifest is not None:
        local = {f.rel for f in files}
        plan.stale = sorted(e.path for e in manifest.files if e.path not in local)
    return plan


# -- multipart journal (resume across processes) --------------------------------------------------
@dataclass
class UploadRecord:
    """A multipart upload in progress, as its journal file holds it."""

    bucket: str
    key: str
    upload_id: str
    size: int
    mtime_ns: int
    part_size: int
    parts: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # n -> (etag, crc64, size)

    def matches(self, bucket: str, key: str, f: LocalFile) -> bool:
        return (self.bucket, self.key, self.size, self.mtime_ns) == (bucket, key, f.size, f.mtime_ns)


class UploadJournal:
    """One JSON-lines file per object under ``<checkpoint_dir>/uploads``: a header line, then a
    line per finished part (appended, so a kill -9 loses at most the part in flight)."""

    def __init__(self, directory: Path, target_id: str):
        self.dir = directory / "uploads"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.target_id = target_id
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.target_id}\0{key}".encode()).hexdigest()[:32]
        return self.dir / f"{digest}.jsonl"

    def load(self, key: str) -> UploadRecord | None:
        try:
            lines = self.path(key).read_text(encoding="utf-8").splitlines()
            head = json.loads(lines[0])
            rec = UploadRecord(head["bucket"], head["key"], head["upload_id"], int(head["size"]),
                               int(head["mtime_ns"]), int(head["part_size"]))
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
        for line in lines[1:]:
            try:
                n, etag, crc, size = json.loads(line)
                rec.parts[int(n)] = (str(etag), int(crc), int(size))
            except (ValueError, TypeError):
                continue
        return rec

    def start(self, rec: UploadRecord) -> None:
        self.drop(rec.key)
        head = {"bucket": rec.bucket, "key": rec.key, "upload_id": rec.upload_id, "size": rec.size,
                "mtime_ns": rec.mtime_ns, "part_size": rec.part_size}
        path = self.path(rec.key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(head) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def add_part(self, key: str, n: int, etag: str, crc: int, size: int) -> None:
        line = (json.dumps([n, etag, str(crc), size]) + "\n").encode()
        with self._lock:
            fd = self._fds.get(key)
            if fd is None:
                fd = self._fds[key] = os.open(self.path(key), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, line)

    def drop(self, key: str) -> None:
        with self._lock:
            fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)
        self.path(key).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def _target_lock(checkpoint_dir: Path, target_id: str) -> Iterator[None]:
    """One staging run per destination at a time (per checkpoint directory)."""
    locks = checkpoint_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / (hashlib.sha256(target_id.encode()).hexdigest()[:32] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StagingError(f"staging to {target_id}: another staging run to the same destination holds "
                               f"{path}") from None
        yield
    finally:
        os.close(fd)


# -- destinations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OssTarget:
    """A bucket prefix on OSS (or the test bed's OSS-dialect store). The keys are pydantic
    ``SecretStr`` (or anything with ``get_secret_value()``), so that no repr shows them."""

    endpoint: str
    bucket: str
    prefix: str
    access_key_id: SecretStr
    access_key_secret: SecretStr
    region: str | None = None
    credentials_source: str = "the given credentials"
    """Where the key came from, for error messages (never the key itself)."""

    @property
    def clean_prefix(self) -> str:
        return self.prefix.strip("/")

    @property
    def uri(self) -> str:
        return f"oss://{self.bucket}/{self.clean_prefix}/" if self.clean_prefix else f"oss://{self.bucket}/"

    @property
    def target_id(self) -> str:
        return f"{self.endpoint.rstrip('/')}/{self.bucket}/{self.clean_prefix}"


@dataclass(frozen=True)
class NasTarget:
    """A directory on a mounted NAS: before anything is written, staging checks that ``root``
    is an nfs/nfs4 mount of ``server:export_path`` (:func:`nas_destination_check`), unless
    ``local`` says it is a local directory on purpose (a test bed, a unit test)."""

    root: Path
    server: str | None = None
    export_path: str = "/"
    local: bool = False

    @property
    def uri(self) -> str:
        return f"file://{Path(self.root).resolve()}/"

    @property
    def target_id(self) -> str:
        return str(Path(self.root).resolve())


class _Cancelled(Exception):
    """Another file failed; this task stops without reporting an error of its own."""


class _Transient(Exception):
    """A retryable failure (network, 5xx, throttling, a part's CRC64 mismatch)."""


class _RestartFile(Exception):
    """The whole file has to be uploaded again (its upload vanished, or the object failed its
    CRC64 check and was deleted)."""


# -- the run: shared state of one staging ------------------------------------------------------
class _Run:
    """Counters, the worker pool, the hash cache and the manifest guard of one staging run."""

    def __init__(self, opts: TransferOptions, cache: HashCache, pool: cf.ThreadPoolExecutor, hasher: _Hasher | None,
                 old_manifest: Manifest | None, backend_withdraw: Callable[[], None]):
        self.opts = opts
        self.cache = cache
        self.pool = pool
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.uploaded_bytes = 0
        self.resumed_bytes = 0
        self.hashed_bytes = 0
        self.retries = 0
        self.digests: dict[str, Digest] = {}
        self._old = old_manifest.by_path() if old_manifest else {}
        self._withdraw = backend_withdraw
        self.withdrawn = False
        self.progress: _Progress | None = None
        self.hasher = hasher
        self.buffers = _Buffers(keep=opts.workers + READ_AHEAD + 2)
        self.upload_slots = threading.BoundedSemaphore(opts.workers)

    def count(self, *, uploaded: int = 0, resumed: int = 0, hashed: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.uploaded_bytes += uploaded
            self.resumed_bytes += resumed
            self.hashed_bytes += hashed
            self.retries += retries

    def before_replace(self, rel: str) -> None:
        """Withdraw the previous manifest before the first object it lists is replaced."""
        with self._lock:
            if rel in self._old and not self.withdrawn:
                self._withdraw()
                self.withdrawn = True

    def done(self, f: LocalFile, digest: Digest) -> None:
        self.record(f.rel, digest)
        self.cache.put(f, digest)

    def record(self, rel: str, digest: Digest) -> None:
        """``rel`` is in the destination (staged or unchanged) with this digest."""
        with self._lock:
            self.digests[rel] = digest

    def check(self) -> None:
        if self.stop.is_set():
            raise _Cancelled()

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        return self.pool.submit(_carry_context(fn), *args)

    def retry(self, what: str, fn: Callable[[], Any], classify: Callable[[BaseException, str], BaseException]) -> Any:
        """Run ``fn`` with bounded retries and backoff on ``_Transient`` failures."""
        attempts = self.opts.part_attempts
        for attempt in range(1, attempts + 1):
            self.check()
            try:
                return fn()
            except (_Cancelled, _RestartFile, TidegateError):
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                err = exc if isinstance(exc, _Transient) else classify(exc, what)
                if not isinstance(err, _Transient):
                    raise err from None
                if attempt == attempts:
                    raise StagingError(f"{what} failed after {attempts} attempts: {err}") from None
                self.count(retries=1)
                delay = self.opts.backoff(attempt)
                log.warning("%s: %s; retry %d/%d in %.1fs", what, err, attempt, attempts - 1, delay)
                if self.stop.wait(delay):
                    raise _Cancelled() from None
        raise AssertionError("unreachable")


def _carry_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` to run on a worker thread in (a copy of) the submitting thread's context, so that
    a Prefect flow run's context reaches the workers and their log lines reach the run."""
    ctx = contextvars.copy_context()
    return lambda *args: ctx.copy().run(fn, *args)


def _run_files(run: _Run, files: Sequence[Any], start: Callable[[Any, cf.Future, int], None]) -> None:
    """Start every file (a ``LocalFile``, or a ``SourceObject`` to copy), wait until all settle;
    re-raise the first real failure (others stop)."""
    futures: dict[cf.Future, LocalFile] = {}
    for f in files:
        fut: cf.Future = cf.Future()
        futures[fut] = f
        run.submit(_guard, run, start, f, fut, 1)
    first: BaseException | None = None
    pending = set(futures)
    while pending:
        done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_EXCEPTION)
        if run.progress is not None:
            run.progress.tick(run.uploaded_bytes + run.resumed_bytes)
        for fut in done:
            exc = fut.exception()
            if exc is not None and not isinstance(exc, _Cancelled) and first is None:
                first = exc
                run.stop.set()
    if first is not None:
        raise first
    if run.stop.is_set():
        raise _Cancelled()


def _guard(run: _Run, fn: Callable[..., None], f: Any, fut: cf.Future, attempt: int) -> None:
    try:
        fn(f, fut, attempt)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
        if not isinstance(exc, _Cancelled):
            run.stop.set()  # fail fast: the other files stop at their next step
        if not fut.done():
            fut.set_exception(exc)


# -- OSS -------------------------------------------------------------------------------------------
class _OrderedSha:
    """The SHA-256 of one file, fed its parts in any order and hashed in part order by the
    run's hasher thread (see :class:`_Hasher`)."""

    def __init__(self, last: int, first: int = 1):
        self.sha = hashlib.sha256()
        self.next = first
        self.last = last
        self.pending: dict[int, _Lease] = {}
        self.aborted = False
        self.done = threading.Event()

    def hexdigest(self) -> str:
        self.done.wait()
        if self.aborted:
            raise _Cancelled()
        return self.sha.hexdigest()


class _Buffers:
    """Part buffers reused from part to part: filling a fresh 16 MiB ``bytes`` costs ~10 ms of
    page faults, refilling a reused buffer ~2 ms, per part and worker. At most ``keep`` free
    buffers are kept; a lease never waits (a new buffer is allocated when none is free), so
    that no part can starve behind parts that wait to be hashed after it."""

    def __init__(self, keep: int):
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def lease(self, size: int, users: int) -> _Lease:
        buf = None
        with self._lock:
            for i, candidate in enumerate(self._free):
                if len(candidate) >= size:
                    buf = self._free.pop(i)
                    break
        return _Lease(self, buf if buf is not None else bytearray(size), size, users)

    def _give_back(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


class _Lease:
    """One part's buffer, shared by its uploader and the hasher; it goes back to the pool when
    every user has released it."""

    __slots__ = ("_pool", "_buf", "view", "_users", "_lock")

    def __init__(self, pool: _Buffers, buf: bytearray, size: int, users: int):
        self._pool, self._buf, self._users = pool, buf, users
        self.view = memoryview(buf)[:size]
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._pool._give_back(self._buf)


class _Hasher:
    """One thread that hashes every multipart file of a run in part order, so that workers read
    their parts in parallel and start uploading at once: a file is read once and hashed once,
    and SHA-256 (which releases the GIL) runs beside the uploads. ``slots`` bounds the parts
    queued for it; a part waiting for an earlier one is held (with its buffer) until then."""

    def __init__(self, slots: int):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(slots)
        self._thread = threading.Thread(target=self._loop, name="tidegate-staging-sha256", daemon=True)
        self._thread.start()

    def add(self, osha: _OrderedSha, n: int, lease: _Lease) -> None:
        self._slots.acquire()
        self._queue.put((osha, n, lease))

    def abort(self, osha: _OrderedSha) -> None:
        self._queue.put((osha, 0, None))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            osha, n, lease = item
            if lease is None:
                osha.aborted = True
                for held in osha.pending.values():
                    held.release()
                osha.pending.clear()
                osha.done.set()
                continue
            self._slots.release()
            if osha.aborted:
                lease.release()
                continue
            osha.pending[n] = lease
            while osha.next in osha.pending:
                held = osha.pending.pop(osha.next)
                osha.sha.update(held.view)
                held.release()
                osha.next += 1
            if osha.next > osha.last:
                osha.done.set()


class _Multipart:
    """One file's multipart upload: start (resume or initiate), parts, complete, verify."""

    def __init__(self, be: _OssBackend, run: _Run, f: LocalFile, fut: cf.Future, attempt: int):
        self.be, self.run, self.f, self.fut, self.attempt = be, run, f, fut, attempt
        self.key = be.key(f.rel)
        self.lock = threading.Lock()
        self.parts: dict[int, tuple[str, int, int]] = {}
        self.resumed: dict[int, tuple[str, int, int]] = {}
        self.failed = False
        self.rec: UploadRecord | None = None
        self.osha: _OrderedSha | None = None

    # task 1
    def start(self) -> None:
        run, be, f = self.run, self.be, self.f
        run.check()
        rec = be.journal.load(self.key)
        if rec is not None and rec.matches(be.target.bucket, self.key, f):
            try:
                listed = be.list_parts(self.key, rec.upload_id, f.rel)
            except _RestartFile:
                listed = {}
                rec = None
            if rec is not None:
                self.resumed = {n: p for n, p in rec.parts.items() if listed.get(n) == (p[0], p[2])}
                log.info("staging %s: resuming upload with %d of its parts already stored", f.rel,
                         len(self.resumed))
        elif rec is not None:
            be.abort(rec.key, rec.upload_id)
            rec = None
        if rec is None:
            part_size = run.opts.part_size_for(f.size)
            upload_id = run.retry(f"staging {f.rel}: initiate multipart upload",
                                  lambda: be.bucket.init_multipart_upload(self.key).upload_id,
                                  be.classify)
            rec = UploadRecord(be.target.bucket, self.key, upload_id, f.size, f.mtime_ns, part_size)
            be.journal.start(rec)
        self.rec = rec
        self.nparts = max(1, -(-f.size // rec.part_size))
        self.remaining = self.nparts
        self.osha = _OrderedSha(self.nparts)
        for n in range(1, self.nparts + 1):
            run.submit(self.part, n)

    # tasks 2..n+1
    def part(self, n: int) -> None:
        run, f, rec = self.run, self.f, self.rec
        assert rec is not None and self.osha is not None
        offset = (n - 1) * rec.part_size
        length = min(rec.part_size, f.size - offset)
        try:
            run.check()
            if self.failed:
                raise _Cancelled()
            lease = run.buffers.lease(length, users=2)  # this worker and the hasher
            try:
                data = lease.view
                _read_into(f, offset, data)
                crc = crc64(data)
            except BaseException:
                lease.release()
                lease.release()
                raise
            run.hasher.add(self.osha, n, lease)
            try:
                self._send(n, data, crc, length)
            finally:
                lease.release()
        except BaseException as exc:  # noqa: BLE001 - one place decides what a failure means
            self._fail(exc)

    def _send(self, n: int, data: memoryview, crc: int, length: int) -> None:
        """Upload part ``n`` (or, when it was stored before a restart, only count it)."""
        run, rec = self.run, self.rec
        assert rec is not None
        if n in self.resumed:
            etag, want, size = self.resumed[n]
            if want != crc or size != length:
                raise _RestartFile(f"part {n} differs from the stored one (the file changed)")
            run.count(resumed=length)
            self._part_done(n, (etag, crc, length))
            return

        def put() -> str:
            with run.upload_slots:
                result = self.be.bucket.upload_part(self.key, rec.upload_id, n, data)
            if result.crc is not None and result.crc != crc:
                raise _Transient(f"CRC64 mismatch: sent {crc}, the store computed {result.crc} "
                                 f"(request id {result.request_id})")
            return result.etag

        etag = run.retry(f"staging {self.f.rel}: part {n}/{self.nparts}", put, self.be.classify)
        self.be.journal.add_part(self.key, n, etag, crc, length)
        run.count(uploaded=length)
        self._part_done(n, (etag, crc, length))

    def _part_done(self, n: int, part: tuple[str, int, int]) -> None:
        with self.lock:
            self.parts[n] = part
            self.remaining -= 1
            last = self.remaining == 0 and not self.failed
        if last:
            try:
                self.finish()
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.failed:
                return
            self.failed = True
        if self.osha is not None:
            self.run.hasher.abort(self.osha)
        if isinstance(exc, _RestartFile):
            self.be.journal.drop(self.key)
            if self.rec is not None:
                self.be.abort(self.key, self.rec.upload_id)
            self.be.restart(self.run, self.f, self.fut, self.attempt, exc)
        else:
            if not isinstance(exc, _Cancelled):
                self.run.stop.set()  # fail fast: the other files stop at their next step
            if not self.fut.done():
                self.fut.set_exception(exc)

    # the last part's worker
    def finish(self) -> None:
        run, be, f, rec = self.run, self.be, self.f, self.rec
        assert rec is not None and self.osha is not None
        sha = self.osha.hexdigest()
        _check_unchanged(f)
        crc = 0
        for n in range(1, self.nparts + 1):
            crc = crc64_combine(crc, self.parts[n][1], self.parts[n][2])
        infos = [oss2.models.PartInfo(n, self.parts[n][0]) for n in range(1, self.nparts + 1)]
        run.before_replace(f.rel)
        result = run.retry(f"staging {f.rel}: complete multipart upload",
                           lambda: be.bucket.complete_multipart_upload(self.key, rec.upload_id, infos),
                           be.classify)
        be.journal.drop(self.key)
        be.verify_object(f, crc, result.crc)
        run.done(f, Digest(crc, sha))
        self.fut.set_result(None)


def _read_into(f: LocalFile, offset: int, view: memoryview) -> None:
    """Fill ``view`` from ``f`` at ``offset`` (a descriptor per call, as :func:`_read_range`)."""
    try:
        fd = os.open(f.path, os.O_RDONLY)
        try:
            got = 0
            while got < len(view):
                n = os.preadv(fd, [view[got:]], offset + got)
                if n == 0:
                    break
                got += n
        finally:
            os.close(fd)
    except OSError as exc:
        raise StagingError(f"staging {f.rel}: cannot read {f.path}: {exc.strerror or exc}") from None
    if got != len(view):
        raise StagingError(f"staging {f.rel}: the file changed while it was staged (it is shorter)")


def _read_range(f: LocalFile, offset: int, length: int) -> bytes:
    """``length`` bytes of ``f`` at ``offset``; a descriptor per call, so that none is shared
    between workers or outlives a failed file."""
    try:
        fd = os.open(f.path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StagingError(f"staging {f.rel}: cannot read {f.path}: {exc.strerror or exc}") from None


def _check_unchanged(f: LocalFile) -> None:
    try:
        st = os.stat(f.path)
    except OSError as exc:
        raise StagingError(f"staging {f.rel}: {f.path} vanished while it was staged: {exc.strerror}") from None
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        raise StagingError(f"staging {f.rel}: the file changed while it was staged; stage again")


class _OssBackend:
    name = "oss"

    def __init__(self, target: OssTarget, opts: TransferOptions, checkpoint_dir: Path):
        self.target = target
        self.opts = opts
        key_id, secret = target.access_key_id.get_secret_value(), target.access_key_secret.get_secret_value()
        if not key_id or not secret:
            raise CredentialsError(f"OSS credentials from {target.credentials_source} are empty")
        self._secrets = (key_id, secret)
        endpoint = target.endpoint if "://" in target.endpoint else f"https://{target.endpoint}"
        auth = oss2.AuthV4(key_id, secret) if target.region else oss2.Auth(key_id, secret)
        self._auth, self._endpoint = auth, endpoint
        # oss2's own CRC check is off: it uses crcmod (slow, holds the GIL) and skips the
        # whole-object check after a resume; staging checks every part and object itself
        self._session = oss2.Session(pool_size=max(opts.workers, PROBE_WORKERS) + 2)
        self.bucket = self.other_bucket(target.bucket)
        self.manifest_key = self.key(MANIFEST_NAME)
        self.journal = UploadJournal(checkpoint_dir, target.target_id)

    def other_bucket(self, name: str) -> oss2.Bucket:
        """A bucket at the target's endpoint, with the target's key (an ``oss://`` source's)."""
        try:
            return oss2.Bucket(self._auth, self._endpoint, name, session=self._session,
                               connect_timeout=self.opts.timeout_s, enable_crc=False, region=self.target.region)
        except oss2.exceptions.ClientError as exc:
            raise StagingError(f"OSS bucket {name!r} at {self._endpoint}: {exc.body}") from None

    def classifier(self, bucket: str) -> Callable[[BaseException, str], BaseException]:
        """:meth:`classify` for requests to another bucket (an error names that one)."""
        return lambda exc, what: self.classify(exc, what, bucket=bucket)

    def key(self, rel: str) -> str:
        prefix = self.target.clean_prefix
        return f"{prefix}/{rel}" if prefix else rel

    def close(self) -> None:
        self.journal.close()

    # -- error translation: the one place that reads oss2's exceptions
    def classify(self, exc: BaseException, what: str, *, bucket: str | None = None) -> BaseException:
        """``_Transient`` for what a retry may fix, ``_RestartFile`` for a vanished upload, else
        a ``StagingError``/``CredentialsError`` with one line and no secret."""
        if isinstance(exc, oss_errors.RequestError):
            cause = getattr(exc, "exception", None)
            return _Transient(self._scrub(f"network error: {type(cause).__name__}: {str(cause)[:160]}"))
        if isinstance(exc, oss_errors.OssError):
            code, status = exc.code or "", exc.status
            desc = f"{code or 'error'} (HTTP {status}, request id {exc.request_id or '-'})"
            if status == 403 and (code in _CREDENTIAL_CODES or not code):
                return CredentialsError(f"{what}: OSS rejected the access key from {self.target.credentials_source}: "
                                        f"{desc}")
            if code == "NoSuchBucket":
                return StagingError(f"{what}: bucket {bucket or self.target.bucket!r} does not exist at "
                                    f"{self.target.endpoint}: {desc}")
            if code == "NoSuchUpload":
                return _RestartFile(f"the multipart upload vanished: {desc}")
            if status >= 500 or status in (408, 429) or code in _RETRYABLE_CODES:
                return _Transient(desc)
            return StagingError(self._scrub(f"{what}: {desc}"))
        if isinstance(exc, OSError):
            return StagingError(f"{what}: {exc.strerror or exc}")
        return exc

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- backend protocol
    def read_manifest(self) -> Manifest | None:
        return self.read_manifest_at(self.bucket, self.manifest_key, self.target.bucket,
                                     f"staging to {self.target.uri}: read manifest")

    def read_manifest_at(self, bucket: oss2.Bucket, key: str, bucket_name: str, what: str) -> Manifest | None:
        def get() -> bytes | None:
            try:
                return bucket.get_object(key).read()
            except oss_errors.NotFound as exc:
                if exc.code == "NoSuchBucket":
                    raise
                return None

        blob = _retry_plain(self.opts, get, self.classifier(bucket_name), what)
        if blob is None:
            return None
        try:
            return Manifest.from_bytes(blob)
        except ValueError as exc:
            log.warning("staging: ignoring unreadable manifest %s: %s", key, exc)
            return None

    def probe(self, f: LocalFile, entry: ManifestEntry | None) -> RemoteObject | None:
        head = self.head(f.rel)
        return None if head is None else RemoteObject(head[0], head[1])

    def head(self, rel: str) -> tuple[int, int | None] | None:
        def do() -> tuple[int, int | None] | None:
            try:
                h = self.bucket.head_object(self.key(rel))
            except oss_errors.NotFound as exc:
                if exc.code == "NoSuchBucket":
                    raise
                return None
            return h.content_length, h.server_crc

        return _retry_plain(self.opts, do, self.classify, f"staging {rel}: HEAD")

    def verify_object(self, f: LocalFile, crc: int, reported: int | None) -> None:
        """After an upload: the store's CRC64 (as the upload reported it, then as HEAD does)
        must equal the local one, or the object is deleted and the file restarted."""
        problem = None
        if reported is not None and reported != crc:
            problem = f"the store reported CRC64 {reported} after the upload, expected {crc}"
        else:
            head = self.head(f.rel)
            if head is None:
                problem = "the object is missing after its upload"
            elif head[0] != f.size:
                problem = f"the object has {head[0]} bytes, expected {f.size}"
            elif head[1] != crc:
                problem = f"HEAD reports CRC64 {head[1]}, expected {crc}"
        if problem:
            log.warning("staging %s: %s; deleting it", f.rel, problem)
            with contextlib.suppress(TidegateError):
                self.delete(f.rel)
            raise _RestartFile(f"CRC64 check failed: {problem}")

    def write_manifest(self, manifest: Manifest) -> None:
        blob = manifest.to_bytes()
        crc = crc64(blob)

        def put() -> None:
            result = self.bucket.put_object(self.manifest_key, blob, headers={"Content-Type": "application/json"})
            if result.crc is not None and result.crc != crc:
                raise _Transient(f"CRC64 mismatch: sent {crc}, the store computed {result.crc}")

        _retry_plain(self.opts, put, self.classify, f"staging to {self.target.uri}: write manifest")

    def withdraw_manifest(self) -> None:
        log.info("staging: withdrawing %s before replacing objects it lists", self.manifest_key)
        _retry_plain(self.opts, lambda: self.bucket.delete_object(self.manifest_key), self.classify,
                     f"staging to {self.target.uri}: withdraw the previous manifest")

    def delete(self, rel: str) -> None:
        _retry_plain(self.opts, lambda: self.bucket.delete_object(self.key(rel)), self.classify,
                     f"staging {rel}: delete")

    def list_parts(self, key: str, upload_id: str, rel: str) -> dict[int, tuple[str, int]]:
        def listing() -> dict[int, tuple[str, int]]:
            return {p.part_number: (p.etag, p.size) for p in oss2.PartIterator(self.bucket, key, upload_id)}

        return _retry_plain(self.opts, listing, self.classify, f"staging {rel}: list parts", restart_ok=True)

    def abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            self.bucket.abort_multipart_upload(key, upload_id)

    # -- uploads
    def upload(self, files: Sequence[LocalFile], run: _Run) -> None:
        self._run = run
        _run_files(run, files, self._start_file)

    def _start_file(self, f: LocalFile, fut: cf.Future, attempt: int) -> None:
        if f.size > self.opts.multipart_threshold:
            mp = _Multipart(self, self._run, f, fut, attempt)
            try:
                mp.start()
            except BaseException as exc:  # noqa: BLE001
                mp._fail(exc)
        else:
            try:
                self._put_small(f)
                fut.set_result(None)
            except _RestartFile as exc:
                self.restart(self._run, f, fut, attempt, exc)

    def restart(self, run: _Run, f: LocalFile, fut: cf.Future, attempt: int, why: BaseException) -> None:
        _restart(run, self._start_file, f, fut, attempt, why)

    def _put_small(self, f: LocalFile) -> None:
        run = self._run
        run.check()
        data = _read_range(f, 0, f.size)
        if len(data) != f.size:
            raise StagingError(f"staging {f.rel}: the file changed while it was staged; stage again")
        crc = crc64(data)
        digest = Digest(crc, hashlib.sha256(data).hexdigest())
        run.before_replace(f.rel)
        corrupt = False

        def put() -> int | None:
            nonlocal corrupt
            with run.upload_slots:
                result = self.bucket.put_object(self.key(f.rel), data)
            corrupt = result.crc is not None and result.crc != crc
            if corrupt:
                raise _Transient(f"CRC64 mismatch: sent {crc}, the store computed {result.crc} "
                                 f"(request id {result.request_id})")
            return result.crc

        try:
            reported = run.retry(f"staging {f.rel}: PUT", put, self.classify)
        except BaseException:
            if corrupt:  # never leave an object that failed its CRC64 check
                with contextlib.suppress(Exception):
                    self.delete(f.rel)
            raise
        run.count(uploaded=f.size)
        _check_unchanged(f)
        self.verify_object(f, crc, reported)
        run.done(f, digest)

    _run: _Run  # the run of the current upload()


def _restart(run: _Run, start: Callable[[Any, cf.Future, int], None], f: Any, fut: cf.Future, attempt: int,
             why: BaseException) -> None:
    """Start ``f`` (a file or an object to copy) again, up to ``file_attempts``, after a
    ``_RestartFile``; then fail it."""
    if run.stop.is_set():
        if not fut.done():
            fut.set_exception(_Cancelled())
        return
    if attempt >= run.opts.file_attempts:
        run.stop.set()
        if not fut.done():
            fut.set_exception(StagingError(f"staging {f.rel}: failed after {attempt} attempt(s): {why}"))
        return
    run.count(retries=1)
    log.warning("staging %s: %s; staging it again (attempt %d/%d)", f.rel, why, attempt + 1, run.opts.file_attempts)
    run.submit(_guard, run, start, f, fut, attempt + 1)


def _retry_plain(opts: TransferOptions, fn: Callable[[], Any], classify: Callable[[BaseException, str], BaseException],
                 what: str, *, restart_ok: bool = False) -> Any:
    """Bounded retries for requests outside the worker pool's bookkeeping."""
    for attempt in range(1, opts.part_attempts + 1):
        try:
            return fn()
        except TidegateError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified
            err = exc if isinstance(exc, (_Transient, _RestartFile)) else classify(exc, what)
            if isinstance(err, _RestartFile) and restart_ok:
                raise err from None
            if not isinstance(err, _Transient):
                if isinstance(err, _RestartFile):
                    raise StagingError(f"{what}: {err}") from None
                raise err from None
            if attempt == opts.part_attempts:
                raise StagingError(f"{what} failed after {attempt} attempts: {err}") from None
            delay = opts.backoff(attempt)
            log.warning("%s: %s; retry %d/%d in %.1fs", what, err, attempt, opts.part_attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# -- oss:// sources: server-side copies ----------------------------------------------------------
MAX_SOURCE_OBJECTS = 100_000
_LIST_PAGE = 1000


@dataclass(frozen=True)
class SourceObject:
    """One object of an ``oss://`` source: ``rel`` is its key below the source prefix (the
    target key below the target prefix); ``crc64`` from its HEAD, ``sha256`` from a manifest or
    from reading it; ``mtime_ns`` from its Last-Modified."""

    rel: str
    key: str
    size: int
    etag: str
    mtime_ns: int
    crc64: int | None = None
    sha256: str | None = None


@dataclass
class CopyPlan:
    skip: list[SourceObject] = field(default_factory=list)
    copy: list[SourceObject] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    """Paths the previous manifest lists that the source no longer has."""

    @property
    def copy_bytes(self) -> int:
        return sum(o.size for o in self.copy)


def source_rel_staged(rel: str) -> bool:
    """Whether an object at ``rel`` below a source prefix is part of the model, by the rules
    :func:`scan_source` applies to a directory (no ``.git``/``.cache``/``.tidegate`` directory,
    no manifest or other ``.tidegate-`` file, no directory marker)."""
    if not rel or rel.endswith("/"):
        return False
    *dirs, name = rel.split("/")
    return ".tidegate-" not in name and not any(d in EXCLUDED_DIRS for d in dirs)


def fill_from_manifests(objects: Sequence[SourceObject], *manifests: Manifest | None) -> list[SourceObject]:
    """``objects`` with ``sha256`` taken from the first manifest whose entry has the object's
    size and CRC64 (an entry that does not match says nothing about the object). Pure."""
    by_path = [m.by_path() for m in manifests if m is not None]
    out = []
    for o in objects:
        sha = o.sha256
        if sha is None and o.crc64 is not None:
            for entries in by_path:
                e = entries.get(o.rel)
                if e is not None and (e.size, e.crc64) == (o.size, o.crc64) and e.sha256:
                    sha = e.sha256
                    break
        out.append(replace(o, sha256=sha))
    return out


def plan_copy(objects: Sequence[SourceObject], remote: Mapping[str, RemoteObject | None],
              manifest: Manifest | None) -> CopyPlan:
    """Skip an object only when the target holds one of the same size and CRC64. Pure."""
    plan = CopyPlan()
    for o in objects:
        r = remote.get(o.rel)
        same = r is not None and r.size == o.size and r.crc64 is not None and r.crc64 == o.crc64
        (plan.skip if same else plan.copy).append(o)
    if manifest is not None:
        present = {o.rel for o in objects}
        plan.stale = sorted(e.path for e in manifest.files if e.path not in present)
    return plan


class _OssCopier:
    """Server-side copies from the source bucket into the target backend's bucket: CopyObject up
    to the multipart threshold, UploadPartCopy (parts in the run's pool) above it; each copy
    is conditional on the source ETag seen by the probe, and verified by HEAD afterwards."""

    def __init__(self, be: _OssBackend, src: ModelSource, run: _Run):
        self.be, self.src, self.run = be, src, run

    def what(self, o: SourceObject) -> str:
        return f"staging {o.rel}: copy from oss://{self.src.bucket}/{o.key}"

    def if_match(self, o: SourceObject) -> dict[str, str]:
        return {"x-oss-copy-source-if-match": f'"{o.etag}"'} if o.etag else {}

    def start(self, o: SourceObject, fut: cf.Future, attempt: int) -> None:
        if o.size > self.run.opts.multipart_threshold:
            mp = _CopyMultipart(self, o, fut, attempt)
            try:
                mp.start()
            except BaseException as exc:  # noqa: BLE001 - one place decides what a failure means
                mp.fail(exc)
            return
        try:
            self._copy_small(o)
            fut.set_result(None)
        except _RestartFile as exc:
            _restart(self.run, self.start, o, fut, attempt, exc)

    def _copy_small(self, o: SourceObject) -> None:
        run, be = self.run, self.be
        run.check()

        def copy() -> int | None:
            with run.upload_slots:
                return be.bucket.copy_object(self.src.bucket, o.key, be.key(o.rel), headers=self.if_match(o)).crc

        run.before_replace(o.rel)
        reported = run.retry(self.what(o), copy, be.classify)
        run.count(uploaded=o.size)
        self.verified(o, reported)

    def verified(self, o: SourceObject, reported: int | None) -> None:
        assert o.crc64 is not None and o.sha256 is not None
        self.be.verify_object(o, o.crc64, reported)
        self.run.record(o.rel, Digest(o.crc64, o.sha256))


class _CopyMultipart:
    """One object's multipart copy: initiate, every part a task of the run's pool, the last
    part's worker completes and verifies. A failure aborts the upload (never resumed: a
    server-side copy costs no upload)."""

    def __init__(self, cp: _OssCopier, o: SourceObject, fut: cf.Future, attempt: int):
        self.cp, self.o, self.fut, self.attempt = cp, o, fut, attempt
        self.key = cp.be.key(o.rel)
        self.lock = threading.Lock()
        self.etags: dict[int, str] = {}
        self.failed = False
        self.upload_id: str | None = None

    def start(self) -> None:
        run, be = self.cp.run, self.cp.be
        run.check()
        self.part_size = run.opts.part_size_for(self.o.size)
        self.nparts = max(1, -(-self.o.size // self.part_size))
        self.remaining = self.nparts
        self.upload_id = run.retry(f"{self.cp.what(self.o)}: initiate multipart copy",
                                   lambda: be.bucket.init_multipart_upload(self.key).upload_id, be.classify)
        for n in range(1, self.nparts + 1):
            run.submit(self.part, n)

    def part(self, n: int) -> None:
        run, be, o = self.cp.run, self.cp.be, self.o
        try:
            run.check()
            if self.failed:
                raise _Cancelled()
            first = (n - 1) * self.part_size
            last = min(first + self.part_size, o.size) - 1

            def copy() -> str:
                with run.upload_slots:
                    return be.bucket.upload_part_copy(self.cp.src.bucket, o.key, (first, last), self.key,
                                                      self.upload_id, n, headers=self.cp.if_match(o)).etag

            etag = run.retry(f"{self.cp.what(o)}: part {n}/{self.nparts}", copy, be.classify)
            run.count(uploaded=last - first + 1)
            with self.lock:
                self.etags[n] = etag
                self.remaining -= 1
                finish = self.remaining == 0 and not self.failed
            if finish:
                self.finish()
        except BaseException as exc:  # noqa: BLE001 - one place decides what a failure means
            self.fail(exc)

    def finish(self) -> None:
        run, be = self.cp.run, self.cp.be
        infos = [oss2.models.PartInfo(n, self.etags[n]) for n in range(1, self.nparts + 1)]
        run.before_replace(self.o.rel)
        result = run.retry(f"{self.cp.what(self.o)}: complete multipart copy",
                           lambda: be.bucket.complete_multipart_upload(self.key, self.upload_id, infos), be.classify)
        self.upload_id = None
        self.cp.verified(self.o, result.crc)
        self.fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.failed:
                return
            self.failed = True
        if self.upload_id is not None:
            self.cp.be.abort(self.key, self.upload_id)
        if isinstance(exc, _RestartFile):
            _restart(self.cp.run, self.cp.start, self.o, self.fut, self.attempt, exc)
            return
        if not isinstance(exc, _Cancelled):
            self.cp.run.stop.set()
        if not self.fut.done():
            self.fut.set_exception(exc)


def _list_source(be: _OssBackend, bucket: oss2.Bucket, src: ModelSource) -> list[SourceObject]:
    """The objects under the source prefix that are part of the model, sorted by key."""
    prefix = f"{src.prefix}/" if src.prefix else ""
    classify = be.classifier(src.bucket)
    found: list[SourceObject] = []
    token = ""
    for _ in range(MAX_SOURCE_OBJECTS // _LIST_PAGE + 1):
        page = _retry_plain(be.opts, functools.partial(bucket.list_objects_v2, prefix=prefix, continuation_token=token,
                                                       max_keys=_LIST_PAGE),
                            classify, f"model source {src.uri}: list objects")
        for info in page.object_list:
            rel = info.key[len(prefix):]
            if source_rel_staged(rel):
                found.append(SourceObject(rel, info.key, int(info.size), str(info.etag or ""),
                                          int(info.last_modified or 0) * 1_000_000_000))
        if not page.is_truncated or not page.next_continuation_token:
            return sorted(found, key=lambda o: o.rel)
        token = page.next_continuation_token
    raise StagingError(f"model source {src.uri}: more than {MAX_SOURCE_OBJECTS} objects; is the prefix right?")


def _head_source(be: _OssBackend, bucket: oss2.Bucket, src: ModelSource, o: SourceObject) -> SourceObject:
    def do() -> SourceObject:
        try:
            h = bucket.head_object(o.key)
        except oss_errors.NotFound as exc:
            if exc.code == "NoSuchBucket":
                raise
            raise StagingError(f"model source {src.uri}: {o.key} vanished while it was staged") from None
        return replace(o, size=int(h.content_length), etag=str(h.etag or o.etag), crc64=h.server_crc)

    return _retry_plain(be.opts, do, be.classifier(src.bucket), f"model source {src.uri}: HEAD {o.key}")


def _hash_source(be: _OssBackend, bucket: oss2.Bucket, src: ModelSource, o: SourceObject, run: _Run) -> SourceObject:
    """Read a source object once for its CRC64 and SHA-256 (no manifest knew them)."""
    def do() -> Digest:
        crc, sha, size = 0, hashlib.sha256(), 0
        body = bucket.get_object(o.key)
        while size <= o.size and (chunk := body.read(_READ_CHUNK)):
            crc = crc64(chunk, crc)
            sha.update(chunk)
            size += len(chunk)
        if size != o.size:
            raise StagingError(f"model source {src.uri}: {o.key} has {size} bytes, its HEAD said {o.size} "
                               f"(it changed while it was staged)")
        return Digest(crc, sha.hexdigest())

    run.check()
    digest = _retry_plain(be.opts, do, be.classifier(src.bucket), f"model source {src.uri}: read {o.key}")
    run.count(hashed=o.size)
    if o.crc64 is not None and o.crc64 != digest.crc64:
        raise StagingError(f"model source {src.uri}: {o.key} read back with CRC64 {digest.crc64}, its HEAD "
                           f"says {o.crc64} (it changed while it was staged)")
    return replace(o, crc64=digest.crc64, sha256=digest.sha256)


def _stage_from_oss(src: ModelSource, target: OssTarget, opts: TransferOptions, ckpt: Path, *, run_id: str | None,
                    model: str | None, progress: bool | None, t0: float) -> StagedModel:
    """Copy ``src`` (``oss://``) server-side into ``target``: list -> HEAD both sides -> SHA-256s
    from manifests (else read) -> plan -> copy and verify -> commit, as :func:`stage_model`."""
    tgt_prefix = target.clean_prefix
    if src.bucket == target.bucket and (not src.prefix or not tgt_prefix or src.prefix == tgt_prefix
                                        or f"{tgt_prefix}/".startswith(f"{src.prefix}/")
                                        or f"{src.prefix}/".startswith(f"{tgt_prefix}/")):
        raise StagingError(f"model source {src.uri}: overlaps the staging destination {target.uri}")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_target_lock(ckpt, target.target_id))
        be = _OssBackend(target, opts, ckpt)
        stack.callback(be.close)
        bucket = be.other_bucket(src.bucket)
        listed = _list_source(be, bucket, src)
        if not listed:
            raise StagingError(f"model source {src.uri}: no objects to stage under this prefix")
        pool = stack.enter_context(cf.ThreadPoolExecutor(max_workers=opts.workers + READ_AHEAD,
                                                         thread_name_prefix="tidegate-staging"))
        old = be.read_manifest()
        src_manifest = be.read_manifest_at(bucket, f"{src.prefix}/{MANIFEST_NAME}" if src.prefix else MANIFEST_NAME,
                                           src.bucket, f"model source {src.uri}: read manifest")
        with cf.ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, 2 * len(listed)),
                                   thread_name_prefix="tidegate-staging-probe") as probes:
            heads = probes.map(_carry_context(lambda o: _head_source(be, bucket, src, o)), listed)
            remotes = probes.map(_carry_context(lambda o: be.probe(o, None)), listed)
            objects = fill_from_manifests(list(heads), old, src_manifest)
            remote = dict(zip((o.rel for o in listed), remotes, strict=True))
        run = _Run(opts, HashCache(None), pool, None, old, be.withdraw_manifest)
        unknown = [o for o in objects if o.crc64 is None or o.sha256 is None]
        if unknown:
            log.info("staging: reading %d object(s) of %s (%s) for their SHA-256: no manifest lists them", len(unknown),
                     src.uri, _mb(sum(o.size for o in unknown)))
            hashed = dict(zip((o.rel for o in unknown),
                              pool.map(_carry_context(lambda o: _hash_source(be, bucket, src, o, run)), unknown),
                              strict=True))
            objects = [hashed.get(o.rel, o) for o in objects]
        plan = plan_copy(objects, remote, old)
        for o in plan.skip:
            run.record(o.rel, Digest(o.crc64, o.sha256))  # type: ignore[arg-type]
        run.progress = _Progress(plan.copy_bytes, target.uri, progress)
        stack.callback(run.progress.stop)
        if plan.copy:
            log.info("staging: copying %d object(s), %s server-side from %s to %s (%d unchanged)", len(plan.copy),
                     _mb(plan.copy_bytes), src.uri, target.uri, len(plan.skip))
            try:
                _run_files(run, plan.copy, _OssCopier(be, src, run).start)
            except _Cancelled:
                raise StagingError(f"staging to {target.uri}: cancelled") from None
            except BaseException:
                run.stop.set()
                raise
        run.progress.close(run.uploaded_bytes)
        entries = [ManifestEntry(o.rel, o.size, o.mtime_ns, run.digests[o.rel].crc64, run.digests[o.rel].sha256)
                   for o in objects]
        pruned = _commit(be, run, entries, old, plan.stale, run_id=run_id, model=model)
    seconds = time.perf_counter() - t0
    return StagedModel(
        bytes=sum(o.size for o in objects), files=len(objects), uploaded_bytes=run.uploaded_bytes,
        skipped_files=len(plan.skip), seconds=round(seconds, 3),
        MBps=round(run.uploaded_bytes / seconds / 1e6, 1) if run.uploaded_bytes else 0.0,
        uri=target.uri, manifest_key=be.manifest_key, verified=True, uploaded_files=len(plan.copy),
        hashed_bytes=run.hashed_bytes, retries=run.retries, pruned_files=pruned, backend=be.name,
        source_kind="oss")


# -- NAS: is the destination the NAS? --------------------------------------------------------------
MOUNTS_FILE = Path("/proc/self/mounts")
NFS_FSTYPES = frozenset({"nfs", "nfs4"})
_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mounts``."""

    source: str
    mount_point: str
    fstype: str

    @property
    def export(self) -> tuple[str, str] | None:
        """(server, path) of an NFS source ``server:/path`` (``[v6addr]:/path`` too), else None."""
        if self.fstype not in NFS_FSTYPES:
            return None
        if self.source.startswith("["):
            host, sep, path = self.source[1:].partition("]:")
        else:
            host, sep, path = self.source.partition(":")
        return (host, path or "/") if sep and host else None


def parse_mounts(text: str) -> list[Mount]:
    """The mounts of a ``/proc/self/mounts`` text, in order (later lines are mounted on top);
    octal escapes (``\\040`` for a space) decoded, malformed lines skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            source, point, fstype = (_MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), f) for f in fields[:3])
            mounts.append(Mount(source, point, fstype))
    return mounts


def containing_mount(directory: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount ``directory`` (absolute, normalized) lies on: the longest mount point that
    contains it, the last one mounted when several share it."""
    best: Mount | None = None
    for m in mounts:
        point = m.mount_point.rstrip("/") or "/"
        inside = point == "/" or directory == point or directory.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    return best


def check_nas_mount(directory: str | Path, server: str, path: str, mounts: Sequence[Mount]) -> str:
    """Check that ``directory`` is the NAS directory ``server:path``: it lies on an nfs/nfs4
    mount of ``server:<export>`` at ``<mount point>`` with ``<export>/<directory relative to the
    mount point>`` equal to ``path`` (so a directory mounted straight from ``server:path``
    passes, and so does ``/mnt/nas/models`` on a mount of ``server:/`` at ``/mnt/nas`` when
    ``path`` is ``/models``). Returns a description of the mount; raises ``StagingError`` (exit 2)
    naming the directory, what it is mounted from, and the expected ``server:path``. Pure.

    Example::

        check_nas_mount("/mnt/models/Qwen", "nas.example.com", "/models",
                        parse_mounts("nas.example.com:/models /mnt/models/Qwen nfs4 rw 0 0"))
        # 'nfs4 mount of nas.example.com:/models at /mnt/models/Qwen'
    """
    target = posixpath.normpath(str(directory))
    want_path = posixpath.normpath("/" + path.strip("/"))
    expected = f"{server}:{want_path}"
    m = containing_mount(target, mounts)
    hint = ("stage where the NAS is mounted at storage.mount_path (e.g. in a pod with the NAS volume), or set "
            "storage.nas.local: true when a local directory is meant (a test bed)")
    if m is None:
        raise StagingError(f"NAS destination {target}: not a mount (no mount table entry contains it); expected an "
                           f"nfs/nfs4 mount of {expected}", hint=hint)
    on = f"{m.fstype} mount of {m.source} at {m.mount_point}"
    export = m.export
    if export is None:
        what = (f"is a {on}" if m.mount_point.rstrip("/") == target.rstrip("/") and target != "/"
                else f"is not a mount: it lies on the {on}")
        raise StagingError(f"NAS destination {target}: {what}, not on NFS; expected an nfs/nfs4 mount of {expected}, "
                           f"else the weights land on this machine's disk, which the cluster never sees", hint=hint)
    host, export_path = export
    rel = posixpath.relpath(target, m.mount_point) if target != m.mount_point else "."
    actual = posixpath.normpath(posixpath.join("/" + export_path.strip("/"), rel))
    if host.lower() != server.lower() or actual != want_path:
        raise StagingError(f"NAS destination {target}: on the {on}, i.e. {host}:{actual}; expected {expected}",
                           hint=hint)
    return f"{on}" + (f" (directory {host}:{actual})" if rel != "." else "")


def nas_destination_check(target: NasTarget, mounts_file: Path | None = None) -> str:
    """:func:`check_nas_mount` for a NAS target against this machine's mount table (default
    ``MOUNTS_FILE``), or the note that it was skipped because the target is local on purpose.
    Reads nothing else, writes nothing."""
    mounts_file = mounts_file or MOUNTS_FILE
    root = os.path.realpath(os.path.abspath(Path(target.root).expanduser()))
    if target.local:
        return "NAS mount check skipped: storage.nas.local is true (a local directory on purpose)"
    if not target.server:
        raise StagingError(f"NAS destination {root}: no NAS server:path to check it against",
                           hint="give storage.nas.server and storage.nas.path, or set storage.nas.local: true")
    try:
        text = mounts_file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise StagingError(f"NAS destination {root}: cannot read {mounts_file} to check that it is "
                           f"{target.server}:{target.export_path}: {exc.strerror or exc}",
                           hint="set storage.nas.local: true when a local directory is meant") from None
    return "NAS " + check_nas_mount(root, target.server, target.export_path, parse_mounts(text))


# -- NAS: the copy -------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _NasBackend:
    """A mounted file system: each file is copied to a process-unique temporary name beside
    its destination, fsynced, read back and checked against the CRC64 computed while copying,
    then renamed into place (and its directory fsynced). A destination file counts as staged
    when its size and mtime (copied from the source) match the manifest entry."""

    name = "nas"

    def __init__(self, target: NasTarget, opts: TransferOptions):
        self.root = Path(target.root)
        self.opts = opts
        self.uri = target.uri
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StagingError(f"NAS destination {self.root}: cannot create: {exc.strerror or exc}") from None
        self.manifest_key = str(self.root / MANIFEST_NAME)

    def close(self) -> None:
        pass

    def _error(self, rel: str, exc: OSError, action: str) -> StagingError:
        if exc.errno == errno.ENOSPC:
            return StagingError(f"staging {rel}: NAS destination {self.root} is full (ENOSPC) while {action}")
        return StagingError(f"staging {rel}: {action} failed: {exc.strerror or exc}")

    def read_manifest(self) -> Manifest | None:
        try:
            blob = Path(self.manifest_key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StagingError(f"staging to {self.uri}: cannot read the manifest: {exc.strerror or exc}") from None
        try:
            return Manifest.from_bytes(blob)
        except ValueError as exc:
            log.warning("staging: ignoring unreadable manifest %s: %s", self.manifest_key, exc)
            return None

    def probe(self, f: LocalFile, entry: ManifestEntry | None) -> RemoteObject | None:
        try:
            st = (self.root / f.rel).stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        known = entry is not None and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
        return RemoteObject(st.st_size, entry.crc64 if known and entry else None)

    def _atomic_write(self, dest: Path, blob: bytes, rel: str) -> None:
        tmp = dest.with_name(f".{dest.name}.tidegate-{uuid.uuid4().hex[:8]}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._error(rel, exc, "writing") from None

    def write_manifest(self, manifest: Manifest) -> None:
        self._atomic_write(Path(self.manifest_key), manifest.to_bytes(), MANIFEST_NAME)

    def withdraw_manifest(self) -> None:
        try:
            Path(self.manifest_key).unlink(missing_ok=True)
            _fsync_dir(self.root)
        except OSError as exc:
            raise self._error(MANIFEST_NAME, exc, "withdrawing the previous manifest") from None

    def delete(self, rel: str) -> None:
        try:
            (self.root / rel).unlink(missing_ok=True)
        except OSError as exc:
            raise self._error(rel, exc, "deleting") from None

    def upload(self, files: Sequence[LocalFile], run: _Run) -> None:
        self._run = run
        _run_files(run, files, self._copy_task)

    def _copy_task(self, f: LocalFile, fut: cf.Future, attempt: int) -> None:
        with self._run.upload_slots:
            self._copy(f)
        fut.set_result(None)

    def _copy(self, f: LocalFile) -> None:
        run = self._run
        run.check()
        dest = self.root / f.rel
        tmp = dest.with_name(f".{dest.name}.tidegate-{uuid.uuid4().hex[:8]}.tmp")
        crc, sha, size = 0, hashlib.sha256(), 0
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(f.path, "rb", buffering=0) as src, open(tmp, "xb", buffering=0) as out:
                buf = bytearray(_READ_CHUNK)
                view = memoryview(buf)
                while n := src.readinto(buf):
                    run.check()
                    chunk = view[:n]
                    crc = crc64(chunk, crc)
                    sha.update(chunk)
                    written = 0
                    while written < n:
                        written += out.write(chunk[written:])
                    size += n
                    run.count(uploaded=n)
                out.flush()
                os.fsync(out.fileno())
            if size != f.size:
                raise StagingError(f"staging {f.rel}: the file changed while it was staged; stage again")
            back = hash_file(tmp).crc64
            if back != crc:
                raise StagingError(f"staging {f.rel}: CRC64 of the written copy is {back}, expected {crc}")
            _check_unchanged(f)
            os.utime(tmp, ns=(time.time_ns(), f.mtime_ns))
            run.before_replace(f.rel)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except OSError as exc:
            raise self._error(f.rel, exc, "copying") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        run.done(f, Digest(crc, sha.hexdigest()))

    _run: _Run  # the run of the current upload()


# -- http(s) sources: one file, downloaded with resume -------------------------------------------
DOWNLOAD_CHUNK = MiB
MAX_DOWNLOAD_ATTEMPTS = 100
"""Requests per download, even when every one makes progress (each that does not counts against
``TransferOptions.part_attempts``)."""
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Downloaded:
    """A downloaded http(s) source: ``root`` is a directory holding only ``file``."""

    root: Path
    file: LocalFile
    digest: Digest
    downloaded_bytes: int
    resumed_bytes: int


class _DownloadState:
    """``<dir>/download.json``: the validators of the response the partial file came from (so
    that a resume asks ``If-Range`` for the same version), and once complete the file's stat and
    digest (so that a current download is neither fetched nor hashed again)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            self.doc: dict[str, Any] = doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            self.doc = {}

    @property
    def validator(self) -> str | None:
        """A strong ETag, else Last-Modified: what ``If-Range`` may carry."""
        etag = self.doc.get("etag")
        if isinstance(etag, str) and etag and not etag.startswith("W/"):
            return etag
        modified = self.doc.get("last_modified")
        return modified if isinstance(modified, str) and modified else None

    def save(self, **values: Any) -> None:
        self.doc.update(values)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.doc), encoding="utf-8")
        os.replace(tmp, self.path)

    def reset(self) -> None:
        self.doc = {}
        self.path.unlink(missing_ok=True)

    def complete_file(self, dest: Path) -> tuple[LocalFile, Digest] | None:
        """The completed download, when ``dest`` is unchanged since it was hashed."""
        done = self.doc.get("complete")
        try:
            st = dest.stat()
            if not isinstance(done, dict) or [done.get(k) for k in ("size", "mtime_ns", "ino")] != \
                    [st.st_size, st.st_mtime_ns, st.st_ino]:
                return None
            return LocalFile.from_stat(dest.name, dest, st), Digest(int(done["crc64"]), str(done["sha256"]))
        except (OSError, KeyError, TypeError, ValueError):
            return None


def download_source(src: ModelSource, checkpoint_dir: Path, opts: TransferOptions, *, sha256: str | None = None,
                    progress: bool | None = None) -> Downloaded:
    """Download the http(s) source ``src`` into ``<checkpoint_dir>/downloads/<hash of the URL
    without its query>/files/<file name>``.

    - A partial download is resumed with ``Range`` (and ``If-Range``, so that a changed file
      starts over) after a dropped connection, in this run (bounded retries with backoff) or
      the next one; a server that sends no ETag or Last-Modified is never resumed.
    - A completed download is reused when ``sha256`` pins it, else when the server answers
      ``304 Not Modified`` to a conditional GET.
    - ``sha256``: a file that does not match is deleted and ``StagingError`` names the URL, the
      expected and the actual digest; nothing is staged.
    """
    if src.kind != "http":
        raise StagingError(f"model source {src.shown}: not an http(s) source")
    shown = src.shown
    key = hashlib.sha256(urllib.parse.urlsplit(src.url)._replace(query="", fragment="").geturl().encode())
    base = checkpoint_dir / "downloads" / key.hexdigest()[:32]
    files_dir = base / "files"
    dest, partial = files_dir / src.file_name, base / "partial"
    try:
        files_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StagingError(f"model source {shown}: cannot create {files_dir}: {exc.strerror or exc}") from None
    with _target_lock(checkpoint_dir, f"download {base.name}"):
        for other in files_dir.iterdir():  # a file staged under another name by an earlier version
            if other.name != src.file_name:
                other.unlink(missing_ok=True)
        state = _DownloadState(base / "download.json")
        cached = state.complete_file(dest)
        if cached is not None and sha256 is not None and cached[1].sha256 == sha256:
            log.info("staging: %s is already downloaded (SHA-256 as given)", shown)
            return Downloaded(files_dir, cached[0], cached[1], 0, 0)
        with httpx.Client(timeout=httpx.Timeout(opts.timeout_s), follow_redirects=True) as client:
            fetched, resumed = _fetch(client, src, partial, state, opts, progress,
                                      conditional=cached is not None)
        if fetched is None:
            assert cached is not None
            log.info("staging: %s is not modified since it was downloaded", shown)
            file, digest = cached
        else:
            digest = hash_file(partial)
            if sha256 is not None and digest.sha256 != sha256:
                partial.unlink(missing_ok=True)
                state.reset()
                raise StagingError(f"model source {shown}: SHA-256 mismatch: expected {sha256}, got {digest.sha256}; "
                                   f"the download was discarded and nothing was staged")
            os.replace(partial, dest)
            st = dest.stat()
            file = LocalFile.from_stat(dest.name, dest, st)
            state.save(complete={"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
                                 "crc64": str(digest.crc64), "sha256": digest.sha256})
        if sha256 is not None and digest.sha256 != sha256:
            raise StagingError(f"model source {shown}: SHA-256 mismatch: expected {sha256}, got {digest.sha256} "
                               f"(the server reports the file unchanged since it was downloaded); nothing was staged")
        return Downloaded(files_dir, file, digest, fetched or 0, resumed)


def _fetch(client: httpx.Client, src: ModelSource, partial: Path, state: _DownloadState, opts: TransferOptions,
           progress: bool | None, *, conditional: bool) -> tuple[int | None, int]:
    """GET ``src`` into ``partial``, resuming what it holds; (bytes received in this run, bytes
    of the file an earlier run had received), or (None, 0) when ``conditional`` and the server
    says the completed download is current."""
    bars: list[_Progress] = []
    try:
        return _fetch_attempts(client, src, partial, state, opts, progress, bars, conditional=conditional)
    finally:
        for b in bars:  # the console's bar comes down however the download ended
            b.stop()


def _fetch_attempts(client: httpx.Client, src: ModelSource, partial: Path, state: _DownloadState,
                    opts: TransferOptions, progress: bool | None, bars: list[_Progress], *,
                    conditional: bool) -> tuple[int | None, int]:
    shown = src.shown
    received = 0
    fresh = 0  # bytes of the partial file received in this run
    stalled = 0
    bar: _Progress | None = None
    for _ in range(MAX_DOWNLOAD_ATTEMPTS):
        offset = partial.stat().st_size if partial.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if conditional:
            if state.doc.get("etag"):
                headers["If-None-Match"] = state.doc["etag"]
            elif state.doc.get("last_modified"):
                headers["If-Modified-Since"] = state.doc["last_modified"]
            offset = 0
        elif offset and state.validator:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = state.validator
        elif offset:
            log.info("staging: %s: the server sent no ETag or Last-Modified; downloading it again", shown)
            offset = 0
        before = offset
        try:
            with client.stream("GET", src.url, headers=headers) as resp:
                status = resp.status_code
                if status == 304 and conditional:
                    return None, 0
                conditional = False
                if status == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
                    if not m or int(m.group(1)) != offset:
                        partial.unlink(missing_ok=True)
                        raise _Transient(f"the server answered Range: bytes={offset}- with "
                                         f"Content-Range {resp.headers.get('content-range')!r}")
                    total = int(m.group(3)) if m.group(3) != "*" else None
                    log.info("staging: %s: resuming the download at byte %d", shown, offset)
                elif status == 200:
                    offset = 0
                    length = resp.headers.get("content-length")
                    total = int(length) if length and length.isdigit() else None
                    state.reset()
                    state.save(etag=resp.headers.get("etag"), last_modified=resp.headers.get("last-modified"),
                               size=total)
                elif status == 416:
                    partial.unlink(missing_ok=True)
                    raise _Transient("HTTP 416 (the partial download is longer than the file); starting over")
                elif status in (408, 429) or status >= 500:
                    raise _Transient(f"HTTP {status} {resp.reason_phrase}")
                else:
                    raise StagingError(f"model source {shown}: HTTP {status} {resp.reason_phrase}")
                if bar is None and total:
                    bar = _Progress(total, shown, progress, verb="downloading")
                    bars.append(bar)
                if not offset:
                    fresh = 0
                with open(partial, "ab" if offset else "wb") as out:
                    for chunk in resp.iter_raw(DOWNLOAD_CHUNK):
                        out.write(chunk)
                        offset += len(chunk)
                        received += len(chunk)
                        fresh += len(chunk)
                        if bar is not None:
                            bar.tick(offset)
                    out.flush()
                    os.fsync(out.fileno())
                if total is not None and offset != total:
                    raise _Transient(f"the response ended at byte {offset} of {total}")
                if bar is not None:
                    bar.close(offset)
                return received, offset - fresh
        except (httpx.TransportError, _Transient) as exc:
            if isinstance(exc, httpx.UnsupportedProtocol):
                raise StagingError(f"model source {shown}: {exc}") from None
            cause = f"{type(exc).__name__}: {exc}" if isinstance(exc, httpx.TransportError) else str(exc)
            stalled = 0 if offset > before else stalled + 1
            if stalled >= opts.part_attempts:
                raise StagingError(f"model source {shown}: download failed after {stalled} attempt(s) without "
                                   f"progress: {cause[:200]}") from None
            delay = opts.backoff(stalled or 1)
            log.warning("staging: %s: %s at byte %d; retrying in %.1fs", shown, cause[:200], offset, delay)
            time.sleep(delay)
        except OSError as exc:
            raise StagingError(f"model source {shown}: cannot write {partial}: {exc.strerror or exc}") from None
    raise StagingError(f"model source {shown}: download incomplete after {MAX_DOWNLOAD_ATTEMPTS} requests")


# -- progress -------------------------------------------------------------------------------------
class _Progress:
    """Bytes done / total, rate and ETA (``tasks.console.TransferConsole``): a live bar on a
    terminal, a line on stderr every ``console.LINE_INTERVAL_S`` otherwise; and a Prefect progress
    artifact while a Prefect flow or task run is active (``enabled=None``: whichever applies;
    ``True``: the bar; ``False``: none of them). Updated from the waiting thread only (Prefect's
    run context lives there), the artifact at most every ``interval_s``; nothing is shown when
    there is nothing to transfer. ``stop()`` (idempotent) takes the bar down on any exit."""

    def __init__(self, total: int, label: str, enabled: bool | None, interval_s: float = 1.0,
                 verb: str = "staging"):
        self.total = total
        self.label = label
        self.t0 = time.monotonic()
        self.interval_s = interval_s
        self._last = 0.0
        bar = total > 0 and (bool(enabled) if enabled is not None else console.interactive())
        self.console = console.TransferConsole(f"{verb} {label}", total, bar=bar,
                                               lines=total > 0 and enabled is None, began=self.t0)
        # never import Prefect for this: only when the caller (the flow) already did, and only in a run
        self._prefect = total > 0 and enabled is not False and _in_prefect_run()
        self._artifact: Any = None

    def tick(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.total <= 0:
            return
        with contextlib.suppress(Exception):  # a console must never cost the transfer
            self.console.update(done, now, final=final)
        if not self._prefect or (not final and now - self._last < self.interval_s):
            return
        self._last = now
        pct = min(100.0, 100.0 * done / self.total)
        try:
            from prefect.artifacts import (
                create_progress_artifact,
                update_progress_artifact,
            )

            if self._artifact is None:
                self._artifact = create_progress_artifact(progress=pct, key="tidegate-staging",
                                                          description=f"Staging to {self.label}")
            else:
                update_progress_artifact(self._artifact, progress=pct)
        except Exception:  # noqa: BLE001 - best effort
            self._prefect = False

    def close(self, done: int) -> None:
        self.tick(done, final=True)
        self.stop()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.console.stop()


def _in_prefect_run() -> bool:
    """A Prefect flow or task run is active in this thread (artifacts outside one are deprecated)."""
    if "prefect" not in sys.modules:
        return False
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None
    except Exception:  # noqa: BLE001
        return False


# -- the entry points ---------------------------------------------------------------------------
def stage_model(source: str | Path, target: OssTarget | NasTarget, *, options: TransferOptions | None = None,
                checkpoint_dir: str | Path | None = None, run_id: str | None = None, model: str | None = None,
                progress: bool | None = None, sha256: str | None = None) -> StagedModel:
    """Stage ``source`` (a directory, ``oss://bucket/prefix`` or an ``http(s)://`` file; see
    :func:`check_source`) to ``target``; see the module docstring for the steps.

    ``checkpoint_dir`` holds the hash cache, the multipart journals, http(s) downloads and the
    per-destination lock (default ``~/.cache/tidegate/staging``). ``progress``: None = a bar
    when stderr is a terminal, False = none. ``sha256``: the expected digest of an http(s)
    source. A NAS target is checked (:func:`nas_destination_check`) before anything is
    fetched or written. Raises ``StagingError``/``CredentialsError`` (one line).

    Example::

        staged = stage_model("models/qwen", OssTarget("http://127.0.0.1:18333", "tidegate-models",
                             "models/qwen", SecretStr(key_id), SecretStr(secret)))
        staged.summary()   # 'staged 12 files (1.07 GB) to oss://tidegate-models/models/qwen/: ...'
    """
    t0 = time.perf_counter()
    opts = options or TransferOptions()
    src = check_source(source, storage_kind="oss" if isinstance(target, OssTarget) else "nas")
    if sha256 is not None:
        sha256 = sha256.lower()
        if src.kind != "http":
            raise StagingError(f"model source {src.shown}: sha256 applies to an http(s):// source (one file) only")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise StagingError(f"model source {src.shown}: sha256 must be 64 hexadecimal digits")
    checked = nas_destination_check(target) if isinstance(target, NasTarget) else ""
    ckpt = Path(checkpoint_dir).expanduser() if checkpoint_dir else DEFAULT_CHECKPOINT_DIR
    try:
        ckpt.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StagingError(f"staging checkpoint directory {ckpt}: cannot create: {exc.strerror or exc}") from None
    if src.kind == "oss":
        assert isinstance(target, OssTarget)
        return _stage_from_oss(src, target, opts, ckpt, run_id=run_id, model=model, progress=progress, t0=t0)
    downloaded: Downloaded | None = None
    if src.kind == "http":
        downloaded = download_source(src, ckpt, opts, sha256=sha256, progress=progress)
        root = downloaded.root
    else:
        assert src.path is not None
        root = src.path
    files = scan_source(root)
    if not files:
        raise StagingError(f"model source {root}: no files to stage (empty directory)")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_target_lock(ckpt, target.target_id))
        cache = stack.enter_context(HashCache(ckpt))
        if downloaded is not None and downloaded.file in files:  # hashed once, right after the download
            cache.put(downloaded.file, downloaded.digest)
        backend: Any = (_OssBackend(target, opts, ckpt) if isinstance(target, OssTarget)
                        else _NasBackend(target, opts))
        stack.callback(backend.close)
        hasher = _Hasher(slots=opts.workers + 1)
        stack.callback(hasher.close)  # after the pool below has drained (exit runs in reverse)
        # one thread more than upload slots: it reads (and CRCs) the next part while `workers`
        # uploads are in flight, so that a freed slot starts sending at once
        pool = stack.enter_context(cf.ThreadPoolExecutor(max_workers=opts.workers + READ_AHEAD,
                                                         thread_name_prefix="tidegate-staging"))
        old = backend.read_manifest()
        entries = old.by_path() if old else {}
        cached = {f.rel: d for f in files if (d := cache.get(f)) is not None}
        with cf.ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, len(files)),
                                   thread_name_prefix="tidegate-staging-probe") as probes:
            remote = dict(zip((f.rel for f in files),
                              probes.map(_carry_context(lambda f: backend.probe(f, entries.get(f.rel))), files),
                              strict=True))
        plan = plan_transfer(files, cached, remote, old)
        run = _Run(opts, cache, pool, hasher, old, backend.withdraw_manifest)
        skipped = list(plan.skip)
        if plan.hash_first:
            digests = pool.map(_carry_context(lambda f: hash_file(f.path, expect_size=f.size)), plan.hash_first)
            for f, digest in zip(plan.hash_first, digests, strict=True):
                cache.put(f, digest)
                run.count(hashed=f.size)
                if digest.crc64 == remote[f.rel].crc64:  # type: ignore[union-attr]
                    skipped.append((f, digest))
                else:
                    plan.upload.append(f)
        for f, digest in skipped:
            run.digests[f.rel] = digest
        run.progress = _Progress(plan.upload_bytes, target.uri, progress)
        stack.callback(run.progress.stop)
        if plan.upload:
            log.info("staging %d file(s), %s to %s (%d unchanged)", len(plan.upload), _mb(plan.upload_bytes),
                     target.uri, len(skipped))
            try:
                backend.upload(sorted(plan.upload, key=lambda f: f.rel), run)
            except _Cancelled:
                raise StagingError(f"staging to {target.uri}: cancelled") from None
            except BaseException:
                run.stop.set()  # e.g. KeyboardInterrupt: queued parts must not go on uploading
                raise
        run.progress.close(run.uploaded_bytes + run.resumed_bytes)
        entries = [ManifestEntry(f.rel, f.size, f.mtime_ns, run.digests[f.rel].crc64, run.digests[f.rel].sha256)
                   for f in files]
        pruned = _commit(backend, run, entries, old, plan.stale, run_id=run_id, model=model)
    seconds = time.perf_counter() - t0
    uploaded_files = len(files) - len(skipped)
    return StagedModel(
        bytes=sum(f.size for f in files), files=len(files), uploaded_bytes=run.uploaded_bytes,
        skipped_files=len(skipped), seconds=round(seconds, 3),
        MBps=round(run.uploaded_bytes / seconds / 1e6, 1) if run.uploaded_bytes else 0.0,
        uri=target.uri, manifest_key=backend.manifest_key, verified=True, uploaded_files=uploaded_files,
        resumed_bytes=run.resumed_bytes, hashed_bytes=run.hashed_bytes, retries=run.retries, pruned_files=pruned,
        backend=backend.name, source_kind=src.kind,
        downloaded_bytes=downloaded.downloaded_bytes if downloaded else 0, destination_check=checked)


def _commit(backend: Any, run: _Run, entries: Sequence[ManifestEntry], old: Manifest | None, stale: Sequence[str],
            *, run_id: str | None, model: str | None) -> int:
    """Write the manifest (when it changed, or the previous one was withdrawn), then prune what
    only the previous manifest listed; the number of files pruned."""
    manifest = Manifest(tuple(entries), created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        run_id=run_id, model=model)
    if run.withdrawn or not manifest.same_files(old):
        backend.write_manifest(manifest)
    pruned = 0
    if run.opts.prune and stale:
        for rel in stale:
            backend.delete(rel)
            pruned += 1
    return pruned


def stage_model_for_spec(spec: Any, *, run_id: str | None = None, source: str | Path | None = None,
                         options: TransferOptions | None = None, progress: bool | None = None) -> StagedModel:
    """Stage ``spec.model.source`` (or ``source``) as ``spec.storage`` says.

    OSS credentials come from ``spec.storage.oss.credentials.resolve()``, falling back on the
    profile's credentials file (``tasks.profile``; for profile ``local`` the test bed's); an
    ``oss://`` source is read with the same key. NAS stages into ``spec.storage.mount_path`` on
    this machine, which must be an NFS mount of ``storage.nas.server:storage.nas.path`` (where
    the NAS is mounted when the pipeline runs in a pod with the NAS volume) unless
    ``storage.nas.local``. ``spec.model.sha256`` checks an http(s) source (not an overriding
    ``source``). Checkpoints and downloads go to ``spec.storage.checkpoint_dir``.
    """
    st = spec.storage
    opts = options or TransferOptions.from_env()
    target: OssTarget | NasTarget
    if st.kind == "oss":
        creds = st.oss.credentials
        creds_file = resolve_profile(spec).credentials_file
        key_id, secret = creds.resolve(creds_file)
        if creds.secret_block:
            where = f"Prefect Secret block {creds.secret_block!r}"
        elif os.environ.get(creds.access_key_id_env) and os.environ.get(creds.access_key_secret_env):
            where = f"environment variables {creds.access_key_id_env}/{creds.access_key_secret_env}"
        else:
            where = f"credentials file {creds.file or creds_file}"
        target = OssTarget(endpoint=st.oss.endpoint, bucket=st.oss.bucket, prefix=st.oss.prefix,
                           access_key_id=key_id, access_key_secret=secret, region=st.oss.region,
                           credentials_source=where)
    else:
        target = NasTarget(Path(st.mount_path), server=st.nas.server, export_path=st.nas.path, local=st.nas.local)
    sha256 = spec.model.sha256 if source is None or str(source) == spec.model.source else None
    return stage_model(source or spec.model.source, target, options=opts, checkpoint_dir=st.checkpoint_dir,
                       run_id=run_id, model=spec.model.name, progress=progress, sha256=sha256)


__all__ = [
    "Action", "CopyPlan", "Digest", "Downloaded", "HashCache", "LocalFile", "Manifest", "ManifestEntry",
    "MANIFEST_NAME", "ModelSource", "Mount", "NasTarget", "OssTarget", "Plan", "RemoteObject", "SourceObject",
    "StagedModel", "TransferOptions", "UploadJournal", "UploadRecord", "check_nas_mount", "check_source",
    "containing_mount", "crc64", "crc64_combine", "decide", "download_source", "fill_from_manifests", "hash_file",
    "nas_destination_check", "parse_mounts", "plan_copy", "plan_transfer", "resolve_source", "scan_source",
    "source_rel_staged", "stage_model", "stage_model_for_spec",
]
