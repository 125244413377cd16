"""Decode the raw ``struct sockaddr`` the kernel writes for accept/recvmsg into
the address objects Python's socket module returns for the same call."""

from __future__ import annotations

import os
import socket
import sys

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_AF_UNIX = socket.AF_UNIX
_SUN_PATH_OFFSET = 2   # offsetof(struct sockaddr_un, sun_path) on Linux


def decode(family: int, raw: bytes):
    """``raw`` is the sockaddr as long as the kernel said it is (addrlen).
    Raises ValueError for families this module does not know."""
    if not raw:
        return None
    if family == _AF_INET:
        return socket.inet_ntop(_AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
    if family == _AF_INET6:
        return (socket.inet_ntop(_AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big"),
                int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder))
    if family == _AF_UNIX:
        path = raw[_SUN_PATH_OFFSET:]
        if path[:1] == b"\0":
            return path   # Linux abstract namespace: bytes, as Python returns it
        return os.fsdecode(path.split(b"\0", 1)[0])
    raise ValueError(f"cannot decode addresses of family {family}")
