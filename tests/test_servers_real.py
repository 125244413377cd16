"""Real servers on the loop under test, in-process: aiohttp (server and client)
and uvicorn (with its h11/httptools protocol on our transports), serving
concurrent requests whose bodies are checked by hash."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)
from tests.test_tcp import payload

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


def test_aiohttp_server_and_client(loop, loop_kind):
    bodies = [payload(n, seed=n) for n in (0, 1, 1000, 65536, 1_000_003, 4 * 1024 * 1024)]

    async def digest(request):
        h = hashlib.sha256()
        async for chunk in request.content.iter_chunked(65536):
            h.update(chunk)
        return web.Response(text=h.hexdigest())

    async def blob(request):
        n = int(request.match_info["n"])
        return web.Response(body=payload(n, seed=n))

    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(50):
            await resp.write(payload(10_000, seed=i))
        await resp.write_eof()
        return resp

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_bytes(hashlib.sha256(msg.data).digest())
        return sock

    async def main():
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.add_routes([web.post("/digest", digest), web.get("/blob/{n}", blob),
                        web.get("/stream", stream), web.get("/ws", ws)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        if loop_kind == "aiouring":
            assert len(loop._acceptors) == 1   # multishot accept in use
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async def post(body):
                async with session.post(base + "/digest", data=body) as r:
                    assert r.status == 200
                    assert await r.text() == hashlib.sha256(body).hexdigest()

            async def get(n):
                async with session.get(f"{base}/blob/{n}") as r:
                    assert await r.read() == payload(n, seed=n)

            await asyncio.gather(*(post(b) for b in bodies * 3), *(get(n) for n in (5, 70_000, 3_000_000) * 4))
            async with session.get(base + "/stream") as r:
                assert await r.read() == b"".join(payload(10_000, seed=i) for i in range(50))
            async with session.ws_connect(base + "/ws") as sock:
                for b in bodies[1:4]:
                    await sock.send_bytes(b)
                    msg = await sock.receive()
                    assert msg.data == hashlib.sha256(b).digest()
        await runner.cleanup()

    run(loop, main(), timeout=60)


def test_uvicorn_in_process(loop, loop_kind):
    uvicorn = pytest.importorskip("uvicorn")

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        h = hashlib.sha256()
        more = True
        while more:
            msg = await receive()
            h.update(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = h.hexdigest().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, loop="none", lifespan="on", log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)

        async def request(body: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            answer = await reader.readexactly(64)
            writer.close()
            await writer.wait_closed()
            return answer

        bodies = [payload(n, seed=n) for n in (0, 10, 100_000, 2_000_000)] * 5
        answers = await asyncio.gather(*(request(b) for b in bodies))
        assert answers == [hashlib.sha256(b).hexdigest().encode() for b in bodies]
        server.should_exit = True
        await serving
        sock.close()

    run(loop, main(), timeout=60)
