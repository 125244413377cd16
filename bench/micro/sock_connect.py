"""loop.sock_connect + loop.sock_accept: TCP connections on loopback, one at
a time (aiouring: CONNECT and ACCEPT on the ring)."""

import asyncio
import socket
import sys

from _common import main

CONNECTIONS = 100


async def batch(loop):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    address = listener.getsockname()
    with listener:
        for _ in range(CONNECTIONS):
            client = socket.socket()
            client.setblocking(False)
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            await loop.sock_connect(client, address)
            conn, _ = await accepting
            conn.close()
            client.close()
    return CONNECTIONS


if __name__ == "__main__":
    sys.exit(main("sock_connect", batch))
