"""What the tasks of ``storeapp.py`` and ``rqapp.py`` leave for the tests,
and how their tasks and requests wait for the test and for each other.

Everything happens in the folder named by ``TASK_DIR``, the test's
instrument rather than the app's state:

``attempts.log``
    One line per event, ``event id pid attempt``, written with one
    ``O_APPEND`` write so that lines of many processes never mix; the tests
    read it with :func:`read_attempts` or :func:`events_by_task`.
``effects/<marker>``
    The side effect of a job, made with ``O_EXCL`` so that a second one
    with the same marker shows (the app names the marker).
``gate``
    Jobs wait before their side effect while this file does not exist.
``rendezvous/<name>/``, and other folders given to :func:`meet`
    Where processes wait for each other: each leaves a file named after
    its pid.

The apps import this module as ``traces`` (their folder is on the path of
the servers that run them); the tests as ``tests.server_apps.traces``.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import typing as t
from pathlib import Path

from flask import Response, abort, request

from flask_bgtasks import current_task

#: How long a job waits for the gate, or a task for the other workers,
#: before it gives up (and fails).
GATE_TIMEOUT = 60.0
#: How long a request waits at a rendezvous: less than the tests' HTTP
#: timeout, so that they get the 504 that says who came.
RENDEZVOUS_TIMEOUT = 8.0

Events = list[tuple[str, int, int]]


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


def make_effect(marker: str) -> None:
    """The job's side effect: the first call with this ``marker`` creates
    the file and logs ``effect``, later ones find it and log
    ``effect-again``."""
    path = task_dir() / "effects" / marker
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        log_event("effect-again")
    else:
        log_event("effect")


def gated_job(n: int, marker: str) -> int:
    """The body of the apps' jobs: wait for the gate, then make the side
    effect named ``marker``; log each step and return ``n + 1000``."""
    log_event("started")
    current_task.set_progress(0, 1, "waiting for the gate")
    poll((task_dir() / "gate").exists, GATE_TIMEOUT, "the test to create the gate")
    make_effect(marker)
    current_task.set_progress(1, 1, "done")
    log_event("done")
    return n + 1000


def meet(name: str, count: int, timeout: float) -> list[str]:
    """Hold until ``count`` processes came to the meeting ``name``; return
    their pids."""
    folder = task_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    poll(lambda: len(os.listdir(folder)) >= count, timeout, f"{count} processes in {folder}")
    return os.listdir(folder)


def rendezvous() -> None:
    """With ``?rendezvous=NAME&processes=N``, hold the request until N
    processes hold a request of that name. A sync worker serves one
    request at a time, so the N requests are then served by N different
    workers, whichever way the kernel hands out connections."""
    name = request.args.get("rendezvous")
    if name is None:
        return
    count = int(request.args["processes"])
    try:
        meet(f"rendezvous/{name}", count, RENDEZVOUS_TIMEOUT)
    except TimeoutError:
        came = os.listdir(task_dir() / "rendezvous" / name)
        abort(504, f"Only {came} came to the rendezvous {name!r}.")


def served_by(response: Response) -> Response:
    """Say which process served the request, in the ``X-Served-By`` header
    (an ``after_request`` function)."""
    response.headers["X-Served-By"] = str(os.getpid())
    return response


def read_attempts(folder: str | os.PathLike[str]) -> list[tuple[str, str, int, int]]:
    """The (event, task id, pid, attempt) lines the jobs wrote."""
    try:
        with open(Path(folder) / "attempts.log") as f:
            return [(e, i, int(p), int(a)) for e, i, p, a in (line.split() for line in f)]
    except FileNotFoundError:
        return []


def events_by_task(folder: str | os.PathLike[str]) -> dict[str, Events]:
    """(event, pid, attempt) of each task, in the order they happened."""
    events: dict[str, Events] = collections.defaultdict(list)
    for event, task_id, pid, attempt in read_attempts(folder):
        events[task_id].append((event, pid, attempt))
    return events


def starts(events: Events) -> list[tuple[int, int]]:
    """(pid, attempt) of each start of a task."""
    return [(pid, attempt) for event, pid, attempt in events if event == "started"]


def markers(folder: str | os.PathLike[str]) -> list[str]:
    """The side effects made, by marker."""
    return sorted(os.listdir(Path(folder) / "effects"))
