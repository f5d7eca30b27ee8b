"""Flask-BGTasks under Gunicorn, with several worker processes.

Run it from the repository root with::

    gunicorn -c examples/gunicorn/gunicorn.conf.py --chdir examples/gunicorn 'app:create_app()'

Each Gunicorn worker is a process with its own task pools, and a request may
reach any of them. The SQLite task store (``BGTASKS_STORE``) keeps every
task as a row of one file that all the workers open, so the worker that
answers ``GET /tasks/<id>`` or ``POST /tasks/<id>/cancel`` finds the task
whichever worker runs it. ``count_steps`` is durable: if its worker dies,
another one runs it again.
"""

from __future__ import annotations

import re
import threading
import typing as t
from datetime import datetime

from flask import Flask, Response, current_app, jsonify, request, url_for

from flask_bgtasks import BGTasks, TaskRecord, TaskResult, TaskStatus, current_task

bg = BGTasks()

MAX_STEPS = 100

# Task ids are URL-safe base64 (22 characters). Anything else is not an id,
# and is answered like an unknown one without reaching the store.
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@bg.task(durable=True)
def count_steps(steps: int) -> int:
    """Take ``steps`` slow steps, reporting progress after each one.

    Durable: if the worker process that runs it dies, another one runs it
    again, from the first step. That is safe because it only counts. A task
    with side effects must make a second run harmless ("at least once").
    """
    delay: float = current_app.config["STEP_SECONDS"]
    for done in range(1, steps + 1):
        # Stop here, between steps, if the task was asked to stop: by
        # POST /tasks/<id>/cancel in any worker, or at the shutdown deadline
        # of the worker that runs it.
        current_task.check_cancelled()
        threading.Event().wait(delay)  # stand-in for real work
        current_task.set_progress(done, steps, f"step {done} of {steps}")
    return steps


def find_task(task_id: str) -> TaskResult[t.Any] | None:
    """The task with this id, from whichever worker submitted it, or ``None``."""
    if not TASK_ID.fullmatch(task_id):
        return None
    # The handle of a task of this worker, or, with the SQLite store, of
    # any worker, read from the store. Both have record() and cancel().
    return bg.get(task_id)


def describe(record: TaskRecord) -> dict[str, t.Any]:
    """A task as its JSON for HTTP clients.

    A failed task shows only its error type: the message and traceback can
    hold internal details, and are in the server's log and the store.
    """
    state: dict[str, t.Any] = {
        "id": record.id,
        "status": record.status.value,
        "progress": record.progress,
        "attempt": record.attempt,
        "cancel_requested": record.cancel_requested,
        "submitted_at": _iso(record.submitted_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
    }
    if record.status is TaskStatus.SUCCEEDED:
        state["result"] = record.result
    elif record.status is TaskStatus.FAILED and record.error is not None:
        state["error"] = record.error["type"]
    return state


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def not_found() -> tuple[Response, int]:
    # The id is not repeated: it may be anything a client sent.
    return jsonify(error="No task with this id."), 404


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        # Threads per worker process that run tasks.
        BGTASKS_MAX_WORKERS=4,
        # One SQLite file, in the instance folder, that every worker process
        # reads and writes: any worker can look up or cancel any task.
        BGTASKS_STORE="sqlite:///tasks.db",
        # How long each step of count_steps takes.
        STEP_SECONDS=1.0,
    )
    # FLASK_* environment variables: FLASK_BGTASKS_SHUTDOWN_TIMEOUT, set in
    # gunicorn.conf.py, or FLASK_STEP_SECONDS=0.1 on the command line.
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)
    bg.init_app(app)

    @app.post("/tasks")
    def submit() -> tuple[Response, int]:
        try:
            steps = int(request.args.get("steps", "5"))
        except ValueError:
            steps = 0
        if not 1 <= steps <= MAX_STEPS:
            return jsonify(error=f"'steps' must be a whole number from 1 to {MAX_STEPS}."), 400
        result = count_steps.submit(steps)
        status_url = url_for("status", task_id=result.id)
        response = jsonify(id=result.id, status_url=status_url)
        response.headers["Location"] = status_url
        return response, 202

    @app.get("/tasks/<task_id>")
    def status(task_id: str) -> tuple[Response, int]:
        task = find_task(task_id)
        if task is None:
            return not_found()
        return jsonify(describe(task.record())), 200

    @app.post("/tasks/<task_id>/cancel")
    def cancel(task_id: str) -> tuple[Response, int]:
        task = find_task(task_id)
        if task is None:
            return not_found()
        # A queued task is cancelled at once; a running one is asked to stop
        # and does at its next check_cancelled(), in whichever worker runs
        # it; a finished one stays as it is. The status says which.
        task.cancel()
        return jsonify(describe(task.record())), 202

    return app
