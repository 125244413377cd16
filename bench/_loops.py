"""Event loop factories shared by the benchmark servers and micro-benchmarks.

Each name maps to a function that returns a *new* event loop.  Whatever goes
wrong (ImportError, a missing io_uring, a fallback to another loop) surfaces as
an exception whose message says why, so the runner can print it and mark the
loop "unavailable" instead of measuring the wrong thing.
"""

import asyncio

LOOP_NAMES = ("asyncio", "uvloop", "aiouring")


class LoopUnavailable(RuntimeError):
    """The requested loop cannot be benchmarked on this machine."""


def _new_asyncio():
    # On Linux this is the selector (epoll) loop.
    return asyncio.new_event_loop()


def _new_uvloop():
    import uvloop

    return uvloop.new_event_loop()


def _new_aiouring():
    import aiouring

    loop = aiouring.new_event_loop()
    # aiouring.new_event_loop() may fall back to asyncio's loop (with a
    # warning) when io_uring is blocked (seccomp, io_uring_disabled,
    # memlock).  Benchmarking that fallback under the name "aiouring" would
    # be a lie, so refuse it.
    module = type(loop).__module__ or ""
    if not module.split(".")[0] == "aiouring":
        name = f"{module}.{type(loop).__qualname__}"
        loop.close()
        raise LoopUnavailable(f"aiouring.new_event_loop() returned {name} (fell back: io_uring unavailable?)")
    return loop


_FACTORIES = {
    "asyncio": _new_asyncio,
    "uvloop": _new_uvloop,
    "aiouring": _new_aiouring,
}


def new_loop(name):
    """Return a new event loop of the named kind; raise LoopUnavailable with the reason."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise LoopUnavailable(f"unknown loop {name!r}; choose from {', '.join(LOOP_NAMES)}") from None
    try:
        return factory()
    except LoopUnavailable:
        raise
    except Exception as exc:
        raise LoopUnavailable(f"{name}: {type(exc).__name__}: {exc}") from exc


def describe(loop):
    """Short 'module.Class' name of a loop, for logs and results."""
    return f"{type(loop).__module__}.{type(loop).__qualname__}"
