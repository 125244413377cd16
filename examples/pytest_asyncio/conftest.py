"""Run this directory's pytest-asyncio tests on aiouring.

pytest-asyncio 1.4 and later: the ``pytest_asyncio_loop_factories`` hook names
the loop factories every async test (and async fixture) runs on. Return more
than one entry to run each test on several loops (e.g. add
``"asyncio": asyncio.new_event_loop`` to compare).

pytest-asyncio 0.23 to 1.3 have no such hook: there an ``event_loop_policy``
fixture returning ``aiouring.EventLoopPolicy()`` does the same job (1.4
deprecated overriding it, hence the version check).
"""

import pytest
import pytest_asyncio

import aiouring


@pytest.hookimpl(optionalhook=True)   # older pytest-asyncio doesn't know the hook
def pytest_asyncio_loop_factories(config, item):
    return {"aiouring": aiouring.new_event_loop}


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


if _version(pytest_asyncio.__version__) < (1, 4):
    @pytest.fixture(scope="session")
    def event_loop_policy():
        return aiouring.EventLoopPolicy()
