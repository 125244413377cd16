"""The run-once step and call_soon, with asyncio's semantics and less Python.

asyncio's ``BaseEventLoop._run_once`` is the loop's innermost code: every
callback, every I/O completion and every timer passes through it. Its steps
are kept exactly here (cancelled-timer cleanup, the timeout rule, due timers
moved to the ready queue after the poll, only the callbacks that were ready
before the poll run now, debug mode's slow-callback warnings); what changes is
that the poll is the ring's submit-and-reap called directly, the CQE batch is
dispatched without going through ``selectors`` when no fd was polled, and the
per-callback work (``call_soon``/``call_at``/``call_later``, the handles,
running them) is C
(``aiouring._hotpath``): asyncio spends about a microsecond of Python on each
callback, and every task step and future callback is one.
"""

from __future__ import annotations

import contextvars
import heapq
import inspect
from asyncio import base_events, events, format_helpers
from typing import Any, Callable, Optional

from . import _hotpath

__all__ = ["Handle", "TimerHandle", "RunOnceMixin"]

# The Python side relies on this version of the C module; a stale build of an
# editable install fails here instead of misbehaving.
_HOTPATH_ABI = 5
if getattr(_hotpath, "ABI", None) != _HOTPATH_ABI:
    raise ImportError(f"aiouring._hotpath is a stale build (ABI {getattr(_hotpath, 'ABI', None)}, "
                      f"need {_HOTPATH_ABI}); reinstall aiouring (pip install -e .) to rebuild it")

_heappop = heapq.heappop
_MAXIMUM_SELECT_TIMEOUT = base_events.MAXIMUM_SELECT_TIMEOUT
_MIN_SCHEDULED_TIMER_HANDLES = base_events._MIN_SCHEDULED_TIMER_HANDLES
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION
_format_handle = base_events._format_handle

# asyncio 3.13 shows a callback's arguments only in debug mode, and its
# formatter takes the mode as an argument.
_CB_SOURCE_TAKES_DEBUG = "debug" in inspect.signature(format_helpers._format_callback_source).parameters


class Handle(_hotpath.HandleBase):
    """What ``call_soon`` returns on an aiouring loop. Its C base holds the
    attributes asyncio's Handle has and runs the callback; everything else is
    asyncio's own code, borrowed, so cancel() and repr() behave identically.
    (Like uvloop's, it is not a subclass of ``asyncio.Handle``.)"""

    __slots__ = ()

    cancel = events.Handle.cancel
    cancelled = events.Handle.cancelled
    _repr_info = events.Handle._repr_info
    __repr__ = events.Handle.__repr__

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("aiouring handles are made by loop.call_soon(), not directly")

    def get_context(self) -> contextvars.Context:   # asyncio's from 3.12
        return self._context

    def _callback_failed(self, exc: BaseException) -> None:
        # asyncio's Handle._run, its except branch.
        if _CB_SOURCE_TAKES_DEBUG:
            cb = format_helpers._format_callback_source(self._callback, self._args, debug=self._loop.get_debug())
        else:
            cb = format_helpers._format_callback_source(self._callback, self._args)
        context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": self}
        if self._source_traceback:
            context["source_traceback"] = self._source_traceback
        self._loop.call_exception_handler(context)


class TimerHandle(_hotpath.TimerHandleBase, Handle):
    """What ``call_later``/``call_at`` return on an aiouring loop: ordered by
    deadline in C (the timer heap compares them), the rest as
    ``asyncio.TimerHandle`` (not a subclass of it either)."""

    __slots__ = ()

    def cancel(self) -> None:
        # asyncio's TimerHandle.cancel: the loop counts cancelled timers to
        # know when to rebuild its heap.
        if not self._cancelled:
            self._loop._timer_handle_cancelled(self)
        Handle.cancel(self)

    def _repr_info(self) -> list:
        info = Handle._repr_info(self)
        info.insert(2 if self._cancelled else 1, f"when={self._when}")
        return info


_hotpath.set_handle_classes(Handle, TimerHandle)


def _without_our_frame(handle: events.Handle) -> events.Handle:
    if handle._source_traceback:
        del handle._source_traceback[-1]
    return handle


class RunOnceMixin(_hotpath.LoopCore):
    """Mixed into :class:`aiouring.loop.Loop` ahead of asyncio's classes; its
    C base holds ``_ready``, ``_closed`` and ``_debug`` and has ``call_soon``,
    ``call_at`` and ``call_later``."""

    # call_soon, call_at and call_later are _hotpath.LoopCore's; these are
    # their debug mode, asyncio's own, with our frame dropped from the source
    # traceback as asyncio drops its own: it must end at the caller's line.
    def _call_soon_debug(self, callback: Callable[..., object], *args: Any,
                         context: Optional[contextvars.Context] = None) -> events.Handle:
        return _without_our_frame(base_events.BaseEventLoop.call_soon(self, callback, *args, context=context))

    def _call_at_debug(self, when: float, callback: Callable[..., object], *args: Any,
                       context: Optional[contextvars.Context] = None) -> events.TimerHandle:
        return _without_our_frame(base_events.BaseEventLoop.call_at(self, when, callback, *args, context=context))

    def _call_later_debug(self, delay: float, callback: Callable[..., object], *args: Any,
                          context: Optional[contextvars.Context] = None) -> events.TimerHandle:
        return _without_our_frame(base_events.BaseEventLoop.call_later(self, delay, callback, *args, context=context))

    def _dispatch_io(self, batch: list) -> None:
        selector = self._selector
        selector._ready = fd_events = []
        selector.dispatch(batch)
        if fd_events:
            self._process_events(fd_events)

    def _dispatch_deferred(self) -> None:
        # Every batch still waiting, oldest first: an interrupt may have left
        # an earlier one behind (its own handle then finds nothing to do).
        pending = self._undispatched
        while pending:
            self._dispatch_io(pending.popleft())

    def _run_once(self):
        scheduled = self._scheduled
        sched_count = len(scheduled)
        if (sched_count > _MIN_SCHEDULED_TIMER_HANDLES and
                self._timer_cancelled_count / sched_count > _MIN_CANCELLED_TIMER_HANDLES_FRACTION):
            # Too many cancelled timers: rebuild the heap without them.
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            self._scheduled = scheduled = kept
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                handle = _heappop(scheduled)
                handle._scheduled = False

        ready = self._ready
        if ready or self._stopping:
            timeout = 0
        elif scheduled:
            timeout = scheduled[0]._when - self.time()
            if timeout > _MAXIMUM_SELECT_TIMEOUT:
                timeout = _MAXIMUM_SELECT_TIMEOUT
            elif timeout < 0:
                timeout = 0
        else:
            timeout = None

        selector = self._selector
        if selector.from_other_threads:   # add_reader & co. from other threads
            selector.take_requests_from_other_threads()
        batch = selector._ring.submit_and_reap(timeout)
        if batch:
            if ready:
                # Completions call protocols directly, and must not overtake
                # the callbacks that were ready before this poll (asyncio runs
                # its I/O handles after them): they follow them in the ready
                # queue, as one handle, ahead of the due timers.
                self._undispatched.append(batch)
                self.call_soon(self._dispatch_deferred)
            else:
                self._dispatch_io(batch)
            batch = None   # break cycles if a callback raised

        if scheduled:
            end_time = self.time() + self._clock_resolution
            while scheduled:
                handle = scheduled[0]
                if handle._when >= end_time:
                    break
                handle = _heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)

        # Only what was ready before this point runs now; callbacks scheduled
        # by these callbacks wait for the next poll, as in asyncio.
        ntodo = len(ready)
        popleft = ready.popleft
        if self._debug:
            for _ in range(ntodo):
                handle = popleft()
                if handle._cancelled:
                    continue
                try:
                    self._current_handle = handle
                    t0 = self.time()
                    handle._run()
                    dt = self.time() - t0
                    if dt >= self.slow_callback_duration:
                        # Looked up now, not bound at import: debug mode is
                        # not a hot path, and asyncio's own tests patch it.
                        base_events.logger.warning("Executing %s took %.3f seconds",
                                                   _format_handle(handle), dt)
                finally:
                    self._current_handle = None
            handle = None   # break cycles if a callback raised
        else:
            self._run_ready(ntodo)
