"""loop.sock_sendall + loop.sock_recv round trips over a Unix socketpair.

One round trip = send 64 bytes on one end, receive them on the other, send
them back, receive them: four sock_* calls, two of which wait. Measures the
native socket operations (aiouring: SEND/RECV on the ring) against readiness
plus syscall (asyncio, uvloop).
"""

import socket
import sys

from _common import main

ROUNDS = 500
PAYLOAD = b"x" * 64


async def batch(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        for _ in range(ROUNDS):
            await loop.sock_sendall(a, PAYLOAD)
            got = await loop.sock_recv(b, 1024)
            await loop.sock_sendall(b, got)
            await loop.sock_recv(a, 1024)
    return ROUNDS


if __name__ == "__main__":
    sys.exit(main("sock_pingpong", batch))
