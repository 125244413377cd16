"""A gunicorn worker class that serves aiohttp applications on aiouring.

    gunicorn myapp:app --worker-class aiouring.worker.GunicornWebWorker

It is aiohttp's own ``GunicornWebWorker`` (graceful shutdown, max_requests,
access log format, SSL) with one change: each worker process runs on an
aiouring loop, as ``aiohttp.GunicornUVLoopWebWorker`` does for uvloop.

Facts that shape it
-------------------
* gunicorn forks its workers from the arbiter; ``init_process`` runs in the
  child after the fork. An io_uring must not be shared across a fork (the
  child would submit into the parent's rings), so the loop is created there,
  once per worker, never in the arbiter.
* aiohttp's uvloop worker installs a global event loop *policy*. Policies are
  deprecated from Python 3.14, and nothing in the worker needs one: the worker
  keeps its loop in ``self.loop``. So this worker creates the loop with
  :func:`aiouring.new_event_loop` and sets it as the current loop, without
  touching the policy.
* Where io_uring is refused (seccomp, ``kernel.io_uring_disabled``, memlock)
  :func:`aiouring.new_event_loop` falls back to asyncio's loop with one warning,
  unless ``AIOURING_STRICT=1``, in which case the worker fails to boot and
  gunicorn reports it.

aiohttp and gunicorn are optional dependencies: importing this module needs both.
"""

from __future__ import annotations

import asyncio
import warnings

from aiohttp.worker import GunicornWebWorker as _AiohttpGunicornWebWorker
from gunicorn.workers import base as _gunicorn_base  # type: ignore[import-untyped]

from .runner import new_event_loop

__all__ = ["GunicornWebWorker"]


class GunicornWebWorker(_AiohttpGunicornWebWorker):
    """aiohttp's gunicorn worker, running each worker process on aiouring."""

    def init_process(self) -> None:
        _close_inherited_loop()
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        # aiohttp's init_process would replace our loop with
        # asyncio.new_event_loop(); gunicorn's own init_process is the rest of
        # what it does (signals, app loading, then run()).
        _gunicorn_base.Worker.init_process(self)


def _close_inherited_loop() -> None:
    # A loop set in the arbiter before the fork (e.g. by an app loaded with
    # --preload) is useless in the child, and an aiouring one refuses to run
    # there: close it as aiohttp's workers do.
    with warnings.catch_warnings():
        # get_event_loop() warns (3.12+) when it would have to create a loop.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            inherited = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            return
    if not inherited.is_running():
        inherited.close()
