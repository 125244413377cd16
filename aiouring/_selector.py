"""A ``selectors`` selector whose readiness comes from io_uring polls, and the
place where each iteration's CQEs are dispatched.

Facts
-----
* ``IORING_OP_POLL_ADD`` is one-shot unless ``IORING_POLL_ADD_MULTI``, and a
  multishot poll is edge-triggered after its first event. asyncio's
  ``add_reader``/``add_writer`` are level-triggered: the callback runs on every
  iteration while the fd stays readable.
* asyncio's selector event loop (``unix_events.SelectorEventLoop``) drives its
  readers, writers, self-pipe, signals, pipes and child watchers through a
  ``selectors.BaseSelector``.

What this means for aiouring
----------------------------
* Each registered fd has one one-shot poll in flight for the union of its
  events. When it fires we report the events and queue a new poll at once; the
  new poll reaches the kernel with the next ``io_uring_enter``, which is after
  the callbacks have run. If the fd is still ready the poll completes
  immediately: level-triggered, as asyncio expects.
* ``select(timeout)`` is the loop's single ``io_uring_enter``: it submits every
  queued SQE (polls and native operations alike), waits, and dispatches the
  whole CQE batch. Native operations are finished right here (futures resolved,
  transports called); poll events are returned to asyncio as selector events.
"""

from __future__ import annotations

import collections
import errno as _errno
import logging
import os as _os
import selectors
import stat as _stat
import select as _select
import time
from threading import get_ident as _get_ident

from ._hotpath import dispatch as _dispatch
from ._ops import OpTable, UD_IGNORE
from .ring import Ring, uapi

logger = logging.getLogger("aiouring")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
_POLLIN = _select.POLLIN
_POLLOUT = _select.POLLOUT
_F_MORE = uapi.IORING_CQE_F_MORE
_OP_POLL_ADD = uapi.IORING_OP_POLL_ADD


def _refuse_like_epoll(fd: int) -> None:
    """Raise what epoll_ctl(EPOLL_CTL_ADD) raises for fds it cannot watch: a
    ring poll would take them, and report a regular file "ready" forever."""
    mode = _os.fstat(fd).st_mode   # OSError(EBADF) for a closed fd, as epoll
    if _stat.S_ISREG(mode) or _stat.S_ISDIR(mode):
        raise PermissionError(_errno.EPERM, _os.strerror(_errno.EPERM))


# Op records of rings closed while another thread owned them (see
# RingSelector._orphan_in_flight): kept so the kernel never writes into freed memory.
_orphaned_ops: list = []


_ARM, _CANCEL = 1, 2   # requests in RingSelector.from_other_threads


class _PollArm:
    """The one poll in flight for one registered fd."""

    __slots__ = ("selector", "fd", "ud")

    def __init__(self, selector: "RingSelector", fd: int) -> None:
        self.selector = selector
        self.fd = fd
        self.ud = 0

    def __call__(self, res: int, flags: int) -> None:
        sel = self.selector
        if sel._arms.get(self.fd) is not self:
            return   # unregistered or re-armed meanwhile: a stale completion
        key = sel._fd_to_key.get(self.fd)
        if key is None:
            return
        if res < 0:
            # The fd went bad under us (closed without unregistering). epoll
            # silently forgets such an fd; so do we, rather than spin.
            del sel._arms[self.fd]
            return
        events = 0
        if res & ~_POLLIN:
            events |= EVENT_WRITE
        if res & ~_POLLOUT:
            events |= EVENT_READ
        events &= key.events
        if events:
            sel._ready.append((key, events))
        sel._arm(self, key.events)


class RingSelector(selectors._BaseSelectorImpl):  # type: ignore[name-defined]
    """``selectors.BaseSelector`` on top of a :class:`~aiouring.ring.Ring`."""

    def __init__(self, ring: Ring, ops: OpTable) -> None:
        super().__init__()
        self._ring = ring
        self._ops = ops
        self._arms: dict = {}
        self._ready: list = []
        self.on_handler_error = None   # set by the loop: (exc, handler) -> None
        self._poll_add = ring.prep
        self._null = ring.null
        # Polls to arm or cancel that threads other than the ring's owner asked
        # for (asyncio lets any thread add_reader; only the owner may touch the
        # SQ). The owner takes them before its next enter; wake_owner (set by
        # the loop) gets it out of a wait that could otherwise last forever.
        self.from_other_threads: collections.deque = collections.deque()
        self.wake_owner = None

    def _arm(self, arm: _PollArm, events: int) -> None:
        mask = 0
        if events & EVENT_READ:
            mask |= _POLLIN
        if events & EVENT_WRITE:
            mask |= _POLLOUT
        arm.ud = ud = self._ops.register(arm)
        self._poll_add(_OP_POLL_ADD, arm.fd, self._null, 0, 0, mask, ud)

    def register(self, fileobj, events, data=None):
        fd = self._fileobj_lookup(fileobj)
        if fd >= 0:
            _refuse_like_epoll(fd)
        key = super().register(fileobj, events, data)
        arm = _PollArm(self, key.fd)
        self._arms[key.fd] = arm
        if self._on_other_thread():
            self._ask_owner(_ARM, arm, events)
        else:
            self._arm(arm, events)
        return key

    def unregister(self, fileobj):
        key = super().unregister(fileobj)
        arm = self._arms.pop(key.fd, None)
        if arm is not None and not self._ring.closed:
            if self._on_other_thread():
                self._ask_owner(_CANCEL, arm, 0)
                return key
            self._ops.cancel(arm.ud)
            # The poll holds the kernel's reference to the file: until the
            # cancel reaches the kernel, a socket the caller closes right after
            # (server.close()) would stay alive and keep accepting. Only the
            # ring's owner thread may submit.
            if self._ring.owner_thread == _get_ident():
                self._ring.submit()
        return key

    def _on_other_thread(self) -> bool:
        owner = self._ring.owner_thread
        return owner is not None and owner != _get_ident()

    def _ask_owner(self, what: int, arm: _PollArm, events: int) -> None:
        self.from_other_threads.append((what, arm, events))
        if self.wake_owner is not None:
            self.wake_owner()

    def take_requests_from_other_threads(self) -> None:
        """Arm or cancel what other threads asked for (owner thread only)."""
        queue = self.from_other_threads
        while queue:
            what, arm, events = queue.popleft()
            if what == _ARM:
                if self._arms.get(arm.fd) is arm:   # not unregistered meanwhile
                    self._arm(arm, events)
            elif arm.ud and not self._ring.closed:   # ud 0: it was never armed
                self._ops.cancel(arm.ud)

    def modify(self, fileobj, events, data=None):
        # _BaseSelectorImpl.modify re-registers when the events change (a new
        # poll) and only swaps the key when just the data changes.
        return super().modify(fileobj, events, data)

    def select(self, timeout=None):
        if self.from_other_threads:
            self.take_requests_from_other_threads()
        batch = self._ring.submit_and_reap(timeout)
        if not batch:
            return []
        self._ready = ready = []
        self.dispatch(batch)
        return ready

    def dispatch(self, batch: list) -> None:
        """Hand each completion to its op record. A failing handler must not
        cost the rest of the batch its completions, so errors are reported
        (or, for KeyboardInterrupt/SystemExit, re-raised) after the walk."""
        _dispatch(batch, self._ops.handlers, _F_MORE, self._handler_failed)

    def _handler_failed(self, exc: BaseException, handler: object) -> None:
        if self.on_handler_error is not None:
            self.on_handler_error(exc, handler)
        else:
            logger.exception("aiouring: completion handler %r failed", handler, exc_info=exc)

    def drain(self, timeout: float = 5.0) -> int:
        """Cancel everything in flight and wait until the kernel has answered
        for every operation. Returns how many were still in flight at the
        deadline (0 when fully drained)."""
        ops = self._ops
        if not ops.handlers or self._ring.closed:
            return len(ops.handlers)
        ops.abandon_all()
        self._arms.clear()
        self._ring.prep_cancel_everything(UD_IGNORE)
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 1.0
        while ops.handlers:
            now = time.monotonic()
            if now >= deadline:
                logger.warning("aiouring: %d operations still in flight after %.1fs; closing the ring anyway",
                               len(ops.handlers), timeout)
                break
            if now >= next_report:
                logger.info("aiouring: waiting for %d operations to finish", len(ops.handlers))
                next_report = now + 1.0
            self._ready = []
            self.dispatch(self._ring.submit_and_reap(min(0.1, deadline - now)))
        return len(ops.handlers)

    def _orphan_in_flight(self, exc: BaseException) -> None:
        # Closed from a thread that may not drive this SINGLE_ISSUER ring, so
        # nobody can reap its last completions. Closing the fd makes the kernel
        # cancel what is in flight, but asynchronously and without telling us
        # when it is done: the op records (and the buffers they own) must
        # outlive that, so they are kept for the life of the process.
        handlers = self._ops.handlers
        if handlers:
            _orphaned_ops.append(dict(handlers))
            handlers.clear()
            logger.warning("aiouring: loop closed from a thread that did not run it (%s); "
                           "%d operations in flight are left to the kernel to cancel", exc, len(_orphaned_ops[-1]))

    def close(self) -> None:
        if not self._ring.closed:
            try:
                self.drain()
            except RuntimeError as exc:
                self._orphan_in_flight(exc)
            self._ring.close()
        self._arms.clear()
        super().close()

