"""The Host-routing gateway: routing and its own error answers, faithful proxying, unbuffered
streaming, least-busy balancing, counters, and faults of the emulated replicas behind it.

Backends are emulator replicas or small aiohttp apps on OS-chosen loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from testbed.config import EmulatorModel
from testbed.emulator import ReplicaPool
from testbed.errors import TestbedError
from testbed.gateway import Gateway, host_key

pytestmark = pytest.mark.unit

T = TypeVar("T")
CHAT = "/v1/chat/completions"
HOST = "qwen-chat-default.example.com"


def run(coro: Awaitable[T], timeout_s: float = 15.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def model(**overrides: Any) -> EmulatorModel:
    values: dict[str, Any] = {"ttft_base_ms": 5, "ttft_per_running_ms": 0, "itl_base_ms": 2,
                              "itl_per_running_ms": 0, "load_delay_s": 0, "default_max_tokens": 8}
    return EmulatorModel(**{**values, **overrides})


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "qwen", "messages": [{"role": "user", "content": "测试一下"}], **extra}


@contextlib.asynccontextmanager
async def bed(emulator: EmulatorModel, names: tuple[str, ...] = ("qwen", "qwen")
              ) -> AsyncIterator[tuple[Gateway, ReplicaPool, aiohttp.ClientSession]]:
    async with ReplicaPool(emulator, base_port=0, seed=3) as pool:
        for i, name in enumerate(names):
            await pool.add(f"default/{name}-{i}", served_model_name=name, model_root=f"/mnt/models/{name}", labels={})
        async with Gateway() as gateway, aiohttp.ClientSession() as session:
            yield gateway, pool, session


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def test_host_key() -> None:
    assert host_key("Qwen-Chat-Default.Example.com:8080") == HOST
    assert host_key(f"{HOST}.") == HOST
    assert host_key("[::1]:80") == "[::1]"
    assert host_key(None) == ""


def test_set_routes_rejects_bad_backend_urls_and_keeps_the_old_table() -> None:
    gateway = Gateway()
    gateway.set_routes({HOST: ["http://127.0.0.1:20000"]})
    for bad in ("127.0.0.1:20001", "https://127.0.0.1:20001", "http://"):
        with pytest.raises(TestbedError, match="backend"):
            gateway.set_routes({HOST: [bad]})
    assert gateway.routes() == {HOST: ["http://127.0.0.1:20000"]}


def test_routes_by_host_header() -> None:
    async def main() -> None:
        async with bed(model(), names=("alpha", "beta")) as (gateway, pool, session):
            a, b = pool.replicas()
            gateway.set_routes({"alpha.example.com": [a.url], "BETA.example.com": [b.url + "/"]})
            assert gateway.routes() == {"alpha.example.com": [a.url], "beta.example.com": [b.url]}
            for host, name in [("Alpha.Example.COM:80", "alpha"), ("beta.example.com", "beta")]:
                async with session.get(gateway.url + "/v1/models", headers={"Host": host}) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["data"][0]["id"] == name
            stats = gateway.stats()
            assert stats["alpha.example.com"].requests == 1 and stats["beta.example.com"].requests == 1
            assert stats["alpha.example.com"].backend_requests == {a.url: 1}

            gateway.set_routes({"beta.example.com": [b.url]})
            async with session.get(gateway.url + "/v1/models", headers={"Host": "alpha.example.com"}) as resp:
                assert resp.status == 404

    run(main())


def test_gateway_errors_name_the_host() -> None:
    async def main() -> None:
        async with bed(model(), names=("qwen",)) as (gateway, pool, session):
            [replica] = pool.replicas()
            gateway.set_routes({HOST: [], "dead.example.com": [closed_port_url()],
                                "flaky.example.com": [closed_port_url(), replica.url]})
            async with session.get(gateway.url + "/v1/models", headers={"Host": "nobody.example.com"}) as resp:
                assert resp.status == 404
                body = await resp.json()
                assert body["error"] == "no service for host 'nobody.example.com'"
                assert body["host"] == "nobody.example.com"
            async with session.post(gateway.url + CHAT, json=chat_body(), headers={"Host": HOST}) as resp:
                assert resp.status == 503
                assert HOST in (await resp.json())["error"]
            async with session.post(gateway.url + CHAT, json=chat_body(), headers={"Host": "dead.example.com"}) as resp:
                assert resp.status == 502
                assert "dead.example.com" in (await resp.json())["error"]
            for _ in range(4):  # a refused connection is retried on the next backend
                async with session.post(gateway.url + CHAT, json=chat_body(),
                                        headers={"Host": "flaky.example.com"}) as resp:
                    assert resp.status == 200
            stats = gateway.stats()
            assert gateway.unknown_host_requests == 1
            assert (stats[HOST].requests, stats[HOST].errors) == (1, 1)
            assert stats["dead.example.com"].errors == 1
            assert (stats["flaky.example.com"].requests, stats["flaky.example.com"].errors) == (4, 0)

    run(main())


def test_proxies_method_path_query_headers_and_body() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "path_qs": request.raw_path,
                                  "headers": dict(request.headers), "body": (await request.read()).decode()},
                                 headers={"X-Backend": "echo", "Connection": "keep-alive"})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        async with serve_app(app) as url, Gateway() as gateway, aiohttp.ClientSession() as session:
            gateway.set_routes({HOST: [url]})
            headers = {"Host": f"{HOST}:18000", "X-Keep": "1", "X-Drop-Me": "1", "Connection": "X-Drop-Me",
                       "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic eA=="}
            async with session.put(gateway.url + "/some/path?a=1&b=%20x&c", data=b'{"k": "v"}',
                                   headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["X-Backend"] == "echo"
                seen = await resp.json()
        assert seen["method"] == "PUT" and seen["path_qs"] == "/some/path?a=1&b=%20x&c"
        assert seen["body"] == '{"k": "v"}'
        forwarded = {k.lower(): v for k, v in seen["headers"].items()}
        assert forwarded["x-keep"] == "1" and forwarded["host"] == f"{HOST}:18000"
        assert forwarded["x-forwarded-for"] == "127.0.0.1"
        for dropped in ("x-drop-me", "keep-alive", "proxy-authorization"):
            assert dropped not in forwarded

    run(main())


def test_streams_are_not_buffered() -> None:
    async def main() -> None:
        may_finish = asyncio.Event()

        async def slow_sse(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: first\n\n")
            await asyncio.wait_for(may_finish.wait(), 5)  # the last chunk waits for the client
            await resp.write(b"data: last\n\n")
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post(CHAT, slow_sse)
        async with serve_app(app) as url, Gateway() as gateway, aiohttp.ClientSession() as session:
            gateway.set_routes({HOST: [url]})
            async with session.post(gateway.url + CHAT, json={}, headers={"Host": HOST}) as resp:
                first = await asyncio.wait_for(resp.content.readline(), 2)
                assert first == b"data: first\n"
                assert gateway.stats()[HOST].in_flight == 1
                may_finish.set()
                rest = await resp.read()
            assert rest == b"\ndata: last\n\n"
            assert gateway.stats()[HOST].in_flight == 0

    run(main())


def test_emulator_sse_through_the_gateway() -> None:
    async def main() -> None:
        async with bed(model(), names=("qwen",)) as (gateway, pool, session):
            gateway.set_routes({HOST: [r.url for r in pool.replicas()]})
            body = chat_body(max_tokens=5, stream=True, stream_options={"include_usage": True})
            async with session.post(gateway.url + CHAT, json=body, headers={"Host": HOST}) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                lines = [line.strip() async for line in resp.content if line.strip()]
            assert lines[-1] == b"data: [DONE]"
            assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 5

    run(main())


def test_least_busy_backend_wins_and_ties_go_round_robin() -> None:
    async def main() -> None:
        async with bed(model(itl_base_ms=20)) as (gateway, pool, session):
            a, b = pool.replicas()
            gateway.set_routes({HOST: [a.url, b.url]})
            headers = {"Host": HOST}

            for _ in range(4):  # idle backends: alternate
                async with session.post(gateway.url + CHAT, json=chat_body(max_tokens=1), headers=headers) as resp:
                    assert resp.status == 200
            assert gateway.stats()[HOST].backend_requests == {a.url: 2, b.url: 2}

            async def stream(tokens: int) -> None:
                async with session.post(gateway.url + CHAT, json=chat_body(max_tokens=tokens, stream=True),
                                        headers=headers) as resp:
                    await resp.read()

            long = asyncio.create_task(stream(25))
            await asyncio.sleep(0.05)
            busy, idle = (a, b) if a.running else (b, a)
            before = gateway.stats()[HOST].backend_requests
            for _ in range(3):  # one backend is busy: every short request goes to the other
                async with session.post(gateway.url + CHAT, json=chat_body(max_tokens=1), headers=headers) as resp:
                    assert resp.status == 200
            after = gateway.stats()[HOST].backend_requests
            assert after[idle.url] - before[idle.url] == 3 and after[busy.url] == before[busy.url]

            spread = [asyncio.create_task(stream(10)) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert (a.running, b.running) == (2, 2)
            assert gateway.stats()[HOST].backend_in_flight == {a.url: 2, b.url: 2}
            assert gateway.stats()[HOST].in_flight == 4
            await asyncio.gather(long, *spread)
            assert gateway.stats()[HOST].in_flight == 0

    run(main())


def test_replica_faults_pass_through_and_count_as_errors() -> None:
    async def main() -> None:
        async with bed(model(), names=("qwen",)) as (gateway, pool, session):
            [replica] = pool.replicas()
            gateway.set_routes({HOST: [replica.url]})
            headers = {"Host": HOST}
            pool.set_fault(replica.key, error_rate=1.0, status=500)
            async with session.post(gateway.url + CHAT, json=chat_body(), headers=headers) as resp:
                assert resp.status == 500
                assert (await resp.json())["type"] == "InternalServerError"

            pool.set_fault(replica.key, close_stream_after_tokens=2)
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.post(gateway.url + CHAT, json=chat_body(max_tokens=10, stream=True),
                                        headers=headers) as resp:
                    assert resp.status == 200
                    await resp.read()
            assert gateway.stats()[HOST].errors == 2

            pool.set_fault(replica.key)
            async with session.post(gateway.url + CHAT, json=chat_body(), headers=headers) as resp:
                assert resp.status == 200
            assert gateway.stats()[HOST].errors == 2 and gateway.stats()[HOST].requests == 3

    run(main())


def test_a_client_leaving_the_gateway_frees_the_replica() -> None:
    async def main() -> None:
        async with bed(model(itl_base_ms=20), names=("qwen",)) as (gateway, pool, session):
            [replica] = pool.replicas()
            gateway.set_routes({HOST: [replica.url]})
            resp = await session.post(gateway.url + CHAT, json=chat_body(max_tokens=100, stream=True),
                                      headers={"Host": HOST})
            await resp.content.readline()
            assert replica.running == 1
            resp.close()
            for _ in range(100):
                if replica.running == 0 and gateway.stats()[HOST].in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert replica.running == 0 and gateway.stats()[HOST].in_flight == 0

    run(main())


def test_concurrent_load_like_hey() -> None:
    async def main() -> None:
        async with bed(model(ttft_base_ms=1, itl_base_ms=0.5)) as (gateway, pool, session):
            gateway.set_routes({HOST: [r.url for r in pool.replicas()]})
            body = chat_body(max_tokens=10, temperature=0.7, top_p=0.9, seed=10)

            async def worker() -> list[int]:
                statuses = []
                for _ in range(20):
                    async with session.post(gateway.url + CHAT, json=body, headers={"Host": HOST}) as resp:
                        await resp.read()
                        statuses.append(resp.status)
                return statuses

            results = await asyncio.gather(*(worker() for _ in range(5)))
            assert all(status == 200 for statuses in results for status in statuses)
            stats = gateway.stats()[HOST]
            assert stats.requests == 100 and stats.errors == 0 and stats.in_flight == 0
            assert sum(stats.backend_requests.values()) == 100 and len(stats.backend_requests) == 2

    run(main())
