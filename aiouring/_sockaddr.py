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


_SUN_PATH_MAX = 108    # sizeof(struct sockaddr_un.sun_path) on Linux
_NATIVE = sys.byteorder


def encode(family: int, address):
    """The raw ``struct sockaddr`` for ``address`` as Python's socket module
    would build it, or None for anything it does not handle the plain way
    (host names, scoped IPv6 text, path-like objects, other families, bad
    values): the caller then lets the socket module do it, so the errors are
    exactly Python's."""
    try:
        if family == _AF_INET:
            host, port = address
            if port.__class__ is not int or not 0 <= port <= 0xFFFF:
                return None
            return (_AF_INET.to_bytes(2, _NATIVE) + port.to_bytes(2, "big")
                    + socket.inet_pton(_AF_INET, host) + bytes(8))
        if family == _AF_INET6:
            if address.__class__ is not tuple or not 2 <= len(address) <= 4:
                return None
            host, port, flowinfo, scope_id = (tuple(address) + (0, 0))[:4]
            for value, limit in ((port, 0xFFFF), (flowinfo, 0xFFFFF), (scope_id, 0xFFFFFFFF)):
                if value.__class__ is not int or not 0 <= value <= limit:
                    return None
            return (_AF_INET6.to_bytes(2, _NATIVE) + port.to_bytes(2, "big") + flowinfo.to_bytes(4, "big")
                    + socket.inet_pton(_AF_INET6, host) + scope_id.to_bytes(4, _NATIVE))
        if family == _AF_UNIX:
            if address.__class__ is str:
                path = address.encode("utf-8", "surrogateescape")   # what os.fsencode does on Linux
            elif address.__class__ in (bytes, bytearray):
                path = bytes(address)
            else:
                return None
            # Python's limits and length: a file path shorter than sun_path
            # (the kernel terminates it), an abstract name up to its size.
            if not path or len(path) >= _SUN_PATH_MAX + (path[:1] == b"\0"):
                return None
            return _AF_UNIX.to_bytes(2, _NATIVE) + path
    except (TypeError, ValueError, OSError):
        return None
    return None
