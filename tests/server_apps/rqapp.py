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
    the tasks act on: ``attempts.log`` gets one line per event, ``event id
    pid attempt``, written with one ``O_APPEND`` write so that lines of
    many processes never mix; ``effects/<id>.<attempt>`` is the side effect
    of an attempt, made with ``O_EXCL`` so that a second run of the same
    attempt shows; while the file ``gate`` does not exist, jobs wait before
    their side effect. Requests meet at a rendezvous in
    ``rendezvous/<name>/``, tasks in ``meet/``.

Every answer says which process served it in the ``X-Served-By`` header.
"""

from __future__ import annotations

import os
import threading
import time
import typing as t
from pathlib import Path

from flask import Flask, Response, abort, request

from flask_bgtasks import BGTasks, TaskRecord, current_task

bg = BGTasks()

#: How long a job waits for the gate, or a task for the other worker,
#: before it gives up (and fails).
GATE_TIMEOUT = 60.0
#: How long a request waits at a rendezvous: less than the tests' HTTP
#: timeout, so that they get the 504 that says who came.
RENDEZVOUS_TIMEOUT = 8.0


def task_dir() -> Path:
    return Path(os.environ["TASK_DIR"])


def log_event(event: str) -> None:
    line = f"{event} {current_task.id} {os.getpid()} {current_task.attempt}\n".encode()
    fd = os.open(task_dir() / "attempts.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)  # one small O_APPEND write: whole lines, any process
    finally:
        os.close(fd)


def poll(condition: t.Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: the polling interval
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Gave up waiting for {what}.")
        pause.wait(0.02)


def meet(name: str, count: int, timeout: float) -> list[str]:
    """Hold until ``count`` processes came to the meeting ``name``; return
    their pids."""
    folder = task_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    poll(lambda: len(os.listdir(folder)) >= count, timeout, f"{count} processes in {folder}")
    return os.listdir(folder)


@bg.authorize
def may_see(record: TaskRecord) -> bool:
    return True  # a test app: everyone sees every task


@bg.task(expose_result=True)
def square(n: int, meet_workers: int = 0) -> dict[str, int]:
    """A few milliseconds of work, reporting progress. With
    ``meet_workers``, it first waits until that many worker processes run
    such a task: each of them then runs one."""
    if meet_workers:
        meet("meet", meet_workers, GATE_TIMEOUT)
    pause = threading.Event()  # never set: stands for work, not a wait
    for step in range(1, 4):
        pause.wait(0.002)
        current_task.set_progress(step, 3)
    return {"n": n, "square": n * n, "pid": os.getpid()}


@bg.task(durable=True, expose_result=True)
def durable_job(n: int) -> int:
    """Waits for the gate, then makes its side effect; survives the death
    of its worker."""
    log_event("started")
    current_task.set_progress(0, 1, "waiting for the gate")
    poll((task_dir() / "gate").exists, GATE_TIMEOUT, "the test to create the gate")
    marker = task_dir() / "effects" / f"{current_task.id}.{current_task.attempt}"
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        log_event("effect-again")  # the same attempt ran twice: the test fails
    else:
        log_event("effect")
    current_task.set_progress(1, 1, "done")
    log_event("done")
    return n + 1000


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

    @app.before_request
    def rendezvous() -> None:
        """With ``?rendezvous=NAME&processes=N``, hold the request until N
        processes hold a request of that name. A sync worker serves one
        request at a time, so the N requests are then served by N
        different workers, whichever way the kernel hands out connections."""
        name = request.args.get("rendezvous")
        if name is None:
            return
        count = int(request.args["processes"])
        try:
            meet(f"rendezvous/{name}", count, RENDEZVOUS_TIMEOUT)
        except TimeoutError:
            abort(504, f"Not enough processes came to the rendezvous {name!r}.")

    @app.after_request
    def served_by(response: Response) -> Response:
        response.headers["X-Served-By"] = str(os.getpid())
        return response

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
