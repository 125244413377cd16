"""``--loop asyncio|uvloop|aiouring`` for the examples: one factory per name.

Every example runs on all three loops so that you can compare them and see
that nothing but the loop factory changes when you switch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Callable, Coroutine, TypeVar

LOOP_NAMES = ("asyncio", "uvloop", "aiouring")
_T = TypeVar("_T")


def add_loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=LOOP_NAMES, default="aiouring",
                        help="event loop to run on (default: aiouring)")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            sys.exit("--loop uvloop needs uvloop: pip install uvloop")
        return uvloop.new_event_loop
    if name == "aiouring":
        import aiouring
        return aiouring.new_event_loop
    raise ValueError(f"unknown loop {name!r}; choose one of {', '.join(LOOP_NAMES)}")


def run(main: Coroutine[Any, Any, _T], loop_name: str) -> _T:
    """asyncio.run(main) on the chosen loop."""
    factory = loop_factory(loop_name)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    # Python 3.10 has no Runner (and asyncio.run no loop_factory).
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
