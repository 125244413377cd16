"""Child processes watched through the ring, without a watcher thread; the
loop-side hooks for subprocesses and pipes.

Facts
-----
* ``IORING_OP_WAITID`` (Linux 6.7) is ``waitid(2)`` as a ring operation: SQE
  ``fd`` = the pid, ``len`` = the id type (``P_PID``), ``file_index`` = the
  options (``WEXITED``), ``addr2`` = a ``siginfo_t`` the kernel fills when the
  child has exited. Like ``waitid`` without ``WNOWAIT`` it *reaps* the child.
  The result is 0, ``-ECHILD`` when somebody else reaped the child first, or
  ``-ECANCELED``. The kernel may write the ``siginfo_t`` until the CQE.
* The ``siginfo_t`` says how the child ended: ``si_code`` ``CLD_EXITED`` with
  the exit status in ``si_status``, or ``CLD_KILLED``/``CLD_DUMPED`` with the
  signal number there. asyncio reports the latter as a negative returncode.
* Before 6.7 a pidfd (``pidfd_open``, 5.3) polls readable once the child is a
  zombie; ``waitpid`` then reaps it without blocking.
* asyncio (3.10-3.13) watches children through a process-wide child watcher;
  the default one (``ThreadedChildWatcher``) blocks one thread in ``waitpid``
  per child and reaps children whose loop has closed, with a warning.

What this means for aiouring
----------------------------
* ``_make_subprocess_transport`` builds asyncio's own
  ``_UnixSubprocessTransport`` (Popen, pipes, ``wait()`` waiters, kill on
  close stay exactly asyncio's) and watches its pid with one ring operation:
  ``WAITID`` where the probe has it, else ``POLL_ADD`` on a pidfd. No thread, no
  ``SIGCHLD`` handler; the policy's child watcher is not consulted (as in
  uvloop). CPython's own watchers still work when used directly, because they
  only need the loop's reader and signal APIs, which run on ring polls.
* The op record (:class:`_WaitidWatch` / :class:`_PidfdWatch`) owns the
  ``siginfo_t`` or the pidfd until its CQE.
* The exit reaches the transport with ``call_soon``, as asyncio's watchers
  deliver it with ``call_soon_threadsafe``: never inline from the CQE walk.
* ``loop.close()`` cancels the watch. A child still running then would become
  a zombie nobody reaps, so it is handed to an *orphan reaper*: a daemon thread
  blocked in ``waitpid`` for that one pid, which is what asyncio's default
  watcher does for every child. The close never waits for the child. A close
  that cannot drain the ring (from another thread) hands over every watch
  still unanswered.
* Read pipes, and so a child's stdout/stderr, use the ring-native
  :class:`~aiouring._pipes.RingReadPipeTransport`; write pipes stay asyncio's.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from asyncio import unix_events
from typing import Any, Optional

from ._pipes import RingReadPipeTransport
from .ring import Ring, uapi

__all__ = ["ChildProcessMixin", "returncode_from_child_status"]

logger = logging.getLogger("aiouring")

_OP_WAITID = uapi.IORING_OP_WAITID
_OP_POLL_ADD = uapi.IORING_OP_POLL_ADD
_POLLIN = select.POLLIN
_CLD_EXITED = os.CLD_EXITED
_CLD_KILLED = os.CLD_KILLED
_CLD_DUMPED = os.CLD_DUMPED
# What asyncio's watchers report when the exit status was taken by someone else.
_UNKNOWN_RETURNCODE = 255


def returncode_from_child_status(code: int, status: int) -> int:
    """asyncio's returncode for a child that ended with ``si_code``/``si_status``."""
    if code == _CLD_EXITED:
        return status
    if code in (_CLD_KILLED, _CLD_DUMPED):
        return -status
    raise RuntimeError(f"aiouring internal error: unexpected si_code {code} for an exited child, please report")


def _exit_status_taken(pid: int, transport) -> int:
    # Somebody reaped the child behind our back. When it was the transport's
    # own Popen (poll()/wait() called directly) the true code is known; asyncio
    # reports 255 even then, which helps nobody.
    returncode = transport._proc.returncode if transport._proc is not None else None
    if returncode is not None:
        return returncode
    logger.warning("child process pid %d exit status already read: will report returncode 255", pid)
    return _UNKNOWN_RETURNCODE


def _reap_orphan(pid: int, loop_repr: str) -> None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return   # reaped elsewhere (subprocess.Popen.poll, for one)
    logger.warning("Loop %s that handles pid %r is closed; reaped it with returncode %r",
                   loop_repr, pid, os.waitstatus_to_exitcode(status))


def _hand_to_orphan_reaper(pid: int, loop) -> None:
    """Make sure a child whose loop closed before it exited never stays a zombie."""
    thread = threading.Thread(target=_reap_orphan, args=(pid, repr(loop)),
                              name=f"aiouring-orphan-reaper-{pid}", daemon=True)
    thread.start()


class _ChildWatch:
    """What both ways of watching a child share: delivering its returncode."""

    __slots__ = ("loop", "pid", "transport", "closing", "ud")

    def __init__(self, loop, pid: int, transport) -> None:
        self.loop = loop
        self.pid = pid
        self.transport = transport
        self.closing = False
        self.ud = 0

    def abandon(self) -> None:
        # The loop is closing and has asked the kernel to cancel us.
        self.closing = True

    def deliver(self, returncode: int) -> None:
        self.loop._child_watches.pop(self.pid, None)
        if self.closing:
            # The exit raced the loop's close (whose drain runs before the
            # loop refuses callbacks). Record it now, so that closing the
            # transport later does not try to kill a reaped pid.
            self.transport._process_exited(returncode)
            return
        self.loop.call_soon(self.transport._process_exited, returncode)

    def orphan(self) -> None:
        """The watch was cancelled by the loop's close (which has not yet
        refused callbacks): collect an exit that is already there, else leave
        the child to the orphan reaper."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.loop._child_watches.pop(self.pid, None)
            return
        if pid:
            self.deliver(os.waitstatus_to_exitcode(status))
            return
        self.loop._child_watches.pop(self.pid, None)
        _hand_to_orphan_reaper(self.pid, self.loop)

    def forget(self) -> None:
        """The ring closed with this watch unanswered (no CQE will come) and
        the loop is closed: only the reaping is left to do."""
        self.loop._ops.handlers.pop(self.ud, None)
        self.loop._child_watches.pop(self.pid, None)
        _hand_to_orphan_reaper(self.pid, self.loop)


class _WaitidWatch(_ChildWatch):
    """One ``IORING_OP_WAITID`` for one pid. Owns the siginfo_t until the CQE."""

    __slots__ = ("info",)

    def __init__(self, loop, pid: int, transport) -> None:
        super().__init__(loop, pid, transport)
        self.info = Ring.alloc("siginfo_t *")

    def submit(self) -> int:
        self.ud = ud = self.loop._ops.register(self)
        self.loop._ring.prep2(_OP_WAITID, self.pid, Ring.null, uapi.P_PID, self.info, 0, ud,
                              file_index=uapi.WEXITED)
        return ud

    def __call__(self, res: int, flags: int) -> None:
        if res == 0:
            _, code, status = Ring.child_status(self.info)
            self.deliver(returncode_from_child_status(code, status))
        elif res == -errno.ECANCELED:
            self.orphan()
        elif res == -errno.ECHILD:
            self.deliver(_exit_status_taken(self.pid, self.transport))
        else:
            # Not an outcome waitid(2) documents for our own child: watch it
            # the portable way rather than lose its exit.
            logger.warning("aiouring: IORING_OP_WAITID for pid %d failed (%s); watching a pidfd instead",
                           self.pid, os.strerror(-res))
            self.loop._child_watches[self.pid] = _PidfdWatch.start(self.loop, self.pid, self.transport)


class _PidfdWatch(_ChildWatch):
    """A ring poll on a pidfd (kernels before 6.7). Owns the pidfd until the CQE."""

    __slots__ = ("pidfd",)

    def __init__(self, loop, pid: int, transport, pidfd: int) -> None:
        super().__init__(loop, pid, transport)
        self.pidfd = pidfd

    @classmethod
    def start(cls, loop, pid: int, transport) -> "_PidfdWatch":
        watch = cls(loop, pid, transport, os.pidfd_open(pid))
        watch.submit()
        return watch

    def submit(self) -> int:
        self.ud = ud = self.loop._ops.register(self)
        self.loop._ring.prep(_OP_POLL_ADD, self.pidfd, Ring.null, 0, 0, _POLLIN, ud)
        return ud

    def forget(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        super().forget()

    def __call__(self, res: int, flags: int) -> None:
        os.close(self.pidfd)
        self.pidfd = -1
        if res == -errno.ECANCELED:
            self.orphan()
            return
        try:
            # Readable means the child is a zombie, but never risk blocking the
            # loop on a wakeup that was something else: don't wait.
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.deliver(_exit_status_taken(self.pid, self.transport))
            return
        if pid:
            self.deliver(os.waitstatus_to_exitcode(status))
        else:
            self.loop._child_watches[self.pid] = _PidfdWatch.start(self.loop, self.pid, self.transport)


class ChildProcessMixin:
    """Loop-side half: subprocess transports whose children the ring watches.

    Needs ``self._ring`` and ``self._ops`` (see :class:`aiouring.loop.Loop`).
    """

    _ring: Any
    _ops: Any
    # "waitid" or "pidfd", decided on first use from the ring's probe.
    _child_watch_kind: Optional[str] = None

    def __init__(self, *args, **kwargs) -> None:
        self._child_watches: dict = {}   # pid -> the watch in flight for it
        super().__init__(*args, **kwargs)

    def _child_watch_method(self) -> str:
        kind = self._child_watch_kind
        if kind is None:
            kind = "waitid" if self._ring.supports(_OP_WAITID) else "pidfd"
            self._child_watch_kind = kind
        return kind

    def _watch_child(self, pid: int, transport) -> None:
        watch: _ChildWatch
        if self._child_watch_method() == "waitid":
            waitid = _WaitidWatch(self, pid, transport)
            waitid.submit()
            watch = waitid
        else:
            watch = _PidfdWatch.start(self, pid, transport)
        self._child_watches[pid] = watch

    def close(self) -> None:
        super().close()  # type: ignore[misc]
        # The loop's close drained the ring, which answered every watch. If it
        # could not (closed from a thread that may not drive the ring), the
        # kernel dropped the watches unanswered: their children still need
        # reaping.
        for watch in list(self._child_watches.values()):
            watch.forget()

    # Read pipes (and so a child's stdout/stderr) read on the ring; write
    # pipes stay asyncio's: a write goes straight to os.write and polls only
    # when the pipe is full.
    _native_read_pipes = True

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        if not self._native_read_pipes:
            return super()._make_read_pipe_transport(pipe, protocol, waiter, extra)  # type: ignore[misc]
        return RingReadPipeTransport(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr, bufsize,
                                         extra=None, **kwargs):
        waiter = self.create_future()  # type: ignore[attr-defined]
        transp = unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs)
        try:
            self._watch_child(transp.get_pid(), transp)
        except BaseException:
            # Without a watch nobody would report this child's exit or reap it.
            transp.close()
            _hand_to_orphan_reaper(transp.get_pid(), self)
            raise
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

