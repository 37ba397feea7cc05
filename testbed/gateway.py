"""The test bed's ingress: one loopback HTTP endpoint that routes by ``Host`` to replicas.

The daemon computes the routing table from Ready pods and hands it over with
``set_routes({host: [backend_url, ...]})``, which replaces the table atomically. A request's
``Host`` (port stripped, case-insensitive) selects the backends; the one with the fewest
requests in flight through this gateway wins, ties go round robin. Method, path, query,
headers (minus hop-by-hop ones) and body are forwarded; the response is streamed back chunk
by chunk as it arrives, so SSE stays SSE.

Answers of the gateway itself (JSON ``{"error": ..., "host": ...}``):
    404  no route for the Host
    503  the Host's service has no ready backend
    502  the backend could not be reached or broke before answering

Like ingress-nginx, a backend that refuses the connection is skipped and the next one tried
(nothing was sent, so even a POST is safe to retry); a failure after the request was sent is
not retried. A backend that breaks a streamed response mid-way has the client's connection
cut the same way, so the client sees a truncated response rather than a clean end.

One ``aiohttp.ClientSession`` with a keep-alive pool serves all requests: the gateway's
overhead is measured against a replica with ``hey``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from testbed.errors import TestbedError

LOOPBACK = "127.0.0.1"

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})


# Nothing reached the backend: safe to try the next one, even for a POST.
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


@dataclass
class HostStats:
    """Counters of one Host since the gateway started.

    ``errors`` counts answers with status >= 500 (the backend's and the gateway's own 502/503)
    and responses broken mid-stream. ``backend_requests`` is requests sent per backend URL,
    ``backend_in_flight`` the backends of the current route with their requests in flight.
    """

    requests: int = 0
    in_flight: int = 0
    errors: int = 0
    backend_requests: dict[str, int] = field(default_factory=dict)
    backend_in_flight: dict[str, int] = field(default_factory=dict)


@dataclass
class _Route:
    backends: list[str]
    urls: list[URL]
    next_index: int = 0


def host_key(header: str | None) -> str:
    """The routing key of a ``Host`` header: lower case, without port or trailing dot."""
    host = (header or "").strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return host.rstrip(".")


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _gateway_error(status: int, message: str, host: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, "host": host, **extra}, status=status, dumps=_compact)


def _strip_hop_by_hop(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = set(HOP_BY_HOP)
    for value in headers.getall(hdrs.CONNECTION, ()):
        drop.update(token.strip().lower() for token in value.split(","))
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


class Gateway:
    """Host-routing reverse proxy on 127.0.0.1:``port`` (0: any free port).

    >>> gw = Gateway(port=18000)                                           # doctest: +SKIP
    >>> await gw.start()                                                   # doctest: +SKIP
    >>> gw.set_routes({"qwen-chat-default.example.com": ["http://127.0.0.1:20000"]})  # doctest: +SKIP
    >>> gw.stats()["qwen-chat-default.example.com"].requests              # doctest: +SKIP
    0
    """

    def __init__(self, *, port: int = 0, connect_timeout_s: float = 2.0, max_body_bytes: int = 64 * 2**20):
        self._requested_port = port
        self._connect_timeout_s = connect_timeout_s
        self._max_body_bytes = max_body_bytes
        self._routes: dict[str, _Route] = {}
        self._stats: dict[str, HostStats] = {}
        self._in_flight: dict[str, int] = {}
        self.unknown_host_requests = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port: int | None = None

    async def start(self) -> None:
        """Listen; OSError if the port is taken."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, use_dns_cache=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
        )
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._session.close()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise TestbedError("the gateway has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def set_routes(self, routes: Mapping[str, Sequence[str]]) -> None:
        """Replace the routing table: Host -> backend base URLs (e.g. ``http://127.0.0.1:20000``).

        A malformed URL raises ``TestbedError`` and leaves the table as it was.
        """
        table: dict[str, _Route] = {}
        for host, backends in routes.items():
            key = host_key(host)
            urls = [b.rstrip("/") for b in backends]
            parsed = []
            for url in urls:
                try:
                    parsed_url = URL(url)
                except ValueError as exc:
                    raise TestbedError(f"route for host '{key}': bad backend URL {url!r}: {exc}") from exc
                if parsed_url.scheme != "http" or not parsed_url.host:
                    raise TestbedError(f"route for host '{key}': backend {url!r} is not an http://host:port URL")
                parsed.append(parsed_url)
            old = self._routes.get(key)
            table[key] = _Route(urls, parsed, old.next_index if old else 0)
        for key in table:
            self._stats.setdefault(key, HostStats())
        self._routes = table

    def routes(self) -> dict[str, list[str]]:
        return {host: list(route.backends) for host, route in self._routes.items()}

    def stats(self) -> dict[str, HostStats]:
        """A snapshot of the counters of every Host that has had a route."""
        out = {}
        for host, st in self._stats.items():
            route = self._routes.get(host)
            in_flight = {b: self._in_flight.get(b, 0) for b in route.backends} if route else {}
            out[host] = replace(st, backend_requests=dict(st.backend_requests), backend_in_flight=in_flight)
        return out

    def _pick(self, route: _Route, exclude: set[str]) -> int | None:
        count = len(route.backends)
        start = route.next_index
        route.next_index = (start + 1) % count
        best: int | None = None
        best_load = 0
        for step in range(count):
            i = (start + step) % count
            backend = route.backends[i]
            if backend in exclude:
                continue
            load = self._in_flight.get(backend, 0)
            if best is None or load < best_load:
                best, best_load = i, load
        return best

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = host_key(request.headers.get(hdrs.HOST))
        route = self._routes.get(host)
        if route is None:
            self.unknown_host_requests += 1
            return _gateway_error(404, f"no service for host '{host}'", host)
        stats = self._stats[host]
        stats.requests += 1
        stats.in_flight += 1
        try:
            return await self._forward(request, host, route, stats)
        finally:
            stats.in_flight -= 1

    async def _forward(self, request: web.Request, host: str, route: _Route, stats: HostStats) -> web.StreamResponse:
        if not route.backends:
            stats.errors += 1
            return _gateway_error(503, f"no ready backend for host '{host}'", host)
        assert self._session is not None
        body = await request.read() if request.body_exists else None
        headers = _strip_hop_by_hop(request.headers)
        headers.popall(hdrs.CONTENT_LENGTH, None)
        if request.remote:
            forwarded = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{forwarded}, {request.remote}" if forwarded else request.remote
        headers.setdefault("X-Forwarded-Host", request.headers.get(hdrs.HOST, ""))
        headers.setdefault("X-Forwarded-Proto", "http")
        refused: set[str] = set()
        while True:
            index = self._pick(route, refused)
            if index is None:
                stats.errors += 1
                return _gateway_error(502, f"no backend of host '{host}' accepted a connection "
                                           f"({', '.join(sorted(refused))})", host)
            backend = route.backends[index]
            target = route.urls[index].join(URL(request.raw_path, encoded=True))
            self._in_flight[backend] = self._in_flight.get(backend, 0) + 1
            stats.backend_requests[backend] = stats.backend_requests.get(backend, 0) + 1
            try:
                return await self._relay(request, host, backend, target, headers, body, stats)
            except _NOT_CONNECTED:
                refused.add(backend)
            finally:
                left = self._in_flight[backend] - 1
                if left:
                    self._in_flight[backend] = left
                else:
                    del self._in_flight[backend]

    async def _relay(self, request: web.Request, host: str, backend: str, target: URL,
                     headers: CIMultiDict[str], body: bytes | None, stats: HostStats) -> web.StreamResponse:
        assert self._session is not None
        try:
            upstream = await self._session.request(request.method, target, headers=headers, data=body,
                                                   allow_redirects=False)
        except _NOT_CONNECTED:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            stats.errors += 1
            return _gateway_error(502, f"backend {backend} of host '{host}' failed: {str(exc) or type(exc).__name__}",
                                  host, backend=backend)
        try:
            if upstream.status >= 500:
                stats.errors += 1
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=_strip_hop_by_hop(upstream.headers))
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                stats.errors += 1
                upstream.close()
                if request.transport is not None:
                    request.transport.abort()
                return response
            except ConnectionResetError:
                upstream.close()  # the client left; dropping the backend connection stops its work
                return response
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
            return response
        finally:
            if upstream.content.is_eof():
                upstream.release()
            else:
                upstream.close()
