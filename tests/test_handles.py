"""One handle type for every store: :class:`TaskResult`, live for a task of
this process, reading the store for a task found there, with the same
attributes and answers; cancelling by id; the Future side of a live handle;
and ``shutdown()``'s arguments."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import typing as t
import warnings
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    ShutdownError,
    ShutdownSummary,
    TaskCancelled,
    TaskMessage,
    TaskOptions,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
    current_task,
)
from flask_bgtasks._message import new_id
from flask_bgtasks.stores.sqlite import SQLiteStore

from .conftest import Gate

#: What a handle answers, the same whether it is live or reads the store.
ATTRIBUTES = (
    "id",
    "name",
    "pool",
    "status",
    "progress",
    "attempt",
    "cancel_requested",
    "submitted_at",
    "started_at",
    "finished_at",
)


class Flaky(Exception):
    """Raised by a task that is retried."""


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


@pytest.fixture
def store_app(make_app: t.Callable[..., Flask], db: str) -> Flask:
    return make_app(BGTASKS_STORE="sqlite:///" + db)


@pytest.fixture
def other(db: str, store_app: Flask) -> t.Iterator[SQLiteStore]:
    """The same file as ``store_app``'s, as another process sees it."""
    store = SQLiteStore(db, None, 100, lease=30, process="other:1")
    yield store
    store.close()


def queued_elsewhere(store: SQLiteStore, name: str = "tests.handles.elsewhere") -> TaskMessage:
    """Record a queued task of the process that ``store`` stands for."""
    options = TaskOptions(name=name)
    message = TaskMessage(new_id(), name, options.pool, (1,), {}, options, False, time.time())
    store.add(TaskSnapshot(message, TaskStatus.QUEUED, 0, None, (), False, None, None))
    store.flush()
    return message


def status_of(handle: TaskResult[t.Any]) -> TaskStatus:
    """The status now. (mypy would keep ``handle.status`` narrowed by an
    earlier assert.)"""
    return handle.status


# -- one handle type ----------------------------------------------------------


def test_get_with_the_memory_store(app: Flask, bg: BGTasks) -> None:
    @bg.task
    def double(number: int) -> int:
        return number * 2

    with app.app_context():
        handle = double.submit(21)
        found = bg.get(handle.id)
        assert isinstance(found, TaskResult)
        assert found is handle
        assert handle.result(10) == 42
        assert bg.get(handle.id) is handle  # finished, and still found
        assert bg.get("no-such-task") is None


def test_get_with_the_sqlite_store(store_app: Flask, bg: BGTasks, gate: Gate) -> None:
    @bg.task(name="tests.handles.report")
    def report(pages: int) -> dict[str, int]:
        gate()
        for page in range(pages):
            current_task.set_progress(page + 1, pages, f"page {page + 1}")
        return {"pages": pages}

    with store_app.app_context():
        live = report.submit(3)
        gate.wait_entered()
        # Unfinished in this process: its live handle.
        assert bg.get(live.id) is live
        gate.open()
        assert live.result(10) == {"pages": 3}
        assert bg.join(10)

        stored = bg.get(live.id)
        assert type(stored) is TaskResult
        assert stored is not live
        assert stored._execution is None  # it reads the store
        for attribute in ATTRIBUTES:
            assert getattr(stored, attribute) == getattr(live, attribute), attribute
        assert stored.status is TaskStatus.SUCCEEDED
        assert stored.progress == {"current": 3, "total": 3, "message": "page 3"}
        assert stored.attempt == 1
        assert stored.cancel_requested is False
        assert stored.started_at is not None and stored.finished_at is not None
        assert stored.submitted_at <= stored.started_at <= stored.finished_at
        assert stored.result(5) == live.result(5) == {"pages": 3}
        assert stored.exception(5) is live.exception(5) is None
        assert stored.done() is live.done() is True
        assert stored.running() is live.running() is False
        assert stored.cancelled() is live.cancelled() is False
        assert stored.record() == live.record()
        # A finished task stays as it is.
        assert stored.cancel() is live.cancel() is False
        assert stored.status is live.status is TaskStatus.SUCCEEDED


def test_handle_that_reads_the_store_refuses_waits(store_app: Flask, bg: BGTasks) -> None:
    @bg.task(name="tests.handles.quick")
    def quick() -> int:
        return 1

    with store_app.app_context():
        assert quick.submit().result(10) == 1
        assert bg.join(10)
        (record,) = bg.store().records()
        stored = bg.get(record.id)
    assert stored is not None and stored._execution is None
    futures: list[concurrent.futures.Future[t.Any]] = [stored]
    refusals: list[t.Callable[[], object]] = [
        lambda: concurrent.futures.wait(futures, timeout=1),
        lambda: list(concurrent.futures.as_completed(futures, timeout=1)),
        lambda: stored.add_done_callback(lambda _: None),
    ]
    for refused in refusals:
        with pytest.raises(TypeError, match=r"result\(timeout\)") as caught:
            refused()
        assert "tests.handles.quick" in str(caught.value)
    # Its own waits work.
    assert stored.result(5) == 1
    assert stored.done()


def test_task_of_another_process_polls_and_cancels_through_the_store(
    store_app: Flask, bg: BGTasks, other: SQLiteStore
) -> None:
    message = queued_elsewhere(other)
    with store_app.app_context():
        handle = bg.get(message.id)
        assert isinstance(handle, TaskResult)
        assert handle._execution is None
        assert (handle.id, handle.name, handle.pool) == (message.id, message.name, "default")
        assert handle.status is TaskStatus.QUEUED
        assert handle.attempt == 0
        assert not handle.done() and not handle.running()
        assert handle.record().process == "other:1"

        start = time.monotonic()
        with pytest.raises(TimeoutError, match="did not finish in time"):
            handle.result(0.2)
        assert time.monotonic() - start >= 0.2
        with pytest.raises(TimeoutError):
            handle.exception(0.05)
        with pytest.raises(TypeError, match=r"result\(timeout\)"):
            concurrent.futures.wait([handle], timeout=0)

        assert handle.cancel() is True
        assert status_of(handle) is TaskStatus.CANCELLED
        assert handle.done() and handle.cancelled()
        assert handle.finished_at is not None
        with pytest.raises(TaskCancelled):
            handle.result(5)
        with pytest.raises(TaskCancelled):
            handle.exception(5)
    # The other process sees it too, and would not start it.
    seen = other.record(message.id)
    assert seen is not None and seen.status is TaskStatus.CANCELLED


def test_running_task_of_another_process_is_asked_to_stop(
    store_app: Flask, bg: BGTasks, other: SQLiteStore
) -> None:
    message = queued_elsewhere(other, "tests.handles.running_elsewhere")
    started = TaskSnapshot(message, TaskStatus.RUNNING, 1, None, (), False, time.time(), None)
    assert other.started(started)
    other.flush()
    with store_app.app_context():
        handle = bg.get(message.id)
        assert handle is not None
        assert handle.status is TaskStatus.RUNNING
        assert handle.running()
        assert handle.cancel() is False
        assert handle.cancel_requested is True
        assert handle.status is TaskStatus.RUNNING
        # bg.cancel by id answers the same.
        assert bg.cancel(message.id) is False
    assert other.cancel_requested(message.id)


# -- cancelling by id ---------------------------------------------------------


def test_cancel_by_id(make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)
    ran: list[str] = []

    @bg.task
    def hold() -> bool:
        gate()
        return current_task.cancel_requested

    @bg.task
    def never() -> None:
        ran.append("never")

    with app.app_context():
        running = hold.submit()
        gate.wait_entered()
        # The only worker is busy: this one waits in the queue.
        queued = never.submit()
        assert queued.status is TaskStatus.QUEUED
        assert bg.cancel(queued.id) is True
        assert status_of(queued) is TaskStatus.CANCELLED
        assert queued.cancelled() and queued.done()
        with pytest.raises(TaskCancelled):
            queued.result(0)

        assert bg.cancel(running.id) is False
        assert running.cancel_requested is True
        assert running.status is TaskStatus.RUNNING
        gate.open()
        assert running.result(10) is True  # it saw the request inside
        assert bg.cancel("no-such-task") is False
        assert bg.join(10)
    assert ran == []


# -- the Future side of a live handle -----------------------------------------


def waiting_for_retry(app: Flask, bg: BGTasks) -> TaskResult[None]:
    """A task whose first attempt failed, and that waits 30 s for its retry.
    Call in an app context."""
    waiting = threading.Event()

    @app.teardown_appcontext
    def attempt_over(exc: BaseException | None) -> None:
        # An attempt's context is torn down after its failure was handled:
        # the task waits for its retry from here on.
        if isinstance(exc, Flaky):
            waiting.set()

    @bg.task(retries=1, retry_backoff=30, retry_on=Flaky)
    def flaky() -> None:
        raise Flaky("try again")

    handle = flaky.submit()
    assert waiting.wait(10)
    return handle


def test_status_agrees_with_the_future_during_a_retry_wait(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        handle = waiting_for_retry(app, bg)
        assert handle.status is TaskStatus.QUEUED
        assert handle.running() is False
        assert handle.done() is False
        assert handle.cancelled() is False
        assert handle.attempt == 1
        assert [error["type"] for error in handle.errors] == [f"{__name__}.Flaky"]
        done, not_done = concurrent.futures.wait([handle], timeout=0)
        assert (done, not_done) == (set(), {handle})

        handle.cancel()  # ends the 30 s wait
        done, not_done = concurrent.futures.wait([handle], timeout=10)
        assert (done, not_done) == ({handle}, set())
        assert status_of(handle) is TaskStatus.CANCELLED
        assert handle.cancelled() and handle.done() and not handle.running()
        with pytest.raises(TaskCancelled):
            handle.result(0)
        assert handle.attempt == 1  # never ran again


def test_cancel_during_a_retry_wait_cancels_at_once(app: Flask, bg: BGTasks) -> None:
    # During a retry wait the handle says queued, not running and not done;
    # so, as for any Future, and as cancel() documents for a queued task,
    # cancel() must succeed at once and return True.
    with app.app_context():
        handle = waiting_for_retry(app, bg)
        assert not handle.running() and not handle.done()
        try:
            assert handle.cancel() is True
            assert status_of(handle) is TaskStatus.CANCELLED
            assert handle.done()
        finally:
            handle.cancel()
            concurrent.futures.wait([handle], timeout=10)


def test_no_condition_for_a_handle_nobody_waited_for(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        succeeded = bg.submit(int, "5")
        failed = bg.submit(int, "five")
        assert bg.join(10)
    assert succeeded.done() and failed.done()
    assert succeeded._cond is None
    assert failed._cond is None
    # Asking a finished task needs no condition either.
    assert succeeded.result(5) == 5
    assert succeeded.exception(5) is None
    with pytest.raises(ValueError, match="five"):
        failed.result(5)
    assert isinstance(failed.exception(5), ValueError)
    assert succeeded.status is TaskStatus.SUCCEEDED
    assert failed.status is TaskStatus.FAILED
    assert succeeded._cond is None
    assert failed._cond is None


def test_a_waiter_makes_the_condition(app: Flask, bg: BGTasks, gate: Gate) -> None:
    with app.app_context():
        handle = bg.submit(gate)
        gate.wait_entered()
        assert handle._cond is None
        done, _ = concurrent.futures.wait([handle], timeout=0)
        assert not done
        assert handle._cond is not None
        gate.open()
        done, _ = concurrent.futures.wait([handle], timeout=10)
        assert done == {handle}
        assert handle.result(0) is None


# -- shutdown()'s arguments ---------------------------------------------------


def test_positional_shutdown_arguments_warn_and_still_work(
    app: Flask, bg: BGTasks, gate: Gate
) -> None:
    with app.app_context():
        held = bg.submit(gate)
        gate.wait_entered()
    with pytest.warns(DeprecationWarning, match="by position is deprecated") as caught:
        summary = bg.shutdown(False)
    assert caught[0].filename == __file__  # it points at the caller
    # wait=False, given by position: it returned with the task unfinished.
    assert isinstance(summary, ShutdownSummary)
    assert summary.unfinished == [held.id]
    assert not held.done()
    with app.app_context(), pytest.raises(ShutdownError):
        bg.submit(int)
    gate.open()
    with pytest.warns(DeprecationWarning):
        summary = bg.shutdown(True, 10)
    assert held.done()
    assert held.result(0) is None


def test_keyword_shutdown_arguments_do_not_warn(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        handle = bg.submit(int, "3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = bg.shutdown(wait=True, timeout=5)
    assert handle.result(0) == 3
    assert summary.cancelled == summary.interrupted == summary.unfinished == []


def test_shutdown_argument_given_twice_is_a_type_error(app: Flask, bg: BGTasks) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="multiple values for argument 'wait'"):
            bg.shutdown(True, wait=True)
        with pytest.raises(TypeError, match="at most 3 arguments"):
            bg.shutdown(True, 5, False, 1)
    # Refused before anything was shut down.
    with app.app_context():
        assert bg.submit(int, "4").result(10) == 4
