"""Loading a spec: the guarded YAML loader, input bounds, ``--set`` overrides, and pydantic's
errors turned into one-line ``SpecError`` messages that name the field path."""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tasks.errors import SpecError
from tasks.spec.base import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_STRING_CHARS,
    MAX_YAML_ALIASES,
    _FieldError,
    _show,
)
from tasks.spec.rollout import RolloutSpec


class _YamlLimit(Exception):
    pass


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that bounds aliases (alias bombs) and rejects duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise _YamlLimit(f"more than {MAX_YAML_ALIASES} YAML aliases (line {mark.line + 1}); "
                                 f"anchors/aliases are limited to refuse alias bombs")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise _YamlLimit(f"duplicate key {key_node.value!r} "
                                         f"(line {key_node.start_mark.line + 1})")
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> Any:
    loader = _GuardedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_error(source: str, exc: BaseException) -> SpecError:
    if isinstance(exc, _YamlLimit):
        return SpecError(f"spec {source}: {exc}")
    if isinstance(exc, RecursionError):
        return SpecError(f"spec {source}: YAML nested too deeply")
    mark = getattr(exc, "problem_mark", None)
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = ", ".join(p for p in parts if p) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return SpecError(f"spec {source}: invalid YAML{where}: {problem}")


def _short(path: str, limit: int = 80) -> str:
    return path if len(path) <= limit else path[: limit - 3] + "..."


def _check_tree(data: Any, source: str) -> None:
    """Bound the input before validating it: nodes (expanded aliases), depth, string length."""
    count = 0
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SpecError(f"spec {source}: more than {MAX_NODES} values (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise SpecError(f"spec {source}: {_short(path) or 'document'}: nested more than "
                            f"{MAX_DEPTH} levels")
        if isinstance(node, str):
            if len(node) > MAX_STRING_CHARS:
                raise SpecError(f"spec {source}: {_short(path) or 'document'}: string too long "
                                f"({len(node)} chars > {MAX_STRING_CHARS})")
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                    raise SpecError(f"spec {source}: {_short(path) or 'document'}: key too long "
                                    f"({len(key)} chars > {MAX_STRING_CHARS})")
                stack.append((value, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                stack.append((value, f"{path}[{i}]", depth + 1))


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _model_at(path: list[str | int]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = RolloutSpec
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
    return model


_UNION_TAGS = {"bool", "int", "float", "str", "list", "dict", "none", "[key]"}


def _clean_loc(loc: tuple[Any, ...]) -> list[str | int]:
    return [p for p in loc if isinstance(p, int)
            or (p not in _UNION_TAGS and not str(p).startswith("function-"))]


def _format_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe_error(err: Mapping[str, Any]) -> tuple[str, str]:
    loc = _clean_loc(tuple(err.get("loc", ())))
    ctx = err.get("ctx") or {}
    kind = err.get("type", "")
    cause = ctx.get("error")
    if isinstance(cause, _FieldError):
        loc = loc + [p for p in cause.field.split(".")]
    path = _format_path(loc)
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else "?"
        return path, f"unknown field (allowed: {allowed})"
    if kind == "missing":
        return path, "required field is missing"
    if kind == "string_too_long":
        size = len(err["input"]) if isinstance(err.get("input"), str) else "?"
        return path, f"too long ({size} chars > {ctx.get('max_length')})"
    msg = str(err.get("msg", "invalid"))
    if kind == "value_error":
        return path, msg.removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    if "credentials" in loc or kind == "string_too_short":
        return path, msg
    return path, f"{msg} (got {_show(err.get('input'))})"


def _spec_error(source: str, exc: ValidationError) -> SpecError:
    seen: list[tuple[str, str]] = []
    for err in exc.errors():
        item = _describe_error(err)
        if item not in seen:
            seen.append(item)
    path, message = seen[0]
    more = f" (+{len(seen) - 1} more)" if len(seen) > 1 else ""
    where = f"{path}: " if path else ""
    return SpecError(f"spec {source}: {where}{message}{more}")


def spec_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> RolloutSpec:
    """Validate a mapping (parsed YAML, a Prefect parameter) into a RolloutSpec.

    Raises ``SpecError`` with one line naming ``source`` and the first bad field.
    """
    if isinstance(data, RolloutSpec):
        return data
    if not isinstance(data, Mapping):
        raise SpecError(f"spec {source}: top level must be a mapping of sections "
                        f"(got {type(data).__name__})")
    _check_tree(data, source)
    try:
        return RolloutSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise _spec_error(source, exc) from None


def _split_key(key: str, item: str, source: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in key.split("."):
        if not raw:
            raise SpecError(f"spec {source}: --set {item[:80]!r}: empty path segment")
        parts.append(int(raw) if raw.isdigit() else raw)
    return parts


def _default_container(path: list[str | int]) -> Any:
    """What an absent section starts as before an override descends into it: the field's
    default list (so ``slo.0.threshold=...`` edits the default rules) or an empty mapping."""
    model = _model_at(path[:-1])
    field = model.model_fields.get(str(path[-1])) if model else None
    if field is not None:
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            return [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
    return {}


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "<dict>") -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to a copy of ``data``.

    List items are addressed by index (``slo.0.threshold=0.02``); missing sections are created.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"spec {source}: --set {item[:80]!r}: expected key.path=value")
        if len(raw) > MAX_STRING_CHARS:
            raise SpecError(f"spec {source}: --set {key}: value too long ({len(raw)} chars > "
                            f"{MAX_STRING_CHARS})")
        try:
            value = _parse_yaml(raw) if raw.strip() else None
        except (yaml.YAMLError, _YamlLimit, RecursionError) as exc:
            raise SpecError(f"spec {source}: --set {key}: value is not valid YAML "
                            f"({_yaml_error('', exc).args[0].split(': ', 1)[-1]})") from None
        parts = _split_key(key, item, source)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = _format_path(parts[: i + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise SpecError(f"spec {source}: --set {key}: {where}: no such list item "
                                    f"(the list has {len(node)})")
            elif isinstance(node, dict):
                part = str(part)
                if not last and not isinstance(node.get(part), (dict, list)):
                    if node.get(part) is not None:
                        raise SpecError(f"spec {source}: --set {key}: {where} is a value, not a section")
                    node[part] = _default_container(parts[: i + 1])
            else:
                raise SpecError(f"spec {source}: --set {key}: cannot descend into {where}")
            if last:
                node[part] = value
            else:
                node = node[part]
    return out


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> RolloutSpec:
    """Read a YAML spec file, apply ``--set key.path=value`` overrides, validate.

    Raises ``SpecError`` (one line naming the file and the field) for anything wrong: unreadable
    or oversized file, invalid YAML, alias bombs, duplicate keys, unknown or invalid fields.
    """
    source = str(path)
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"spec {source}: cannot read: {exc.strerror or exc}") from None
    if len(blob) > MAX_FILE_BYTES:
        raise SpecError(f"spec {source}: file too large (more than {MAX_FILE_BYTES} bytes)")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec {source}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = _parse_yaml(text)
    except (yaml.YAMLError, _YamlLimit, RecursionError) as exc:
        raise _yaml_error(source, exc) from None
    if data is None:
        raise SpecError(f"spec {source}: file is empty")
    if not isinstance(data, dict):
        raise SpecError(f"spec {source}: top level must be a mapping of sections "
                        f"(got {type(data).__name__})")
    _check_tree(data, source)
    return spec_from_dict(apply_overrides(data, overrides, source), source)
