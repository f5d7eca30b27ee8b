"""Run the example under real Gunicorn, with its config file and two worker
processes, as the README says, on a free port, with the SQLite store in a
temporary folder. Submit tasks over HTTP, look them up and cancel them
through the worker that does *not* run them, kill a worker in the middle of
a durable task, and stop Gunicorn with SIGTERM.

Which worker answers a request is up to the kernel, so to choose it, a test
stops the other worker (SIGSTOP) for the length of a request or two and
then lets it go on (SIGCONT): a stopped process accepts no connection.

Self-contained: it starts Gunicorn with :mod:`subprocess` and polls with
:mod:`urllib`, each wait against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
import urllib.error
import urllib.request
from datetime import datetime
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


def process_state(pid: int) -> str | None:
    """The state letter of a process (``S``, ``R``, ``T`` for stopped, ``Z``
    for a zombie...), or ``None`` if there is no such process. Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped while read
        return None
    return stat.rsplit(")", 1)[1].split()[0]  # the name in (...) may hold spaces


class Example:
    """The example app under Gunicorn, started as the README says."""

    def __init__(
        self, tmp_path: Path, name: str, env: t.Mapping[str, str], args: t.Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_path = tmp_path / f"{name}.log"
        # Shared by the servers of one test, so that a second one sees the
        # tasks of the first.
        self.db_path = tmp_path / "tasks.db"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # Four slashes: an absolute path, rather than the instance folder.
            "FLASK_BGTASKS_STORE": f"sqlite:///{self.db_path}",
            "FLASK_STEP_SECONDS": "0.1",
            **env,
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
                    *args,
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

    def workers(self) -> list[int]:
        """The pids of the live worker processes, oldest first."""
        booted = re.findall(r"Booting worker with pid: (\d+)", self.output)
        return [pid for pid in map(int, booted) if process_state(pid) not in (None, "Z")]

    def wait_ready(self) -> None:
        def answers() -> bool:
            assert self.process.poll() is None, f"Gunicorn exited early:\n{self.output}"
            try:
                self.request("/tasks/none")
            except OSError:
                return False
            return len(self.workers()) == 2

        poll(answers, 30, f"the example to answer on {self.url}")

    @contextlib.contextmanager
    def only(self, worker: int) -> t.Iterator[None]:
        """Let only ``worker`` accept connections within the block: the
        other workers are stopped (SIGSTOP) until it ends (SIGCONT)."""
        others = [pid for pid in self.workers() if pid != worker]
        assert worker not in others and others, f"{worker} is not one of several workers."
        try:
            for _ in range(5):
                # While every worker runs, whoever holds the write lock (a
                # worker that is still booting writes the schema) lets it
                # go: stop the others only then.
                poll(self.store_writable, 30, "the store's write lock to be free")
                for pid in others:
                    os.kill(pid, signal.SIGSTOP)
                poll(
                    lambda: all(process_state(pid) == "T" for pid in others),
                    5,
                    f"workers {others} to stop",
                )
                if self.store_writable():
                    break
                # A stopped worker was writing to the store, and would
                # block the other one's writes until it goes on.
                for pid in others:
                    os.kill(pid, signal.SIGCONT)
            else:
                raise AssertionError("The stopped workers kept the store locked.")
            yield
        finally:
            for pid in others:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def store_writable(self) -> bool:
        """Whether a write to the store can start within a second. The test
        only takes the write lock and lets it go; it writes nothing."""
        db = sqlite3.connect(self.db_path, timeout=1.0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            return False
        finally:
            db.close()
        return True

    def stop(self) -> None:
        """Kill whatever is still running: the master and its workers."""
        for pid in self.workers():  # SIGKILL does not end a stopped process's stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        else:
            try:  # workers left behind by a master that exited
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def start(tmp_path: Path) -> t.Iterator[t.Callable[..., Example]]:
    """Start the example with extra ``FLASK_*`` environment variables, once
    ready; every one started is stopped at the end of the test."""
    started: list[Example] = []

    def start(name: str = "gunicorn", args: t.Sequence[str] = (), **env: str) -> Example:
        example = Example(tmp_path, name, env, args)
        started.append(example)
        example.wait_ready()
        return example

    try:
        yield start
    finally:
        for example in started:
            example.stop()


@pytest.fixture
def example(start: t.Callable[..., Example]) -> Example:
    return start()


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


def wait_for(example: Example, task_id: str, status: str, timeout: float = 15) -> dict[str, t.Any]:
    state: dict[str, t.Any] = poll(
        lambda: (s := status_of(example, task_id))["status"] == status and s,
        timeout,
        f"task {task_id} to be {status}",
    )
    return state


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


def test_any_worker_answers_for_a_task(example: Example) -> None:
    runner, other = example.workers()
    with example.only(runner):
        task_id = submit(example, 10)
    with example.only(other):
        # The runner is stopped, so its task waits; the other worker reads
        # the task's row.
        assert status_of(example, task_id)["status"] in ("queued", "running")
    wait_for(example, task_id, "succeeded")
    with example.only(other):
        state = status_of(example, task_id)
    times = {key: state.pop(key) for key in ("submitted_at", "started_at", "finished_at")}
    assert state == {
        "id": task_id,
        "status": "succeeded",
        "result": 10,
        "progress": {"current": 10, "total": 10, "message": "step 10 of 10"},
        "attempt": 1,
        "cancel_requested": False,
    }
    submitted, started, finished = map(datetime.fromisoformat, times.values())
    assert submitted <= started < finished
    assert submitted.utcoffset() is not None  # ISO strings with a time zone

    for bad in ("0", "101", "five", "-1"):
        code, body, _ = example.request(f"/tasks?steps={bad}", "POST")
        assert (code, body) == (400, {"error": "'steps' must be a whole number from 1 to 100."})
    # Unknown, and not even shaped like an id: the same 404, in JSON.
    for bad in ("A" * 22, "A" * 65, "not%20an%20id", "a.b", "%C3%A9t%C3%A9"):
        assert example.request(f"/tasks/{bad}")[:2] == (404, {"error": "No task with this id."})
    assert_clean_exit(example, sigterm(example))


def test_cancel_through_another_worker(start: t.Callable[..., Example]) -> None:
    # One task thread per worker, so that a second task waits in the queue.
    example = start(FLASK_BGTASKS_MAX_WORKERS="1")
    runner, other = example.workers()
    with example.only(runner):
        running = submit(example, 100)
        queued = submit(example, 1)
        wait_for(example, running, "running")
    with example.only(other):
        code, body, _ = example.request(f"/tasks/{queued}/cancel", "POST")
        assert (code, body["status"], body["started_at"]) == (202, "cancelled", None)
        code, body, _ = example.request(f"/tasks/{running}/cancel", "POST")
        # The runner, in the other worker, may see the request and stop
        # between the cancel and the read that answers it: either is true.
        assert (code, body["cancel_requested"]) == (202, True)
        assert body["status"] in {"running", "cancelled"}
    # The runner sees the request at its next step, and stops there.
    state = wait_for(example, running, "cancelled", 10)
    assert state["progress"]["current"] < 100
    assert "result" not in state and "error" not in state
    assert status_of(example, queued)["attempt"] == 0  # never ran
    # Cancelling again changes nothing; an unknown id is a 404.
    assert example.request(f"/tasks/{running}/cancel", "POST")[:2] == (202, state)
    assert example.request(f"/tasks/{'A' * 22}/cancel", "POST")[0] == 404
    assert example.request("/tasks/a.b/cancel", "POST")[0] == 404
    assert_clean_exit(example, sigterm(example))


def test_a_durable_task_survives_a_killed_worker(start: t.Callable[..., Example]) -> None:
    # A lease of one second: the task of a dead worker is taken over after
    # one to one and a third seconds, rather than 15 to 20.
    example = start(FLASK_BGTASKS_STORE_LEASE="1", FLASK_STEP_SECONDS="0.05")
    runner = example.workers()[0]
    with example.only(runner):
        task_id = submit(example, 40)
        poll(
            lambda: (status_of(example, task_id)["progress"] or {}).get("current", 0) >= 2,
            10,
            f"task {task_id} to take two steps",
        )
    os.kill(runner, signal.SIGKILL)
    # The other worker, or the one Gunicorn starts in the runner's place,
    # runs the task again from its first step.
    state = wait_for(example, task_id, "succeeded", 20)
    assert state["result"] == 40
    assert state["attempt"] == 2
    assert state["progress"] == {"current": 40, "total": 40, "message": "step 40 of 40"}
    output = example.output
    assert f"Worker (pid:{runner}) was sent SIGKILL!" in output, output
    assert f"(id {task_id}) was left unfinished by a process that stopped" in output, output
    assert len(example.workers()) == 2 and runner not in example.workers()
    assert sigterm(example) == 0, example.output


def test_sigterm_lets_a_running_task_finish(start: t.Callable[..., Example]) -> None:
    example = start()
    # 30 steps of 0.1 s: three seconds in which the lookups of a loaded
    # machine see it running, and well within BGTASKS_SHUTDOWN_TIMEOUT (20).
    task_id = submit(example, 30)
    wait_for(example, task_id, "running")
    code = sigterm(example)
    assert_clean_exit(example, code)
    assert "Background tasks at exit" not in example.output  # nothing was cut short
    # The worker finished the task before it exited, within
    # BGTASKS_SHUTDOWN_TIMEOUT, and the store kept its outcome for the
    # next server on the same file.
    restarted = start("restarted")
    state = status_of(restarted, task_id)
    assert (state["status"], state["result"], state["attempt"]) == ("succeeded", 30, 1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT], ids=["SIGINT", "SIGQUIT"])
def test_quick_shutdown_stops_quickly(start: t.Callable[..., Example], signum: int) -> None:
    # One task thread per worker and slow steps: one durable task runs for
    # minutes, the next one waits in the queue. Sync workers: a gthread
    # worker's own SIGQUIT handler shuts its request pool down, and hangs for
    # good if the signal comes while the worker is starting a request thread
    # (Gunicorn 27), which a test that signals right after a request hits.
    example = start(
        # One thread, or Gunicorn makes the sync worker a gthread one.
        args=["--worker-class", "sync", "--threads", "1"],
        FLASK_BGTASKS_MAX_WORKERS="1",
        FLASK_STEP_SECONDS="5",
    )
    assert "Using worker: sync" in example.output
    runner = example.workers()[0]
    with example.only(runner):
        running = submit(example, 100)
        queued = submit(example, 2)
        wait_for(example, running, "running")
    started = time.monotonic()
    example.process.send_signal(signum)
    try:
        code = example.process.wait(20)  # BGTASKS_SHUTDOWN_TIMEOUT is 20
    except subprocess.TimeoutExpired:
        raise AssertionError(f"Gunicorn did not exit:\n{example.output}") from None
    elapsed = time.monotonic() - started
    output = example.output
    assert code == 0, output
    assert elapsed < 3, output  # the worker_int hook made the drain quick
    line = next(line for line in output.splitlines() if "Stopping quickly: ending 2" in line)
    assert set(line.partition(" now: ")[2].split(", ")) == {running, queued}, output
    assert f"(id {running}) was still running at the shutdown deadline" in output
    assert f"(id {queued}) was queued at shutdown and was left in the store" in output
    # Both are durable, so both were left for the next server, which runs them.
    restarted = start("restarted", FLASK_STEP_SECONDS="0.01")
    for task_id, steps in ((running, 100), (queued, 2)):
        state = wait_for(restarted, task_id, "succeeded")
        assert state["result"] == steps
