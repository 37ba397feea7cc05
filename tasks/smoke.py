"""smoke: does the deployed service answer like vLLM's OpenAI server, through the ingress?

Three checks with httpx against ``ingress.url`` with ``Host: ingress.host``:
``GET /v1/models`` lists the served name; a chat completion with the seed's request returns
non-empty content, a finish reason and usage; the same request streamed (SSE) yields role,
content deltas, a finish reason, usage and ``[DONE]``. Each check records its latency; any
failure names the check and what was wrong.

What the server accepts is detected first, never assumed (``detect_server``): vLLM's
``GET /version``, or, where a server has none, one small streamed request with
``stream_options``. vLLM before 0.5 has no ``stream_options``: the seed's 0.4.1 drops unknown
request fields silently, 0.4.2 and 0.4.3 answer them with a 400 (vLLM's tagged sources,
``testbed/vllm_surface.py``), so a server older than 0.5 is never sent one: the streamed usage is
then the finish chunk's ``usage`` (0.4.x sends it there) or, failing that, the count of content
chunks.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field

import httpx

from tasks.errors import StageFailed
from tasks.report_model import SmokeBlock, SmokeCheckBlock

# the first vLLM release with stream_options (vllm#5135, #5319); 0.4.1 ignores it, 0.4.2-0.4.3 answer it with a 400
STREAM_OPTIONS_SINCE = (0, 5, 0)


@dataclass(frozen=True)
class ServerFeatures:
    """What the model server accepts: tidegate's request bodies follow it."""

    version: str | None = None      # vLLM's GET /version; None when the server has no such endpoint
    stream_options: bool = True     # stream_options.include_usage is accepted

    def describe(self) -> str:
        usage = "stream_options" if self.stream_options else "usage from the stream's chunks"
        return f"vLLM {self.version or 'unknown version'}, {usage}"


def parse_version(text: str) -> tuple[int, ...] | None:
    """``0.4.1`` / ``v0.6.3.post1`` -> (0, 4, 1) / (0, 6, 3); None when it is not a version."""
    parts = []
    for piece in text.strip().lstrip("v").split("."):
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):
            break
    return tuple(parts) if len(parts) >= 2 else None


def features_of_version(version: str) -> ServerFeatures | None:
    parsed = parse_version(version)
    if parsed is None:
        return None
    return ServerFeatures(version=version, stream_options=parsed >= STREAM_OPTIONS_SINCE)


def _is_usage_chunk(line: str) -> bool:
    """An SSE line that is ``stream_options.include_usage``'s own chunk: usage and no choices."""
    data = line[5:].strip() if line.startswith("data:") else ""
    if not data or data == "[DONE]":
        return False
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and bool(chunk.get("usage")) and not chunk.get("choices")


def detect_server(c: httpx.Client, served_name: str) -> ServerFeatures:
    """What the server behind ``c`` accepts: from ``GET /version``, else from one probe request.

    The probe is the smallest streamed request with ``stream_options``: it is honoured when the
    stream ends with a usage chunk of its own (no choices); a 400 (vLLM's answer to an unknown
    field from 0.4.2 to 0.6.4) or a 200 without that chunk (0.4.1 drops the field) says it is
    not. Any other answer leaves the default (send it), and the checks that follow will say what
    is wrong.
    """
    try:
        r = c.get("/version")
        if r.status_code == 200:
            found = features_of_version(str((r.json() or {}).get("version", "")))
            if found is not None:
                return found
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    body = {"model": served_name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1,
            "stream": True, "stream_options": {"include_usage": True}}
    try:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code == 400:
                return ServerFeatures(stream_options=False)
            if r.status_code != 200:
                r.read()
                return ServerFeatures()
            return ServerFeatures(stream_options=any(_is_usage_chunk(line) for line in r.iter_lines()))
    except httpx.HTTPError:
        return ServerFeatures()


@dataclass
class SmokeCheck:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class SmokeResult:
    checks: list[SmokeCheck] = field(default_factory=list)
    ttft_ms: float | None = None
    server: ServerFeatures = field(default_factory=ServerFeatures)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def report_block(self) -> SmokeBlock:
        """report.json's ``smoke`` block (what ``smoke.*`` gate rules read)."""
        return SmokeBlock(ok=self.ok, checks_passed=sum(c.ok for c in self.checks),
                          checks_failed=sum(not c.ok for c in self.checks), ttft_ms=self.ttft_ms,
                          checks=[SmokeCheckBlock(name=c.name, ok=c.ok, seconds=c.seconds, detail=c.detail)
                                  for c in self.checks])

    def describe(self) -> str:
        return "; ".join(f"{c.name} ok ({c.seconds:.2f}s, {c.detail})" for c in self.checks)


def chat_body(spec, *, stream: bool = False, stream_options: bool = True) -> dict:
    """The seed's request; streamed with ``stream_options.include_usage`` only where the server has it."""
    body = {"model": spec.model.served_name, "messages": [{"role": "user", "content": spec.load.prompt}],
            "max_tokens": spec.load.max_tokens, "temperature": 0.7, "top_p": 0.9, "seed": 10}
    if stream:
        body["stream"] = True
        if stream_options:
            body["stream_options"] = {"include_usage": True}
    return body


def _client(spec, timeout_s: float) -> httpx.Client:
    return httpx.Client(base_url=spec.ingress.url.rstrip("/"), headers={"Host": spec.ingress.host},
                        timeout=httpx.Timeout(timeout_s, connect=5.0), trust_env=False)


def _check_models(c: httpx.Client, spec) -> str:
    r = c.get("/v1/models")
    if r.status_code != 200:
        raise AssertionError(f"GET /v1/models answered {r.status_code}: {r.text[:160]}")
    ids = [m.get("id") for m in r.json().get("data", [])]
    if spec.model.served_name not in ids:
        raise AssertionError(f"served name {spec.model.served_name!r} not in /v1/models {ids}")
    return f"models: {ids}"


def _check_chat(c: httpx.Client, spec) -> str:
    r = c.post("/v1/chat/completions", json=chat_body(spec))
    if r.status_code != 200:
        raise AssertionError(f"chat completion answered {r.status_code}: {r.text[:160]}")
    doc = r.json()
    choice = (doc.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content")
    if doc.get("object") != "chat.completion" or not content:
        raise AssertionError(f"chat completion without content: {json.dumps(doc)[:200]}")
    if choice.get("finish_reason") not in ("stop", "length"):
        raise AssertionError(f"unexpected finish_reason {choice.get('finish_reason')!r}")
    usage = doc.get("usage") or {}
    if not usage.get("completion_tokens"):
        raise AssertionError(f"usage missing completion_tokens: {usage}")
    return f"{usage['completion_tokens']} tokens, finish_reason={choice['finish_reason']}"


def _check_stream(c: httpx.Client, spec, result: SmokeResult) -> str:
    started = time.monotonic()
    first_token_at = None
    role = content = finish = usage = done = False
    text = []
    asked_usage = result.server.stream_options
    with c.stream("POST", "/v1/chat/completions",
                  json=chat_body(spec, stream=True, stream_options=asked_usage)) as r:
        if r.status_code != 200:
            raise AssertionError(f"streamed chat answered {r.status_code}: {r.read()[:160]!r}")
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage") and chunk["usage"].get("completion_tokens"):
                usage = True
            for ch in chunk.get("choices") or []:
                delta = ch.get("delta") or {}
                role = role or delta.get("role") == "assistant"
                if delta.get("content"):
                    content = True
                    text.append(delta["content"])
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                finish = finish or ch.get("finish_reason") in ("stop", "length")
    # a server without stream_options: usage is what it sent anyway, else the chunks counted
    counted = not usage and not asked_usage and content
    missing = [n for n, ok in (("role", role), ("content", content), ("finish_reason", finish),
                               ("usage", usage or counted), ("[DONE]", done)) if not ok]
    if missing:
        raise AssertionError(f"stream lacks {', '.join(missing)}")
    if first_token_at is not None:
        result.ttft_ms = round((first_token_at - started) * 1000, 1)
    source = "usage counted from the chunks" if counted else "usage chunk"
    return f"{len(text)} content chunks ({source}), ttft {result.ttft_ms} ms"


def smoke(spec, *, timeout_s: float = 30.0, attempts: int = 10) -> SmokeResult:
    """Run the checks; raise StageFailed naming the first failure."""
    result = SmokeResult()
    with _client(spec, timeout_s) as c:
        checks = (("models", lambda: _check_models(c, spec)), ("chat", lambda: _check_chat(c, spec)),
                  ("chat-stream", lambda: _check_stream(c, spec, result)))
        for name, fn in checks:
            t0 = time.monotonic()
            last: Exception | None = None
            for attempt in range(attempts if name == "models" else 1):
                try:
                    detail = fn()
                    if name == "models":  # the server answers: learn what it accepts before asking more
                        result.server = detect_server(c, spec.model.served_name)
                        detail = f"{detail}; {result.server.describe()}"
                    result.checks.append(SmokeCheck(name, True, round(time.monotonic() - t0, 3), detail))
                    last = None
                    break
                except httpx.HTTPError as exc:
                    last = exc
                except (AssertionError, ValueError) as exc:
                    last = exc
                    if "503" not in str(exc):
                        break
                time.sleep(min(0.5 * (attempt + 1), 2))
            if last is not None:
                what = (f"{spec.ingress.url} (Host {spec.ingress.host}) unreachable: {type(last).__name__}"
                        if isinstance(last, httpx.HTTPError) else str(last))
                result.checks.append(SmokeCheck(name, False, round(time.monotonic() - t0, 3), what))
                raise StageFailed(f"smoke {name}: {what}")
    return result
