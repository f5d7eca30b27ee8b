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
    A folder where the tasks leave their traces: ``attempts.log`` gets one
    line per event, ``event id pid attempt``, written with one ``O_APPEND``
    write so that lines of many processes never mix; ``effects/<id>`` is the
    side effect of a job, made once per task id whatever the number of
    attempts; while the file ``gate`` does not exist, jobs wait before their
    side effect. Requests meet at a rendezvous in ``rendezvous/<name>/``.

Other ``FLASK_*`` variables go into the config as usual.
"""

from __future__ import annotations

import os
import threading
import time
import typing as t
from pathlib import Path

from flask import Flask, abort, request

from flask_bgtasks import BGTasks, TaskStatus, current_task

bg = BGTasks()

#: How long a job waits for the gate before it gives up (and fails).
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


def wait_for_gate() -> None:
    """Hold the job until the test creates the gate file."""
    gate = task_dir() / "gate"
    deadline = time.monotonic() + GATE_TIMEOUT
    pause = threading.Event()  # never set: the polling interval
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"The test never created {gate}.")
        pause.wait(0.02)


def rendezvous() -> None:
    """With ``?rendezvous=NAME&processes=N``, hold the request until N processes
    hold a request of that name. A sync worker serves one request at a time,
    so the N requests are then served by N different workers, whichever
    way the kernel hands out connections."""
    name = request.args.get("rendezvous")
    if name is None:
        return
    count = int(request.args["processes"])
    folder = task_dir() / "rendezvous" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
    pause = threading.Event()  # never set: the polling interval
    while len(os.listdir(folder)) < count:
        if time.monotonic() > deadline:
            abort(504, f"Only {os.listdir(folder)} came to the rendezvous {name!r}.")
        pause.wait(0.01)


def make_effect() -> None:
    """The job's side effect, idempotent by task id, as at-least-once
    delivery requires: the first attempt that gets here creates the marker,
    later ones find it."""
    marker = task_dir() / "effects" / current_task.id
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        log_event("effect-again")
        return
    os.close(fd)
    log_event("effect")


def job(n: int) -> int:
    log_event("started")
    current_task.set_progress(0, 1, "waiting for the gate")
    wait_for_gate()
    make_effect()
    current_task.set_progress(1, 1, "done")
    log_event("done")
    return n + 1000


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

    @app.post("/squares")
    def squares() -> dict[str, t.Any]:
        """Submit ``square(n)`` for ``start <= n < start + count``."""
        start = int(request.args["start"])
        count = int(request.args["count"])
        ids = [square.submit(n).id for n in range(start, start + count)]
        rendezvous()
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
        rendezvous()
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


def read_attempts(folder: str | os.PathLike[str]) -> list[tuple[str, str, int, int]]:
    """The (event, task id, pid, attempt) lines the jobs wrote."""
    try:
        with open(Path(folder) / "attempts.log") as f:
            return [(e, i, int(p), int(a)) for e, i, p, a in (line.split() for line in f)]
    except FileNotFoundError:
        return []
