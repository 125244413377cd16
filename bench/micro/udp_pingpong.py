"""loop.sock_sendto + loop.sock_recvfrom round trips between two UDP sockets
on loopback (aiouring: SENDMSG/RECVMSG on the ring)."""

import socket
import sys

from _common import main

ROUNDS = 500
PAYLOAD = b"x" * 64


async def batch(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.setblocking(False)
        b.setblocking(False)
        a_addr, b_addr = a.getsockname(), b.getsockname()
        for _ in range(ROUNDS):
            await loop.sock_sendto(a, PAYLOAD, b_addr)
            data, _ = await loop.sock_recvfrom(b, 1024)
            await loop.sock_sendto(b, data, a_addr)
            await loop.sock_recvfrom(a, 1024)
    return ROUNDS


if __name__ == "__main__":
    sys.exit(main("udp_pingpong", batch))
