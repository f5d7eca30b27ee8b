"""Start real servers (Gunicorn, Waitress, uWSGI, the Flask dev server) for
the tests, on 127.0.0.1 and a free port, and make sure they stop.

Every wait polls a condition against a deadline; nothing sleeps for a
fixed time to let something happen.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def no_control_socket() -> list[str]:
    """Gunicorn's option that turns off its control socket, where it has one.

    Gunicorn 25.1 and later open a control socket (in the working directory,
    ~/.gunicorn or $XDG_RUNTIME_DIR, depending on the version), which servers
    started side by side would fight over, and which adds a thread to the
    master.
    """
    import gunicorn

    return ["--no-control-socket"] if gunicorn.version_info >= (25, 1) else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def thread_count(pid: int) -> int | None:
    """How many threads the process has, where ``/proc`` tells."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    return int(match[1]) if match else None


def gone(pid: int) -> bool:
    """``True`` once the process is dead: reaped, or a zombie (a process
    whose parent died may be reparented to an init that never reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped while read
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_for(condition: t.Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {what}.")
        pause.wait(0.05)  # the polling interval, not a synchronisation


class Server:
    """A server process whose output is collected, and that is always stopped.

    :param args: The command line; ``{port}`` in it is replaced.
    :param cwd: The working directory, usually where the app module lives.
    """

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.args = [arg.replace("{port}", str(self.port)) for arg in args]
        self.output = ""
        self._lines: list[str] = []
        self._lock = threading.Lock()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)
                self.output += line

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str = "/", timeout: float = 30) -> None:
        """Wait until the server answers ``path`` with any HTTP status."""

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"The server exited early:\n{self.output}")
            try:
                urllib.request.urlopen(self.url + path, timeout=2).close()
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        wait_for(answers, timeout, f"{self.args[0]} to answer on {self.url}")

    def request(
        self, path: str, method: str = "GET", timeout: float = 10
    ) -> tuple[int, t.Any, dict[str, str]]:
        """Send a request; return the status, the JSON body (or text), headers."""
        req = urllib.request.Request(
            self.url + path, method=method, data=b"" if method == "POST" else None
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, body, headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            status, body, headers = error.code, error.read(), dict(error.headers)
        text = body.decode()
        try:
            return status, json.loads(text), headers
        except ValueError:
            return status, text, headers

    def submit_tasks(self, seconds: float, count: int = 1) -> tuple[list[str], int]:
        """Submit ``count`` tasks of the test app over HTTP; return their ids
        and the pid of the process that took them."""
        status, body, _ = self.request(f"/tasks?seconds={seconds}&count={count}", "POST")
        assert status == 200, body
        return list(body["ids"]), int(body["pid"])

    def children(self) -> set[int]:
        """The pids of the process's children, such as a Gunicorn master's workers."""
        listed = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(child) for child in listed.read_text().split()}

    def wait_output(self, text: str, timeout: float = 30) -> None:
        wait_for(
            lambda: text in self.output, timeout, f"{text!r} in the server output:\n{self.output}"
        )

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit by itself and return its exit code."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"The server did not exit within {timeout} s:\n{self.output}"
            ) from None
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Kill the whole process group if anything is still running."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
        else:
            try:  # workers left behind by a master that exited
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
