"""sock_connect, sock_recvfrom, sock_recvfrom_into and sock_sendto as native
ring operations (``IORING_OP_CONNECT``, ``RECVMSG``, ``SENDMSG``).

Facts
-----
* ``IORING_OP_CONNECT`` (5.5) on a non-blocking socket waits inside the kernel
  (it arms an internal poll on ``EINPROGRESS``) and completes with 0 or the
  connect error (what ``SO_ERROR`` would say). Some 5.x kernels hand
  ``-EINPROGRESS``/``-EALREADY`` back instead.
* ``RECVMSG``/``SENDMSG`` (5.3) read the ``msghdr``, its iovec and the
  sockaddr buffer while the request is in flight; the kernel writes the
  sender's address and its length into our ``msghdr`` on receive.
* A cancelled receive may still complete with a datagram (the cancel only
  asks); that datagram is off the socket and would be lost.

What this means for aiouring
----------------------------
* Each op record owns its ``msghdr``, iovec, sockaddr storage and data buffer
  until its CQE. Sent data is copied into a buffer the record owns, so the
  caller's object is never exported to the kernel (datagrams are small).
* A datagram that a cancelled receive got anyway is queued per socket and
  handed to the next ``sock_recvfrom``/``sock_recvfrom_into``, whole, in
  order; later receives first wait for such cancelled receives to land.
* Like asyncio, each method first makes the non-blocking syscall and uses the
  ring only to wait (see ``_EAGER`` in loop.py).
* Anything unusual (host names for ``sock_sendto``, scoped IPv6 text, path-like
  Unix addresses, other families, bad values) goes to asyncio's own
  implementation, so the results and errors are exactly asyncio's.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import operator
import socket
import weakref
from asyncio import base_events
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

from . import _sockaddr
from ._ops import FutureOp, FutureRecord
from .ring import Ring, error_from_result, uapi

__all__ = ["SocketOpsMixin"]

_OP_CONNECT = uapi.IORING_OP_CONNECT
_OP_RECVMSG = uapi.IORING_OP_RECVMSG
_OP_SENDMSG = uapi.IORING_OP_SENDMSG
_MSG_NOSIGNAL = socket.MSG_NOSIGNAL
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_HAS_IPv6 = base_events._HAS_IPv6
_CancelledError = asyncio.CancelledError
_SOCKADDR_SIZE = Ring.sizeof("struct sockaddr_storage")
_MAX_RW = 0x7FFFF000   # the kernel's per-call maximum (MAX_RW_COUNT)
# Errors asyncio reports as "Connect call failed <address>" because they come
# from SO_ERROR after the connect went asynchronous.
_ASYNC_CONNECT_ERRORS = frozenset((errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                                   errno.ENETUNREACH, errno.ECONNRESET, errno.ECONNABORTED))


class _MsgBuffers:
    """One msghdr with one iovec and a sockaddr, all owned together."""

    __slots__ = ("msg", "iov", "name", "data")

    def __init__(self, data, length: int, name=None) -> None:
        self.data = data
        self.iov = iov = Ring.alloc("struct iovec *")
        iov.iov_base = data
        iov.iov_len = length
        self.msg = msg = Ring.alloc("struct msghdr *")
        msg.msg_iov = iov
        msg.msg_iovlen = 1
        if name is None:   # receiving: room for any sender address
            self.name = Ring.alloc("struct sockaddr_storage *")
            msg.msg_namelen = _SOCKADDR_SIZE
        else:
            self.name = Ring.alloc("char[]", name)
            msg.msg_namelen = len(name)
        msg.msg_name = self.name

    def sender(self, family: int):
        raw = Ring.unpack(Ring.cast("char *", self.name), self.msg.msg_namelen)
        try:
            return _sockaddr.decode(family, raw)
        except (OSError, ValueError):
            return raw


class _RecvFromOp(FutureRecord):
    """A native recvmsg. ``into`` is the caller's buffer for
    sock_recvfrom_into: filled only on success, never by a late completion."""

    __slots__ = ("bufs", "sock", "loop", "into")

    def __init__(self, fut, bufs: _MsgBuffers, sock, loop, into=None) -> None:
        self.fut = fut
        self.bufs = bufs
        self.sock = sock
        self.loop = loop
        self.into = into

    def __call__(self, res: int, flags: int) -> None:
        fut = self.fut
        if fut.done():
            if res >= 0:
                self.loop._stash_datagram(self.sock, Ring.unpack(self.bufs.data, res),
                                          self.bufs.sender(self.sock.family))
            self.loop._settle_late_read(self.sock)
        elif res < 0:
            fut.set_exception(error_from_result(res))
        elif self.into is None:
            fut.set_result((Ring.unpack(self.bufs.data, res), self.bufs.sender(self.sock.family)))
        else:
            self.into[:res] = Ring.cbuffer(self.bufs.data, res)
            fut.set_result((res, self.bufs.sender(self.sock.family)))


def _is_real_socket(sock) -> bool:
    # type(), not isinstance(): a Mock(spec=socket.socket) passes isinstance
    # but has no fd the kernel knows; asyncio's own tests pass such mocks and
    # expect asyncio's path (which calls their connect()/sendto()).
    return issubclass(type(sock), socket.socket)


class SocketOpsMixin:
    """Mixed into :class:`aiouring.loop.Loop`; uses its op table, the
    per-socket late-read bookkeeping and ``_check_sock``."""

    # ---- datagrams a cancelled receive got anyway ---------------------------

    def _stash_datagram(self, sock, data: bytes, address) -> None:
        stash = self.__dict__.get("_dgram_stash")
        if stash is None:
            stash = self._dgram_stash = weakref.WeakKeyDictionary()
        stash.setdefault(sock, collections.deque()).append((data, address))

    def _take_datagram(self, sock):
        stash = self.__dict__.get("_dgram_stash")
        if not stash:
            return None
        queue = stash.get(sock)
        if not queue:
            return None
        item = queue.popleft()
        if not queue:
            del stash[sock]
        return item

    def _abandon_recvfrom(self, ud: int, sock, fut, bufs: _MsgBuffers) -> None:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            # Completed, but the task was cancelled before it resumed: this
            # datagram came before any stashed since, so it goes in front.
            res, address = fut.result()
            data = res if res.__class__ is bytes else Ring.unpack(bufs.data, res)
            self._stash_datagram(sock, data, address)
            self._dgram_stash[sock].rotate(1)
            return
        if ud not in self._ops.handlers:
            return   # its CQE came first and already stashed what it got
        self._ops.cancel(ud)
        self._count_late_read(sock)

    # ---- receive ------------------------------------------------------------

    async def _ring_recvfrom(self, sock: socket.socket, nbytes: int, into: Any) -> Any:
        """Wait on the ring for a datagram: one RECVMSG into buffers of ours
        (see _RecvFromOp), copied into ``into`` for sock_recvfrom_into."""
        self._check_ring_thread()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        n = min(nbytes, _MAX_RW)
        bufs = _MsgBuffers(Ring.alloc("char[]", n or 1), n)
        fut = self.create_future()
        ud = self._register_op(_RecvFromOp(fut, bufs, sock, self, into))
        self._prep(_OP_RECVMSG, fd, bufs.msg, 1, 0, 0, ud)
        try:
            return await fut
        except _CancelledError:
            self._abandon_recvfrom(ud, sock, fut, bufs)
            raise

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive a datagram of up to ``bufsize`` bytes: ``(data, address)``."""
        self._check_sock(sock)
        if bufsize.__class__ is not int:
            bufsize = operator.index(bufsize)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        if self._late_reads:
            await self._wait_late_read(sock)
        item = self._take_datagram(sock)
        if item is not None:
            data, address = item
            return data[:bufsize], address
        try:
            return sock.recvfrom(bufsize)   # the eager attempt (loop.py's _EAGER)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._ring_recvfrom(sock, bufsize, None)

    async def sock_recvfrom_into(self, sock: socket.socket, buf: WriteableBuffer, nbytes: int = 0) -> tuple[int, Any]:
        """Receive a datagram into ``buf``: ``(nbytes, address)``."""
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        if nbytes.__class__ is not int:
            nbytes = operator.index(nbytes)
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise TypeError("recvfrom_into() argument 'buffer' must be read-write bytes-like object, "
                            f"not {type(buf).__name__}")
        if nbytes < 0:
            raise ValueError("negative buffersize in recvfrom_into")
        if nbytes > view.nbytes:
            raise ValueError("nbytes is greater than the length of the buffer")
        if self._late_reads:
            await self._wait_late_read(sock)
        item = self._take_datagram(sock)
        if item is not None:
            data, address = item
            data = data[:nbytes]
            view[:len(data)] = data
            return len(data), address
        try:
            return sock.recvfrom_into(view, nbytes)   # the eager attempt
        except (BlockingIOError, InterruptedError):
            pass
        return await self._ring_recvfrom(sock, nbytes, view)

    # ---- send -----------------------------------------------------------------

    async def sock_sendto(self, sock: socket.socket, data: ReadableBuffer, address: Any) -> int:
        """Send a datagram to ``address``; return the number of bytes sent."""
        self._check_sock(sock)
        try:
            return sock.sendto(data, address)   # the eager attempt
        except (BlockingIOError, InterruptedError):
            pass
        raw = _sockaddr.encode(sock.family, address)
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            view = None
        if raw is None or view is None or not _is_real_socket(sock):
            return await super().sock_sendto(sock, data, address)
        self._check_ring_thread()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        n = view.nbytes
        copy = Ring.alloc("char[]", n or 1)
        if n:
            Ring.cbuffer(copy, n)[:] = view
        bufs = _MsgBuffers(copy, n, raw)
        fut = self.create_future()
        ud = self._register_op(FutureOp(fut, bufs))
        self._prep(_OP_SENDMSG, fd, bufs.msg, 1, 0, _MSG_NOSIGNAL, ud)
        try:
            return await fut
        except _CancelledError:
            self._ops.cancel(ud)
            raise

    # ---- connect -------------------------------------------------------------

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect ``sock`` to ``address`` (host names are resolved first)."""
        if not _is_real_socket(sock):
            return await super().sock_connect(sock, address)
        self._check_sock(sock)
        if sock.family == _AF_INET or (_HAS_IPv6 and sock.family == _AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        raw = _sockaddr.encode(sock.family, address)
        if raw is None:
            # asyncio's steps after its resolution (not super(), which would
            # resolve the already resolved address again).
            fut = self.create_future()
            self._sock_connect(fut, sock, address)
            try:
                return await fut
            finally:
                fut = None
        self._check_ring_thread()
        fd = sock.fileno()
        name = Ring.alloc("char[]", raw)
        fut = self.create_future()
        ud = self._register_op(FutureOp(fut, name))
        self._prep(_OP_CONNECT, fd, name, 0, len(raw), 0, ud)
        # asyncio starts the connect when the coroutine starts (the SYN is out
        # before it first yields); code may rely on that, e.g. a blocking
        # accept() right after creating the task (CPython's
        # test_sock_client_racing). So this SQE does not wait for the
        # iteration's enter.
        self._ring.submit()
        try:
            await fut
        except _CancelledError:
            self._ops.cancel(ud)
            raise
        except OSError as exc:
            if exc.errno in (errno.EINPROGRESS, errno.EALREADY):
                # Older kernels hand the in-progress state back: finish the
                # way asyncio does, waiting for writability and SO_ERROR.
                return await self._finish_connect(sock, address)
            if sock.family in (_AF_INET, _AF_INET6) and exc.errno in _ASYNC_CONNECT_ERRORS:
                raise OSError(exc.errno, f"Connect call failed {address}") from None
            raise exc from None
        finally:
            fut = None   # no cycle through the exception's traceback

    async def _finish_connect(self, sock, address):
        fd = sock.fileno()
        fut = self.create_future()
        handle = self._add_writer(fd, self._sock_connect_cb, fut, sock, address)
        fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        try:
            return await fut
        finally:
            fut = None
