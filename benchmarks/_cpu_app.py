"""The app that ``processes.py`` measures, with a pool of child processes and
a pool of threads of the same size.

A child process of a process pool builds the app again from ``BGTASKS_APP``
(``_cpu_app:create_app()``, as ``flask --app`` takes it), so the app and its
tasks live here, at module level, in a module of their own that both the
measuring process and its children import. The children find it because
``processes.py`` starts each measuring process with this folder as its
current folder, which a child puts on ``sys.path``.

The same plain functions run on both pools, each declared twice under its
own name: a function that ``@bg.task`` replaces with a task could not be
sent by reference, and the two declarations would share one name.
"""

from __future__ import annotations

import os
import time

from flask import Flask

from flask_bgtasks import BGTasks

#: Worker threads of the thread pool, and child processes of the process pool.
POOL_WORKERS = 2
PROCESS_POOL = "cpu"
THREAD_POOL = "threads"

bg = BGTasks()


def create_app() -> Flask:
    app = Flask("cpu_app")
    app.config.update(
        BGTASKS_APP="_cpu_app:create_app()",
        BGTASKS_POOLS={
            PROCESS_POOL: {"kind": "process", "max_workers": POOL_WORKERS, "queue_size": None},
            THREAD_POOL: {"max_workers": POOL_WORKERS, "queue_size": None},
        },
        BGTASKS_QUEUE_SIZE=None,
    )
    bg.init_app(app)
    return app


def burn(loops: int) -> int:
    """CPU-bound work in pure Python, which holds the GIL throughout."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def noop() -> None:
    """Does nothing, so all that is measured is the cost of a task."""


def pid_after(seconds: float) -> int:
    """Hold a worker for a moment, then say which process ran it, so that
    the warm-up knows when every child has started."""
    time.sleep(seconds)
    return os.getpid()


burn_in_process = bg.task(burn, pool=PROCESS_POOL, name="cpu.burn")
burn_in_thread = bg.task(burn, pool=THREAD_POOL, name="threads.burn")
noop_in_process = bg.task(noop, pool=PROCESS_POOL, name="cpu.noop")
noop_in_thread = bg.task(noop, pool=THREAD_POOL, name="threads.noop")
pid_in_process = bg.task(pid_after, pool=PROCESS_POOL, name="cpu.pid_after")
pid_in_thread = bg.task(pid_after, pool=THREAD_POOL, name="threads.pid_after")
