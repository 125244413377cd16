"""loop.call_soon throughput: schedule a batch of plain callbacks, run them all.

Measures the ready-queue path: Handle creation, the deque, and _run_once's
loop over ready handles, with nothing else on the loop.
"""

import sys

from _common import main

BATCH = 10_000


async def batch(loop):
    done = loop.create_future()
    count = 0

    def callback():
        nonlocal count
        count += 1
        if count == BATCH:
            done.set_result(None)

    call_soon = loop.call_soon
    for _ in range(BATCH):
        call_soon(callback)
    await done
    return BATCH


if __name__ == "__main__":
    sys.exit(main("call_soon", batch))
