"""The app that the fork and reloader tests run under ``gunicorn --preload``
and ``flask run --debug``: it submits a task while it loads.

That task appends ``<pid> <WERKZEUG_RUN_MAIN or ->`` to the file named by
``LOAD_LOG`` with one ``O_APPEND`` write, so a test can count where it ran.
``GET /run`` submits a task, waits for it and answers with the pid of the
process that served it and of the one that ran it. Settings come from
``FLASK_*`` environment variables (``FLASK_BGTASKS_STORE=sqlite:////...``).
"""

from __future__ import annotations

import os

from flask import Flask

from flask_bgtasks import BGTasks

bg = BGTasks()

#: Seconds a request waits for its task: a worker whose threads hang fails.
RESULT_TIMEOUT = 5.0


@bg.task
def at_load() -> None:
    line = f"{os.getpid()} {os.environ.get('WERKZEUG_RUN_MAIN', '-')}\n".encode()
    fd = os.open(os.environ["LOAD_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@bg.task
def getpid() -> int:
    return os.getpid()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env()
    bg.init_app(app)
    with app.app_context():
        at_load.submit()

    @app.get("/run")
    def run() -> dict[str, int]:
        return {"pid": os.getpid(), "ran_in": getpid.submit().result(RESULT_TIMEOUT)}

    return app


def read_load_log(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """The (pid, WERKZEUG_RUN_MAIN) of each run of the task submitted at load."""
    try:
        with open(path) as f:
            return [(int(pid), run_main) for pid, run_main in (line.split() for line in f)]
    except FileNotFoundError:
        return []
