"""Socket transports and servers on the ring: asyncio's stream transport
contract, fed by multishot accept and multishot receive.

Facts
-----
* ``IORING_OP_ACCEPT`` with ``IORING_ACCEPT_MULTISHOT`` in ``ioprio`` (5.19)
  posts one CQE per accepted connection (``res`` is the new fd) and keeps going
  while ``IORING_CQE_F_MORE`` is set. Any error (``EMFILE``, ``ENFILE``, a
  cancel) ends it: the CQE without ``F_MORE`` is the last one.
* ``IORING_OP_RECV`` with ``IORING_RECV_MULTISHOT`` (6.0) and
  ``IOSQE_BUFFER_SELECT`` receives into buffers the kernel picks from a
  provided-buffer ring; each CQE names the buffer (``flags >> 16``). It ends
  with ``res == 0`` (EOF), an error, ``-ENOBUFS`` (the buffer ring ran empty),
  or a data CQE without ``F_MORE`` (e.g. after a CQ overflow).
* An in-flight request holds a reference on the *file*, not the fd number:
  closing the fd neither cancels the request nor releases the socket (no FIN,
  a listening port stays bound) until the request is cancelled and completes.
  ``ASYNC_CANCEL`` only asks; data CQEs may still come before the final one.
* With ``DEFER_TASKRUN`` a cancel takes effect only when the thread next
  enters the ring with ``GETEVENTS``.
* ``send(2)`` on a non-blocking socket with room in its send buffer completes
  immediately; ``IORING_OP_SEND`` with ``MSG_WAITALL`` on a stream socket
  completes only when every byte is sent (or fails, reporting what was sent).

What this means for aiouring
----------------------------
* One multishot accept per listening socket, re-armed when its CQE comes
  without ``F_MORE``; out of fds it backs off like asyncio
  (``ACCEPT_RETRY_DELAY``). Closing a server cancels the accept and submits the
  cancel at once, so that the port is free when ``close()`` returns to the
  caller's next await. Connections that land after the cancel are closed.
* One multishot receive per connection, into one buffer ring shared by the
  loop. Each CQE is handled right in the CQE walk: the bytes are copied out (or,
  for a ``BufferedProtocol``, straight into the protocol's buffer) and the ring
  buffer is given back before the handler returns. ``connection_made`` and
  ``connection_lost`` are scheduled with ``call_soon``, never called from the
  walk.
* ``pause_reading()`` never cancels and never drops: data that arrives while
  paused is held, in order (with a pending EOF or error behind it), and
  delivered after ``resume_reading()``. So that a paused peer still feels TCP
  back-pressure, the multishot receive is asked to stop once more than
  ``_HOLD_LIMIT`` bytes are held; everything it delivers before its final CQE
  is kept, and resuming re-arms it.
* Writes go straight to ``send(2)`` when nothing is queued (one syscall, no op
  record: measurably cheaper in Python than an SQE and its CQE). Whatever the
  socket does not take becomes one ``SEND`` SQE (``MSG_WAITALL``) that owns an
  immutable copy until its CQE; later writes collect in a bytearray that is
  sent next, so bytes keep their order.
* ``abort()`` cancels both operations; the transport (reachable from the op
  table through its bound-method handlers) keeps the send buffer alive until
  the final CQEs arrive. ``close()`` lets queued writes finish first.
* Kernels without multishot receive or provided-buffer rings keep asyncio's
  selector transports (on ring polls).
"""

from __future__ import annotations

import collections
import errno
import inspect
import os
import socket
import sys
import warnings
from asyncio import base_events, constants, futures, protocols, sslproto, transports, trsock
from asyncio.log import logger
from typing import Optional

from ._hotpath import BufferTaker, copy_into as _copy_bytes_into, send_nowait as _send_nowait
from .ring import Ring, error_from_result, uapi

__all__ = ["RingTransportsMixin", "RingSocketTransport"]

# ---- tunables -------------------------------------------------------------
# The loop's receive buffer ring: 128 buffers of 64 KiB (8 MiB). 64 KiB takes
# a 64 KiB message (what loopback queues for one send) in one CQE; 32 KiB
# needed two CQEs, two data_received calls and two sends per message. The ring
# is recycled FIFO, so every buffer is touched in turn: its footprint is what
# the kernel copies into, and the recv copy measured twice as expensive with
# 1024 x 32 KiB (cold cache lines) as uvloop's one hot 256 KiB buffer. 128
# buffers serve one iteration's reads on 128 connections; beyond that a
# receive ends with ENOBUFS and is re-armed (the data waits in the socket).
# Incremental consumption (IOU_PBUF_RING_INC, 6.12) would pack small reads
# densely into fewer buffers: the next step.
_RECV_GROUP_ID = 0x5A
# Both can be set per loop: Loop(recv_buffers=..., recv_buffer_size=...).
DEFAULT_RECV_BUFFERS = 128
DEFAULT_RECV_BUFFER_SIZE = 64 * 1024
# Bytes held for a paused transport before its multishot receive is asked to
# stop, so that the peer feels back-pressure. About one socket buffer.
_HOLD_LIMIT = 256 * 1024

_OP_RECV = uapi.IORING_OP_RECV
_OP_SEND = uapi.IORING_OP_SEND
_OP_ACCEPT = uapi.IORING_OP_ACCEPT
_F_MORE = uapi.IORING_CQE_F_MORE
_BUFFER_SHIFT = uapi.IORING_CQE_BUFFER_SHIFT
_BUFFER_SELECT = uapi.IOSQE_BUFFER_SELECT
_RECV_MULTISHOT = uapi.IORING_RECV_MULTISHOT
_ACCEPT_MULTISHOT = uapi.IORING_ACCEPT_MULTISHOT
_SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_WAITALL
_ACCEPT_FLAGS = socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
_ECANCELED = -errno.ECANCELED
_ENOBUFS = -errno.ENOBUFS
_ACCEPT_RESOURCE_ERRORS = (-errno.EMFILE, -errno.ENFILE, -errno.ENOBUFS, -errno.ENOMEM)
_ACCEPT_TRANSIENT = (-errno.ECONNABORTED, -errno.EINTR, -errno.EAGAIN)
_EOF = object()   # a held end-of-file, delivered after the held data

_pointer = Ring.pointer
_BufferedProtocol = protocols.BufferedProtocol
_null = Ring.null

# asyncio 3.13 tells the server which transport attaches (for close_clients()).
_SERVER_ATTACH_TAKES_TRANSPORT = len(inspect.signature(base_events.Server._attach).parameters) > 1


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


class _RecvBuffers:
    """The loop's provided-buffer ring as the transports use it. Its buffers
    are owned by a :class:`~aiouring._hotpath.BufferTaker`: ``take`` turns a
    receive into bytes (without a copy when it is large) and gives the buffer
    back; ``copy_into``/``copy_out`` read a buffer without giving it back,
    ``recycle`` gives it back."""

    __slots__ = ("ring", "take", "copy_into", "copy_out", "recycle", "group_id")

    def __init__(self, buffer_ring) -> None:
        self.ring = buffer_ring
        taker = BufferTaker(buffer_ring)
        self.take = taker.take
        self.copy_into = taker.copy_into
        self.copy_out = taker.copy_out
        self.recycle = taker.recycle
        self.group_id = buffer_ring.group_id


class RingSocketTransport(transports._FlowControlMixin, transports.Transport):
    """A TCP or Unix stream transport whose reads are one multishot receive and
    whose writes are direct sends backed by ``SEND`` operations."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _sock = None   # __del__ looks at it even if __init__ failed

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None,
                 buffers=None) -> None:
        super().__init__(extra, loop)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._ops = loop._ops
        self._register = loop._ops.register
        self._prep = loop._prep
        self._recycle = buffers.recycle
        self._take = buffers.take
        self._copy_into = buffers.copy_into
        self._copy_out = buffers.copy_out
        self._group = buffers.group_id

        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        self._conn_lost = 0       # > 0 once connection_lost is scheduled
        self._closing = False     # close() or a fatal error happened
        self._eof = False         # write_eof() was called
        self._empty_waiter = None

        # Reading. _recv_ud: the multishot receive in flight (0: none);
        # _recv_stopping: we asked the kernel to cancel it; _paused:
        # pause_reading(); _held: data (then _EOF or an exception) that
        # arrived while paused, or behind such data; _read_done: EOF or a read
        # error was seen, so never re-arm.
        self._recv_ud = 0
        self._recv_stopping = False
        self._paused = False
        self._held: collections.deque = collections.deque()
        self._held_bytes = 0
        self._held_scheduled = False
        self._read_done = False

        # Writing, in three observable states:
        #   IDLE      _sending is None, _write_buf empty: write() calls send(2)
        #   SENDING   _sending (owned by the SEND op _send_ud) in flight,
        #             _write_buf collects what is written meanwhile
        #   CLOSED    _conn_lost: writes are counted and dropped
        # _sending stays referenced until the SEND's CQE, even after abort().
        self._sending = None
        self._send_ptr = None
        self._send_done = 0
        self._send_ud = 0
        self._write_buf = bytearray()

        if server is not None:
            if _SERVER_ATTACH_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[self._sock_fd] = self

        # Disable Nagle, as asyncio does: small writes go out at once.
        base_events._set_nodelay(sock)
        loop.call_soon(self._protocol.connection_made, self)
        # Only start reading once connection_made() has run.
        loop.call_soon(self._arm_recv)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=" + ("paused" if self._paused else "multishot" if self._recv_ud else "idle"))
            state = "sending" if self._sending is not None else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # ---- protocol ---------------------------------------------------------

    def set_protocol(self, protocol) -> None:
        self._buffered = isinstance(protocol, _BufferedProtocol)
        self._protocol = protocol
        self._protocol_connected = True

    def get_protocol(self):
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    # ---- reading ----------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held:
            self._schedule_held()
        else:
            self._arm_recv()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _arm_recv(self) -> None:
        if self._recv_ud or self._closing or self._paused or self._read_done or self._held:
            return
        self._recv_ud = ud = self._register(self._on_recv)
        self._prep(_OP_RECV, self._sock_fd, _null, 0, 0, 0, ud, _BUFFER_SELECT, self._group,
                   _RECV_MULTISHOT)

    def _stop_recv(self) -> None:
        if self._recv_ud and not self._recv_stopping:
            self._recv_stopping = True
            self._ops.cancel(self._recv_ud)

    def _on_recv(self, res: int, flags: int) -> None:
        """Every CQE of the multishot receive, straight from the CQE walk."""
        if res > 0:
            bid = flags >> _BUFFER_SHIFT
            if (flags & _F_MORE
                    and not (self._closing or self._paused or self._held)):
                if self._buffered:
                    # Straight from the ring buffer into the protocol's.
                    try:
                        rest = self._feed_buffered(res, bid)
                    finally:
                        self._recycle(bid)
                    if rest is not None:
                        self._hold(rest)
                    return
                # The hot path: copy out, give the buffer back, deliver.
                data = self._take(bid, res)
                try:
                    self._protocol.data_received(data)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
            self._on_recv_data(bid, res, flags)
            return
        # Without data every CQE is the final one.
        self._recv_ud = 0
        stopping = self._recv_stopping
        self._recv_stopping = False
        if self._closing:
            return
        if res == 0:
            self._read_done = True
            if self._paused or self._held:
                self._hold_event(_EOF)
            else:
                self._on_eof()
        elif res == _ENOBUFS or (res == _ECANCELED and stopping):
            # The buffer ring ran dry (we recycle as we go, so there is room
            # now), or we stopped it for a long pause: re-arm if reading is
            # due. A cancel we did not ask for is the loop closing: stay idle.
            self._arm_recv()
        elif res == _ECANCELED:
            pass
        else:
            self._read_done = True
            exc = error_from_result(res)
            if self._paused or self._held:
                self._hold_event(exc)
            else:
                self._fatal_error(exc, "Fatal read error on socket transport")

    def _on_recv_data(self, bid: int, res: int, flags: int) -> None:
        if not flags & _F_MORE:
            self._recv_ud = 0
            self._recv_stopping = False
        if self._closing:
            self._recycle(bid)     # nobody reads after close(), as in asyncio
        elif self._paused or self._held:
            # Paused, or earlier data is still held: in line behind it.
            self._hold(self._take(bid, res))
        elif self._buffered:
            try:
                rest = self._feed_buffered(res, bid)
            finally:
                self._recycle(bid)
            if rest is not None:
                self._hold(rest)
        else:
            self._data_received(self._take(bid, res))
        if not self._recv_ud:
            self._arm_recv()

    def _data_received(self, data: bytes) -> None:
        # (_on_recv's hot path has this inline: one call fewer per receive.)
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _feed_buffered(self, total: int, bid: int = 0, held: Optional[bytes] = None) -> Optional[bytes]:
        """Copy ``total`` bytes (ring buffer ``bid``, or ``held`` bytes) into
        the protocol's buffers, as many rounds as it takes. If the protocol
        pauses in between, return the rest as bytes (a ring buffer is about
        to be recycled) for the caller to hold in its place in the queue."""
        protocol = self._protocol
        offset = 0
        while offset < total:
            try:
                buf = protocol.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return None
            try:
                # One C copy; no export of the protocol's buffer outlives it
                # (it may resize that bytearray in buffer_updated()).
                if held is None:
                    n = self._copy_into(bid, offset, total - offset, buf)
                else:
                    n = _copy_bytes_into(held, offset, total - offset, buf)
            except (TypeError, ValueError) as exc:   # e.g. a read-only buffer, as recv_into() says
                self._fatal_error(exc, "Fatal read error on socket transport")
                return None
            offset += n
            try:
                protocol.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return None
            if offset < total and (self._paused or self._closing):
                if self._closing:
                    return None
                return held[offset:] if held is not None else self._copy_out(bid, offset, total - offset)
        return None

    def _hold(self, data: bytes) -> None:
        held = self._held
        if held and held[-1].__class__ is bytes and len(held[-1]) < 65536:
            held[-1] += data
        else:
            held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > _HOLD_LIMIT:
            self._stop_recv()
        if not self._paused:
            self._schedule_held()

    def _hold_event(self, event) -> None:
        self._held.append(event)
        if not self._paused:
            self._schedule_held()

    def _schedule_held(self) -> None:
        if not self._held_scheduled:
            self._held_scheduled = True
            self._loop._defer_delivery(self)

    def _deliver_held(self) -> None:
        self._held_scheduled = False
        if self._loop is None:
            return   # connection_lost already ran
        held = self._held
        while held and not self._paused and not self._closing:
            item = held.popleft()
            if item.__class__ is bytes:
                self._held_bytes -= len(item)
                if self._buffered:
                    rest = self._feed_buffered(len(item), held=item)
                    if rest is not None:
                        held.appendleft(rest)    # first in line, ahead of what came later
                        self._held_bytes += len(rest)
                else:
                    self._data_received(item)
            elif item is _EOF:
                self._on_eof()
            else:
                self._fatal_error(item, "Fatal read error on socket transport")
        if self._closing:
            held.clear()
            self._held_bytes = 0
        elif not held:
            self._arm_recv()

    def _on_eof(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # ---- writing ----------------------------------------------------------

    def write(self, data) -> None:
        if data.__class__ is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
            if isinstance(data, memoryview) and data.format != "B":
                data = data.cast("B") if data.c_contiguous else data.tobytes()
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if self._sending is None:
            try:
                n = _send_nowait(self._sock, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if n == len(data):
                return
            # The socket is full: the rest goes to the kernel as a SEND that
            # owns its own copy (the caller may reuse ``data``).
            self._start_send(bytes(data[n:]))
        else:
            self._write_buf += data
        self._maybe_pause_protocol()

    def writelines(self, list_of_data) -> None:
        if self._eof:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to writelines; sendfile is in progress")
        self.write(b"".join(list_of_data))

    def _start_send(self, buf) -> None:
        self._sending = buf
        self._send_ptr = ptr = _pointer(buf)
        self._send_done = 0
        self._send_ud = ud = self._register(self._on_sent)
        self._prep(_OP_SEND, self._sock_fd, ptr, len(buf), 0, _SEND_FLAGS, ud)

    def _on_sent(self, res: int, flags: int) -> None:
        self._send_ud = 0
        if self._conn_lost:
            self._sending = self._send_ptr = None   # the kernel is done with it
            return
        if res < 0:
            self._sending = self._send_ptr = None
            self._write_buf.clear()
            exc = error_from_result(res)
            self._fatal_error(exc, "Fatal write error on socket transport")
            if self._empty_waiter is not None and not self._empty_waiter.done():
                self._empty_waiter.set_exception(exc)
            return
        done = self._send_done + res
        buf = self._sending
        if done < len(buf):
            # Only an interrupted MSG_WAITALL send stops short: send the rest.
            self._send_done = done
            self._send_ud = ud = self._register(self._on_sent)
            self._prep(_OP_SEND, self._sock_fd, self._send_ptr + done, len(buf) - done, 0, _SEND_FLAGS, ud)
        elif self._write_buf:
            pending = self._write_buf
            self._write_buf = bytearray()
            self._start_send(pending)
        else:
            self._sending = self._send_ptr = None
        self._maybe_resume_protocol()   # may write again
        if self._sending is None:
            if self._empty_waiter is not None and not self._empty_waiter.done():
                self._empty_waiter.set_result(None)
            if self._closing:
                self._conn_lost += 1
                self._loop.call_soon(self._call_connection_lost, None)
            elif self._eof:
                self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on transport")

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if self._sending is None:
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        if self._conn_lost:
            return 0     # an aborted send may still be with the kernel, but it is not ours to count
        size = len(self._write_buf)
        if self._sending is not None:
            size += len(self._sending) - self._send_done
        return size

    # ---- closing ----------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_recv()
        self._held.clear()
        self._held_bytes = 0
        if self._sending is None:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc, message="Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    def _force_close(self, exc) -> None:
        if self._conn_lost:
            return
        if self._send_ud:
            self._ops.cancel(self._send_ud)
        self._write_buf.clear()
        if not self._closing:
            self._closing = True
        self._stop_recv()
        self._held.clear()
        self._held_bytes = 0
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            # The fd can go now: in-flight requests hold the file itself, and
            # their buffers stay with this object until their final CQEs.
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._loop = None
            server = self._server
            if server is not None:
                if _SERVER_ATTACH_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
            if self._empty_waiter is not None and not self._empty_waiter.done():
                self._empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))

    # ---- sendfile support (asyncio's _sendfile_native) ----------------------

    def _make_empty_waiter(self):
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if self._sending is None:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None


class _Acceptor:
    """The multishot accept of one listening socket."""

    __slots__ = ("loop", "sock", "fd", "factory", "sslcontext", "server", "extra_args", "ud", "closed",
                 "family", "type", "proto")

    def __init__(self, loop, sock, factory, sslcontext, server, extra_args) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.type = sock.type
        self.proto = sock.proto
        self.factory = factory
        self.sslcontext = sslcontext
        self.server = server
        self.extra_args = extra_args
        self.ud = 0
        self.closed = False

    def arm(self) -> None:
        if self.closed or self.ud:
            return
        loop = self.loop
        if loop.is_closed():
            return
        self.ud = ud = loop._ops.register(self)
        loop._prep(_OP_ACCEPT, self.fd, _null, 0, 0, _ACCEPT_FLAGS, ud, 0, 0, _ACCEPT_MULTISHOT)

    def stop(self) -> None:
        self.closed = True
        if self.ud:
            self.loop._ops.cancel(self.ud)

    def __call__(self, res: int, flags: int) -> None:
        if not flags & _F_MORE:
            self.ud = 0
        if res >= 0:
            if self.closed:
                os.close(res)   # the server is closed: nobody takes this connection
            else:
                self._accepted(res)
            if not self.ud:
                self.arm()
            return
        if self.closed or res == _ECANCELED:
            return
        loop = self.loop
        if res in _ACCEPT_TRANSIENT:
            self.arm()
            return
        exc = error_from_result(res)
        if res in _ACCEPT_RESOURCE_ERRORS:
            # Out of fds: report, then retry later rather than spin (as asyncio).
            loop.call_exception_handler({
                "message": "socket.accept() out of system resource",
                "exception": exc,
                "socket": trsock.TransportSocket(self.sock),
            })
        else:
            loop.call_exception_handler({
                "message": "aiouring: accept failed on a listening socket",
                "exception": exc,
                "socket": trsock.TransportSocket(self.sock),
            })
        loop.call_later(constants.ACCEPT_RETRY_DELAY, self.arm)

    def _accepted(self, fd: int) -> None:
        loop = self.loop
        try:
            conn = socket.socket(self.family, self.type, self.proto, fileno=fd)
        except OSError:
            os.close(fd)
            return
        conn.setblocking(False)
        if loop._debug:
            logger.debug("%r got a new connection: %r", self.server, conn)
        loop.create_task(loop._accept_connection2(
            self.factory, conn, {}, self.sslcontext, self.server, *self.extra_args))


class RingTransportsMixin:
    """The loop's side: socket transports and servers on the ring. Mixed into
    :class:`aiouring.loop.Loop` ahead of ``asyncio.SelectorEventLoop``, which
    remains the fallback for everything else."""

    _recv_buffers = None   # the shared BufferRing; False when unavailable
    _deferred_transports: list = []   # replaced per loop on first use

    def _defer_delivery(self, transport) -> None:
        """Deliver ``transport``'s held data from the ready queue, behind the
        callbacks already there; one handle per iteration for all transports."""
        pending = self._deferred_transports
        if not pending:
            self._deferred_transports = pending = []
            self.call_soon(self._deliver_deferred)
        pending.append(transport)

    def close(self) -> None:
        super().close()
        # Held deliveries that never ran must not keep their transports (and
        # sockets) alive with the closed loop; asyncio leaves such transports
        # to the garbage collector, and so do we.
        self._deferred_transports = []

    def _deliver_deferred(self) -> None:
        pending = self._deferred_transports
        self._deferred_transports = []
        for transport in pending:
            transport._deliver_held()

    def _stream_buffers(self):
        buffers = self._recv_buffers
        if buffers is None:
            buffers = False
            ring = self._ring
            if (_kernel_at_least(6, 0) and not ring.closed
                    and ring.supports(_OP_RECV) and ring.supports(_OP_SEND) and ring.supports(_OP_ACCEPT)):
                try:
                    count, size = self._recv_buffer_shape
                    buffers = _RecvBuffers(ring.buffer_ring(_RECV_GROUP_ID, count, size, provide=False))
                except OSError as exc:
                    logger.debug("aiouring: no provided-buffer ring (%s); using selector transports", exc)
            self._recv_buffers = buffers
        return buffers

    def _ring_stream_socket(self, sock) -> bool:
        return (sock.type == socket.SOCK_STREAM
                and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
                and bool(self._stream_buffers()))

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        if not self._ring_stream_socket(sock):
            return super()._make_socket_transport(sock, protocol, waiter, extra=extra, server=server)
        if sys.version_info >= (3, 12):
            self._ensure_fd_no_transport(sock)
        return RingSocketTransport(self, sock, protocol, waiter, extra, server, self._recv_buffers)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *, server_side=False,
                            server_hostname=None, extra=None, server=None, **timeouts):
        if not self._ring_stream_socket(rawsock):
            return super()._make_ssl_transport(
                rawsock, protocol, sslcontext, waiter, server_side=server_side,
                server_hostname=server_hostname, extra=extra, server=server, **timeouts)
        ssl_protocol = sslproto.SSLProtocol(self, protocol, sslcontext, waiter, server_side,
                                            server_hostname, **timeouts)
        RingSocketTransport(self, rawsock, ssl_protocol, None, extra, server, self._recv_buffers)
        return ssl_protocol._app_transport

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                       *extra_args):
        if not self._ring_stream_socket(sock):
            return super()._start_serving(protocol_factory, sock, sslcontext, server, backlog, *extra_args)
        acceptors = self.__dict__.setdefault("_acceptors", {})
        old = acceptors.get(sock)
        if old is not None and not old.closed:
            return   # already serving this socket
        acceptor = _Acceptor(self, sock, protocol_factory, sslcontext, server, extra_args)
        acceptors[sock] = acceptor
        acceptor.arm()

    def _stop_serving(self, sock) -> None:
        acceptor = self.__dict__.get("_acceptors", {}).pop(sock, None)
        if acceptor is None:
            return super()._stop_serving(sock)
        acceptor.stop()
        if not self._ring.closed and not self.is_closed():
            # Hand the cancel to the kernel now: until the accept request is
            # gone it keeps the listening socket (and its port) alive.
            try:
                self._ring.submit()
            except RuntimeError:
                pass   # not the ring's thread: the next iteration submits it
        # asyncio's own steps close the socket and, on 3.13+, unlink a Unix
        # server's path (its _remove_reader finds nothing to remove here).
        super()._stop_serving(sock)
