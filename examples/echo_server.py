"""A TCP echo server, written twice: as an asyncio Protocol and with streams.

    python examples/echo_server.py --loop aiouring --mode proto --port 25000
    python examples/echo_server.py --loop uvloop --mode streams

It prints ``listening on HOST:PORT`` once it accepts connections (``--port 0``,
the default, picks a free port) and exits cleanly on SIGINT or SIGTERM.
The code is plain asyncio: nothing in it knows which loop runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

from _loops import add_loop_argument, run


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        # Returning False closes our side once the queued echo is written.
        return False


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()    # respect the peer's pace: bounded memory
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(mode: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    if mode == "proto":
        server = await loop.create_server(EchoProtocol, host, port)
    else:
        server = await asyncio.start_server(echo_stream, host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    address = server.sockets[0].getsockname()
    print(f"listening on {address[0]}:{address[1]} ({type(loop).__module__})", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_loop_argument(parser)
    parser.add_argument("--mode", choices=("proto", "streams"), default="proto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(args.mode, args.host, args.port), args.loop)


if __name__ == "__main__":
    main()
