"""The app that the real-server tests run under Gunicorn, Waitress, uWSGI
and the Flask dev server.

Each task appends lines such as ``started <id> <pid>`` and ``done <id> <pid>``
to the file named by the ``TASK_LOG`` environment variable, so a test can
count, after the server is gone, what ran where and how often. Settings come
from ``FLASK_*`` environment variables (``FLASK_BGTASKS_SHUTDOWN_TIMEOUT=2``).
"""

from __future__ import annotations

import os
import threading
import typing as t

from flask import Flask, abort, request

from flask_bgtasks import BGTasks, current_task, install_sigterm_handler

bg = BGTasks()


def record(event: str) -> None:
    line = f"{event} {current_task.id} {os.getpid()}\n".encode()
    fd = os.open(os.environ["TASK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)  # one small O_APPEND write: whole lines, any process
    finally:
        os.close(fd)


@bg.task
def work(seconds: float) -> str:
    """Work for ``seconds``, stopping early when asked to. -1: hang, ignoring
    cancellation, like a task stuck in a call that never returns."""
    record("started")
    if seconds < 0:
        threading.Event().wait()
    done = threading.Event()
    timer = threading.Timer(seconds, done.set)
    timer.start()
    try:
        while not done.wait(0.02):
            if current_task.cancel_requested:
                record("stopped")
                current_task.check_cancelled()
    finally:
        timer.cancel()
    record("done")
    return "done"


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env()
    bg.init_app(app)
    if os.environ.get("SIGTERM_HELPER") == "1":
        install_sigterm_handler()

    @app.post("/tasks")
    def submit() -> dict[str, t.Any]:
        seconds = float(request.args.get("seconds", "0"))
        count = int(request.args.get("count", "1"))
        ids = [work.submit(seconds).id for _ in range(count)]
        return {"ids": ids, "pid": os.getpid()}

    @app.get("/tasks/<task_id>")
    def status(task_id: str) -> dict[str, t.Any]:
        result = bg.get(task_id)
        if result is None:
            abort(404)
        return {"id": result.id, "status": result.status.value, "pid": os.getpid()}

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    return app


def read_log(path: str | os.PathLike[str]) -> list[tuple[str, str, int]]:
    """The (event, task id, pid) lines a run wrote."""
    try:
        with open(path) as f:
            return [(e, i, int(p)) for e, i, p in (line.split() for line in f)]
    except FileNotFoundError:
        return []
