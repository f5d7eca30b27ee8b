"""The app that ``tests/test_server_rq.py`` runs under Gunicorn and in
``flask bgtasks worker`` processes: the RQ backend and the Redis store,
so that the web processes and the workers share nothing but Redis.

Settings come from environment variables:

``REDIS_URL``
    The Redis of the store and of the queues (``BGTASKS_STORE``).
``STORE_LEASE``
    ``BGTASKS_STORE_LEASE`` in seconds; 1 by default, so that the tasks of
    a dead worker are taken over quickly.
``INSTANCE_DIR``
    The app's instance folder: each process gets its own, as on separate
    machines.
``TASK_DIR``
    Not the app's state but the test's instrument, the outside world that
    the tasks act on (see ``traces.py``): ``effects/<id>.<attempt>`` is the
    side effect of an attempt, so that a second run of the same attempt
    shows. Tasks meet in ``meet/``.

Every answer says which process served it in the ``X-Served-By`` header.
"""

from __future__ import annotations

import os
import threading
import typing as t

from flask import Flask, abort, request

from flask_bgtasks import BGTasks, TaskRecord, current_task

if __package__:  # imported as tests.server_apps.rqapp
    from . import traces
else:  # run by a server or a worker, with this folder on the path
    import traces

bg = BGTasks()


@bg.authorize
def may_see(record: TaskRecord) -> bool:
    return True  # a test app: everyone sees every task


@bg.task(expose_result=True)
def square(n: int, meet_workers: int = 0) -> dict[str, int]:
    """A few milliseconds of work, reporting progress. With
    ``meet_workers``, it first waits until that many worker processes run
    such a task: each of them then runs one."""
    if meet_workers:
        traces.meet("meet", meet_workers, traces.GATE_TIMEOUT)
    pause = threading.Event()  # never set: stands for work, not a wait
    for step in range(1, 4):
        pause.wait(0.002)
        current_task.set_progress(step, 3)
    return {"n": n, "square": n * n, "pid": os.getpid()}


@bg.task(durable=True, expose_result=True)
def durable_job(n: int) -> int:
    """Waits for the gate, then makes its side effect; survives the death
    of its worker."""
    # Marked per attempt: an "effect-again" means that the same attempt ran
    # twice, and the test fails.
    return traces.gated_job(n, marker=f"{current_task.id}.{current_task.attempt}")


def create_app() -> Flask:
    app = Flask(__name__, instance_path=os.environ["INSTANCE_DIR"])
    app.config.update(
        BGTASKS_BACKEND="rq",
        BGTASKS_STORE=os.environ["REDIS_URL"],
        BGTASKS_STORE_LEASE=float(os.environ.get("STORE_LEASE", "1")),
        BGTASKS_API=True,
        BGTASKS_APP="rqapp:create_app()",
    )
    bg.init_app(app)

    app.before_request(traces.rendezvous)
    app.after_request(traces.served_by)

    @app.post("/squares")
    def squares() -> dict[str, t.Any]:
        """Submit ``square(n)`` for ``start <= n < start + count``; the first
        ``meet`` of them wait until as many workers run them."""
        start = int(request.args["start"])
        count = int(request.args["count"])
        workers = int(request.args.get("meet", "0"))
        ids = [
            square.submit(n, workers if n - start < workers else 0).id
            for n in range(start, start + count)
        ]
        return {"ids": ids, "pid": os.getpid()}

    @app.post("/jobs")
    def jobs() -> dict[str, t.Any]:
        """Submit ``count`` durable jobs, with ``n`` = their position."""
        ids = [durable_job.submit(n).id for n in range(int(request.args["count"]))]
        return {"ids": ids, "pid": os.getpid()}

    @app.get("/process/<task_id>")
    def process(task_id: str) -> dict[str, t.Any]:
        """Which worker process runs or ran the task, as its record says."""
        stored = bg.get(task_id)
        if stored is None:
            abort(404)
        return {"process": stored.record().process, "pid": os.getpid()}

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    return app
