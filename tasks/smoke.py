"""smoke: does the deployed service answer like vLLM's OpenAI server, through the ingress?

Three checks with httpx against ``ingress.url`` with ``Host: ingress.host``:
``GET /v1/models`` lists the served name; a chat completion with the seed's request returns
non-empty content, a finish reason and usage; the same request streamed (SSE, with
``stream_options.include_usage``) yields role, content deltas, a finish reason, a usage
chunk and ``[DONE]``. Each check records its latency; any failure names the check and what
was wrong.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from tasks.errors import StageFailed
from tasks.report_model import SmokeBlock, SmokeCheckBlock


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


def chat_body(spec, *, stream: bool = False) -> dict:
    body = {"model": spec.model.served_name, "messages": [{"role": "user", "content": spec.load.prompt}],
            "max_tokens": spec.load.max_tokens, "temperature": 0.7, "top_p": 0.9, "seed": 10}
    if stream:
        body["stream"] = True
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
    with c.stream("POST", "/v1/chat/completions", json=chat_body(spec, stream=True)) as r:
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
    missing = [n for n, ok in (("role", role), ("content", content), ("finish_reason", finish),
                               ("usage", usage), ("[DONE]", done)) if not ok]
    if missing:
        raise AssertionError(f"stream lacks {', '.join(missing)}")
    if first_token_at is not None:
        result.ttft_ms = round((first_token_at - started) * 1000, 1)
    return f"{len(text)} content chunks, ttft {result.ttft_ms} ms"


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
