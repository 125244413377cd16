"""Task switching: 100 tasks that each yield with asyncio.sleep(0) 100 times.

Counts sleep(0) round trips per second: Task.__step, the bare-yield path
and the ready queue.
"""

import asyncio
import sys

from _common import main

TASKS = 100
YIELDS = 100


async def _worker():
    sleep = asyncio.sleep
    for _ in range(YIELDS):
        await sleep(0)


async def batch(loop):
    await asyncio.gather(*[loop.create_task(_worker()) for _ in range(TASKS)])
    return TASKS * YIELDS


if __name__ == "__main__":
    sys.exit(main("task_switch", batch))
