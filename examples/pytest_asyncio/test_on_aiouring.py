"""A sample test suite that runs on aiouring through pytest-asyncio."""

import asyncio
import hashlib
import os

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def echo_server():
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[:2]
    server.close()
    await server.wait_closed()


async def test_runs_on_aiouring():
    assert type(asyncio.get_running_loop()).__module__ == "aiouring.loop"


async def test_fixture_shares_the_test_loop(echo_server):
    assert type(asyncio.get_running_loop()).__module__ == "aiouring.loop"
    payload = os.urandom(1 << 20)
    reader, writer = await asyncio.open_connection(*echo_server)
    writer.write(payload)
    writer.write_eof()
    echoed = await reader.read(-1)
    writer.close()
    await writer.wait_closed()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


@pytest.mark.asyncio(loop_scope="module")
async def test_module_scoped_loop():
    assert type(asyncio.get_running_loop()).__module__ == "aiouring.loop"
