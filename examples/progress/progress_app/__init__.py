"""A page that starts a slow report, shows its progress live, and can cancel it.

Run it from the repository root::

    flask --app examples/progress/progress_app run

or, with several worker processes::

    gunicorn -w 3 -k gthread --threads 4 --chdir examples/progress 'progress_app:create_app()'

A report is CPU work, so it runs on a pool of child processes (each builds
the app from BGTASKS_APP), where it uses a core of its own instead of
slowing the requests. Tasks are kept in a SQLite file in the instance
folder, so every worker process sees every task, and a report survives a
restart (it is durable).
The page follows a report with Server-Sent Events, or, with ``?poll=1`` or
in a browser without ``EventSource``, by asking for its status.
"""

from __future__ import annotations

import os
import secrets
import time
import typing as t

from flask import Flask, jsonify, render_template, session

from flask_bgtasks import BGTasks, TaskRecord, current_task

bg = BGTasks()


@bg.authorize
def started_by_this_browser(record: TaskRecord) -> bool:
    """Each browser sees and cancels only the reports it started."""
    user = (record.kwargs or {}).get("user")
    return user is not None and user == session.get("user")


@bg.task(pool="reports", durable=True, expose_result=True, name="progress.generate_report")
def generate_report(pages: int, step: float, user: str) -> dict[str, t.Any]:
    """Render ``pages`` pages of ``step`` seconds of CPU work each, in a
    child process. ``user`` says who asked."""
    for page in range(1, pages + 1):
        # Between two pages is a safe place to stop.
        current_task.check_cancelled()
        _render(step)
        current_task.set_progress(page, pages, f"Rendering page {page} of {pages}")
    return {"title": f"Quarterly report, {pages} pages", "pages": pages, "pid": os.getpid()}


def _render(seconds: float) -> int:
    """Stands in for rendering a page: pure-Python work that holds a core."""
    until, total = time.monotonic() + seconds, 0
    while time.monotonic() < until:
        total += sum(i * i for i in range(1000))
    return total


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY="dev",  # set a real secret in production
        BGTASKS_STORE="sqlite:///progress.db",
        BGTASKS_API=True,
        BGTASKS_API_PREFIX="/tasks",
        # Reports run in child processes; each builds the app this way.
        BGTASKS_POOLS={"reports": {"kind": "process", "max_workers": 2}},
        BGTASKS_APP=f"{os.path.dirname(__file__)}:create_app()",
        # A report has PAGES pages of STEP_SECONDS each: 10 s by default.
        PAGES=10,
        STEP_SECONDS=1.0,
    )
    # FLASK_STEP_SECONDS=0.2, FLASK_BGTASKS_STORE=..., from the environment.
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)
    bg.init_app(app)

    @app.get("/")
    def index() -> str:
        session.setdefault("user", secrets.token_urlsafe(16))
        return render_template("index.html", pages=app.config["PAGES"])

    @app.post("/reports")
    def start_report() -> tuple[t.Any, int]:
        user = session.setdefault("user", secrets.token_urlsafe(16))
        result = generate_report.submit(app.config["PAGES"], app.config["STEP_SECONDS"], user=user)
        return jsonify(
            id=result.id, status_url=f"{app.config['BGTASKS_API_PREFIX']}/{result.id}"
        ), 202

    return app
