"""Packaging, as a user meets it: the sdist carries everything needed to build
and test, builds into a wheel with only a compiler and Python headers,
installs into a fresh venv that then runs aiouring (no repo on the path), and
a build without a working compiler says what to install.

Builds use pip's isolated build environments (setuptools and cffi come from the
package index, as for any user), so these tests need the index to be reachable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import aiouring

ROOT = Path(__file__).resolve().parent.parent
VERSION = aiouring.__version__


def _run(cmd: list, *, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _clean_env(**extra: str) -> dict:
    # Nothing from this test process (PYTHONPATH, strict mode) leaks into builds.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AIOURING", "PIP_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="python -m build needs the 'build' package (pip install build)")
    out = tmp_path_factory.mktemp("sdist")
    done = _run([sys.executable, "-m", "build", "--sdist", "--outdir", out, ROOT], cwd=out, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("aiouring-*.tar.gz")
    return path


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, sdist], cwd=out, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("aiouring-*.whl")
    return path


def test_sdist_has_what_a_build_and_the_tests_need(sdist):
    assert sdist.name == f"aiouring-{VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    required = {"setup.py", "pyproject.toml", "README.md", "aiouring/py.typed",
                "aiouring/_build/ring_build.py", "aiouring/_build/ring_cdef.h", "aiouring/_build/ring_shim.c",
                "aiouring/_build/hotpath.c",
                "aiouring/__init__.py", "aiouring/worker.py",
                "tests/run.sh", "tests/support.py", "tests/conftest.py", "tests/test_ring.py",
                "examples/echo_server.py", "examples/_loops.py"}
    assert required <= names, sorted(required - names)
    built = [n for n in names if n.endswith((".so", ".o", ".pyc")) or "__pycache__" in n]
    assert not built, built


def test_wheel_is_complete_and_tagged_for_this_python(wheel):
    # _ring (cffi) uses the stable ABI, but _hotpath uses the full C API for
    # speed, so the wheel is for this CPython version, like uvloop's.
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert re.fullmatch(rf"aiouring-{re.escape(VERSION)}-{tag}-{tag}-linux_\w+\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"aiouring-{VERSION}.dist-info/METADATA").decode()
    assert {"aiouring/_ring.abi3.so", "aiouring/py.typed", "aiouring/worker.py", "aiouring/__main__.py"} <= names
    assert any(re.fullmatch(r"aiouring/_hotpath\.cpython-\d+-\S+\.so", n) for n in names), sorted(names)
    assert not any(n.startswith(("tests/", "examples/", "bench/")) for n in names)
    assert "Requires-Python: >=3.10" in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "License-Expression: MIT" in metadata
    assert re.search(r"^Requires-Dist: cffi", metadata, re.M)


_SMOKE = textwrap.dedent('''
    import asyncio, hashlib, os, sys
    import aiouring

    async def main():
        async def echo(reader, writer):
            writer.write(await reader.read(-1))
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        payload = os.urandom(1 << 20)
        writer.write(payload)
        writer.write_eof()
        echoed = await reader.read(-1)
        writer.close()
        server.close()
        await server.wait_closed()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        return type(asyncio.get_running_loop()).__module__

    print(aiouring.__version__, aiouring.run(main(), strict=True), aiouring.__file__)
''')


@pytest.mark.slow
def test_sdist_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    # `pip install aiouring-X.tar.gz` is "build a wheel from the sdist, install
    # it"; the wheel fixture did the first half (with only a compiler, Python's
    # headers and the build requirements from the index), this is the second.
    venv = tmp_path / "venv"
    done = _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    done = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel],
                cwd=tmp_path, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    # Run from an empty directory so that only the installed copy can be imported.
    done = _run([python, "-c", _SMOKE], cwd=tmp_path, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    version, loop_module, location = done.stdout.split()
    assert (version, loop_module) == (VERSION, "aiouring.loop")
    assert location.startswith(str(venv)), location
    done = _run([python, "-m", "aiouring", "--json"], cwd=tmp_path, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr


def test_missing_compiler_gives_a_clear_message(sdist, tmp_path):
    # CC=false stands for "no working C compiler": the compile step fails at once.
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path, sdist],
                cwd=tmp_path, env=_clean_env(CC="false"))
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "aiouring could not compile its C extension" in output, output
    assert "apt-get install gcc python3-dev" in output, output
    assert not list(tmp_path.glob("*.whl"))
