"""The request fields vLLM's OpenAI server accepts, by version, from vLLM's tagged sources.

``vllm_request_fields.json`` (next to this file) lists, for each release where it changed, the
annotated fields of ``ChatCompletionRequest`` and ``CompletionRequest`` in
``vllm/entrypoints/openai/protocol.py`` and what the server does with a field it does not know:

=========  ==========================================================================
0.4.1      ``ignore``: the request models are plain pydantic ``BaseModel`` (extra fields are
           dropped silently), so ``stream_options`` is accepted and has no effect
0.4.2      ``forbid``: ``OpenAIBaseModel`` with ``extra="forbid"``: an unknown field is a 400
           (``extra_forbidden``), ``stream_options`` included until 0.5.0 adds it
0.6.5      ``allow``: unknown fields are accepted (and logged), as today
=========  ==========================================================================

The table was read from the PyPI sdists (``vllm-X.Y.Z.tar.gz``, every release from 0.4.1 to 0.6.6, 0.7.0, 0.8.0); to regenerate it,
unpack them into one directory and run ``python -m testbed.vllm_surface DIR`` (it prints the
JSON). The emulator (``testbed.emulator``) answers a request the way the pod's version would.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import sys
from pathlib import Path
from typing import Literal

FIELDS_FILE = Path(__file__).with_name("vllm_request_fields.json")
Extra = Literal["ignore", "forbid", "allow"]


@dataclasses.dataclass(frozen=True)
class RequestSurface:
    """What one vLLM release accepts in its chat and completion request bodies."""

    since: tuple[int, int, int]
    extra: Extra
    chat: frozenset[str]
    completion: frozenset[str]

    def fields(self, kind: Literal["chat", "completion"]) -> frozenset[str]:
        return self.chat if kind == "chat" else self.completion


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``0.4.1`` / ``v0.6.3`` / an image reference ending in such a tag -> (0, 4, 1); else None."""
    if not text:
        return None
    tag = text.rsplit(":", 1)[-1] if "/" in text or ":" in text else text
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def _version(text: str) -> tuple[int, int, int]:
    parsed = parse_version(text)
    if parsed is None:
        raise ValueError(f"not a vLLM version: {text!r}")
    return parsed


@functools.cache
def surfaces() -> tuple[RequestSurface, ...]:
    doc = json.loads(FIELDS_FILE.read_text())
    out = [RequestSurface(since=_version(s["since"]), extra=s["extra"], chat=frozenset(s["chat"]),
                          completion=frozenset(s["completion"])) for s in doc["surfaces"]]
    return tuple(sorted(out, key=lambda s: s.since))


def request_surface(version: tuple[int, int, int]) -> RequestSurface:
    """The surface of ``version``: the newest entry at or before it (the oldest for older ones)."""
    table = surfaces()
    chosen = table[0]
    for surface in table:
        if surface.since <= version:
            chosen = surface
    return chosen


def _read(protocol: Path) -> dict:
    src = protocol.read_text()
    m = re.search(r'class OpenAIBaseModel\(BaseModel\):\s*\n(?:\s*#[^\n]*\n)*\s*model_config = '
                  r'ConfigDict\(extra="(\w+)"', src)
    out: dict = {"extra": m.group(1) if m else "ignore"}
    for node in ast.parse(src).body:
        if isinstance(node, ast.ClassDef) and node.name in ("ChatCompletionRequest", "CompletionRequest"):
            key = "chat" if node.name == "ChatCompletionRequest" else "completion"
            out[key] = sorted(n.target.id for n in node.body
                              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m testbed.vllm_surface DIR  (DIR holds unpacked vllm-X.Y.Z sdists)", file=sys.stderr)
        return 2
    found = []
    for protocol in Path(args[0]).glob("vllm-*/vllm/entrypoints/openai/protocol.py"):
        name = protocol.parents[3].name.removeprefix("vllm-")
        if re.fullmatch(r"\d+\.\d+\.\d+", name):  # releases, not .postN rebuilds
            found.append((_version(name), name, _read(protocol)))
    entries, last = [], None
    for _, name, doc in sorted(found):
        key = (doc["extra"], doc.get("chat"), doc.get("completion"))
        if key != last:
            entries.append({"since": name, **doc})
            last = key
    about = json.loads(FIELDS_FILE.read_text())["about"] if FIELDS_FILE.exists() else ""
    lines = ["{", f' "about": {json.dumps(about)},', ' "surfaces": [']
    for i, e in enumerate(entries):
        lines.append(f'  {{"since": "{e["since"]}", "extra": "{e["extra"]}",')
        lines.append(f'   "chat": {json.dumps(e["chat"])},')
        lines.append(f'   "completion": {json.dumps(e["completion"])}}}' + ("," if i < len(entries) - 1 else ""))
    lines += [" ]", "}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
