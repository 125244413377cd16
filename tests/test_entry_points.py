"""The ways uvloop users start a loop, with aiouring in its place:
``aiouring.run()``, ``aiouring.new_event_loop()``, ``aiouring.Loop()``,
``asyncio.Runner(loop_factory=...)`` / ``asyncio.run(..., loop_factory=...)``,
``EventLoopPolicy`` and ``install()``.

These run on the interpreter running the suite; the other installed Pythons
are checked by hand (see the issue report) because building a venv per
version is too slow for the suite. Tests that change the global policy run in
a fresh interpreter so that nothing leaks into other tests.
"""

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

import aiouring

needs_loop_factory_in_run = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is new in 3.12")
needs_runner = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")


def _python(code: str, *, env=None, timeout=60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("AIOURING_STRICT", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


async def _describe():
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.001)
    return type(loop).__name__, loop.get_debug()


def test_run_returns_result_on_an_aiouring_loop():
    assert aiouring.run(_describe()) == ("Loop", False)


def test_run_debug_flag():
    assert aiouring.run(_describe(), debug=True) == ("Loop", True)


def test_run_passes_ring_options():
    async def main():
        return asyncio.get_running_loop().ring_info()

    info = aiouring.run(main(), sq_entries=64, cq_entries=256, huge_pages=False)
    assert info.sq_entries == 64 and info.cq_entries == 256
    assert "huge" not in info.backing and "thp" not in info.backing


def test_run_rejects_bad_ring_options():
    with pytest.raises((ValueError, TypeError)):
        aiouring.run(_describe(), sq_entries=-1)
    with pytest.raises(TypeError):
        aiouring.run(_describe(), no_such_option=1)


def test_run_propagates_exceptions_and_closes_the_loop():
    seen = []

    async def main():
        seen.append(asyncio.get_running_loop())
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        aiouring.run(main())
    assert seen[0].is_closed()


def test_run_rejects_non_coroutines():
    with pytest.raises((ValueError, TypeError)):
        aiouring.run(lambda: None)


def test_run_inside_a_running_loop_raises():
    async def outer():
        inner = _describe()
        try:
            with pytest.raises(RuntimeError, match="running event loop"):
                aiouring.run(inner)
        finally:
            inner.close()

    aiouring.run(outer())


def test_run_cleans_up_tasks_asyncgens_and_executor():
    events = []

    async def agen():
        try:
            yield 1
            await asyncio.sleep(3600)
        finally:
            events.append("agen closed")

    async def straggler():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("task cancelled")
            raise

    async def main():
        loop = asyncio.get_running_loop()
        asyncio.ensure_future(straggler())
        g = agen()
        await g.__anext__()
        await loop.run_in_executor(None, events.append, "executor ran")
        events.append(g)   # keep the generator alive until shutdown_asyncgens
        await asyncio.sleep(0)
        return loop

    loop = aiouring.run(main())
    assert loop.is_closed()
    assert "task cancelled" in events and "agen closed" in events and "executor ran" in events
    assert loop._default_executor is None or loop._default_executor._shutdown


def test_new_event_loop_and_loop_class():
    loop = aiouring.new_event_loop(sq_entries=32)
    try:
        assert isinstance(loop, aiouring.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert loop.ring_info().sq_entries == 32
        assert loop.run_until_complete(_describe()) == ("Loop", False)
    finally:
        loop.close()
    direct = aiouring.Loop()
    try:
        assert direct.run_until_complete(asyncio.sleep(0, result=3)) == 3
    finally:
        direct.close()


@needs_runner
def test_asyncio_runner_with_loop_factory():
    with asyncio.Runner(loop_factory=aiouring.new_event_loop) as runner:
        assert runner.run(_describe()) == ("Loop", False)
        assert runner.run(_describe()) == ("Loop", False)   # the same loop, reused
        loop = runner.get_loop()
    assert loop.is_closed()
    with asyncio.Runner(loop_factory=aiouring.Loop, debug=True) as runner:
        assert runner.run(_describe()) == ("Loop", True)


@needs_loop_factory_in_run
def test_asyncio_run_with_loop_factory():
    assert asyncio.run(_describe(), loop_factory=aiouring.new_event_loop) == ("Loop", False)


def test_event_loop_policy_in_a_fresh_interpreter():
    proc = _python("""
        import asyncio, warnings, aiouring
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(aiouring.EventLoopPolicy())
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(asyncio.run(main()))
        loop = asyncio.new_event_loop()
        print(type(loop).__name__)
        loop.close()
        print(type(asyncio.get_event_loop_policy()).__name__)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Loop", "Loop", "EventLoopPolicy"]


def test_install_in_a_fresh_interpreter():
    proc = _python("""
        import asyncio, warnings, aiouring
        warnings.simplefilter("ignore", DeprecationWarning)
        aiouring.install()
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(asyncio.run(main()))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Loop"]


def test_a_plain_asyncio_program_runs_unchanged_under_install():
    """A small asyncio program (server, client, timers, executor, subprocess)
    that knows nothing about aiouring gives the same output under install()."""
    program = """
        import asyncio, hashlib, sys
        async def handle(reader, writer):
            data = await reader.read()
            writer.write(hashlib.sha256(data).hexdigest().encode())
            await writer.drain()
            writer.close()
        async def main():
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x" * 1_000_000)
            writer.write_eof()
            digest = await reader.read()
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "print(6 * 7)", stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            await asyncio.sleep(0.01)
            total = await asyncio.get_running_loop().run_in_executor(None, sum, range(10))
            return digest.decode(), out.decode().strip(), total
        print(*asyncio.run(main()))
        print(type(asyncio.new_event_loop()).__name__)
    """
    plain = _python(program)
    under = _python("import aiouring, warnings\nwarnings.simplefilter('ignore', DeprecationWarning)\n"
                    "aiouring.install()\n" + textwrap.dedent(program))
    assert plain.returncode == 0 and under.returncode == 0, (plain.stderr, under.stderr)
    assert plain.stdout.splitlines()[0] == under.stdout.splitlines()[0]
    assert under.stdout.splitlines()[1] == "Loop"


def test_ctrl_c_cancels_main_and_raises_keyboard_interrupt():
    """asyncio.run's SIGINT handling (cancel the main task, then raise
    KeyboardInterrupt) works on aiouring: the signal wakes the ring."""
    proc = _python("""
        import asyncio, os, signal, aiouring
        async def main():
            asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                print("main cancelled", flush=True)
                raise
        try:
            aiouring.run(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["main cancelled", "KeyboardInterrupt"]


def test_public_surface():
    for name in ("Loop", "new_event_loop", "run", "EventLoopPolicy", "install", "__version__"):
        assert name in aiouring.__all__ and hasattr(aiouring, name)
