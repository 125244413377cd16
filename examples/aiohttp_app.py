"""An aiohttp application, served on the loop of your choice.

Stand-alone (``web.run_app`` on an aiouring loop):

    python examples/aiohttp_app.py --loop aiouring --port 8080

Under gunicorn, one aiouring loop per worker process:

    gunicorn --chdir examples aiohttp_app:app_factory \\
        --worker-class aiouring.worker.GunicornWebWorker --workers 2 --bind 127.0.0.1:8080

Routes: ``GET /`` greets, ``GET /loop`` names the loop serving the request,
``POST /sha256`` hashes the request body as it streams in, ``GET /ws`` echoes
websocket messages.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket

from aiohttp import WSMsgType, web

from _loops import add_loop_argument, loop_factory


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello from aiohttp\n")


async def which_loop(request: web.Request) -> web.Response:
    loop = asyncio.get_running_loop()
    return web.json_response({"loop": type(loop).__module__, "pid": os.getpid()})


async def sha256(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def websocket_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/", hello)
    app.router.add_get("/loop", which_loop)
    app.router.add_post("/sha256", sha256)
    app.router.add_get("/ws", websocket_echo)
    return app


async def app_factory() -> web.Application:
    """For gunicorn: aiohttp's workers call an async factory inside the worker's loop."""
    return create_app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_loop_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    # Binding here (not in run_app) lets --port 0 report the port it got.
    sock = socket.create_server((args.host, args.port), reuse_port=False)
    host, port = sock.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    # run_app runs the app until SIGINT/SIGTERM and then closes the loop.
    web.run_app(create_app(), sock=sock, loop=loop_factory(args.loop)(), print=None)


if __name__ == "__main__":
    main()
