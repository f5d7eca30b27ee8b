"""The app of ``tests/test_rq.py``: tasks on the RQ backend, run by real
``flask bgtasks worker`` processes. The test process builds the same app to
submit, so the tasks have the same names on both sides.

Settings come from environment variables: ``REDIS_URL`` (the store and the
queues), ``TASK_DIR`` (where the tasks find their gate files), and
``WEB_ONLY=1`` to declare a task the workers don't have.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from flask import Flask, current_app

from flask_bgtasks import BGTasks, current_task

bg = BGTasks()
#: A task waits this long for its gate file before it gives up.
GATE_TIMEOUT = 60.0


def gate(name: str) -> Path:
    return Path(os.environ["TASK_DIR"]) / name


@bg.task
def add(a: int, b: int) -> int:
    current_task.set_progress(1, 1, "added")
    return a + b


@bg.task
def until_gate(name: str) -> str:
    """Report progress, then wait for the gate file, stopping when asked."""
    current_task.set_progress(0, 1, "waiting")
    deadline = time.monotonic() + GATE_TIMEOUT
    pause = threading.Event()  # never set: the polling interval
    while not gate(name).exists():
        current_task.check_cancelled()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate(name)} never appeared")
        pause.wait(0.02)
    return "opened"


def ignore_requests(name: str) -> str:
    """Wait for the gate file, ignoring every request to stop."""
    current_task.set_progress(0, 1, "ignoring requests to stop")
    deadline = time.monotonic() + GATE_TIMEOUT
    pause = threading.Event()
    while not gate(name).exists() and time.monotonic() < deadline:
        pause.wait(0.02)
    return "never here in time"


#: Only a hard limit ends it, after its timeout.
stuck = bg.task(timeout=1, name="stuck")(ignore_requests)
#: Only a forced cancel ends it.
deaf = bg.task(name="deaf")(ignore_requests)
#: Durable: runs again if its worker stops before it ends.
lasting = bg.task(name="lasting", durable=True)(ignore_requests)


@bg.task(pool="reports")
def report(number: int) -> str:
    return f"report {number}"


@bg.task(retries=2, retry_backoff=0.01)
def flaky(name: str) -> int:
    """Fail on the first attempt, succeed on the second."""
    if current_task.attempt == 1:
        raise ConnectionError("the first attempt fails")
    return current_task.attempt


@bg.task
def returns_set() -> object:
    return {1, 2}


@bg.on_shutdown
def say_goodbye() -> None:
    """A worker that stops runs the hooks: it leaves a file named by its pid."""
    gate(f"shutdown-{os.getpid()}").write_text(current_app.name)


if os.environ.get("WEB_ONLY") == "1":

    @bg.task
    def web_only() -> str:
        return "the workers don't have me"


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        BGTASKS_BACKEND="rq",
        BGTASKS_STORE=os.environ["REDIS_URL"],
        BGTASKS_TIMEOUT_GRACE=0.5,
        BGTASKS_STORE_LEASE=2.0,
        BGTASKS_POOLS={"reports": {"max_workers": 1}},
    )
    bg.init_app(app)
    return app
