"""Shared pieces of the spec models: input limits, regexes, validated string types, ``_Strict``
(the base of every section: unknown keys refused, strings bounded) and ``_FieldError`` (a
cross-field error that names one field of the model that raises it)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

MAX_FILE_BYTES = 1024 * 1024
MAX_STRING_CHARS = 4096
MAX_YAML_ALIASES = 32
MAX_NODES = 20_000
MAX_DEPTH = 24

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
_METRIC_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$")
_RULE = re.compile(r"^[a-z_]+(\.[A-Za-z0-9_]+)+$")


# -- reusable field types -------------------------------------------------------------------
def _no_traversal(value: str) -> None:
    if "/" in value or ".." in value:
        raise ValueError(f"must not contain '/' or '..' (got {_show(value)})")


def _dns_label(value: str) -> str:
    _no_traversal(value)
    if len(value) > 63:
        raise ValueError(f"must be at most 63 characters (got {len(value)})")
    if not _DNS_LABEL.match(value):
        raise ValueError(f"must be a DNS-1123 label: lowercase letters, digits and '-', "
                         f"starting and ending alphanumeric (got {_show(value)})")
    return value


def _label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"must be a Kubernetes label value: at most 63 characters of "
                         f"[A-Za-z0-9-_.], alphanumeric at both ends (got {_show(value)})")
    return value


def _qualified_name(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"key prefix must be a DNS subdomain (got {_show(value)})")
    if not name or len(name) > 63 or not _LABEL_VALUE.match(name):
        raise ValueError(f"key must be [prefix/]name with a name of at most 63 characters of "
                         f"[A-Za-z0-9-_.] (got {_show(value)})")
    return value


def _safe_name(value: str) -> str:
    _no_traversal(value)
    if len(value) > 128 or not _SAFE_NAME.match(value):
        raise ValueError(f"must be at most 128 characters of [A-Za-z0-9._-] (got {_show(value)})")
    return value


def _number_to_str(value: Any) -> Any:
    # `cpu: 4` in YAML is an int; Kubernetes quantities are strings
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"must be a Kubernetes quantity such as 4, 500m, 12Gi (got {_show(value)})")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path (got {_show(value)})")
    if ".." in value.split("/") or ":" in value or "\x00" in value:
        raise ValueError(f"must not contain '..', ':' or NUL (got {_show(value)})")
    return value.rstrip("/") or "/"


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value) or len(value) > 128:
        raise ValueError("must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


PATH_ROOTS_ENV = "TIDEGATE_PATH_ROOTS"


def path_roots() -> list[Path]:
    """Where paths of a spec (a checkpoint directory, a traffic CSV) may lie: the working directory,
    the system temporary directory, tidegate's cache and state directories, and the directories
    listed in $TIDEGATE_PATH_ROOTS (separated by ':'). A Prefect parameter must not make a worker
    read or write elsewhere (~/.ssh, /etc)."""
    home = Path.home()
    roots = [Path.cwd(), Path(tempfile.gettempdir()),
             Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "tidegate",
             Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state") / "tidegate"]
    roots += [Path(p) for p in os.environ.get(PATH_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def check_rooted_path(value: str) -> str:
    if not value or "\x00" in value:
        raise ValueError("must be a non-empty path without NUL characters")
    where = Path(value).expanduser()
    resolved = (where if where.is_absolute() else Path.cwd() / where).resolve()
    roots = path_roots()
    if not any(resolved == r or r in resolved.parents for r in roots):
        raise ValueError(f"{_show(value)} resolves to {_show(str(resolved))}, outside the directories tidegate may use "
                         f"({', '.join(str(r) for r in roots[:4])}; add one with ${PATH_ROOTS_ENV})")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
RootedPath = Annotated[str, AfterValidator(check_rooted_path)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
QualifiedName = Annotated[str, AfterValidator(_qualified_name)]
SafeName = Annotated[str, AfterValidator(_safe_name)]
Quantity = Annotated[str, BeforeValidator(_number_to_str), AfterValidator(_quantity)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class _FieldError(ValueError):
    """A cross-field error raised by a model validator that belongs to one field of it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/@]*@")


def _show_url(value: str) -> str:
    """``_show`` for a URL with its ``user:password@`` masked: a refused value is echoed to logs."""
    return _show(_USERINFO.sub(r"\1***@", value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=MAX_STRING_CHARS, strict=True)
