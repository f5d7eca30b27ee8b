"""The app that ``tests/test_server_store.py`` runs under Gunicorn, with the
SQLite task store shared by all its worker processes (and by the next server
started on the same file).

Settings come from environment variables:

``STORE_PATH``
    The absolute path of the SQLite file (``BGTASKS_STORE``).
``STORE_LEASE``
    ``BGTASKS_STORE_LEASE`` in seconds; 1 by default, so that the tasks of
    a dead process are taken over quickly.
``MAX_WORKERS``
    ``BGTASKS_MAX_WORKERS``; 2 by default.
``TASK_DIR``
    A folder where the tasks leave their traces (see ``traces.py``):
    ``effects/<id>`` is the side effect of a job, made once per task id
    whatever the number of attempts.

Every answer says which process served it in the ``X-Served-By`` header.

Other ``FLASK_*`` variables go into the config as usual.
"""

from __future__ import annotations

import os
import threading
import typing as t

from flask import Flask, abort, request

from flask_bgtasks import BGTasks, TaskStatus, current_task

if __package__:  # imported as tests.server_apps.storeapp
    from . import traces
else:  # run by a server, with this folder on the path
    import traces

bg = BGTasks()


def job(n: int) -> int:
    """Wait for the gate, then make the side effect, idempotent by task id
    as at-least-once delivery requires: the first attempt that gets there
    creates the marker, later ones find it."""
    return traces.gated_job(n, marker=current_task.id)


@bg.task(durable=True)
def durable_job(n: int) -> int:
    """Survives the death of its process."""
    return job(n)


@bg.task(durable=False)
def plain_job(n: int) -> int:
    """Lost with its process."""
    return job(n)


@bg.task(durable=False)
def square(n: int) -> int:
    """A few milliseconds of work, reporting progress."""
    pause = threading.Event()  # never set: stands for work, not a wait
    for step in range(1, 4):
        pause.wait(0.002)
        current_task.set_progress(step, 3)
    return n * n


JOBS = {"durable": durable_job, "plain": plain_job}


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        BGTASKS_STORE="sqlite:///" + os.environ["STORE_PATH"],
        BGTASKS_STORE_LEASE=float(os.environ.get("STORE_LEASE", "1")),
        BGTASKS_MAX_WORKERS=int(os.environ.get("MAX_WORKERS", "2")),
    )
    app.config.from_prefixed_env()
    bg.init_app(app)
    app.after_request(traces.served_by)

    @app.post("/squares")
    def squares() -> dict[str, t.Any]:
        """Submit ``square(n)`` for ``start <= n < start + count``."""
        start = int(request.args["start"])
        count = int(request.args["count"])
        ids = [square.submit(n).id for n in range(start, start + count)]
        traces.rendezvous()
        return {"ids": ids, "pid": os.getpid()}

    @app.post("/jobs")
    def jobs() -> dict[str, t.Any]:
        """Submit one job per item of ``kinds`` (``durable`` or ``plain``),
        in that order, with ``n`` = its position."""
        kinds = request.args["kinds"].split(",")
        ids = [JOBS[kind].submit(n).id for n, kind in enumerate(kinds)]
        return {"ids": ids, "pid": os.getpid()}

    @app.get("/tasks/<task_id>")
    def status(task_id: str) -> dict[str, t.Any]:
        stored = bg.get(task_id)
        if stored is None:
            abort(404)
        traces.rendezvous()
        record = stored.record()
        owner_pid = None
        if record.process is not None:
            owner_pid = int(record.process.rpartition(":")[2])
        value = None
        if record.status is TaskStatus.SUCCEEDED:
            value = stored.result(timeout=0)  # read back as any process would
        return {
            "id": record.id,
            "status": record.status.value,
            "pid": os.getpid(),
            "owner": record.process,
            "owner_pid": owner_pid,
            "attempt": record.attempt,
            "progress": record.progress,
            "value": value,
            "error_type": record.error["type"] if record.error else None,
            "stored_type": type(stored).__name__,
        }

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    return app
