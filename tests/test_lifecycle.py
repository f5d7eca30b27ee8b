from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask, current_app

from flask_bgtasks import (
    BGTasks,
    InvalidTaskError,
    QueueFull,
    ShutdownError,
    ShutdownSummary,
    TaskCancelled,
    TaskStatus,
    TaskTimeout,
    UsageError,
    current_task,
)

from .servers import wait_for


def test_shutdown_drains_and_reports(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    # A full queue, so that a submit only tells whether the pool is closed.
    app = make_app(BGTASKS_MAX_WORKERS=1, BGTASKS_QUEUE_SIZE=3)
    with app.app_context():
        running = bg.submit(gate)
        gate.wait_entered()
        queued = [bg.submit(int, str(n)) for n in range(3)]
    # The gate opens once the shutdown has closed the pool, and so has seen
    # the four tasks unfinished; opened before, they could all be done by
    # the time it looks, and it would report fewer.
    summaries: list[ShutdownSummary] = []
    thread = threading.Thread(target=lambda: summaries.append(bg.shutdown(timeout=30)))
    thread.start()
    try:
        wait_for(lambda: pool_closed(app, bg), 10, "the shutdown to close the pool")
    finally:
        gate.open()
        thread.join(30)
    [summary] = summaries
    assert summary == ShutdownSummary(finished=4)
    assert running.status is TaskStatus.SUCCEEDED
    assert [result.result(0) for result in queued] == [0, 1, 2]


def pool_closed(app: Flask, bg: BGTasks) -> bool:
    """Whether a submit is refused because of the shutdown; only for a pool
    whose queue is full, where a submit never adds a task."""
    with app.app_context():
        try:
            bg.submit(int)
        except QueueFull:
            return False
        except ShutdownError:
            return True
    raise AssertionError("The pool accepted a task: its queue was not full.")


def test_shutdown_deadline_cancels_queued_and_interrupts_running(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    gate: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)
    with app.app_context():
        stuck = bg.submit(gate)
        gate.wait_entered()
        queued = bg.submit(int)
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        summary = bg.shutdown(timeout=0.1)
    assert summary.finished == 0
    assert summary.cancelled == [queued.id]
    assert summary.interrupted == [stuck.id]
    assert queued.status is TaskStatus.CANCELLED
    assert stuck.status is TaskStatus.CANCELLED
    assert stuck.cancel_requested
    with pytest.raises(TaskCancelled, match="still running at the shutdown deadline"):
        stuck.result(0)
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert stuck.id in messages and queued.id in messages
    # The stuck function returns later: its outcome is discarded, not raised.
    gate.open()
    assert bg.shutdown(timeout=5) == ShutdownSummary()  # idempotent; threads gone
    assert stuck.status is TaskStatus.CANCELLED


def test_no_queued_task_starts_after_the_deadline(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=2)
    started: list[str] = []
    running = threading.Semaphore(0)

    @bg.task
    def until_stopped() -> None:
        # Returns the moment it is asked to stop, freeing its worker while
        # the deadline is being handled: no queued task may start then.
        started.append(current_task.id)
        running.release()
        tick = threading.Event()
        while not current_task.cancel_requested:
            tick.wait(0.001)

    with app.app_context():
        results = [until_stopped.submit() for _ in range(30)]
    # Both workers busy before the deadline starts to run, however slowly
    # the second thread starts.
    assert running.acquire(timeout=10) and running.acquire(timeout=10)
    summary = bg.shutdown(timeout=0.1)
    assert len(started) == 2
    assert sorted(summary.interrupted) == sorted(started)
    assert len(summary.cancelled) == 28
    assert all(result.status is TaskStatus.CANCELLED for result in results)


def test_after_shutdown_submit_raises_and_starts_no_thread(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_app()
    bg.shutdown()
    before = threading.active_count()
    with app.app_context(), pytest.raises(ShutdownError, match="shut down") as info:
        bg.submit(int)
    assert isinstance(info.value, RuntimeError)
    assert threading.active_count() == before


def test_shutdown_from_another_thread_without_waiting(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)
    with app.app_context():
        running = bg.submit(gate)
        gate.wait_entered()
        queued = bg.submit(int)
    summaries: list[ShutdownSummary] = []
    thread = threading.Thread(target=lambda: summaries.append(bg.shutdown(wait=False)))
    thread.start()
    thread.join(5)
    assert sorted(summaries[0].unfinished) == sorted([running.id, queued.id])
    gate.open()
    assert queued.result(5) == 0  # accepted work still runs
    assert bg.shutdown(timeout=5).interrupted == []


def test_shutdown_cancel_pending(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)
    with app.app_context():
        running = bg.submit(gate)
        gate.wait_entered()
        queued = [bg.submit(int) for _ in range(3)]
    # The shutdown waits for the running task, so it runs in another thread;
    # the gate opens only once it has cancelled the queue. Opened earlier,
    # the worker could start a queued task before the shutdown cancels it.
    summaries: list[ShutdownSummary] = []
    thread = threading.Thread(
        target=lambda: summaries.append(bg.shutdown(cancel_pending=True, timeout=30))
    )
    thread.start()
    try:
        for result in queued:
            with pytest.raises(TaskCancelled):
                result.result(10)  # returns as soon as it is cancelled
        assert not running.done()
    finally:
        gate.open()
        thread.join(30)
    [summary] = summaries
    assert sorted(summary.cancelled) == sorted(result.id for result in queued)
    assert summary.finished == 1
    assert running.status is TaskStatus.SUCCEEDED


def test_shutdown_inside_a_task_raises(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        result = bg.submit(bg.shutdown)
    with pytest.raises(UsageError, match="wait for that task itself"):
        result.result(5)


def test_on_shutdown_hooks_run_once_per_app_after_draining(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    calls: list[tuple[str, bool]] = []
    first = make_app("first")
    make_app("second")  # registered, never given a task
    with first.app_context():
        task = bg.submit(int)

    @bg.on_shutdown
    def hook() -> None:
        calls.append((current_app.name, task.done()))

    @bg.on_shutdown
    def broken() -> None:
        raise RuntimeError("hook bug")

    bg.shutdown()
    bg.shutdown()
    assert sorted(calls) == [("first", True), ("second", True)]


def test_task_timeout(app: Flask, bg: BGTasks, gate: t.Any) -> None:
    seen: list[bool] = []

    @bg.task(timeout=0.05)
    def slow() -> str:
        gate()
        seen.append(current_task.cancel_requested)
        return "too late"

    @bg.task(timeout=5)
    def quick() -> str:
        return "in time"

    with app.app_context():
        result = slow.submit()
        fast = quick.submit()
    with pytest.raises(TaskTimeout, match="did not finish within its timeout of 0.05 s") as info:
        result.result(5)
    assert isinstance(info.value, TimeoutError)
    assert result.status is TaskStatus.FAILED
    assert fast.result(5) == "in time"
    gate.open()
    assert bg.join(5)
    assert seen == [True]  # asked to stop; its value was discarded
    assert result.status is TaskStatus.FAILED


@pytest.mark.parametrize("timeout", [0, -1, "5", True])
def test_bad_timeout(bg: BGTasks, timeout: t.Any) -> None:
    with pytest.raises(InvalidTaskError, match="'timeout' must be a number of seconds above 0"):
        bg.task(timeout=timeout)(int)


def test_install_sigterm_handler_outside_main_thread() -> None:
    from flask_bgtasks import install_sigterm_handler

    errors: list[BaseException] = []

    def install() -> None:
        try:
            install_sigterm_handler()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(5)
    assert isinstance(errors[0], UsageError)


# -- what the drain at exit logs ----------------------------------------------


def drain_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "flask_bgtasks"]


@pytest.mark.parametrize("count", [1, 2])
def test_drain_at_exit_says_when_it_ended(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    gate: t.Any,
    caplog: pytest.LogCaptureFixture,
    count: int,
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=2, BGTASKS_SHUTDOWN_TIMEOUT=30)
    with app.app_context():
        ids = [bg.submit(gate).id for _ in range(count)]
    gate.wait_entered(count)
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        # What the interpreter runs at exit, here in a thread: the tasks
        # wait at the gate until the drain has named them.
        drain = threading.Thread(target=bg._drain_at_exit)
        drain.start()
        try:
            wait_for(lambda: drain_log(caplog), 10, "the drain to begin")
        finally:
            gate.open()
            drain.join(30)
    tasks = "1 background task" if count == 1 else "2 background tasks"
    start, end = drain_log(caplog)
    assert start == f"Draining {tasks} at exit, for at most 30 s: {', '.join(ids)}"
    assert re.fullmatch(
        rf"The drain at exit ended after \d+\.\d s: {count} of {tasks} finished\.", end
    )


def test_drain_at_exit_end_counts_what_the_deadline_cut_short(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    gate: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1, BGTASKS_SHUTDOWN_TIMEOUT=0.2)
    with app.app_context():
        stuck = bg.submit(gate)
        gate.wait_entered()
        queued = bg.submit(int)
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        bg._drain_at_exit()
    gate.open()
    log = drain_log(caplog)
    assert (
        log[0] == f"Draining 2 background tasks at exit, for at most 0.2 s: {stuck.id}, {queued.id}"
    )
    assert re.fullmatch(
        r"Background tasks at exit: 0 finished, 1 cancelled while queued, 1 interrupted at"
        r" the deadline\. The drain ended after \d+\.\d s\.",
        log[-1],
    )


def test_drain_at_exit_end_names_the_durable_tasks_left_for_the_next_process(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    gate: t.Any,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.db"
    app = make_app(
        BGTASKS_MAX_WORKERS=1, BGTASKS_SHUTDOWN_TIMEOUT=0.2, BGTASKS_STORE=f"sqlite:///{path}"
    )

    @bg.task(durable=True, name="tests.held")
    def held() -> None:
        gate()

    with app.app_context():
        ids = {held.submit().id, held.submit().id}  # one runs, one waits
    gate.wait_entered()
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        bg._drain_at_exit()
    gate.open()
    end = drain_log(caplog)[-1]
    prefix = (
        "0 of 2 background tasks finished; 2 durable tasks left in the store for the next process: "
    )
    assert re.fullmatch(r"The drain at exit ended after \d+\.\d s: .*\.", end), end
    assert prefix in end
    assert set(end.partition(prefix)[2].rstrip(".").split(", ")) == ids
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT status, owner FROM bgtasks_task").fetchall()
    assert rows == [("queued", None), ("queued", None)]


EXIT_SCRIPT = """
import os, signal, sys, threading
from flask import Flask
from flask_bgtasks import BGTasks, current_task, install_sigterm_handler

app = Flask("exit_app")
app.config.update(
    BGTASKS_MAX_WORKERS=2,
    BGTASKS_SHUTDOWN_TIMEOUT=float(os.environ["DEADLINE"]),
    BGTASKS_SHUTDOWN_QUEUED=os.environ["QUEUED"],
)
bg = BGTasks(app)
idle_app = Flask("idle_app")  # registered, but never given a task
bg.init_app(idle_app)
started = threading.Barrier(3)
queue_cancelled = threading.Event()

@bg.task
def stuck():
    started.wait()
    threading.Event().wait()  # never returns, never checks for cancellation

@bg.task
def short():
    started.wait()
    if os.environ["QUEUED"] == "cancel":
        # Ending before the drain has cancelled the queue would free this
        # worker to start a queued task first, whenever the main thread is slow.
        queue_cancelled.wait(20)
    print("short done", flush=True)

@bg.task
def queued(n):
    print("queued done", n, flush=True)

@bg.on_shutdown
def hook():
    from flask import current_app
    print("hook ran in", current_app.name, flush=True)

with app.app_context():
    results = [stuck.submit(), short.submit()] + [queued.submit(n) for n in range(3)]
ids = [result.id for result in results]
ended = []

def count(result):
    ended.append(result.id)
    if len(ended) == 3:
        queue_cancelled.set()

for result in results[2:]:
    result.add_done_callback(count)
print("ids", *ids, flush=True)
started.wait()
if os.environ.get("SIGTERM") == "1":
    previous = []
    signal.signal(signal.SIGTERM, lambda *a: previous.append(print("previous handler", flush=True)))
    install_sigterm_handler()
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(30)  # the handler's SystemExit ends this wait
    print("not reached", flush=True)
"""


def run_exit_script(tmp_path: Path, **env: str) -> tuple[int, str, float]:
    script = tmp_path / "exit_app.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


@pytest.mark.parametrize("queued_policy", ["run", "cancel"])
def test_interpreter_exit_drains_within_the_deadline(tmp_path: Path, queued_policy: str) -> None:
    code, output, elapsed = run_exit_script(tmp_path, DEADLINE="2", QUEUED=queued_policy)
    assert code == 0, output
    assert elapsed < 12, output  # the stuck task never holds the process
    ids = next(line.split()[1:] for line in output.splitlines() if line.startswith("ids"))
    stuck_id = ids[0]
    assert "short done" in output
    assert f"(id {stuck_id}) was still running at the shutdown deadline" in output
    # Only for the app that had tasks in this process.
    assert output.count("hook ran in") == 1
    assert "hook ran in exit_app" in output
    if queued_policy == "run":
        assert output.count("queued done") == 3
        assert "1 interrupted at the deadline" in output
    else:
        assert output.count("queued done") == 0
        assert "3 cancelled while queued" in output


def test_sigterm_helper_chains_and_drains(tmp_path: Path) -> None:
    code, output, elapsed = run_exit_script(tmp_path, DEADLINE="2", QUEUED="run", SIGTERM="1")
    assert code == 0, output
    assert "previous handler" in output
    assert "not reached" not in output
    assert output.count("queued done") == 3
    assert "was still running at the shutdown deadline" in output
    assert elapsed < 12, output
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the tests' own is untouched
