"""The app that ``throughput.py`` measures with ``BGTASKS_BACKEND = "rq"``.

Its worker is another process, ``flask --app "_rq_app:create_app('URL')"
bgtasks worker``, which builds the app again and finds the tasks by name,
so the app and its tasks live here, at module level, in a module of their
own that both the measuring process and the worker import. The worker finds
it because ``throughput.py`` starts it with this folder as its current
folder, which ``flask`` puts on ``sys.path``.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_bgtasks import BGTasks

bg = BGTasks()


def create_app(url: str) -> Flask:
    """The app, its tasks run by RQ workers through the Redis at ``url``,
    which also holds their records."""
    app = Flask("rq_app")
    app.config.update(BGTASKS_BACKEND="rq", BGTASKS_STORE=url)
    bg.init_app(app)
    return app


@bg.task(name="throughput.noop")
def noop() -> None:
    """Does nothing, so all that is measured is the cost of a task."""


@bg.task(name="throughput.pid")
def pid() -> int:
    """Which worker process ran it, so that the warm-up knows when every
    worker has run a task."""
    return os.getpid()
