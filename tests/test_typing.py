"""The public API type-checks: ``mypy --strict`` accepts typical user code,
infers real types from aiouring's annotations (not ``Any``), and rejects
misuse. Skipped where mypy is not installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GOOD = textwrap.dedent('''
    import asyncio
    import warnings

    import aiouring
    from aiouring.worker import GunicornWebWorker


    async def main() -> int:
        await asyncio.sleep(0)
        return 42


    def use_everything() -> None:
        answer: int = aiouring.run(main())
        aiouring.run(main(), debug=True, strict=True, sq_entries=256)
        loop: asyncio.AbstractEventLoop = aiouring.new_event_loop(strict=False)
        loop.close()
        with asyncio.Runner(loop_factory=aiouring.new_event_loop) as runner:
            runner.run(main())
        ring_loop = aiouring.Loop(sq_entries=128, cq_entries=1024, backing="pages", huge_pages=False)
        info = ring_loop.ring_info()
        stats: aiouring.LoopStatistics = ring_loop.statistics()
        print(info.backing, info.sq_entries + info.cq_entries, stats.ops_in_flight, stats.ring.enters)
        ring_loop.close()
        asyncio.set_event_loop_policy(aiouring.EventLoopPolicy())
        aiouring.install()
        version: str = aiouring.__version__
        try:
            aiouring.new_event_loop(strict=True)
        except aiouring.UringUnavailableError as exc:
            print(exc.errno, exc.cause, exc.remedy, version, answer)
        warnings.simplefilter("error", aiouring.UringFallbackWarning)
        print(GunicornWebWorker.init_process)


    reveal_type(aiouring.run(main()))
    reveal_type(aiouring.new_event_loop())
    reveal_type(aiouring.Loop().statistics())
    reveal_type(aiouring.Loop().ring_info().backing)
''')

BAD = textwrap.dedent('''
    import aiouring

    aiouring.run(42)
    aiouring.Loop(sq_entries="many")
''')


def _mypy(tmp_path: Path, name: str, source: str) -> str:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    path = tmp_path / name
    path.write_text(source)
    # An editable install puts aiouring on sys.path through an import hook that
    # mypy cannot follow, so point it at the source tree. --follow-imports=silent
    # checks the user's file against aiouring's annotations without reporting
    # aiouring's own internals (which lean on asyncio's private attributes).
    env = dict(os.environ, MYPYPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
         "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", str(path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def test_public_api_is_typed(tmp_path):
    out = _mypy(tmp_path, "good.py", GOOD)
    # older mypy versions spell builtins with their module ("builtins.int").
    revealed = [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "([^"]+)"', out)]
    assert revealed == ["int", "asyncio.events.AbstractEventLoop", "aiouring.loop.LoopStatistics", "str"], out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert not errors, out


def test_misuse_is_rejected(tmp_path):
    out = _mypy(tmp_path, "bad.py", BAD)
    assert re.search(r"bad\.py:4: error: .*\"run\".*incompatible type \"int\"", out), out
    assert re.search(r"bad\.py:5: error: .*\"Loop\".*incompatible type \"str\"", out), out


FILES = textwrap.dedent('''
    import os
    import aiouring


    async def main() -> None:
        async with aiouring.open("data.bin", "rb") as f:
            data = await f.read()
            reveal_type(data)
        async with aiouring.open("notes.txt", "w", encoding="utf-8") as t:
            await t.write("x")
        text: str = await aiouring.read_text("notes.txt")
        st: os.stat_result = await aiouring.stat("data.bin")
        copied: int = await aiouring.copyfile("data.bin", "copy.bin")
        print(text, st, copied)
''')


def test_file_api_is_typed(tmp_path):
    out = _mypy(tmp_path, "files_usage.py", FILES)
    revealed = [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "([^"]+)"', out)]
    assert revealed == ["bytes"], out
    assert ": error:" not in out, out


def test_worker_and_examples_typecheck():
    # The examples are what users copy; keep them (and the gunicorn worker)
    # clean under --strict.
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    files = [str(ROOT / "aiouring" / "worker.py"), *sorted(str(p) for p in (ROOT / "examples").glob("*.py"))]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental", *files],
        cwd=ROOT, env=dict(os.environ, MYPYPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


LOOP_METHODS = textwrap.dedent('''
    import asyncio
    import socket
    import aiouring


    async def use(loop: aiouring.Loop, sock: socket.socket) -> None:
        reveal_type(await loop.sock_recv(sock, 10))
        reveal_type(await loop.sock_recv_into(sock, bytearray(10)))
        reveal_type(await loop.sock_sendall(sock, b"x"))
        reveal_type(await loop.sock_accept(sock))
        reveal_type(await loop.sock_connect(sock, ("127.0.0.1", 1)))
        reveal_type(loop.call_soon(print))
''')


def test_loop_methods_are_typed(tmp_path):
    out = _mypy(tmp_path, "loop_usage.py", LOOP_METHODS)
    revealed = [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "([^"]+)"', out)]
    assert revealed == ["bytes", "int", "None", "tuple[socket.socket, Any]", "None", "asyncio.events.Handle"], out
    assert ": error:" not in out, out
