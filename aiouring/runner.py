"""Entry points: new_event_loop(), run(), EventLoopPolicy, install().

Where io_uring is refused (seccomp, kernel.io_uring_disabled, RLIMIT_MEMLOCK,
an old kernel), the program still runs: these entry points fall back to
asyncio's own event loop and warn once, naming the cause and the remedy. In
strict mode (``strict=True`` or ``AIOURING_STRICT=1``) they raise
:class:`~aiouring.errors.UringUnavailableError` instead.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import warnings
from typing import Any, Coroutine, Optional, TypeVar

from .errors import UringUnavailableError
from .loop import Loop

__all__ = ["new_event_loop", "run", "EventLoopPolicy", "install", "UringFallbackWarning"]

_T = TypeVar("_T")
_STRICT_ENV = "AIOURING_STRICT"
_warned = False


class UringFallbackWarning(RuntimeWarning):
    """aiouring could not use io_uring and runs on asyncio's own loop instead."""


def _strict(strict: Optional[bool]) -> bool:
    if strict is not None:
        return strict
    return os.environ.get(_STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def new_event_loop(*, strict: Optional[bool] = None, **ring_options: Any) -> asyncio.AbstractEventLoop:
    """A new aiouring :class:`Loop`, or asyncio's own loop (with one warning)
    where io_uring is unavailable and not in strict mode."""
    global _warned
    try:
        return Loop(**ring_options)
    except UringUnavailableError as exc:
        if _strict(strict):
            raise
        if not _warned:
            _warned = True
            warnings.warn(
                f"{exc} aiouring falls back to asyncio's own event loop "
                f"(set {_STRICT_ENV}=1 to make this an error).",
                UringFallbackWarning, stacklevel=2)
        return asyncio.SelectorEventLoop()


def run(main: Coroutine[Any, Any, _T], *, debug: Optional[bool] = None,
        strict: Optional[bool] = None, **ring_options: Any) -> _T:
    """Run ``main`` on a new aiouring loop, as :func:`asyncio.run` does."""
    # Checked before a ring is set up, as asyncio.run does: otherwise the
    # Runner builds a loop it can neither run nor shut down cleanly.
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("aiouring.run() cannot be called from a running event loop")

    def factory() -> asyncio.AbstractEventLoop:
        return new_event_loop(strict=strict, **ring_options)

    try:
        if sys.version_info >= (3, 11):
            with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
                return runner.run(main)
        return _run_310(main, debug, factory)
    except BaseException:
        # The loop could not be made (strict mode refused, bad ring options):
        # ``main`` never started. Close it so that the program sees our error,
        # not also a "coroutine was never awaited".
        if inspect.iscoroutine(main) and inspect.getcoroutinestate(main) == inspect.CORO_CREATED:
            main.close()
        raise


def _run_310(main, debug, factory):
    # Python 3.10 has no asyncio.Runner: the same steps as its asyncio.run().
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if not asyncio.coroutines.iscoroutine(main):
        raise ValueError("a coroutine was expected, got {!r}".format(main))
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            to_cancel = asyncio.all_tasks(loop)
            for task in to_cancel:
                task.cancel()
            if to_cancel:
                loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
                for task in to_cancel:
                    if not task.cancelled() and task.exception() is not None:
                        loop.call_exception_handler({
                            "message": "unhandled exception during asyncio.run() shutdown",
                            "exception": task.exception(),
                            "task": task,
                        })
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """An event loop policy whose loops are aiouring loops
    (``asyncio.set_event_loop_policy(aiouring.EventLoopPolicy())``)."""

    def _loop_factory(self) -> asyncio.AbstractEventLoop:  # type: ignore[override]
        return new_event_loop()


def install() -> None:
    """Make aiouring the default: ``asyncio.set_event_loop_policy(EventLoopPolicy())``."""
    asyncio.set_event_loop_policy(EventLoopPolicy())
