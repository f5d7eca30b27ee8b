"""Run the example under real Gunicorn, with its config file, as the README
says, on a free port; submit tasks over HTTP, poll their status, and stop it
with SIGTERM.

Self-contained: it starts Gunicorn with :mod:`subprocess` and polls with
:mod:`urllib`, each wait against a deadline.
"""

from __future__ import annotations

import json
import os
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

import pytest

gunicorn = pytest.importorskip("gunicorn")

EXAMPLE = Path(__file__).parents[1]
GUNICORN = Path(sys.executable).parent / "gunicorn"
# Gunicorn 25.1 and later open a control socket, by default in a place shared
# by every Gunicorn of the user (or in the working directory): not for a test.
NO_CONTROL_SOCKET = ["--no-control-socket"] if gunicorn.version_info >= (25, 1) else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(condition: t.Callable[[], t.Any], timeout: float, what: str) -> t.Any:
    """Call ``condition`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (value := condition()):
        assert time.monotonic() < deadline, f"Timed out after {timeout} s waiting for {what}."
        pause.wait(0.05)  # the polling interval, not a synchronisation
    return value


class Example:
    """The example app under Gunicorn, started as the README says."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_path = tmp_path / "gunicorn.log"
        self.state_dir = tmp_path / "tasks"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "FLASK_TASK_STATE_DIR": str(self.state_dir),
            "FLASK_STEP_SECONDS": "0.1",
        }
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(
                [
                    str(GUNICORN),
                    "-c",
                    "examples/gunicorn/gunicorn.conf.py",
                    "--chdir",
                    "examples/gunicorn",
                    # The command line wins over the config file's bind.
                    "-b",
                    f"127.0.0.1:{self.port}",
                    *NO_CONTROL_SOCKET,
                    "app:create_app()",
                ],
                cwd=EXAMPLE.parents[1],  # the repository root
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.output_path.read_text()

    def request(self, path: str, method: str = "GET") -> tuple[int, t.Any, t.Any]:
        req = urllib.request.Request(
            self.url + path, method=method, data=b"" if method == "POST" else None
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, json.load(response), response.headers
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error), error.headers

    def wait_ready(self) -> None:
        def answers() -> bool:
            assert self.process.poll() is None, f"Gunicorn exited early:\n{self.output}"
            try:
                self.request("/tasks/none")
            except OSError:
                return False
            return True

        poll(answers, 30, f"the example to answer on {self.url}")

    def stop(self) -> None:
        """Kill whatever is still running: the master and its workers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        else:
            try:  # workers left behind by a master that exited
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def example(tmp_path: Path) -> t.Iterator[Example]:
    example = Example(tmp_path)
    try:
        example.wait_ready()
        yield example
    finally:
        example.stop()


def submit(example: Example, steps: int) -> str:
    status, body, headers = example.request(f"/tasks?steps={steps}", "POST")
    assert status == 202, body
    assert headers["Location"] == body["status_url"] == f"/tasks/{body['id']}"
    task_id: str = body["id"]
    return task_id


def status_of(example: Example, task_id: str) -> dict[str, t.Any]:
    code, body, _ = example.request(f"/tasks/{task_id}")
    assert code == 200, body  # known to either worker
    return t.cast("dict[str, t.Any]", body)


def sigterm(example: Example) -> int:
    example.process.send_signal(signal.SIGTERM)
    try:
        # Well within graceful_timeout (30 s): no task is left running.
        return example.process.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"Gunicorn did not exit:\n{example.output}") from None


def assert_clean_exit(example: Example, code: int) -> None:
    output = example.output
    assert code == 0, output
    assert f"Listening at: {example.url}" in output  # -b won over bind
    assert "Using worker: gthread" in output  # the config file was read
    assert output.count("Booting worker") == 2, output
    for trouble in ("SIGKILL", "WORKER TIMEOUT", "was sent", "exited with code", "Traceback"):
        assert trouble not in output, output


def test_submit_and_poll_until_succeeded(example: Example) -> None:
    task_id = submit(example, 3)
    state = poll(
        lambda: (s := status_of(example, task_id))["status"] == "succeeded" and s,
        15,
        f"task {task_id} to succeed",
    )
    assert state["result"] == 3
    assert state["progress"] == {"current": 3, "total": 3, "message": "step 3 of 3"}
    assert state["pid"] != example.process.pid  # it ran in a worker
    assert_clean_exit(example, sigterm(example))


def test_sigterm_lets_a_running_task_finish(example: Example) -> None:
    task_id = submit(example, 5)
    poll(lambda: status_of(example, task_id)["status"] == "running", 15, f"task {task_id} to run")
    code = sigterm(example)
    # The worker finished the task before it exited, within
    # BGTASKS_SHUTDOWN_TIMEOUT, and its done-callback recorded that.
    state = json.loads((example.state_dir / f"{task_id}.json").read_text())
    assert state["status"] == "succeeded", state
    assert state["result"] == 5
    assert_clean_exit(example, code)
    assert "Background tasks at exit" not in example.output  # nothing was cut short
