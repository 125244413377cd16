"""Future round trip: create a future, resolve it from a callback, await it.

Counts round trips per second: create_future, call_soon(set_result),
the task's wakeup through the future's done callback.
"""

import sys

from _common import main

BATCH = 10_000


async def batch(loop):
    create_future = loop.create_future
    call_soon = loop.call_soon
    for _ in range(BATCH):
        fut = create_future()
        call_soon(fut.set_result, None)
        await fut
    return BATCH


if __name__ == "__main__":
    sys.exit(main("futures", batch))
