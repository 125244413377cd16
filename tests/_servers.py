"""Start example servers (echo, aiohttp, gunicorn, uvicorn) as real processes
for the ecosystem and example tests, and always reap them.

``Server`` runs a command, waits until a line of its output names the port it
listens on, and on exit stops it with a signal and asserts it exited cleanly
(a server that hangs on shutdown fails the test instead of lingering).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    # The repo on the path even where aiouring is not installed (an sdist check
    # uses its own venv); strict mode so a silent fallback to asyncio fails.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["AIOURING_STRICT"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Server:
    """``with Server(cmd, port_pattern) as srv: srv.port ...``"""

    def __init__(self, cmd: Sequence[str], port_pattern: str, *, cwd: Optional[Path] = None,
                 env: Optional[dict] = None, stop_signal: int = signal.SIGTERM,
                 startup_timeout: float = 60.0) -> None:
        self.cmd = list(cmd)
        self.port_pattern = re.compile(port_pattern)
        self.cwd = cwd
        self.env = env if env is not None else child_env()
        self.stop_signal = stop_signal
        self.startup_timeout = startup_timeout
        self.output = ""
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Server":
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.port = int(self._wait_for(self.port_pattern, self.startup_timeout).group(1))
        except BaseException:
            self._kill()
            raise
        return self

    def _wait_for(self, pattern: "re.Pattern[str]", timeout: float) -> "re.Match[str]":
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while (match := pattern.search(self.output)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern.pattern!r} within {timeout}s from {self.cmd}:\n{self.output}")
                if sel.select(remaining):
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    if not chunk:
                        self.proc.wait(5)
                        raise AssertionError(f"{self.cmd} exited ({self.proc.returncode}) before "
                                             f"printing {pattern.pattern!r}:\n{self.output}")
                    self.output += chunk.decode(errors="replace")
        return match

    def stop(self, timeout: float = 30.0) -> int:
        """Signal the server, collect the rest of its output, return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError(f"{self.cmd} did not exit within {timeout}s of "
                                 f"{signal.Signals(self.stop_signal).name}:\n{self.output}")
        self.output += rest.decode(errors="replace")
        return self.proc.returncode

    def _kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.communicate()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.proc is not None and self.proc.returncode is None:
            if exc_type is None:
                code = self.stop()
                assert code == 0, f"{self.cmd} exited with {code}:\n{self.output}"
            else:
                self._kill()


def expected_loop_module(loop_name: str) -> str:
    return {"aiouring": "aiouring.loop", "uvloop": "uvloop", "asyncio": "asyncio.unix_events"}[loop_name]
