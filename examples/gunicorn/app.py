"""Flask-BGTasks under Gunicorn, with several worker processes.

Run it from the repository root with::

    gunicorn -c examples/gunicorn/gunicorn.conf.py --chdir examples/gunicorn 'app:create_app()'

Each Gunicorn worker is a process with its own task pools and its own
in-memory results, so ``bg.get(id)`` only knows the tasks submitted to the
worker that answers. A status request may reach another worker; so that any
worker can answer it, each task's state is also written to a small JSON file
in a directory that all workers share (a database or Redis in a real app).
"""

from __future__ import annotations

import json
import os
import re
import threading
import typing as t
from concurrent.futures import Future
from pathlib import Path

from flask import Flask, Response, current_app, jsonify, request, url_for

from flask_bgtasks import BGTasks, TaskResult, TaskStatus, current_task

bg = BGTasks()

MAX_STEPS = 100


@bg.task
def count_steps(steps: int) -> int:
    """Take ``steps`` slow steps, reporting progress after each one."""
    delay: float = current_app.config["STEP_SECONDS"]
    for done in range(1, steps + 1):
        # Stop here, between steps, if the task was asked to stop: by
        # cancel(), or at the shutdown deadline of a worker that exits.
        current_task.check_cancelled()
        threading.Event().wait(delay)  # stand-in for real work
        current_task.set_progress(done, steps, f"step {done} of {steps}")
        save_state(current_task.id, "running", current_task.result.progress)
    return steps


def save_outcome(future: Future[int]) -> None:
    """A done-callback: record how the task ended, whichever way it ended
    (returned, raised, cancelled while queued, or stopped at shutdown)."""
    result = t.cast("TaskResult[int]", future)
    extra: dict[str, t.Any] = {}
    if result.status is TaskStatus.SUCCEEDED:
        extra["result"] = result.result()
    elif result.status is TaskStatus.FAILED:
        extra["error"] = repr(result.exception())
    save_state(result.id, result.status.value, result.progress, **extra)


def save_state(
    task_id: str,
    status: str,
    progress: dict[str, t.Any] | None = None,
    only_if_new: bool = False,
    **extra: t.Any,
) -> None:
    """Write a task's state where every worker process can read it.

    The file is written under a temporary name and then moved into place,
    so a reader never sees half of it. With ``only_if_new``, a state that
    the task or its callback has already written is kept.
    """
    path = _state_path(task_id)
    state = {"id": task_id, "status": status, "progress": progress, "pid": os.getpid(), **extra}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(state))
    if not only_if_new:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # unlike os.replace, fails if the file exists
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def read_state(task_id: str) -> dict[str, t.Any] | None:
    try:
        return json.loads(_state_path(task_id).read_text())  # type: ignore[no-any-return]
    except (ValueError, FileNotFoundError):
        return None


def _state_path(task_id: str) -> Path:
    # Task ids are URL-safe base64; anything else never becomes a path.
    if not re.fullmatch(r"[A-Za-z0-9_-]+", task_id):
        raise ValueError(f"Not a task id: {task_id!r}.")
    return Path(current_app.config["TASK_STATE_DIR"]) / f"{task_id}.json"


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        # Threads per worker process that run tasks.
        BGTASKS_MAX_WORKERS=4,
        # Where task states are kept, shared by all worker processes.
        TASK_STATE_DIR=os.path.join(app.instance_path, "tasks"),
        # How long each step of count_steps takes.
        STEP_SECONDS=1.0,
    )
    # FLASK_* environment variables: FLASK_BGTASKS_SHUTDOWN_TIMEOUT, set in
    # gunicorn.conf.py, or FLASK_STEP_SECONDS=0.1 on the command line.
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)
    os.makedirs(app.config["TASK_STATE_DIR"], exist_ok=True)
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
        # "queued", unless the task has already written a state of its own.
        save_state(result.id, "queued", only_if_new=True)
        result.add_done_callback(save_outcome)
        status_url = url_for("status", task_id=result.id)
        response = jsonify(id=result.id, status_url=status_url)
        response.headers["Location"] = status_url
        return response, 202

    @app.get("/tasks/<task_id>")
    def status(task_id: str) -> tuple[Response, int] | dict[str, t.Any]:
        state = read_state(task_id)
        if state is None:
            return jsonify(error=f"No task with id {task_id!r}."), 404
        return state

    return app
