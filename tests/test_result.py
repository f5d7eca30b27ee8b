from __future__ import annotations

import concurrent.futures
import logging
import string
import threading
import typing as t
from datetime import UTC, datetime

import pytest
from flask import Flask, current_app

from flask_bgtasks import (
    BGTasks,
    TaskCancelled,
    TaskResult,
    TaskStatus,
    UsageError,
    current_task,
)


def test_status_values() -> None:
    assert [status.value for status in TaskStatus] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert TaskStatus.RUNNING == "running"
    assert isinstance(TaskStatus.QUEUED, str)


def test_id_is_url_safe_random_and_stable(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        results = [bg.submit(int) for _ in range(200)]
    ids = [result.id for result in results]
    assert len(set(ids)) == 200
    allowed = set(string.ascii_letters + string.digits + "-_")
    for task_id in ids:
        assert set(task_id) <= allowed
        assert len(task_id) >= 22  # 16 bytes of randomness in base64
    assert [result.id for result in results] == ids  # made once


def test_id_made_by_racing_threads_is_one_id(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        result = bg.submit(int)
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def read() -> None:
        barrier.wait()
        seen.append(result.id)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1
    with app.app_context():
        assert bg.get(seen[0]) is result


def test_lifecycle_timestamps_and_progress(app: Flask, bg: BGTasks, gate: t.Any) -> None:
    @bg.task
    def work() -> str:
        current_task.set_progress(1, 3, "first step")
        gate()
        current_task.set_progress(3, 3)
        return current_task.id

    with app.app_context():
        result = work.submit()
    gate.wait_entered()
    assert result.status is TaskStatus.RUNNING
    assert result.running() and not result.done()
    assert result.progress == {"current": 1, "total": 3, "message": "first step"}
    assert result.finished_at is None
    gate.open()
    assert result.result(5) == result.id
    assert result.status is TaskStatus.SUCCEEDED
    assert result.progress == {"current": 3, "total": 3, "message": None}
    assert isinstance(result.submitted_at, datetime)
    assert result.submitted_at.tzinfo is UTC
    assert result.started_at is not None and result.finished_at is not None
    assert result.submitted_at <= result.started_at <= result.finished_at


def test_progress_none_before_any_update(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        result = bg.submit(int)
    result.result(5)
    assert result.progress is None


@pytest.mark.parametrize(
    ("args", "words"),
    [(("1",), "current"), ((True,), "current"), ((1, "2"), "total"), ((1, 2, 3), "message")],
)
def test_bad_progress(app: Flask, bg: BGTasks, args: tuple[t.Any, ...], words: str) -> None:
    with app.app_context():
        result = bg.submit(current_task.set_progress, *args)
    with pytest.raises(TypeError, match=f"set_progress\\({words}="):
        result.result(5)


def test_current_task_outside_a_task() -> None:
    with pytest.raises(RuntimeError, match="only available inside a running background task"):
        current_task.id  # noqa: B018 - the access raises
    with pytest.raises(UsageError):
        current_task.set_progress(1)
    assert "no task running" in repr(current_task)


def test_failure_is_stored_and_logged_once(
    app: Flask, bg: BGTasks, caplog: pytest.LogCaptureFixture
) -> None:
    @bg.task
    def explode() -> None:
        raise LookupError("no such row")

    with app.app_context(), caplog.at_level(logging.ERROR, "flask_bgtasks"):
        result = explode.submit()
        assert bg.join(5)
    assert result.status is TaskStatus.FAILED
    assert isinstance(result.exception(0), LookupError)
    with pytest.raises(LookupError, match="no such row"):
        result.result(0)
    records = [record for record in caplog.records if record.name == "flask_bgtasks"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert explode.name in records[0].getMessage()
    assert result.id in records[0].getMessage()
    assert records[0].exc_info is not None
    assert records[0].exc_info[1] is result.exception(0)


def test_cancel_queued_task(make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)
    ran = threading.Event()
    with app.app_context():
        blocker = bg.submit(gate)
        gate.wait_entered()
        queued = bg.submit(ran.set)
    assert queued.status is TaskStatus.QUEUED
    assert queued.cancel() is True
    assert queued.cancel() is True  # again: still cancelled
    assert queued.status is TaskStatus.CANCELLED
    assert queued.cancelled() and queued.done()
    assert queued.finished_at is not None
    with pytest.raises(TaskCancelled, match="cancelled before it started"):
        queued.result(0)
    with pytest.raises(concurrent.futures.CancelledError):
        queued.exception(0)
    gate.open()
    blocker.result(5)
    assert bg.join(5)
    assert not ran.is_set()


def test_cancel_running_task_is_cooperative(app: Flask, bg: BGTasks, gate: t.Any) -> None:
    @bg.task
    def loop() -> str:
        assert not current_task.cancel_requested
        gate()
        assert current_task.cancel_requested
        current_task.check_cancelled()
        return "not reached"

    with app.app_context():
        result = loop.submit()
    gate.wait_entered()
    assert result.cancel() is False
    assert result.cancel_requested
    gate.open()
    with pytest.raises(TaskCancelled, match="was cancelled"):
        result.result(5)
    assert result.status is TaskStatus.CANCELLED
    assert result.cancelled()
    with pytest.raises(TaskCancelled):
        result.exception(0)


def test_cancel_finished_task_changes_nothing(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        result = bg.submit(int, "5")
    assert result.result(5) == 5
    assert result.cancel() is False
    assert result.status is TaskStatus.SUCCEEDED
    assert not result.cancel_requested


def test_concurrent_futures_wait_and_as_completed(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        results = [bg.submit(pow, n, 2) for n in range(10)]
    done, not_done = concurrent.futures.wait(results, timeout=5)
    assert len(done) == 10 and not not_done
    values = {r.result() for r in concurrent.futures.as_completed(results, timeout=5)}
    assert values == {n * n for n in range(10)}


def test_done_callback_runs_with_app_and_errors_are_logged(
    app: Flask, bg: BGTasks, gate: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, str]] = []

    def record(result: concurrent.futures.Future[t.Any]) -> None:
        seen.append((current_app.name, t.cast(TaskResult[t.Any], result).status.value))

    def broken(result: concurrent.futures.Future[t.Any]) -> None:
        raise ValueError("callback bug")

    with app.app_context():
        result = bg.submit(gate)
    result.add_done_callback(broken)
    result.add_done_callback(record)
    with caplog.at_level(logging.ERROR, "flask_bgtasks"):
        gate.open()
        result.result(5)
        assert bg.join(5)
        # Added after the task finished: runs now, in this thread, with the app.
        result.add_done_callback(record)
        result.add_done_callback(broken)
    assert seen == [("test_app", "succeeded"), ("test_app", "succeeded")]
    messages = [r.getMessage() for r in caplog.records if "done-callback" in r.getMessage()]
    assert len(messages) == 2
    # The worker survived the callback errors.
    with app.app_context():
        assert bg.submit(int, "7").result(5) == 7


def test_repr(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        result = bg.submit(int)
    result.result(5)
    assert repr(result) == f"<TaskResult 'builtins.int' id={result.id} succeeded>"
