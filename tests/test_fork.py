"""Forking a process whose pools and stores were used: with ``os.fork`` and
with ``multiprocessing``'s fork start method, on the memory and the SQLite
store, also while the SQLite store's writer is busy.

A child must never hang (a thread of the parent inside SQLite at the fork
would leave it holding SQLite's locks in the child), must start with no
record and no thread of its parent, and must run tasks of its own. The
parent must go on as before, without the idle threads the fork stopped.

Each child reports one line through a pipe and leaves with ``os._exit``; the
parent reads it with a timeout, so a child that hangs fails the test and is
killed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import select
import signal
import sqlite3
import threading
import typing as t
from pathlib import Path

import click
import pytest
from flask import Flask
from flask.cli import run_command

from flask_bgtasks import BGTasks, TaskCancelled, TaskStatus
from flask_bgtasks.stores._writer import Writer
from tests.servers import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, 3.12+

#: Seconds a child may take; far more than it needs, far less than forever.
CHILD_TIMEOUT = 20.0
STORES = ["memory", "sqlite"]


def ours() -> list[str]:
    """The names of this process's threads that belong to the package."""
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("bgtasks-")]


def in_child(body: t.Callable[[], str]) -> str:
    """Fork; run ``body`` in the child and return the line it returned.

    :raises AssertionError: If the child fails or does not answer in time.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one line and leave without any cleanup
        code = 1
        try:
            os.close(read_end)
            report = body()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - a child reports any failure
            report = f"the child failed: {exc!r}"
        finally:
            try:
                os.write(write_end, report.encode())
            finally:
                os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], CHILD_TIMEOUT)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"The forked child hung for {CHILD_TIMEOUT} s.")
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    # It reported, so it leaves at once.
    _, status = os.waitpid(pid, 0)
    report = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


def make_store_app(make_app: t.Callable[..., Flask], tmp_path: Path, store: str) -> Flask:
    if store == "sqlite":
        return make_app(BGTASKS_STORE=f"sqlite:///{tmp_path / 'tasks.db'}")
    return make_app()


def child_report(app: Flask, bg: BGTasks) -> str:
    """What a child says, as JSON, about what it inherited, then about a
    task of its own."""
    store = bg.store(app)
    records = len(store)  # first, before any other call could reset the store
    threads = ours()
    with app.app_context():
        result = bg.submit(os.getpid)
        ran_here = result.result(10) == os.getpid()
    record = store.record(result.id)
    status = None if record is None else record.status.value
    return json.dumps(
        {"records": records, "threads": threads, "ran_here": ran_here, "status": status}
    )


def own_task_ran(records: int) -> dict[str, t.Any]:
    """What a child reports that inherited ``records`` records."""
    return {"records": records, "threads": [], "ran_here": True, "status": "succeeded"}


@pytest.mark.parametrize("store", STORES)
def test_child_starts_empty_and_runs_its_own_tasks(
    make_app: t.Callable[..., Flask], bg: BGTasks, tmp_path: Path, store: str
) -> None:
    app = make_store_app(make_app, tmp_path, store)
    with app.app_context():
        parent_ids = [bg.submit(os.getpid).id for _ in range(5)]
    assert bg.join(10)
    assert len(bg.store(app)) == 5

    report = json.loads(in_child(lambda: child_report(app, bg)))

    # The SQLite file is shared by design: the child sees the rows there.
    assert report == own_task_ran(0 if store == "memory" else 5)
    # The parent's records are untouched.
    for task_id in parent_ids:
        record = bg.store(app).record(task_id)
        assert record is not None and record.status is TaskStatus.SUCCEEDED


def test_child_of_a_busy_sqlite_store_never_hangs(
    make_app: t.Callable[..., Flask], bg: BGTasks, tmp_path: Path
) -> None:
    """Forks while other threads submit, run and write tasks to SQLite (its
    writer commits batches, workers read their task's row): each fork may
    fall while one of them is inside SQLite."""
    app = make_store_app(make_app, tmp_path, "sqlite")
    stop = threading.Event()
    submitted = threading.Semaphore(0)

    def hammer() -> None:
        with app.app_context():
            while not stop.is_set():
                result = bg.submit(os.getpid)
                bg.store(app).record(result.id)  # a read, too
                submitted.release()

    thread = threading.Thread(target=hammer, name="hammer")
    thread.start()
    try:
        for _ in range(10):
            # A fork with writes in flight: at least one submit since the last.
            assert submitted.acquire(timeout=10)
            report = json.loads(in_child(lambda: child_report(app, bg)))
            assert report == own_task_ran(report["records"])
    finally:
        stop.set()
        thread.join(10)
    assert bg.join(10)
    # Every task the parent submitted while it forked was written and ran.
    records = bg.store(app).records(limit=100_000)
    assert records and all(record.status is TaskStatus.SUCCEEDED for record in records)


def _multiprocessing_child(app: Flask, bg: BGTasks, connection: t.Any) -> None:
    connection.send(child_report(app, bg))


@pytest.mark.parametrize("store", STORES)
def test_multiprocessing_fork_child(
    make_app: t.Callable[..., Flask], bg: BGTasks, tmp_path: Path, store: str
) -> None:
    app = make_store_app(make_app, tmp_path, store)
    with app.app_context():
        for _ in range(3):
            bg.submit(os.getpid).id  # noqa: B018 - reading the id records the task
    assert bg.join(10)
    assert len(bg.store(app)) == 3
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_multiprocessing_child, args=(app, bg, sender))
    process.start()
    try:
        assert receiver.poll(CHILD_TIMEOUT), "The multiprocessing child hung."
        report = receiver.recv()
        process.join(CHILD_TIMEOUT)
        assert process.exitcode == 0, report
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
        sender.close()
    assert json.loads(report) == own_task_ran(0 if store == "memory" else 3)


@pytest.mark.parametrize("store", STORES)
def test_parent_keeps_no_idle_thread_and_goes_on(
    make_app: t.Callable[..., Flask], bg: BGTasks, tmp_path: Path, store: str
) -> None:
    """As a Gunicorn master: the fork stops the idle threads; the next
    submit starts them again."""
    app = make_store_app(make_app, tmp_path, store)
    with app.app_context():
        assert bg.submit(os.getpid).result(10) == os.getpid()
    assert bg.join(10)
    assert ours()

    in_child(lambda: "")

    # The store's writer stops before the fork; a pool worker as soon as it
    # takes the token the fork left it.
    wait_for(lambda: not ours(), 10, f"the idle threads to stop, left: {ours()}")
    with app.app_context():
        result = bg.submit(os.getpid)
        assert result.result(10) == os.getpid()
    record = bg.store(app).record(result.id)
    assert record is not None and record.status is TaskStatus.SUCCEEDED


def test_timeouts_still_apply_in_the_parent_after_a_fork(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    """The timeout watchdog stops for the fork and comes back for the task
    it watched."""
    app = make_app()
    release = threading.Event()
    started = threading.Event()

    @bg.task(timeout=0.5)
    def slow() -> None:
        started.set()
        release.wait(10)

    try:
        with app.app_context():
            result = slow.submit()
        assert started.wait(10)
        assert in_child(lambda: json.dumps(ours())) == "[]"
        with pytest.raises(TimeoutError):
            result.result(10)
    finally:
        release.set()
    assert bg.join(10)


@pytest.mark.parametrize("store", STORES)
def test_submit_in_the_reloader_watcher_runs_nothing(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    tmp_path: Path,
    store: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In the process that runs ``flask run`` with the reloader on, and
    that Werkzeug has not marked as its serving child, a submit returns a
    cancelled result and leaves no trace: the child runs the task."""
    app = make_store_app(make_app, tmp_path, store)
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    context = click.Context(run_command, info_name="run")
    context.params["reload"] = True
    with context, app.app_context(), caplog.at_level(logging.INFO, "flask_bgtasks"):
        result = bg.submit(os.getpid)
    assert result.cancelled()
    with pytest.raises(TaskCancelled):
        result.result(0)
    assert ours() == []
    assert len(bg.store(app)) == 0
    assert bg.store(app).record(result.id) is None
    assert "not run in the watcher process of the reloader" in caplog.text

    # Its serving child, or the same command without the reloader, runs it.
    context.params["reload"] = False
    with context, app.app_context():
        assert bg.submit(os.getpid).result(10) == os.getpid()
    context.params["reload"] = True
    monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
    with context, app.app_context():
        assert bg.submit(os.getpid).result(10) == os.getpid()


def test_writes_during_a_fork_wait_in_order(tmp_path: Path) -> None:
    """Between the before-fork and the after-fork hooks the store's writer
    has no thread: statements wait in the queue, in their order, and are
    committed once the fork is done."""
    path = tmp_path / "writes.db"

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, v TEXT)")
        return db

    def rows() -> list[tuple[int, str]]:
        db = connect()
        try:
            return db.execute("SELECT n, v FROM t ORDER BY n").fetchall()
        finally:
            db.close()

    writer = Writer(connect, "bgtasks-test-writer", lambda: None, 60.0, 5.0)
    writer.start()
    try:
        writer.write("INSERT INTO t VALUES (1, 'a')", wait=True)
        writer.pause()
        assert not [name for name in ours() if name == "bgtasks-test-writer"]
        # An insert then an update of the same row: the order matters.
        writer.write("INSERT INTO t VALUES (2, 'b')")
        writer.write("UPDATE t SET v = 'c' WHERE n = 2")
        assert rows() == [(1, "a")]
        assert not [name for name in ours() if name == "bgtasks-test-writer"]
        flushed = threading.Event()
        flusher = threading.Thread(target=lambda: (writer.flush(), flushed.set()))
        flusher.start()
        writer.resume(needed=lambda: False)
        assert flushed.wait(10)
        flusher.join(10)
        assert rows() == [(1, "a"), (2, "c")]
    finally:
        writer.close()
