"""Benchmark servers: one script, any loop, any server style.

    python bench/servers.py --loop {asyncio,uvloop,aiouring} \\
        --mode {sockets,proto,buffered,streams,aiohttp,httptools} [--port 0]

Echo modes (the client sends, the server sends the same bytes back):
  sockets    loop.sock_accept / sock_recv / sock_sendall, one task per client
  proto      asyncio.Protocol, data_received -> transport.write
  buffered   asyncio.BufferedProtocol with a preallocated receive buffer
  streams    asyncio.start_server, reader.read / writer.write / await drain()
HTTP modes (GET / -> "Hello, World!", HTTP/1.1 keep-alive):
  aiohttp    aiohttp.web through AppRunner/TCPSite inside the chosen loop
  httptools  a minimal asyncio.Protocol server on the httptools parser

On startup the server prints "LOOP <module.Class>" and then "READY <port>",
and serves until it is killed.  If the loop cannot be created it prints
"UNAVAILABLE <reason>" to stderr and exits with status 3.

`--check` only creates the loop, runs one trivial coroutine on it, prints the
LOOP line and exits: the runner uses it to find out which loops work here.
"""

import argparse
import asyncio
import os
import resource
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loops import LOOP_NAMES, LoopUnavailable, describe, new_loop  # noqa: E402

ECHO_MODES = ("sockets", "proto", "buffered", "streams")
HTTP_MODES = ("aiohttp", "httptools")
MODES = ECHO_MODES + HTTP_MODES

# Listen backlog: the 1000-connection cases open all connections at once; the
# default of 100 would drop SYNs and add 1 s retransmit stalls to the start.
BACKLOG = 4096
# Largest single read in sockets/streams modes and the BufferedProtocol buffer.
READ_SIZE = 256 * 1024

HELLO = b"Hello, World!"


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---- echo: sockets ---------------------------------------------------------


async def _sockets_client(loop, sock):
    try:
        while True:
            data = await loop.sock_recv(sock, READ_SIZE)
            if not data:
                break
            await loop.sock_sendall(sock, data)
    except (ConnectionError, OSError):
        pass
    finally:
        sock.close()


async def _sockets_accept(loop, lsock):
    tasks = set()
    while True:
        sock, _ = await loop.sock_accept(lsock)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(_sockets_client(loop, sock))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def start_sockets(loop, host, port):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(BACKLOG)
    lsock.setblocking(False)
    accept_task = loop.create_task(_sockets_accept(loop, lsock))
    return lsock.getsockname()[1], (lsock, accept_task)


# ---- echo: Protocol ----------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


# ---- echo: BufferedProtocol --------------------------------------------------


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    __slots__ = ("transport", "buffer", "view")

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        # Copy out: the next get_buffer() hands the same memory to the loop,
        # and a loop may keep a write buffer referenced until the kernel
        # has sent it (io_uring does exactly that).
        self.transport.write(bytes(self.view[:nbytes]))

    def connection_lost(self, exc):
        self.transport = None
        self.view.release()


async def start_protocol(loop, host, port, factory):
    server = await loop.create_server(factory, host, port, backlog=BACKLOG, reuse_address=True)
    return server.sockets[0].getsockname()[1], server


# ---- echo: streams -------------------------------------------------------------


async def _streams_client(reader, writer):
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def start_streams(loop, host, port):
    server = await asyncio.start_server(_streams_client, host, port, backlog=BACKLOG, reuse_address=True)
    return server.sockets[0].getsockname()[1], server


# ---- HTTP: aiohttp -------------------------------------------------------------


async def start_aiohttp(loop, host, port):
    from aiohttp import web

    async def hello(request):
        return web.Response(text=HELLO.decode())

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG, reuse_address=True)
    await site.start()
    return runner.addresses[0][1], runner


# ---- HTTP: httptools -----------------------------------------------------------

_RESPONSE_KEEPALIVE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n%s" % (len(HELLO), HELLO)
)
_RESPONSE_CLOSE = _RESPONSE_KEEPALIVE.replace(b"keep-alive", b"close")
_RESPONSE_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive (and pipelining, responses in order) on httptools."""

    def __init__(self, httptools):
        self._httptools = httptools
        self.transport = None
        self.parser = None

    def connection_made(self, transport):
        self.transport = transport
        self.parser = self._httptools.HttpRequestParser(self)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self._httptools.HttpParserError:
            self.transport.write(_RESPONSE_400)
            self.transport.close()

    # parser callback
    def on_message_complete(self):
        if self.parser.should_keep_alive():
            self.transport.write(_RESPONSE_KEEPALIVE)
        else:
            self.transport.write(_RESPONSE_CLOSE)
            self.transport.close()

    def connection_lost(self, exc):
        self.transport = None


async def start_httptools(loop, host, port):
    import httptools

    return await start_protocol(loop, host, port, lambda: HttpProtocol(httptools))


# ---- main ----------------------------------------------------------------------


async def _check():
    await asyncio.sleep(0)
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(fut.set_result, 42)
    return await fut


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop", choices=LOOP_NAMES, required=True)
    ap.add_argument("--mode", choices=MODES, default="proto")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed on the READY line)")
    ap.add_argument("--check", action="store_true", help="only check that the loop works, then exit")
    args = ap.parse_args(argv)

    _raise_nofile()
    try:
        loop = new_loop(args.loop)
    except LoopUnavailable as exc:
        print(f"UNAVAILABLE {exc}", file=sys.stderr, flush=True)
        return 3
    asyncio.set_event_loop(loop)
    print(f"LOOP {describe(loop)}", flush=True)

    if args.check:
        try:
            if loop.run_until_complete(_check()) != 42:
                raise RuntimeError("future round trip returned the wrong value")
        except Exception as exc:
            print(f"UNAVAILABLE {args.loop}: self-check failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 3
        finally:
            loop.close()
        return 0

    starters = {
        "sockets": start_sockets,
        "proto": lambda lp, h, p: start_protocol(lp, h, p, EchoProtocol),
        "buffered": lambda lp, h, p: start_protocol(lp, h, p, EchoBufferedProtocol),
        "streams": start_streams,
        "aiohttp": start_aiohttp,
        "httptools": start_httptools,
    }
    port, keepalive = loop.run_until_complete(starters[args.mode](loop, args.host, args.port))
    print(f"READY {port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    del keepalive
    return 0


if __name__ == "__main__":
    sys.exit(main())
