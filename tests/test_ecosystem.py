"""aiouring under the frameworks people run it with: aiohttp (in-process and
under gunicorn with aiouring's worker), uvicorn (``--loop
aiouring:new_event_loop``) and pytest-asyncio. Servers are real processes on
loopback ports; every check looks at content and at which loop answered."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests._servers import BIN, EXAMPLES, PYTHON, Server, child_env
from tests.support import loop, loop_kind, run  # noqa: F401


def _get(url: str, data: bytes | None = None) -> dict:
    request = urllib.request.Request(url, data=data, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


# ---- aiohttp, in this process -------------------------------------------------

def test_aiohttp_server_and_client(loop):
    web = pytest.importorskip("aiohttp.web")
    import aiohttp

    async def sha256(request):
        digest = hashlib.sha256()
        async for chunk in request.content.iter_chunked(1 << 16):
            digest.update(chunk)
        return web.json_response({"sha256": digest.hexdigest(),
                                  "loop": type(asyncio.get_running_loop()).__module__})

    async def main():
        app = web.Application(client_max_size=1 << 26)
        app.router.add_post("/", sha256)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        bodies = [os.urandom(n) for n in (0, 1, 70_000, 4 << 20)]
        try:
            async with aiohttp.ClientSession() as session:
                async def post(body):
                    async with session.post(f"http://127.0.0.1:{port}/", data=body) as resp:
                        return await resp.json()
                answers = await asyncio.gather(*(post(b) for b in bodies))
        finally:
            await runner.cleanup()
        return bodies, answers

    bodies, answers = run(loop, main(), timeout=60)
    for body, answer in zip(bodies, answers):
        assert answer["sha256"] == hashlib.sha256(body).hexdigest()
        assert answer["loop"] == type(loop).__module__


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return d / "cert.pem", d / "key.pem"


@pytest.mark.parametrize("use_tls", [False, True], ids=["tcp", "tls"])
def test_aiohttp_streaming_keepalive_and_websockets(loop, use_tls, request):
    # Long streamed responses over a small keep-alive pool (connections are
    # reused across requests), and a websocket exchange, optionally over TLS:
    # the paths a real aiohttp service takes through the loop's transports.
    web = pytest.importorskip("aiohttp.web")
    import aiohttp
    import ssl

    server_ctx = client_ctx = None
    if use_tls:
        cert, key = request.getfixturevalue("tls_files")
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=str(cert))
    blob = os.urandom(6 << 20)

    async def download(request):
        response = web.StreamResponse()
        await response.prepare(request)
        view = memoryview(blob)
        for start in range(0, len(view), 100_000):    # many writes, awaited drains
            await response.write(view[start:start + 100_000])
        await response.write_eof()
        return response

    async def ws_echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(hashlib.sha256(msg.data).digest())
        return ws

    async def main():
        app = web.Application()
        app.router.add_get("/blob", download)
        app.router.add_get("/ws", ws_echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if use_tls else "http"
        try:
            connector = aiohttp.TCPConnector(limit=2, ssl=client_ctx if use_tls else False)
            async with aiohttp.ClientSession(connector=connector) as session:
                async def fetch():
                    digest = hashlib.sha256()
                    async with session.get(f"{scheme}://127.0.0.1:{port}/blob") as resp:
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            digest.update(chunk)
                    return digest.digest()
                digests = await asyncio.gather(*(fetch() for _ in range(6)))
                async with session.ws_connect(f"{scheme}://127.0.0.1:{port}/ws") as ws:
                    messages = [os.urandom(n) for n in (0, 1, 1000, 300_000)] * 5
                    for m in messages:
                        await ws.send_bytes(m)
                    answers = [(await ws.receive_bytes()) for _ in messages]
        finally:
            await runner.cleanup()
        return digests, messages, answers

    digests, messages, answers = run(loop, main(), timeout=120)
    assert digests == [hashlib.sha256(blob).digest()] * 6
    assert answers == [hashlib.sha256(m).digest() for m in messages]


def test_aiohttp_client_cancelled_mid_download_then_reused(loop):
    # Clients give up on slow responses all the time (timeouts): cancelling
    # reads in the middle of a body must leave the loop, the session and the
    # server healthy, and later downloads byte-exact.
    web = pytest.importorskip("aiohttp.web")
    import aiohttp
    import random

    blob = os.urandom(4 << 20)

    async def download(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, len(blob), 64 * 1024):
            await response.write(blob[start:start + 64 * 1024])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    async def main():
        app = web.Application()
        app.router.add_get("/blob", download)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/blob"
        rng = random.Random(9)
        cancelled = 0
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=3)) as session:
                async def fetch():
                    digest = hashlib.sha256()
                    async with session.get(url) as resp:
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            digest.update(chunk)
                    return digest.digest()
                for _ in range(20):
                    try:
                        await asyncio.wait_for(fetch(), rng.uniform(0.0, 0.03))
                    except asyncio.TimeoutError:
                        cancelled += 1
                digests = await asyncio.gather(*(fetch() for _ in range(3)))
        finally:
            await runner.cleanup()
        return cancelled, digests

    cancelled, digests = run(loop, main(), timeout=120)
    assert cancelled > 0
    assert digests == [hashlib.sha256(blob).digest()] * 3


def test_aiofiles_runs_unchanged(loop, tmp_path):
    # aiofiles (threads) keeps working on aiouring, for code not yet moved to
    # aiouring.open.
    aiofiles = pytest.importorskip("aiofiles")
    import aiofiles.os
    data = os.urandom((2 << 20) + 3)
    path = tmp_path / "data.bin"

    async def main():
        async with aiofiles.open(path, "wb") as f:
            for start in range(0, len(data), 100_000):
                await f.write(data[start:start + 100_000])
        async with aiofiles.open(path, "rb") as f:
            back = await f.read()
        return back, (await aiofiles.os.stat(path)).st_size

    back, size = run(loop, main())
    assert size == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


def test_websockets_library_server_and_client(loop):
    serve = pytest.importorskip("websockets.asyncio.server").serve
    connect = pytest.importorskip("websockets.asyncio.client").connect

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
                sent = [os.urandom(n) for n in (1, 5000, 2 << 20)] + ["text ✓"]
                got = []
                for m in sent:
                    await ws.send(m)
                    got.append(await ws.recv())
        return sent, got

    sent, got = run(loop, main(), timeout=60)
    assert got == sent


# ---- gunicorn with aiouring.worker.GunicornWebWorker ----------------------------

def _gunicorn_extra_args() -> list:
    # gunicorn 24+ opens a control socket at a fixed path in $HOME; tests that
    # run concurrently would fight over it.
    help_text = subprocess.run([str(BIN / "gunicorn"), "--help"], capture_output=True, text=True).stdout
    return ["--no-control-socket"] if "--no-control-socket" in help_text else []


def test_gunicorn_worker_serves_on_aiouring():
    pytest.importorskip("gunicorn")
    pytest.importorskip("aiohttp")
    cmd = [str(BIN / "gunicorn"), "--chdir", str(EXAMPLES), "aiohttp_app:app_factory",
           "--worker-class", "aiouring.worker.GunicornWebWorker", "--workers", "2",
           "--bind", "127.0.0.1:0", "--graceful-timeout", "5", *_gunicorn_extra_args()]
    with Server(cmd, r"Listening at: http://127\.0\.0\.1:(\d+)") as srv:
        srv._wait_for(re.compile(r"(?s)(Booting worker.*){2}"), 60)
        workers = {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", srv.output)}
        assert len(workers) == 2, srv.output
        base = f"http://127.0.0.1:{srv.port}"
        answers = [_get(base + "/loop") for _ in range(8)]
        assert {a["loop"] for a in answers} == {"aiouring.loop"}
        assert {a["pid"] for a in answers} <= workers
        body = os.urandom(3 << 20)
        assert _get(base + "/sha256", body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert srv.stop() == 0, srv.output
    assert "Traceback" not in srv.output, srv.output
    assert srv.output.count("Worker exiting") == 2, srv.output


def test_gunicorn_worker_recycles_with_max_requests():
    # --max-requests makes each worker close its aiouring loop and exit after a
    # few requests, and the arbiter fork a new one: serving must go on, on
    # aiouring, without a traceback from closing a loop with a live server.
    pytest.importorskip("gunicorn")
    pytest.importorskip("aiohttp")
    cmd = [str(BIN / "gunicorn"), "--chdir", str(EXAMPLES), "aiohttp_app:app_factory",
           "--worker-class", "aiouring.worker.GunicornWebWorker", "--workers", "1",
           "--max-requests", "3", "--bind", "127.0.0.1:0", "--graceful-timeout", "5", *_gunicorn_extra_args()]
    with Server(cmd, r"Listening at: http://127\.0\.0\.1:(\d+)") as srv:
        base = f"http://127.0.0.1:{srv.port}"
        pids = set()
        # aiohttp's worker looks at its request count once a second.
        deadline = time.monotonic() + 60
        while len(pids) < 3 and time.monotonic() < deadline:
            answer = _retry_while_recycling(lambda: _get(base + "/loop"))
            assert answer["loop"] == "aiouring.loop"
            pids.add(answer["pid"])
            time.sleep(0.1)
        assert len(pids) == 3, srv.output    # two workers were replaced
        assert srv.stop() == 0, srv.output
    assert "Max requests, shutting down" in srv.output, srv.output
    assert "Traceback" not in srv.output, srv.output


def _retry_while_recycling(request, attempts: int = 50):
    # Between a worker's exit and its successor's first accept, connections
    # wait in the shared listen backlog; a connection the old worker accepted
    # but did not serve is reset. Retry those, as a client of gunicorn would.
    for _ in range(attempts):
        try:
            return request()
        except (ConnectionError, urllib.error.URLError) as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"no answer after {attempts} attempts: {last!r}")


def test_gunicorn_worker_with_preload_and_a_loop_made_in_the_arbiter(tmp_path):
    # With --preload the app module is imported in the arbiter before the fork;
    # one that sets an aiouring loop there hands every worker a loop whose ring
    # belongs to the arbiter. The worker must not use it: it closes it and
    # serves on a loop of its own.
    pytest.importorskip("gunicorn")
    pytest.importorskip("aiohttp")
    (tmp_path / "preloaded_app.py").write_text(
        "import asyncio\nimport aiouring\nfrom aiohttp_app import app_factory  # noqa: F401\n"
        "asyncio.set_event_loop(aiouring.new_event_loop())\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES), env["PYTHONPATH"]])
    cmd = [str(BIN / "gunicorn"), "--chdir", str(tmp_path), "preloaded_app:app_factory", "--preload",
           "--worker-class", "aiouring.worker.GunicornWebWorker", "--workers", "2",
           "--bind", "127.0.0.1:0", "--graceful-timeout", "5", *_gunicorn_extra_args()]
    with Server(cmd, r"Listening at: http://127\.0\.0\.1:(\d+)", env=env) as srv:
        srv._wait_for(re.compile(r"(?s)(Booting worker.*){2}"), 60)
        answers = [_get(f"http://127.0.0.1:{srv.port}/loop") for _ in range(6)]
        assert {a["loop"] for a in answers} == {"aiouring.loop"}
        assert srv.stop() == 0, srv.output
    assert "Traceback" not in srv.output, srv.output
    assert srv.output.count("Worker exiting") == 2, srv.output


def test_gunicorn_with_uvicorn_workers_on_aiouring(tmp_path):
    # The README's recipe for ASGI apps under gunicorn: uvicorn's worker class
    # with aiouring's loop factory in CONFIG_KWARGS.
    pytest.importorskip("gunicorn")
    pytest.importorskip("uvicorn")
    (tmp_path / "aiouring_uvicorn_worker.py").write_text(
        "import warnings\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore', DeprecationWarning)   # uvicorn.workers moved to uvicorn-worker\n"
        "    from uvicorn.workers import UvicornWorker\n\n"
        "class AiouringUvicornWorker(UvicornWorker):\n"
        "    CONFIG_KWARGS = {'loop': 'aiouring:new_event_loop', 'http': 'auto'}\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    cmd = [str(BIN / "gunicorn"), "--chdir", str(EXAMPLES), "asgi_app:app",
           "--worker-class", "aiouring_uvicorn_worker.AiouringUvicornWorker", "--workers", "2",
           "--bind", "127.0.0.1:0", "--graceful-timeout", "5", *_gunicorn_extra_args()]
    with Server(cmd, r"Listening at: http://127\.0\.0\.1:(\d+)", env=env) as srv:
        srv._wait_for(re.compile(r"(?s)(Application startup complete.*){2}"), 60)
        answers = [_get(f"http://127.0.0.1:{srv.port}/") for _ in range(6)]
        assert answers == [{"loop": "aiouring.loop"}] * 6
        assert srv.stop() == 0, srv.output
    assert "Traceback" not in srv.output, srv.output


# ---- in a container that blocks io_uring (seccomp, as Docker >= 25) -------------

_BLOCKED_LAUNCHER = """
import sys
from tests.helpers.seccomp import block_io_uring
block_io_uring()
sys.argv = {argv!r}
{entry}
"""


def _blocked(argv: list, entry: str) -> list:
    return [PYTHON, "-c", _BLOCKED_LAUNCHER.format(argv=argv, entry=entry)]


def _gunicorn_blocked(workers: int) -> list:
    argv = ["gunicorn", "--chdir", str(EXAMPLES), "aiohttp_app:app_factory",
            "--worker-class", "aiouring.worker.GunicornWebWorker", "--workers", str(workers),
            "--bind", "127.0.0.1:0", "--graceful-timeout", "5", *_gunicorn_extra_args()]
    return _blocked(argv, "from gunicorn.app.wsgiapp import run\nsys.exit(run())")


def test_gunicorn_worker_falls_back_where_io_uring_is_blocked():
    pytest.importorskip("gunicorn")
    pytest.importorskip("aiohttp")
    with Server(_gunicorn_blocked(2), r"Listening at: http://127\.0\.0\.1:(\d+)",
                env=child_env(AIOURING_STRICT="0")) as srv:
        srv._wait_for(re.compile(r"(?s)(UringFallbackWarning.*){2}"), 60)
        answers = [_get(f"http://127.0.0.1:{srv.port}/loop") for _ in range(4)]
        assert {a["loop"] for a in answers} == {"asyncio.unix_events"}
        assert srv.stop() == 0, srv.output
    # One warning per worker process, naming the cause.
    assert srv.output.count("UringFallbackWarning") == 2, srv.output
    assert "seccomp" in srv.output


def test_gunicorn_worker_strict_fails_to_boot_where_io_uring_is_blocked():
    pytest.importorskip("gunicorn")
    pytest.importorskip("aiohttp")
    done = subprocess.run(_gunicorn_blocked(1), env=child_env(AIOURING_STRICT="1"),
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    # gunicorn halts with WORKER_BOOT_ERROR (3) instead of respawning forever.
    assert done.returncode == 3, output
    assert "io_uring is unavailable" in output and "UringUnavailableError" in output, output


# ---- uvicorn --loop aiouring:new_event_loop ------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_http_and_websocket(workers):
    pytest.importorskip("uvicorn")
    ws_client = pytest.importorskip("websockets.sync.client")
    cmd = [str(BIN / "uvicorn"), "--app-dir", str(EXAMPLES), "asgi_app:app",
           "--loop", "aiouring:new_event_loop", "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)]
    with Server(cmd, r"running on http://127\.0\.0\.1:(\d+)", stop_signal=signal.SIGINT) as srv:
        srv._wait_for(re.compile(r"(?s)(Application startup complete.*){%d}" % workers), 60)
        base = f"http://127.0.0.1:{srv.port}"
        assert _get(base + "/") == {"loop": "aiouring.loop"}
        body = os.urandom(2 << 20)
        assert _get(base + "/", body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        with ws_client.connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=30) as ws:
            for text in ("hello", "x" * 100_000):
                ws.send(text)
                assert ws.recv(timeout=30) == f"aiouring.loop: {text}"
        assert srv.stop() == 0, srv.output
    assert "Traceback" not in srv.output, srv.output
    assert "Application shutdown complete" in srv.output, srv.output


def _uvicorn_blocked() -> list:
    argv = ["uvicorn", "--app-dir", str(EXAMPLES), "asgi_app:app", "--loop", "aiouring:new_event_loop",
            "--host", "127.0.0.1", "--port", "0"]
    return _blocked(argv, "from uvicorn.main import main\nmain()")


def test_uvicorn_falls_back_where_io_uring_is_blocked():
    pytest.importorskip("uvicorn")
    with Server(_uvicorn_blocked(), r"running on http://127\.0\.0\.1:(\d+)", stop_signal=signal.SIGINT,
                env=child_env(AIOURING_STRICT="0")) as srv:
        assert _get(f"http://127.0.0.1:{srv.port}/") == {"loop": "asyncio.unix_events"}
        assert srv.stop() == 0, srv.output
    assert srv.output.count("UringFallbackWarning") == 1 and "seccomp" in srv.output, srv.output


def test_uvicorn_strict_exits_where_io_uring_is_blocked():
    pytest.importorskip("uvicorn")
    done = subprocess.run(_uvicorn_blocked(), env=child_env(AIOURING_STRICT="1"),
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "UringUnavailableError: io_uring is unavailable" in output, output


# ---- pytest-asyncio ------------------------------------------------------------

def test_pytest_asyncio_suite_runs_on_aiouring(tmp_path):
    pytest.importorskip("pytest_asyncio")
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLES / "pytest_asyncio", suite)
    done = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::DeprecationWarning"],
                          cwd=suite, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b3 passed\b", done.stdout), done.stdout


def test_pytest_asyncio_sample_fails_without_the_hook(tmp_path):
    # The sample's assertions must be able to fail: without its conftest the
    # same tests run on asyncio's loop, and say so.
    pytest.importorskip("pytest_asyncio")
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLES / "pytest_asyncio", suite)
    (suite / "conftest.py").unlink()
    done = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=suite, env=child_env(), capture_output=True, text=True, timeout=120)
    assert re.search(r"\b3 failed\b", done.stdout), done.stdout
    assert "asyncio.unix_events" in done.stdout

