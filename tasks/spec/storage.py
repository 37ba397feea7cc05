"""The ``model`` and ``storage`` sections: which weights, and where they are staged (OSS or NAS)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from tasks.errors import CredentialsError
from tasks.spec.base import (
    _BUCKET,
    _HOSTNAME,
    AbsPath,
    DnsLabel,
    EnvName,
    Quantity,
    RootedPath,
    SafeName,
    _show,
    _show_url,
    _Strict,
)


class ModelSpec(_Strict):
    """Which model is served and where its weights come from."""

    name: SafeName = Field("Qwen-7B-Chat-Int8", title="Model name",
                           description="Human-readable name of the model, used in reports.")
    source: str = Field(
        "examples/models/tiny-qwen", title="Weights source",
        description="Where the weights are read from before staging: a local directory "
                    "(relative paths are relative to the working directory), file://<dir>, "
                    "oss://<bucket>/<prefix> (copied server-side into storage.oss, same endpoint "
                    "and key; storage.kind oss only) or http(s)://<host>/<path>/<file> (one file, "
                    "downloaded with resume, staged as <file> under the prefix).",
    )
    sha256: str | None = Field(
        None, title="SHA-256 of the downloaded file",
        description="For an http(s):// source: the file's SHA-256 (64 hex digits); a download "
                    "that does not match is refused and nothing is staged.")
    served_name: str = Field(
        "qwen", title="Served model name",
        description="The name the OpenAI-compatible API lists in /v1/models and expects in "
                    "requests; must equal --served-model-name in service.command.",
        min_length=1, max_length=256,
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not value or "\x00" in value:
            raise ValueError("must be a non-empty path or URI")
        scheme, sep, rest = value.partition("://")
        if sep:
            if scheme not in ("file", "oss", "http", "https"):
                raise ValueError(f"URI scheme must be file, oss, http or https (got {scheme!r})")
            if not rest:
                raise ValueError(f"URI has nothing after {scheme}:// ")
            if "@" in rest.split("/", 1)[0]:
                raise ValueError(f"must not carry credentials (got {_show_url(value)}): the spec holds no "
                                 "secret; give the weights' location without user:password@")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None, info) -> str | None:  # info: pydantic's ValidationInfo
        if value is None:
            return value
        digits = value.lower()
        if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError(f"must be 64 hexadecimal digits (got {_show(value)})")
        source = info.data.get("source")
        if source is not None and not source.startswith(("http://", "https://")):
            raise ValueError("applies to an http(s):// source (one file) only; model.source is "
                             f"{_show_url(source)}")
        return digits


class OssCredentials(_Strict):
    """Where the OSS access key is found. Names only: the spec never holds a secret value."""

    access_key_id_env: EnvName = Field(
        "OSS_ACCESS_KEY_ID", title="AccessKey ID variable",
        description="Name of the environment variable that holds the OSS AccessKey ID.")
    access_key_secret_env: EnvName = Field(
        "OSS_ACCESS_KEY_SECRET", title="AccessKey secret variable",
        description="Name of the environment variable that holds the OSS AccessKey secret.")
    secret_block: SafeName | None = Field(
        None, title="Prefect Secret block",
        description="Name of a Prefect Secret block whose value is the JSON object "
                    '{"access_key_id": ..., "access_key_secret": ...}; when set it is used '
                    "instead of the environment variables.")
    file: str | None = Field(
        None, title="Credentials file", max_length=1024,
        description='JSON file {"access_key_id": ..., "access_key_secret": ...}, read when the '
                    "environment variables are not set; for profile local the test bed's "
                    "credentials file is the default.")
    secret_name: DnsLabel = Field(
        "tidegate-oss-credentials", title="Kubernetes Secret",
        description="Secret (keys akId, akSecret) that the OSS CSI driver reads through the "
                    "PV's nodePublishSecretRef.")
    create_secret: bool = Field(
        True, title="Create the Secret",
        description="With storage.provision: true, create the Secret from the resolved credentials "
                    "when the run creates the volume (and delete it at teardown); otherwise it must "
                    "already exist (`tidegate plan --admin` says how to create it).")

    @field_validator("file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value):
            raise ValueError("must be a non-empty file path without NUL characters")
        return value

    def resolve(self, default_file: str | os.PathLike[str] | None = None) -> tuple[SecretStr, SecretStr]:
        """(AccessKey ID, AccessKey secret), from the first of:

        1. the Prefect Secret block ``secret_block``, when it is set (then nothing else is tried);
        2. the environment variables ``access_key_id_env`` and ``access_key_secret_env``, when
           both are set;
        3. the JSON file ``file`` (else ``default_file``, e.g. the test bed's credentials file),
           when it exists.

        Raises ``CredentialsError`` naming where it looked; never includes a value. Never
        writes ``os.environ``.
        """
        if self.secret_block:
            try:
                from prefect.blocks.system import Secret

                raw = Secret.load(self.secret_block).get()
            except Exception as exc:  # noqa: BLE001 - Prefect raises many kinds here
                raise CredentialsError(
                    f"OSS credentials: Prefect Secret block {self.secret_block!r} could not be "
                    f"loaded ({type(exc).__name__})") from exc
            try:
                value = json.loads(raw) if isinstance(raw, str) else raw
                key_id, secret = value["access_key_id"], value["access_key_secret"]
            except (ValueError, TypeError, KeyError) as exc:
                raise CredentialsError(
                    f"OSS credentials: Prefect Secret block {self.secret_block!r} must hold "
                    '{"access_key_id": ..., "access_key_secret": ...}') from exc
            return SecretStr(str(key_id)), SecretStr(str(secret))
        missing = [n for n in (self.access_key_id_env, self.access_key_secret_env) if not os.environ.get(n)]
        if not missing:
            return (SecretStr(os.environ[self.access_key_id_env]),
                    SecretStr(os.environ[self.access_key_secret_env]))
        where = self.file or default_file
        path = Path(where).expanduser() if where is not None and str(where) else None
        if path is not None and _exists(path):
            return _credentials_file(path)
        tried = f" and credentials file {path} does not exist" if path is not None else ""
        raise CredentialsError(
            f"OSS credentials: environment variable(s) {', '.join(missing)} not set{tried}",
            hint="set them, or name a Prefect Secret block in storage.oss.credentials.secret_block "
                 "or a credentials file in storage.oss.credentials.file")


MAX_CREDENTIALS_FILE_BYTES = 64 * 1024
_CREDENTIALS_SHAPE = '{"access_key_id": ..., "access_key_secret": ...}'


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a directory on the way that cannot be searched: reading says why
        return True


def _credentials_file(path: Path) -> tuple[SecretStr, SecretStr]:
    """(AccessKey ID, AccessKey secret) from a JSON credentials file.

    Errors name the file and the expected shape, never its content: nothing read from the file
    is put in a message or chained to the exception.
    """
    bad = CredentialsError(f"OSS credentials: credentials file {path} must hold the JSON object "
                           f"{_CREDENTIALS_SHAPE}")
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_CREDENTIALS_FILE_BYTES + 1)
    except OSError as exc:
        raise CredentialsError(f"OSS credentials: credentials file {path} cannot be read "
                               f"({exc.strerror or type(exc).__name__})") from None
    if len(blob) > MAX_CREDENTIALS_FILE_BYTES:
        raise bad
    try:
        value = json.loads(blob.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError: both ValueError
        value = None
    if not isinstance(value, dict):
        raise bad
    key_id, secret = value.get("access_key_id"), value.get("access_key_secret")
    if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
        raise bad
    return SecretStr(key_id), SecretStr(secret)


class OssSpec(_Strict):
    """An Alibaba Cloud OSS bucket (or the test bed's OSS-dialect store)."""

    endpoint: str | None = Field(
        None, title="Endpoint",
        description="OSS endpoint, e.g. oss-cn-shanghai-internal.aliyuncs.com (the internal "
                    "endpoint when the cluster is in the same region) or http://127.0.0.1:18333 "
                    "for the test bed. Required when storage.kind is oss.")
    bucket: str | None = Field(
        None, title="Bucket",
        description="Bucket name (3-63 lowercase letters, digits, '-'). Required when "
                    "storage.kind is oss.")
    prefix: str = Field(
        "models/Qwen-7B-Chat-Int8", title="Prefix",
        description="Object key prefix the weights are staged under; mounted as the PV's path.")
    volume_endpoint: str | None = Field(
        None, title="Volume endpoint",
        description="The endpoint the OSS CSI volume mounts from, on the cluster's nodes (usually the "
                    "internal endpoint, oss-<region>-internal.aliyuncs.com), when it differs from "
                    "endpoint (where staging uploads from, e.g. the public endpoint from a CI runner). "
                    "Default: endpoint.")
    region: str | None = Field(
        None, title="Region", description="Region id such as cn-shanghai (optional; informational "
                                          "and for signature V4).")
    other_opts: str = Field(
        "-o umask=022 -o max_stat_cache_size=0 -o allow_other", title="ossfs options",
        description="volumeAttributes.otherOpts of the OSS CSI PV (ossfs mount options).")
    credentials: OssCredentials = Field(default_factory=OssCredentials, title="Credentials",
                                        description="Where the access key is found.")

    @field_validator("endpoint", "volume_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host = value
        scheme, sep, rest = value.partition("://")
        if sep:
            if scheme not in ("http", "https"):
                raise ValueError(f"scheme must be http or https (got {scheme!r})")
            host = rest
        host = host.rstrip("/")
        hostname, _, port = host.partition(":")
        if not _HOSTNAME.match(hostname) or (port and not port.isdigit()) or "/" in host:
            raise ValueError(f"must be a host[:port] or http(s)://host[:port] (got {_show_url(value)})")
        return value.rstrip("/")

    @property
    def mount_endpoint(self) -> str | None:
        """What the PV's ``url`` says: ``volume_endpoint``, else ``endpoint``."""
        return self.volume_endpoint or self.endpoint

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET.match(value):
            raise ValueError(f"must be an OSS bucket name: 3-63 lowercase letters, digits and '-' "
                             f"(got {_show(value)})")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        key = value.rstrip("/")
        bad_segment = bool(key) and any(p in ("", ".", "..") for p in key.split("/"))
        if value.startswith("/") or bad_segment or "\x00" in value or "\\" in value:
            raise ValueError(f"must be a relative key prefix without '.', '..', empty segments "
                             f"or a leading '/' (got {_show(value)})")
        return key


class NasSpec(_Strict):
    """An Alibaba Cloud NAS file system (NFS)."""

    server: str | None = Field(
        None, title="Server",
        description="NAS mount target, e.g. 0a1b2c-xyz.cn-shanghai.nas.aliyuncs.com. Required "
                    "when storage.kind is nas.")
    path: AbsPath = Field("/", title="Path", description="Directory on the NAS file system the PV mounts.")
    vers: Literal["3", "4.0"] = Field("3", title="NFS version", description="NFS protocol version.")
    mount_options: list[str] = Field(
        default_factory=lambda: ["nolock", "tcp", "noresvport"], title="Mount options",
        description="PV mountOptions (ACK's convention for NAS).")
    local: bool = Field(
        False, title="Local staging directory on purpose",
        description="Staging writes into storage.mount_path on the machine that runs it, and first "
                    "checks that this directory is an nfs/nfs4 mount of server:path (else the weights "
                    "would land on a local disk the cluster never sees). true: the directory is a "
                    "local one on purpose (a test bed); the check is skipped and the report says so.")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTNAME.match(value):
            raise ValueError(f"must be a host name (got {_show(value)})")
        return value


SYSTEM_DIRS = frozenset({"/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin",
                         "/sys", "/tmp", "/usr", "/var", "/home", "/opt", "/mnt"})


class StorageSpec(_Strict):
    """Where the weights are staged and how pods mount them (a static PV + PVC)."""

    kind: Literal["oss", "nas"] = Field("oss", title="Kind", description="Storage backend: oss or nas.")
    oss: OssSpec = Field(default_factory=OssSpec, title="OSS", description="Used when kind is oss.")
    nas: NasSpec = Field(default_factory=NasSpec, title="NAS", description="Used when kind is nas.")
    pvc_name: DnsLabel = Field(
        "llm-model", title="PVC name",
        description="PersistentVolumeClaim the predictor mounts (arena's --data <pvc>:<path>).")
    pv_name: DnsLabel | None = Field(
        None, title="PV name",
        description="PersistentVolume name (cluster-scoped); default <pvc_name>-<namespace> so "
                    "that runs in different namespaces do not collide.")
    mount_path: AbsPath = Field(
        "/mnt/models/Qwen", title="Mount path",
        description="Where the model is mounted in the container (vLLM's --model); a directory of its "
                    "own, never / or a system directory.")
    provision: bool = Field(
        False, title="The run provisions the volume",
        description="false (default): the PV, the PVC and (OSS) the CSI Secret are created once by an "
                    "administrator from `tidegate plan --admin`, and runs only check that they exist; "
                    "the pipeline's RBAC then has no create on Secrets or PersistentVolumes. true: each "
                    "run creates them (the Secret from the resolved credentials when "
                    "oss.credentials.create_secret) and deletes them at teardown, and the RBAC adds a "
                    "provisioner Role and ClusterRole for that.")
    capacity: Quantity = Field("30Gi", title="Capacity",
                               description="Nominal size of the PV and the PVC's request.")
    checkpoint_dir: RootedPath = Field(
        ".tidegate/staging", title="Staging checkpoint directory",
        description="Local directory for staging's resume records and hash cache.")

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        # the volume would hide the container's own files (and on NAS staging writes there)
        if value == "/" or value in SYSTEM_DIRS or value.startswith(("/proc/", "/sys/", "/dev/")):
            raise ValueError(f"must be a directory of its own such as /mnt/models/<name> (got {value!r})")
        return value
