"""An app with a process pool, for tests/test_process_pool.py. Each child
builds it again from BGTASKS_APP (``create_app()`` here), so its tasks are
declared at module level and its settings travel in the environment."""

from __future__ import annotations

import json
import os
import time
import typing as t

from flask import Flask, current_app, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_bgtasks import BGTasks, current_task

bg = BGTasks()
db = SQLAlchemy()

#: What the test sets for the app, in the environment, so that every child
#: builds the same app.
SETTINGS = "PROCAPP_SETTINGS"


def create_app() -> Flask:
    app = Flask("procapp")
    app.config.update(
        TESTING=True,
        BGTASKS_APP="tests.server_apps.procapp:create_app()",
        BGTASKS_POOLS={"cpu": {"kind": "process", "max_workers": 2}},
        BGTASKS_TIMEOUT_GRACE=0.5,
        BGTASKS_MAX_WORKERS=2,
        SQLALCHEMY_DATABASE_URI="sqlite://",
    )
    app.config.update(json.loads(os.environ.get(SETTINGS, "{}")))
    bg.init_app(app)
    db.init_app(app)

    @app.post("/spin")
    def start_spinning() -> dict[str, t.Any]:
        """For the server tests: tasks that never return, which write where
        they run (child pid and its parent's) into ``folder`` first."""
        folder = request.args["folder"]
        count = int(request.args.get("count", "1"))
        return {"ids": [spin_forever.submit(folder).id for _ in range(count)], "pid": os.getpid()}

    return app


@bg.task(pool="cpu")
def spin_forever(folder: str) -> None:
    with open(os.path.join(folder, f"{os.getpid()}-{os.getppid()}"), "w"):
        pass
    while True:  # never asks whether it should stop: only a kill ends it
        pass


def wait_for_file(path: str) -> None:
    """Hold the task until the test creates ``path``, or it is cancelled."""
    while not os.path.exists(path):
        current_task.check_cancelled()
        time.sleep(0.005)  # in the task: a gate another process opens


@bg.task(pool="cpu")
def where(n: int) -> dict[str, t.Any]:
    return {"n": n, "pid": os.getpid(), "app": current_app.name, "id": current_task.id}


@bg.task(pool="cpu")
def report(gate: str) -> str:
    current_task.set_progress(1, 3, "first page")
    wait_for_file(gate)
    return "done"


@bg.task(pool="cpu", timeout=0.5)
def spin() -> None:
    while True:  # never asks whether it should stop
        pass


@bg.task(pool="cpu")
def exit_with(code: int) -> None:
    os._exit(code)


@bg.task(pool="cpu", name="tests.procapp.durable_crash", durable=True)
def durable_crash(marker: str) -> int:
    # The first attempt dies with its child; the next one, in a new child,
    # finds the marker and succeeds.
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return current_task.attempt


@bg.task(pool="cpu", retries=1, retry_backoff=0)
def flaky() -> int:
    if current_task.attempt == 1:
        raise ConnectionError("once")
    return current_task.attempt


@bg.task(pool="cpu")
def query() -> int:
    # The engine was disposed when the child started (a fork-safe pool);
    # a query opens a new connection in the child.
    return int(db.session.execute(text("SELECT 41 + 1")).scalar_one())


@bg.task(pool="cpu")
def pid_and_wait(gate: str) -> int:
    wait_for_file(gate)
    return os.getpid()
