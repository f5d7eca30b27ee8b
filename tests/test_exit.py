"""The end of a process: the drain runs before every exit handler, and a
second Ctrl-C (or SIGQUIT) during the drain stops quickly.

Each test runs a real interpreter or a real server, since what happens at
interpreter exit can't be seen from inside the test process.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import typing as t
from pathlib import Path

import pytest

from tests.servers import BIN, Server, wait_for

APPS = Path(__file__).parent / "server_apps"

EXIT_ORDER_SCRIPT = """
import atexit
import threading

def try_submit(when):
    from flask_bgtasks import ShutdownError
    for app in (active, idle):
        with app.app_context():
            try:
                bg.submit(print, "ran", when)
            except ShutdownError:
                print(when, app.name, "refused", flush=True)
            else:
                print(when, app.name, "submitted", flush=True)
    print(when, "threads", sorted(t.name for t in threading.enumerate()), flush=True)

# Registered before the package is imported, so it runs after its drain.
atexit.register(try_submit, "early handler")

from flask import Flask
from flask_bgtasks import BGTasks

bg = BGTasks()
active = Flask("active")
idle = Flask("idle")  # never given a task in this process
bg.init_app(active)
bg.init_app(idle)

@bg.on_shutdown
def drained():
    print("drain ran", flush=True)

with active.app_context():
    print("task", bg.submit(int, "7").result(10), flush=True)

# Registered after the import: atexit would run it before the drain.
atexit.register(try_submit, "late handler")
"""


def test_no_exit_handler_can_submit_once_the_drain_began(tmp_path: Path) -> None:
    script = tmp_path / "exit_order.py"
    script.write_text(textwrap.dedent(EXIT_ORDER_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    lines = output.splitlines()
    assert lines[0] == "task 7"
    # The drain ran first, before both handlers, whenever they were registered.
    assert lines[1] == "drain ran", output
    for when in ("early handler", "late handler"):
        assert f"{when} active refused" in lines, output
        assert f"{when} idle refused" in lines, output
        # No thread was started for them during interpreter shutdown.
        assert not any(line.startswith(f"{when} threads") and "bgtasks-" in line for line in lines)
    assert "ran" not in (line.split()[0] for line in lines)


SECOND_CTRL_C_SCRIPT = """
import logging
import threading

from flask import Flask
from flask_bgtasks import BGTasks

logging.basicConfig(level=logging.INFO, format="%(message)s")
app = Flask("second_ctrl_c")
app.config.update(BGTASKS_MAX_WORKERS=1, BGTASKS_SHUTDOWN_TIMEOUT=60)
bg = BGTasks(app)
started = threading.Event()

def stuck():
    started.set()
    threading.Event().wait()  # ignores every request to stop

with app.app_context():
    ids = [bg.submit(stuck).id, bg.submit(int).id]
started.wait()
print("ids", *ids, flush=True)
"""


def interrupt_the_drain(process: Server) -> str:
    """Once the drain of two tasks has begun, send SIGINT; the process must
    exit cleanly at once, rather than after BGTASKS_SHUTDOWN_TIMEOUT (60 s).
    Returns its output."""
    process.wait_output("Draining 2 background tasks at exit, for at most 60 s")
    started = time.monotonic()
    process.signal(signal.SIGINT)
    code = process.wait_exit(20)
    elapsed = time.monotonic() - started
    output = process.output
    assert code == 0, output
    assert elapsed < 3, output
    return output


def test_a_second_ctrl_c_during_the_drain_stops_at_once(tmp_path: Path) -> None:
    script = tmp_path / "second_ctrl_c.py"
    script.write_text(textwrap.dedent(SECOND_CTRL_C_SCRIPT))
    with Server([sys.executable, str(script)], cwd=tmp_path) as process:
        # The script ends; the drain would wait up to 60 s for the stuck task.
        output = interrupt_the_drain(process)
    stuck_id, queued_id = next(
        line.split()[1:] for line in output.splitlines() if line.startswith("ids")
    )
    assert "SIGINT received while draining" in output
    assert f"(id {stuck_id}) was still running at the shutdown deadline" in output
    assert f"(id {queued_id}) was still queued at the shutdown deadline and was cancelled" in output
    assert "Traceback" not in output


def test_quick_stop_before_the_drain_skips_the_wait(tmp_path: Path) -> None:
    script = tmp_path / "quick.py"
    script.write_text(
        textwrap.dedent(SECOND_CTRL_C_SCRIPT)
        + "from flask_bgtasks import quick_stop\nquick_stop()\n"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert elapsed < 10, output  # not the 60 s of BGTASKS_SHUTDOWN_TIMEOUT
    ids = next(line.split()[1:] for line in output.splitlines() if line.startswith("ids"))
    assert quickly_ended(output) == set(ids), output
    assert "Draining" not in output


def quickly_ended(output: str) -> set[str]:
    """The ids in the quick stop's log line (in no particular order)."""
    prefix = "Stopping quickly: ending "
    line = next(line for line in output.splitlines() if line.startswith(prefix))
    return set(line.partition(" now: ")[2].split(", "))


APP = "taskapp:create_app"
SERVERS = {
    "waitress": [str(BIN / "waitress-serve"), "--listen", "127.0.0.1:{port}", "--call", APP],
    "flask run": [str(BIN / "flask"), "--app", APP, "run", "--no-reload", "--port", "{port}"],
}


@pytest.mark.parametrize("server_name", SERVERS)
def test_a_server_stops_at_once_on_a_second_ctrl_c(tmp_path: Path, server_name: str) -> None:
    log = tmp_path / "tasks.log"
    with Server(
        SERVERS[server_name],
        cwd=APPS,
        env={
            "TASK_LOG": str(log),
            "FLASK_BGTASKS_MAX_WORKERS": "1",
            "FLASK_BGTASKS_SHUTDOWN_TIMEOUT": "60",
        },
    ) as server:
        server.wait_ready("/pid")
        # A task that ignores cancellation, and one queued behind it.
        ids, _ = server.submit_tasks(-1)
        queued, _ = server.submit_tasks(1)
        wait_started(log, ids[0])
        server.signal(signal.SIGINT)  # the server stops; the drain begins
        output = interrupt_the_drain(server)
    assert f"(id {ids[0]}) was still running at the shutdown deadline" in output
    assert f"(id {queued[0]}) was still queued at the shutdown deadline and was cancelled" in output


def wait_started(log: Path, task_id: str) -> None:
    def started() -> bool:
        return log.exists() and f"started {task_id} " in log.read_text()

    wait_for(started, 15, f"task {task_id} to start")


CTRL_C_APP = """
import atexit
import os
import threading

from flask import Flask
from flask_bgtasks import BGTasks

bg = BGTasks()


@bg.task(durable=True)
def hang():
    print("hang started", flush=True)
    threading.Event().wait()  # ignores every request to stop


def slow_exit_handler():
    # Registered after the package: it runs after the drain.
    print("exit handler waiting", flush=True)
    threading.Event().wait()


def create_app():
    app = Flask(__name__)
    app.config.update(BGTASKS_STORE="sqlite:///" + os.environ["STORE_PATH"])
    app.config.from_prefixed_env()
    bg.init_app(app)
    if os.environ.get("SLOW_EXIT") == "1":
        atexit.register(slow_exit_handler)

    @app.post("/hang")
    def start():
        return {"id": hang.submit().id}

    @app.get("/pid")
    def pid():
        return {"pid": os.getpid()}

    return app
"""


def flask_run(tmp_path: Path, **env: str) -> Server:
    (tmp_path / "ctrl_c_app.py").write_text(CTRL_C_APP)
    return Server(
        [str(BIN / "flask"), "--app", "ctrl_c_app:create_app", "run", "--no-reload"]
        + ["--port", "{port}"],
        cwd=tmp_path,
        env={"STORE_PATH": str(tmp_path / "tasks.db"), **env},
    )


def stored_row(path: Path, task_id: str) -> tuple[str, str | None] | None:
    """The task's status and owner in the SQLite file, if written yet."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT status, owner FROM bgtasks_task WHERE id = ?", (task_id,))
        return t.cast("tuple[str, str | None] | None", row.fetchone())


def test_flask_run_second_ctrl_c_releases_a_durable_task_without_a_traceback(
    tmp_path: Path,
) -> None:
    with flask_run(tmp_path, FLASK_BGTASKS_SHUTDOWN_TIMEOUT="60") as server:
        server.wait_ready("/pid")
        status, body, _ = server.request("/hang", "POST")
        assert status == 200, body
        task_id = body["id"]
        server.wait_output("hang started")

        def running() -> bool:  # the store writes in the background, soon after
            row = stored_row(tmp_path / "tasks.db", task_id)
            return row is not None and row[0] == "running"

        wait_for(running, 10, "the store to show the task running")
        server.signal(signal.SIGINT)  # the server stops; the drain begins
        server.wait_output(f"Draining 1 background task at exit, for at most 60 s: {task_id}")
        started = time.monotonic()
        server.signal(signal.SIGINT)
        code = server.wait_exit(20)
        elapsed = time.monotonic() - started
    output = server.output
    assert code == 0, output
    assert elapsed < 5, output  # not the 60 s of BGTASKS_SHUTDOWN_TIMEOUT
    assert "Traceback" not in output
    assert "SIGINT received while draining" in output
    assert (
        "0 of 1 background task finished; 1 durable task left in the store for the next"
        f" process: {task_id}." in output
    )
    # Released: queued, and no process's, for the next process to run at once.
    assert stored_row(tmp_path / "tasks.db", task_id) == ("queued", None)


def test_ctrl_c_after_the_drain_ends_the_process_without_a_traceback(tmp_path: Path) -> None:
    """Once the drain is over, an exit handler that hangs (a pool that won't
    close, say) can be cut short with Ctrl-C: the process ends at once,
    rather than with a KeyboardInterrupt traceback in the handler."""
    with flask_run(tmp_path, SLOW_EXIT="1") as server:
        server.wait_ready("/pid")
        server.signal(signal.SIGINT)
        server.wait_output("exit handler waiting")
        started = time.monotonic()
        server.signal(signal.SIGINT)
        code = server.wait_exit(20)
        elapsed = time.monotonic() - started
    assert code == -signal.SIGINT, server.output
    assert elapsed < 5
    assert "Traceback" not in server.output
    assert "KeyboardInterrupt" not in server.output
