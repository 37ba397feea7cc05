"""The results store: every run's report directory, published so that runs can be listed,
compared and re-judged later, by this machine or by a team's machines sharing one bucket.

Where (``Store.open(url)``; the first that is set):

1. ``url`` (the CLI's ``--store``): a directory path, ``file:///path`` or ``oss://bucket/prefix``;
2. ``$TIDEGATE_RESULTS`` (the same forms);
3. ``<reports root>/.store`` (``$TIDEGATE_REPORTS_DIR/.store``, else ``reports/.store``): a
   local history beside the reports it was published from.

An ``oss://`` store is read and written with the real ``oss2`` SDK. Its endpoint is the
``endpoint`` argument, else ``$TIDEGATE_RESULTS_ENDPOINT`` (``Store.for_spec`` takes the spec's
``storage.oss.endpoint``); its key comes through the staging mechanism,
``OssCredentials.resolve`` (a Prefect Secret block, else the environment variables, else the
credentials file; without a spec the default names, ``OSS_ACCESS_KEY_ID`` /
``OSS_ACCESS_KEY_SECRET``, and the local profile's credentials file, i.e. the test bed's).

Layout (the same under a directory and under a bucket prefix)::

    runs/<run id>/report.json, requests.csv, junit.xml, report.html, ...   the report directory
    index/<run id>.json                                                     the publication marker

Invariants:

- **Atomic**: a run is in the store only when its marker exists, and the marker is written
  last, after every file (a directory: the files go to ``.tmp/`` and are renamed into ``runs/``
  in one step, then the marker is written by ``os.replace``; a bucket: the files are uploaded,
  then the marker). A publisher killed half-way leaves nothing that ``list`` shows; the next
  publish of the same run replaces the leftovers (a directory's stale ``.tmp/`` entries of dead
  publishers are removed by the next publish).
- **Corrupt entries are skipped with a warning** (``StoreWarning``; ``Store.warnings`` keeps
  them for the CLI): a marker or report.json that cannot be read or parsed, a directory entry
  without its marker. ``get``/``fetch`` of such a run raise ``StoreError``.
- **The report is the truth**: a ``RunEntry`` is read from the run's report.json; the marker
  adds only what the report does not record (when it was published, the file list with sizes
  and SHA-256 hashes, and the image and tidegate commit when the publisher named them).
- Nothing here writes the cluster; reading a store that does not exist yet is an empty store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tasks.errors import CredentialsError, SpecError, TidegateError
from tasks.gate import (
    RuleResult,
    evaluate,
    full_chain_passed,
    inconclusive_reasons,
    verdict,
)

log = logging.getLogger("tidegate")

STORE_ENV = "TIDEGATE_RESULTS"
ENDPOINT_ENV = "TIDEGATE_RESULTS_ENDPOINT"
DEFAULT_DIR_NAME = ".store"
RUNS = "runs"
INDEX = "index"
MARKER_FORMAT = 1
# the report figures every entry carries (dotted report.json keys, as gate rules name them)
KEY_FIGURES = ("load.ttft_p95_ms", "load.error_rate", "load.slo_attainment",
               "elasticity.time_to_first_cloud_pod_ready_s", "cost.cloud_cost_run", "cost.hybrid_cost_per_day")
# a run id is one path component and one key segment in the store
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STALE_TMP_S = 24 * 3600


class StoreError(TidegateError, RuntimeError):
    """The results store cannot be reached, or holds no readable run of that id (exit 2)."""


class CorruptEntry(StoreError):
    """A run of the store cannot be read: its marker or report.json is missing, unreadable or another's."""


class NoSuchRun(StoreError, LookupError):
    """The store holds no run of that id."""


class StoreWarning(UserWarning):
    """A store entry was skipped (corrupt or incomplete)."""


@dataclass(frozen=True)
class RunEntry:
    """One published run, as ``history list`` shows it (read from its report.json)."""

    run_id: str
    spec: str
    verdict: str
    started_at: str
    finished_at: str
    profile: str = ""
    full_chain_passed: bool = False
    figures: dict[str, float | None] = field(default_factory=dict)  # KEY_FIGURES -> value (None: no data)
    currency: str | None = None       # of the cost figures
    image: str | None = None          # the service image, when the report or the publisher recorded it
    commit: str | None = None         # the tidegate commit, when the report or the publisher recorded it
    published_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_report(cls, doc: dict[str, Any], marker: dict[str, Any] | None = None) -> RunEntry:
        marker = marker or {}
        cost = doc.get("cost") if isinstance(doc.get("cost"), dict) else {}
        return cls(run_id=str(doc["run_id"]), spec=str(doc["spec"]), verdict=str(doc.get("verdict", "")),
                   started_at=str(doc.get("started_at") or ""), finished_at=str(doc.get("finished_at") or ""),
                   profile=str(doc.get("profile") or ""), full_chain_passed=full_chain_passed(doc),
                   figures={k: _number(_lookup(doc, k)) for k in KEY_FIGURES},
                   currency=cost.get("currency") if cost else None,
                   image=_recorded(doc, "image", marker), commit=_recorded(doc, "commit", marker),
                   published_at=marker.get("published_at"))


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _recorded(doc: dict[str, Any], name: str, marker: dict[str, Any]) -> str | None:
    """The report's own record (a top-level key, should the report contract add one), else what the
    publisher named in the marker, else None (report.json 1.4 records neither image nor commit)."""
    value = doc.get(name) or marker.get(name)
    return str(value) if value else None


def _sort_key(entry: RunEntry) -> tuple[float, str]:
    for text in (entry.started_at, entry.finished_at):
        try:
            stamp = dt.datetime.fromisoformat(text)
        except (ValueError, AttributeError):
            continue
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp(), entry.run_id
    return float("-inf"), entry.run_id


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise StoreError(f"{str(run_id)[:80]!r} is not a run id (letters, digits, '.', '_', '-'; at most 128)")
    return run_id


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _report_files(report_dir: Path) -> list[tuple[str, Path]]:
    """(relative posix name, path) of every regular file of the report directory, subdirectories
    included; symlinks are not followed (``reports/latest`` and the like)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(report_dir):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append((path.relative_to(report_dir).as_posix(), path))
    return out


# -- backends: where the bytes go ------------------------------------------------------------------
class _Backend(Protocol):
    url: str

    def put_run(self, run_id: str, files: list[tuple[str, Path]]) -> None: ...
    def put_marker(self, run_id: str, data: bytes) -> None: ...
    def markers(self) -> list[str]: ...
    def orphans(self, published: set[str]) -> list[str]: ...
    def read(self, key: str) -> bytes: ...


def _copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with dst.open("rb") as f:
        os.fsync(f.fileno())


class _LocalBackend:
    """A directory. The files are written under ``.tmp/`` and renamed into ``runs/`` in one step."""

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def _tmp_name(self, run_id: str) -> str:
        # host~pid~random~run id ('~' is in neither a host name nor a run id)
        return f"{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}~{run_id}"

    def _clean_stale_tmp(self) -> None:
        """Remove the ``.tmp/`` leftovers of publishers that died (this host: the pid is gone;
        another host's: after a day)."""
        tmp = self.root / ".tmp"
        if not tmp.is_dir():
            return
        host = socket.gethostname()
        now = dt.datetime.now().timestamp()
        for d in tmp.iterdir():
            parts = d.name.removeprefix("old~").split("~")
            try:
                dead = len(parts) == 4 and parts[0] == host and not _pid_alive(int(parts[1]))
                old = now - d.stat().st_mtime > _STALE_TMP_S
            except (ValueError, OSError):
                continue
            if dead or old:
                shutil.rmtree(d, ignore_errors=True)

    def put_run(self, run_id: str, files: list[tuple[str, Path]]) -> None:
        try:
            self._clean_stale_tmp()
            tmp = self.root / ".tmp" / self._tmp_name(run_id)
            tmp.mkdir(parents=True)
            for rel, src in files:
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                _copy_file(src, dst)
            runs = self.root / RUNS
            runs.mkdir(parents=True, exist_ok=True)
            final = runs / run_id
            old = None
            if final.exists():  # republished (or the leftover of a publisher killed before its marker)
                old = self.root / ".tmp" / f"old~{self._tmp_name(run_id)}"
                os.rename(final, old)
            os.rename(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise StoreError(f"results store {self.url}: cannot write run {run_id}: {exc.strerror or exc}") from None

    def put_marker(self, run_id: str, data: bytes) -> None:
        index = self.root / INDEX
        try:
            index.mkdir(parents=True, exist_ok=True)
            tmp = index / f".{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, index / f"{run_id}.json")
        except OSError as exc:
            raise StoreError(f"results store {self.url}: cannot write the marker of run {run_id}: "
                             f"{exc.strerror or exc}") from None

    def markers(self) -> list[str]:
        index = self.root / INDEX
        if not index.is_dir():
            return []
        return sorted(p.name[:-5] for p in index.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))

    def orphans(self, published: set[str]) -> list[str]:
        runs = self.root / RUNS
        if not runs.is_dir():
            return []
        return sorted(p.name for p in runs.iterdir() if p.name not in published)

    def read(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise CorruptEntry(f"results store {self.url}: cannot read {key}: {exc.strerror or exc}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _OssBackend:
    """A bucket prefix through ``oss2``: files first, the marker last."""

    def __init__(self, bucket_name: str, prefix: str, endpoint: str, key_id: str, secret: str,
                 region: str | None = None, credentials_source: str = "the given credentials"):
        import oss2

        if not key_id or not secret:
            raise CredentialsError(f"results store oss://{bucket_name}/{prefix}: the OSS key from "
                                   f"{credentials_source} is empty")
        logging.getLogger("oss2").setLevel(max(logging.getLogger("oss2").level, logging.WARNING))
        self._oss2 = oss2
        self._secrets = (key_id, secret)
        self._source = credentials_source
        self.endpoint = endpoint if "://" in endpoint else f"https://{endpoint}"
        auth = oss2.AuthV4(key_id, secret) if region else oss2.Auth(key_id, secret)
        self.bucket_name = bucket_name
        self.prefix = prefix.strip("/")
        self.url = f"oss://{bucket_name}/{self.prefix}".rstrip("/")
        self.bucket = oss2.Bucket(auth, self.endpoint, bucket_name, connect_timeout=30, enable_crc=False,
                                  region=region)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _error(self, exc: Exception, what: str) -> TidegateError:
        """One line, no secret, from an oss2 error."""
        errors = self._oss2.exceptions
        if isinstance(exc, errors.RequestError):
            text = f"{what}: cannot reach {self.endpoint}: {type(getattr(exc, 'exception', exc)).__name__}"
        elif isinstance(exc, errors.OssError):
            desc = f"{exc.code or 'error'} (HTTP {exc.status}, request id {exc.request_id or '-'})"
            if exc.status == 403:
                return CredentialsError(f"{what}: OSS rejected the access key from {self._source}: {desc}")
            if exc.code == "NoSuchBucket":
                return StoreError(f"{what}: bucket {self.bucket_name!r} does not exist at {self.endpoint}",
                                  hint="create it (the store never creates a bucket) or name another --store")
            text = f"{what}: {desc}"
        else:
            text = f"{what}: {type(exc).__name__}: {exc}"
        for s in self._secrets:
            text = text.replace(s, "***")
        return StoreError(text)

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except self._oss2.exceptions.NoSuchKey:
            raise
        except (self._oss2.exceptions.OssError, self._oss2.exceptions.RequestError) as exc:
            raise self._error(exc, what) from None

    def _keys(self, prefix: str) -> list[str]:
        it = self._oss2.ObjectIteratorV2(self.bucket, prefix=prefix)
        return self._call(f"results store {self.url}: list {prefix}", lambda: [o.key for o in it])

    def put_run(self, run_id: str, files: list[tuple[str, Path]]) -> None:
        what = f"results store {self.url}: upload run {run_id}"
        base = self.key(f"{RUNS}/{run_id}/")
        for rel, src in files:
            self._call(what, self.bucket.put_object_from_file, base + rel, str(src))
        # a republished run: objects of the earlier publication that the new one does not have
        stale = sorted(set(self._keys(base)) - {base + rel for rel, _ in files})
        for i in range(0, len(stale), 500):
            self._call(what, self.bucket.batch_delete_objects, stale[i:i + 500])

    def put_marker(self, run_id: str, data: bytes) -> None:
        self._call(f"results store {self.url}: publish run {run_id}", self.bucket.put_object,
                   self.key(f"{INDEX}/{run_id}.json"), data, headers={"Content-Type": "application/json"})

    def markers(self) -> list[str]:
        base = self.key(f"{INDEX}/")
        return sorted(k[len(base):-5] for k in self._keys(base)
                      if k.endswith(".json") and "/" not in k[len(base):])

    def orphans(self, published: set[str]) -> list[str]:
        # an upload in progress looks the same as a dead one on a bucket: neither is shown, neither warned of
        return []

    def read(self, key: str) -> bytes:
        try:
            return self._call(f"results store {self.url}: read {key}",
                              lambda: self.bucket.get_object(self.key(key)).read())
        except self._oss2.exceptions.NoSuchKey:
            raise KeyError(key) from None


# -- the store ---------------------------------------------------------------------------------------
def default_store_url() -> str:
    """``$TIDEGATE_RESULTS``, else ``<reports root>/.store``."""
    from tasks.report import reports_root

    return os.environ.get(STORE_ENV) or str(reports_root() / DEFAULT_DIR_NAME)


def _default_credentials() -> tuple[Any, Any, str]:
    """The staging mechanism without a spec: the default variable names, then the local profile's
    credentials file."""
    from tasks.profile import LOCAL_CREDENTIALS, local_profile_dir
    from tasks.spec.storage import OssCredentials

    creds = OssCredentials()
    file = local_profile_dir() / LOCAL_CREDENTIALS
    key_id, secret = creds.resolve(file)
    if os.environ.get(creds.access_key_id_env) and os.environ.get(creds.access_key_secret_env):
        where = f"environment variables {creds.access_key_id_env}/{creds.access_key_secret_env}"
    else:
        where = f"credentials file {file}"
    return key_id, secret, where


def _secret(value: Any) -> str:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


class Store:
    """A results store (a directory or an OSS bucket prefix); see the module docstring.

    Example::

        store = Store.open(None)                  # $TIDEGATE_RESULTS or reports/.store
        entry = store.publish("reports/qwen-chat-20261206-002948-c6cc")
        [e.run_id for e in store.list("qwen-chat")]
        store.baselines("qwen-chat", n=5, exclude=entry.run_id)
    """

    def __init__(self, backend: _Backend):
        self._backend = backend
        self.warnings: list[str] = []

    @property
    def url(self) -> str:
        return self._backend.url

    @classmethod
    def open(cls, url: str | None = None, *, endpoint: str | None = None, credentials: Any = None,
             region: str | None = None) -> Store:
        """The store at ``url`` (None: ``default_store_url()``).

        ``credentials`` (oss:// only): an ``OssCredentials`` (resolved as staging does, with the
        local profile's credentials file as the fallback), or an (AccessKey ID, secret) pair of
        strings or ``SecretStr``; None: ``OssCredentials()``'s defaults. ``endpoint`` (oss://
        only): None means ``$TIDEGATE_RESULTS_ENDPOINT``."""
        url = url or default_store_url()
        if url.startswith("oss://"):
            bucket, _, prefix = url[len("oss://"):].partition("/")
            if not bucket:
                raise SpecError(f"--store {url}: expected oss://bucket/prefix")
            endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
            if not endpoint:
                raise SpecError(f"--store {url}: no OSS endpoint",
                                hint=f"pass --endpoint, set ${ENDPOINT_ENV} or give a spec whose "
                                     "storage.oss.endpoint names it")
            if credentials is None:
                key_id, secret, where = _default_credentials()
            elif hasattr(credentials, "resolve"):
                from tasks.profile import LOCAL_CREDENTIALS, local_profile_dir

                key_id, secret = credentials.resolve(credentials.file or local_profile_dir() / LOCAL_CREDENTIALS)
                where = "the spec's storage.oss.credentials"
            else:
                key_id, secret = credentials
                where = "the given credentials"
            return cls(_OssBackend(bucket, prefix, endpoint, _secret(key_id), _secret(secret), region=region,
                                   credentials_source=where))
        if "://" in url and not url.startswith("file://"):
            raise SpecError(f"--store {url}: expected a directory, file:///path or oss://bucket/prefix")
        path = Path(url.removeprefix("file://")).expanduser()
        return cls(_LocalBackend(path))

    @classmethod
    def for_spec(cls, spec: Any, url: str | None = None, *, endpoint: str | None = None) -> Store:
        """The store at ``url`` (None: the default) with an oss:// store reached through the spec's
        storage.oss endpoint, region and credentials (resolved with the spec's profile, as staging does)."""
        url = url or default_store_url()
        if not url.startswith("oss://"):
            return cls.open(url)
        from tasks.profile import resolve_profile

        oss = spec.storage.oss
        key_id, secret = oss.credentials.resolve(resolve_profile(spec).credentials_file)
        return cls.open(url, endpoint=endpoint or oss.endpoint or os.environ.get(ENDPOINT_ENV),
                        credentials=(key_id, secret), region=oss.region)

    # -- writing
    def publish(self, report_dir: str | os.PathLike[str], *, image: str | None = None,
                commit: str | None = None) -> RunEntry:
        """Publish ``report_dir`` (``reports/<run id>/``) under its report's run id; publishing a run
        again replaces it. ``image`` / ``commit`` are recorded in the marker when the report does
        not record them."""
        src = Path(report_dir)
        try:
            doc = json.loads((src / "report.json").read_text())
            run_id, spec = doc["run_id"], doc["spec"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{src}: not a report directory (report.json unreadable or without run_id and "
                             f"spec: {type(exc).__name__})") from None
        check_run_id(run_id)
        files = _report_files(src)
        marker = {"format": MARKER_FORMAT, "run_id": run_id, "spec": spec,
                  "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "image": image, "commit": commit,
                  "files": {rel: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for rel, p in files}}
        self._backend.put_run(run_id, files)
        self._backend.put_marker(run_id, json.dumps(marker, indent=2).encode() + b"\n")
        log.info("published run %s to %s", run_id, self.url)
        return RunEntry.from_report(doc, marker)

    # -- reading
    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        log.warning("%s", text)
        warnings.warn(text, StoreWarning, stacklevel=3)

    def _marker(self, run_id: str) -> dict[str, Any]:
        try:
            marker = json.loads(self._backend.read(f"{INDEX}/{run_id}.json"))
        except KeyError:
            raise NoSuchRun(f"results store {self.url}: no run {run_id!r}",
                            hint="`tidegate history list` shows the runs it holds") from None
        except ValueError:
            raise CorruptEntry(f"results store {self.url}: run {run_id}: its marker is not JSON") from None
        if not isinstance(marker, dict) or marker.get("run_id") != run_id:
            raise CorruptEntry(f"results store {self.url}: run {run_id}: its marker names another run")
        return marker

    def _load(self, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        marker = self._marker(run_id)
        try:
            doc = json.loads(self._backend.read(f"{RUNS}/{run_id}/report.json"))
        except KeyError:
            raise CorruptEntry(f"results store {self.url}: run {run_id}: report.json is missing") from None
        except ValueError:
            raise CorruptEntry(f"results store {self.url}: run {run_id}: report.json is not JSON") from None
        if not isinstance(doc, dict) or doc.get("run_id") != run_id or not isinstance(doc.get("spec"), str):
            raise CorruptEntry(f"results store {self.url}: run {run_id}: report.json is not this run's report")
        return doc, marker

    def list(self, spec: str | None = None) -> list[RunEntry]:
        """Every readable run (of ``spec``), newest first (by started_at); corrupt entries are
        skipped with a warning."""
        self.warnings = []
        ids = [r for r in self._backend.markers() if _RUN_ID.match(r)]
        for orphan in self._backend.orphans(set(ids)):
            self._warn(f"results store {self.url}: skipped {RUNS}/{orphan}: no publication marker "
                       "(an interrupted publish; publish it again)")

        def one(run_id: str) -> RunEntry | str | None:
            try:
                return RunEntry.from_report(*self._load(run_id))
            except NoSuchRun:  # unpublished since the listing
                return None
            except CorruptEntry as exc:
                return f"skipped a corrupt entry: {exc.one_line()}"

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, ids))
        entries = []
        for r in results:
            if isinstance(r, str):
                self._warn(r)
            elif r is not None and (spec is None or r.spec == spec):
                entries.append(r)
        return sorted(entries, key=_sort_key, reverse=True)

    def get(self, run_id: str) -> dict[str, Any]:
        """The run's report.json."""
        return self._load(check_run_id(run_id))[0]

    def entry(self, run_id: str) -> RunEntry:
        return RunEntry.from_report(*self._load(check_run_id(run_id)))

    def files(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's files as published: name -> {bytes, sha256}."""
        files = self._marker(check_run_id(run_id)).get("files")
        return files if isinstance(files, dict) else {}

    def read_file(self, run_id: str, rel: str) -> bytes | None:
        """One file of a run as published (checked against its hash), None when the run has none."""
        meta = self.files(run_id).get(rel)
        return None if meta is None else self._read_checked(run_id, rel, meta)

    def _read_checked(self, run_id: str, rel: str, meta: dict[str, Any]) -> bytes:
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise CorruptEntry(f"results store {self.url}: run {run_id}: refused file name {rel!r}")
        try:
            data = self._backend.read(f"{RUNS}/{run_id}/{rel}")
        except KeyError:
            raise CorruptEntry(f"results store {self.url}: run {run_id}: {rel} is missing") from None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise CorruptEntry(f"results store {self.url}: run {run_id}: {rel} does not match its "
                               "published hash")
        return data

    def requests(self, run_id: str):
        """The run's per-request table (requests.csv) as a DataFrame, None when it has none."""
        import io

        import pandas as pd

        data = self.read_file(run_id, "requests.csv")
        return None if data is None else pd.read_csv(io.BytesIO(data))

    def fetch(self, run_id: str, dest: str | os.PathLike[str]) -> Path:
        """Copy the run's report directory into ``dest`` (created), each file checked against the
        size and hash the marker recorded; return ``dest``."""
        out = Path(dest)
        for rel, meta in self.files(run_id).items():
            data = self._read_checked(run_id, rel, meta)
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return out

    def baselines(self, spec: str, n: int = 5, exclude: str | Iterable[str] | None = None) -> list[RunEntry]:
        """The newest ``n`` runs of ``spec`` that passed the full chain (``tasks.gate.full_chain_passed``),
        without ``exclude`` (a run id or several: the candidate)."""
        skip = {exclude} if isinstance(exclude, str) else set(exclude or ())
        return [e for e in self.list(spec) if e.full_chain_passed and e.run_id not in skip][:max(n, 0)]


# -- re-judging a stored run --------------------------------------------------------------------------
EXIT_CODES = {"pass": 0, "warn": 0, "fail": 1, "inconclusive": 3}


@dataclass
class Judgement:
    """A stored run judged again by a spec's rules (``judge``): nothing ran, nothing was written."""

    candidate: str
    baseline: str | None              # the run relative rules compared with
    baselines: list[str]              # every baseline run named or selected (the first is ``baseline``)
    results: list[RuleResult]
    verdict: str
    reasons: list[str]                # why it is inconclusive, or which stage failed

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "baseline": self.baseline, "baselines": self.baselines,
                "verdict": self.verdict, "exit_code": self.exit_code, "reasons": self.reasons,
                "rules": [r.to_dict() for r in self.results]}


def carried_evidence_gaps(doc: dict[str, Any]) -> list[str]:
    """The candidate's own inconclusive reasons that no rule can change (events the observer lost,
    a generator that fell behind): its recorded reasons without those its gate produced."""
    gate_made = set(inconclusive_reasons([], gate_ran=False)) | set(inconclusive_reasons([], gate_ran=True))
    rules = [r.get("rule") for r in doc.get("gate") or [] if isinstance(r, dict)]
    return [str(r) for r in doc.get("inconclusive_reasons") or []
            if str(r) not in gate_made and not any(str(r).startswith(f"{rule}: ") for rule in rules)]


def judge(rules, candidate: dict[str, Any], baselines: list[dict[str, Any]], *,
          requests: Callable[[str], Any] | None = None, score=None) -> Judgement:
    """Judge ``candidate`` (a report.json) by ``rules`` (a spec's ``slo``) with ``tasks.gate.evaluate``:
    relative rules against the first of ``baselines``, statistical rules against all of them (their
    per-request tables from ``requests(run_id)``, e.g. ``Store.requests``), with ``score`` (a spec's
    ``ScoreSpec``) the non-critical ones scored; decide with
    ``tasks.gate.verdict``: a stage of the candidate that failed (the gate stage aside: that is the
    judgement being redone) fails it; its lost evidence keeps it inconclusive."""
    from tasks.gate import Baselines, change_point_warnings

    base = baselines[0] if baselines else None
    load = requests or (lambda _rid: None)
    history = Baselines(candidate_requests=load(str(candidate.get("run_id"))),
                        runs=[(b, load(str(b.get("run_id")))) for b in baselines],
                        series=list(reversed(baselines)))
    results = evaluate(rules, candidate, baseline=base, history=history, score=score)
    results += change_point_warnings(rules, candidate, history)
    stages = candidate.get("stages") or {}
    failed = [f"stage {name} {st.get('status')}: {st.get('detail', '')}".rstrip(": ")
              for name, st in stages.items()
              if name != "gate" and isinstance(st, dict) and st.get("status") in ("failed", "error")]
    gaps = carried_evidence_gaps(candidate)
    v = verdict(results, failed=bool(failed), gate_ran=True, evidence_gaps=gaps)
    reasons = failed if v == "fail" else inconclusive_reasons(results, gate_ran=True, evidence_gaps=gaps) \
        if v == "inconclusive" else []
    return Judgement(candidate=str(candidate.get("run_id")), baseline=str(base.get("run_id")) if base else None,
                     baselines=[str(b.get("run_id")) for b in baselines], results=results, verdict=v, reasons=reasons)


__all__ = [
    "ENDPOINT_ENV",
    "EXIT_CODES",
    "KEY_FIGURES",
    "STORE_ENV",
    "CorruptEntry",
    "Judgement",
    "NoSuchRun",
    "RunEntry",
    "Store",
    "StoreError",
    "StoreWarning",
    "carried_evidence_gaps",
    "default_store_url",
    "judge",
]
