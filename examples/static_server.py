"""A small static file server: asyncio streams for HTTP, aiouring for the files.

    python examples/static_server.py --root /srv/www --loop aiouring --port 8000

``GET /path`` answers with the file under ``--root`` (404 when there is none,
403 for paths that leave the root), streaming it in 256 KiB chunks read with
``aiouring.open`` while ``drain()`` paces the writes to the client, so a large
file never sits in memory whole. HTTP/1.0 style: one request per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import urllib.parse

import aiouring

from _loops import add_loop_argument, run

_CHUNK = 256 * 1024


async def _respond_error(writer: asyncio.StreamWriter, status: str) -> None:
    body = f"{status}\n".encode()
    writer.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    await writer.drain()


def _resolve(root: str, target: str) -> str | None:
    """The file ``target`` names under ``root``, or None when it escapes it."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
    full = os.path.realpath(os.path.join(root, path.lstrip("/")))
    return full if full == root or full.startswith(root + os.sep) else None


async def handle(root: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request_line = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass    # headers: not needed to serve a file
        if len(request_line) != 3 or request_line[0] != "GET":
            return await _respond_error(writer, "400 Bad Request")
        path = _resolve(root, request_line[1])
        if path is None:
            return await _respond_error(writer, "403 Forbidden")
        try:
            f = await aiouring.open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return await _respond_error(writer, "404 Not Found")
        async with f:
            size = (await f.stat()).st_size
            writer.write(f"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
            while chunk := await f.read(_CHUNK):
                writer.write(chunk)
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(root: str, host: str, port: int) -> None:
    root = os.path.realpath(root)
    server = await asyncio.start_server(lambda r, w: handle(root, r, w), host, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    address = server.sockets[0].getsockname()
    print(f"serving {root} on {address[0]}:{address[1]} ({type(loop).__module__})", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_loop_argument(parser)
    parser.add_argument("--root", default=".", help="directory to serve (default: the current one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    run(serve(args.root, args.host, args.port), args.loop)


if __name__ == "__main__":
    main()
