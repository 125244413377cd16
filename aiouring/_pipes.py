"""A read pipe transport whose reads run on the ring.

Facts
-----
* asyncio's read pipe transport makes the fd non-blocking (``O_NONBLOCK`` is
  on the open file description, shared with whoever else holds the pipe) and
  reads it when it polls readable.
* How io_uring treats ``O_NONBLOCK`` on pollable files has changed between
  kernels: some complete an ``IORING_OP_READ`` of an empty non-blocking pipe at
  once with ``-EAGAIN``; 6.18 arms its internal poll and waits (measured).
* ``IOSQE_IO_LINK`` starts the next SQE only after this one succeeded; a
  ``POLL_ADD`` linked to a ``READ`` therefore reads when the pipe is readable
  on every kernel. If the poll fails, the read completes with ``-ECANCELED``.
  A chain cut by a submit boundary (a full SQ) runs unlinked: the read may
  then see ``-EAGAIN`` (on kernels of the first kind).
* ``IOSQE_CQE_SKIP_SUCCESS`` on the poll would save its CQE, but a head that
  carries it and fails also suppresses the CQEs of the requests linked to it
  (``req_set_fail`` sets ``REQ_F_SKIP_LINK_CQES``): a cancelled poll would
  leave our read without any completion. So the poll posts its CQE (to the
  ignored user_data).
* Cancelling by user_data does not find a linked request that has not started
  yet; cancelling by fd (``IORING_ASYNC_CANCEL_FD``) finds the poll at the head
  of the chain, which fails the read. A pending poll holds a reference to the
  file: until it is gone, closing our fd does not close the pipe (the writer
  would not see ``EPIPE``).

What this means for aiouring
----------------------------
* :class:`RingReadPipeTransport` keeps asyncio's contract exactly (checks,
  ``O_NONBLOCK``, ``max_size``, EOF and error handling, ``connection_lost``
  scheduled with ``call_soon``, the protocol called in the context the
  transport was created in) but each chunk is one linked POLL+READ, its data
  handed to ``data_received`` from the CQE walk: no ``os.read`` call, no
  selector key, no handle per event.
* One read is in flight at most, into one buffer owned by the transport and by
  the op record (which keeps it alive until the CQE, even after a close).
  asyncio's ``os.read(fd, 256 KiB)`` allocates only for the moment; a buffer
  that lives as long as the transport must be small, or a thousand children's
  stdout and stderr would pin half a GiB. A pipe read never returns more than
  the pipe holds, so the buffer is the pipe's capacity (``F_GETPIPE_SZ``, 64 KiB
  by default: the same chunks as asyncio); other files get 64 KiB.
* ``pause_reading()`` never cancels: a read already in flight completes and
  its result is held until ``resume_reading()``; no further read is armed, so
  the writer feels back-pressure as with asyncio.
* ``close()`` cancels by fd before the pipe's fd is closed (``connection_lost``
  runs one iteration later), so the pipe really closes.
* A ``-ECANCELED`` we did not ask for (the poll failed, e.g. the fd was closed
  under us) is resolved with one plain non-blocking ``os.read``, which reports
  the real error, or the data, as asyncio's reader would.
"""

from __future__ import annotations

import contextvars
import errno
import fcntl
import os
import select
import stat
import warnings
from asyncio import futures, transports
from asyncio.log import logger
from typing import Any

from ._ops import UD_IGNORE
from .ring import Ring, error_from_result, uapi

__all__ = ["RingReadPipeTransport"]

_OP_POLL_ADD = uapi.IORING_OP_POLL_ADD
_OP_READ = uapi.IORING_OP_READ
_POLLIN = select.POLLIN
_LINK = uapi.IOSQE_IO_LINK
_CURRENT_POSITION = (1 << 64) - 1   # offset -1: read at the file position (streams have none)
_EAGAIN = -errno.EAGAIN
_ECANCELED = -errno.ECANCELED


class _PipeRead:
    """The op record of one linked POLL+READ: owns the buffer until its CQE."""

    __slots__ = ("transport", "buf", "abandoned")

    def __init__(self, transport: "RingReadPipeTransport", buf) -> None:
        self.transport = transport
        self.buf = buf
        self.abandoned = False

    def __call__(self, res: int, flags: int) -> None:
        if self.abandoned:
            return   # the loop is closing: deliver nothing, arm nothing
        self.transport._read_done(self, res)

    def abandon(self) -> None:
        self.abandoned = True


class RingReadPipeTransport(transports.ReadTransport):
    """asyncio's ``_UnixReadPipeTransport`` with its reads on the ring."""

    max_size = 256 * 1024  # as asyncio: at most this much per read
    _other_buf_size = 64 * 1024   # sockets, ttys, devices: see the facts above

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None) -> None:
        super().__init__(extra)
        self._extra['pipe'] = pipe  # type: ignore[attr-defined]  # BaseTransport's, untyped
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._protocol = protocol
        self._closing = False
        self._paused = False
        self._read_ud = 0          # the read in flight, 0 when none
        self._held: Any = None     # a result that arrived while paused
        self._buf = None
        self._context = contextvars.copy_context()

        mode = os.fstat(self._fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            self._pipe = None
            self._fileno = None
            self._protocol = None
            raise ValueError("Pipe transport is for pipes/sockets only.")

        os.set_blocking(self._fileno, False)
        self._buf_size = self._other_buf_size
        if stat.S_ISFIFO(mode):
            try:
                self._buf_size = min(self.max_size, fcntl.fcntl(self._fileno, fcntl.F_GETPIPE_SZ))
            except OSError:
                pass

        self._loop.call_soon(self._protocol.connection_made, self)
        # only start reading when connection_made() has been called
        self._loop.call_soon(self._arm)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            self._loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]

    # ---- reading ----------------------------------------------------------

    def _arm(self) -> None:
        if self._read_ud or not self.is_reading():
            return
        loop = self._loop
        if self._buf is None:
            self._buf = Ring.alloc("char[]", self._buf_size)
        ud = loop._ops.register(_PipeRead(self, self._buf))
        ring = loop._ring
        ring.prep(_OP_POLL_ADD, self._fileno, Ring.null, 0, 0, _POLLIN, UD_IGNORE, sqe_flags=_LINK)
        ring.prep(_OP_READ, self._fileno, self._buf, self._buf_size, _CURRENT_POSITION, 0, ud)
        self._read_ud = ud

    def _read_directly(self):
        try:
            return os.read(self._fileno, self.max_size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return exc

    def _read_done(self, op: _PipeRead, res: int) -> None:
        """Outcomes: bytes (data, or b"" for EOF), an OSError, or None (nothing
        to deliver; read again)."""
        self._read_ud = 0
        if self._closing:
            return   # closed meanwhile: asyncio drops unread data too
        if res >= 0:
            outcome: Any = Ring.unpack(op.buf, res) if res else b""
        elif res == _EAGAIN:
            outcome = None
        elif res == _ECANCELED:
            outcome = self._read_directly()   # not our cancel: the poll failed
        else:
            outcome = error_from_result(res)
        if self._paused and outcome is not None:
            self._held = outcome
            return
        self._deliver(outcome)

    def _deliver(self, outcome) -> None:
        if outcome is None:
            self._arm()
        elif outcome.__class__ is bytes:
            if outcome:
                # Arm first: whatever data_received does (pause, close, raise)
                # then finds the transport in the state asyncio's reader has.
                self._arm()
                self._context.run(self._protocol.data_received, outcome)
            else:
                if self._loop.get_debug():
                    logger.info("%r was closed by peer", self)
                self._closing = True
                self._loop.call_soon(self._protocol.eof_received, context=self._context.copy())
                self._loop.call_soon(self._call_connection_lost, None, context=self._context.copy())
        else:
            self._fatal_error(outcome, 'Fatal read error on pipe transport')

    def _deliver_held(self) -> None:
        outcome, self._held = self._held, None
        if self._closing or outcome is None:
            return
        if self._paused:   # paused again before this ran
            self._held = outcome
            return
        self._deliver(outcome)

    def _cancel_read(self) -> None:
        if self._read_ud and not self._loop.is_closed():
            # By fd: a by-user_data cancel cannot find a read still waiting
            # behind its poll (see the facts above).
            self._loop._ring.prep_cancel_fd(self._fileno, UD_IGNORE)

    # ---- asyncio's ReadTransport ------------------------------------------

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused = True
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held is not None:
            self._loop.call_soon(self._deliver_held)   # data_received enters self._context itself
        else:
            self._arm()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._close(None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._fileno}')
        if self._pipe is not None and getattr(self._loop, '_selector', None) is not None:
            info.append('polling' if self._read_ud else 'idle')
        elif self._pipe is not None:
            info.append('open')   # the loop under us has closed
        else:
            info.append('closed')
        return '<{}>'.format(' '.join(info))

    def __del__(self, _warn=warnings.warn) -> None:
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()

    def _fatal_error(self, exc, message='Fatal error on pipe transport') -> None:
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._close(exc)

    def _close(self, exc) -> None:
        self._closing = True
        self._held = None
        self._cancel_read()
        self._loop.call_soon(self._call_connection_lost, exc, context=self._context.copy())

    def _call_connection_lost(self, exc) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._pipe.close()
            self._pipe = None
            self._protocol = None
            self._loop = None

