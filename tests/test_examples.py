"""Every example runs, on every loop, with a short workload whose content is
checked (hashes), so the examples cannot rot. Each runs as its own process,
as a user would run it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests._servers import EXAMPLES, PYTHON, Server, child_env, expected_loop_module

LOOPS = ("aiouring", "asyncio", "uvloop")


@pytest.fixture(params=LOOPS)
def loop_name(request) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return request.param


def _example(name: str, *args: str) -> list:
    return [PYTHON, str(EXAMPLES / name), *args]


def _echo_roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # Send from another thread: an echo server replies while we still send,
        # and both socket buffers filling up would deadlock a single thread.
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        received = bytearray()
        while chunk := sock.recv(1 << 16):
            received += chunk
        sender.join()
    return bytes(received)


@pytest.mark.parametrize("mode", ["proto", "streams"])
def test_echo_server(loop_name, mode):
    cmd = _example("echo_server.py", "--loop", loop_name, "--mode", mode)
    with Server(cmd, r"listening on [\d.]+:(\d+) \((\S+)\)") as srv:
        assert f"({expected_loop_module(loop_name)})" in srv.output
        payloads = [os.urandom(n) for n in (1, 1000, 3 << 20)]
        results: list = [None] * len(payloads)

        def client(i: int) -> None:
            results[i] = _echo_roundtrip(srv.port, payloads[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for sent, got in zip(payloads, results):
            assert got is not None and hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
        assert srv.stop() == 0, srv.output
        assert "Traceback" not in srv.output, srv.output


def _get_json(url: str, data: bytes | None = None) -> dict:
    with urllib.request.urlopen(url, data=data, timeout=30) as resp:
        return json.loads(resp.read())


def test_aiohttp_app(loop_name):
    pytest.importorskip("aiohttp")
    ws_client = pytest.importorskip("websockets.sync.client")
    with Server(_example("aiohttp_app.py", "--loop", loop_name), r"listening on [\d.]+:(\d+)") as srv:
        base = f"http://127.0.0.1:{srv.port}"
        assert _get_json(base + "/loop")["loop"] == expected_loop_module(loop_name)
        body = os.urandom(5 << 20)
        assert _get_json(base + "/sha256", body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        with ws_client.connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=30) as ws:
            blob = os.urandom(200_000)
            ws.send("hello")
            assert ws.recv(timeout=30) == "hello"
            ws.send(blob)
            assert ws.recv(timeout=30) == blob
        # run_app's signal handling: SIGINT ends it cleanly and closes the loop.
        srv.stop_signal = signal.SIGINT
        assert srv.stop() == 0, srv.output
        assert "Traceback" not in srv.output, srv.output


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def test_subprocess_pipeline(loop_name):
    size, seed = 3_000_000, 7
    # The example compares what it sent with what came back; recompute what it
    # must have sent here too, so that a pipeline that e.g. sends nothing fails.
    chunks = _load_example("subprocess_pipeline")._chunks(size, seed)
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    done = subprocess.run(_example("subprocess_pipeline.py", "--loop", loop_name, "--size", str(size),
                                   "--seed", str(seed)),
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"ok {size} {expected} "), done.stdout


@pytest.mark.parametrize("method", ["stream", "copyfile"])
def test_copy_file(loop_name, method, tmp_path):
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = os.urandom((3 << 20) + 12345)    # not a multiple of any chunk size
    src.write_bytes(data)
    dst.write_bytes(b"old contents, longer than nothing" * 100_000)    # must be truncated
    done = subprocess.run(_example("copy_file.py", str(src), str(dst), "--loop", loop_name,
                                   "--method", method, "--fsync"),
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    digest = hashlib.sha256(data).hexdigest()
    on_ring = "yes" if loop_name == "aiouring" else "no"
    assert done.stdout.strip() == f"copied {len(data)} bytes sha256 {digest} (on ring: {on_ring})"
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == digest


def _http_get_raw(port: int, target: str) -> tuple:
    # A raw request: urllib would normalise "/../" away before sending it.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        response = bytearray()
        while chunk := sock.recv(1 << 16):
            response += chunk
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode()
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    assert length == [len(body)], head
    return status, body


def test_static_server(loop_name, tmp_path):
    root = tmp_path / "www"
    (root / "sub dir").mkdir(parents=True)
    files = {"empty": b"", "small.txt": b"hello\n", "sub dir/big.bin": os.urandom((4 << 20) + 7)}
    for name, content in files.items():
        (root / name).write_bytes(content)
    (tmp_path / "secret").write_bytes(b"outside the root")
    cmd = _example("static_server.py", "--root", str(root), "--loop", loop_name)
    with Server(cmd, r"serving \S+ on [\d.]+:(\d+)") as srv:
        assert f"({expected_loop_module(loop_name)})" in srv.output
        for name, content in files.items():
            status, body = _http_get_raw(srv.port, "/" + name.replace(" ", "%20"))
            assert status == "HTTP/1.0 200 OK"
            assert hashlib.sha256(body).digest() == hashlib.sha256(content).digest(), name
        assert _http_get_raw(srv.port, "/missing")[0] == "HTTP/1.0 404 Not Found"
        assert _http_get_raw(srv.port, "/sub%20dir")[0] == "HTTP/1.0 404 Not Found"
        assert _http_get_raw(srv.port, "/../secret")[0] == "HTTP/1.0 403 Forbidden"
        assert srv.stop() == 0, srv.output
        assert "Traceback" not in srv.output, srv.output


def test_every_example_is_documented_and_tested():
    readme = (EXAMPLES.parent / "README.md").read_text()
    this_file = Path(__file__).read_text() + (Path(__file__).parent / "test_ecosystem.py").read_text()
    examples = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
    assert examples
    for name in examples:
        assert f"(examples/{name})" in readme, f"{name} is not in the README's examples table"
        assert f'"{name}"' in this_file or f'"{name[:-3]}:' in this_file or f'"{name[:-3]}"' in this_file, \
            f"no test runs {name}"


def test_readme_python_snippets_compile():
    readme = (EXAMPLES.parent / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(snippets) >= 4
    for snippet in snippets:
        compile(snippet, "README.md", "exec")


def test_documentation_links_resolve():
    root = EXAMPLES.parent
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to a missing {target}"
