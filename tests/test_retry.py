from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    InvalidTaskError,
    TaskCancelled,
    TaskStatus,
    current_task,
    signals,
)
from flask_bgtasks._retry import MAX_BACKOFF, RetryPolicy

from .servers import wait_for


@pytest.fixture(params=["memory", "sqlite"])
def any_store_app(
    request: pytest.FixtureRequest, make_app: t.Callable[..., Flask], tmp_path: Path
) -> Flask:
    if request.param == "memory":
        return make_app()
    return make_app(BGTASKS_STORE="sqlite:///" + str(tmp_path / "tasks.db"))


def test_retries_until_it_succeeds(any_store_app: Flask, bg: BGTasks) -> None:
    @bg.task(retries=3, retry_backoff=0, retry_on=ConnectionError)
    def flaky() -> int:
        if current_task.attempt < 3:
            raise ConnectionError(f"down on attempt {current_task.attempt}")
        return current_task.attempt

    failed: list[object] = []
    with (
        any_store_app.app_context(),
        signals.task_failed.connected_to(lambda sender, **kw: failed.append(kw), any_store_app),
    ):
        result = flaky.submit()
        assert result.result(5) == 3
        assert result.attempt == 3
        assert [(e["attempt"], e["type"], e["message"]) for e in result.errors] == [
            (1, "ConnectionError", "down on attempt 1"),
            (2, "ConnectionError", "down on attempt 2"),
        ]
        assert "raise ConnectionError" in result.errors[0]["traceback"]
        record = bg.store().record(result.id)
        assert record is not None
        assert record.status is TaskStatus.SUCCEEDED
        assert record.attempt == 3
        assert len(record.errors) == 2
        assert record.error is None  # it succeeded in the end
    assert failed == []  # no task_failed for an attempt that is retried


def test_gives_up_after_the_last_retry(any_store_app: Flask, bg: BGTasks) -> None:
    @bg.task(retries=2, retry_backoff=0)
    def broken() -> None:
        raise ValueError(f"attempt {current_task.attempt}")

    with any_store_app.app_context():
        result = broken.submit()
        with pytest.raises(ValueError, match="attempt 3"):
            result.result(5)
        assert result.status is TaskStatus.FAILED
        assert [error["message"] for error in result.errors] == [
            "attempt 1",
            "attempt 2",
            "attempt 3",
        ]
        record = bg.store().record(result.id)
        assert record is not None and record.error is not None
        assert record.error["message"] == "attempt 3"


def test_other_errors_are_not_retried(app: Flask, bg: BGTasks) -> None:
    @bg.task(retries=5, retry_backoff=0, retry_on=(ConnectionError, TimeoutError))
    def wrong() -> None:
        raise KeyError("no")

    with app.app_context():
        result = wrong.submit()
        with pytest.raises(KeyError):
            result.result(5)
    assert result.attempt == 1


def test_cancel_ends_the_backoff(any_store_app: Flask, bg: BGTasks) -> None:
    @bg.task(retries=1, retry_backoff=60)
    def slow_retry() -> None:
        raise ConnectionError("down")

    with any_store_app.app_context():
        result = slow_retry.submit()

        def waits() -> bool:
            record = bg.store().record(result.id)
            return record is not None and record.status is TaskStatus.QUEUED and record.attempt == 1

        # The store says so a moment after the task itself.
        wait_for(waits, 5, "the first failure")
        assert result.errors and result.status is TaskStatus.QUEUED
        # Queued and not running, as a Future: cancelled at once, and its
        # worker wakes, far sooner than the 30 s or more of backoff.
        assert result.cancel() is True
        assert result.status is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelled):
            result.result(0)
        assert bg.join(5)


def test_backoff_doubles_with_jitter() -> None:
    policy = RetryPolicy(retries=20, backoff=2.0, retry_on=(Exception,))
    for failures, full in [(1, 2.0), (2, 4.0), (3, 8.0), (12, MAX_BACKOFF)]:
        delays = {policy.delay(OSError(), failures) for _ in range(50)}
        assert all(full / 2 <= delay <= full for delay in delays)  # type: ignore[operator]
        assert len(delays) > 1  # jitter
    assert policy.delay(OSError(), 21) is None
    assert RetryPolicy(1, 1.0, (OSError,)).delay(KeyError(), 1) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "'retries' must be a whole number"),
        ({"retries": True}, "'retries' must be a whole number"),
        ({"retries": 1, "retry_backoff": -1}, "'retry_backoff' must be a number"),
        ({"retries": 1, "retry_on": ValueError()}, "'retry_on' must be an exception class"),
        ({"retries": 1, "retry_on": (ValueError, int)}, "'retry_on' must be an exception class"),
        ({"durable": "yes"}, "'durable' must be True, False or None"),
    ],
)
def test_bad_retry_options(bg: BGTasks, options: dict[str, t.Any], message: str) -> None:
    with pytest.raises(InvalidTaskError, match=message):
        bg.task(**options)(print)


def test_cancel_from_another_process_ends_the_backoff(
    make_app: t.Callable[..., Flask], bg: BGTasks, tmp_path: Path
) -> None:
    db = "sqlite:///" + str(tmp_path / "tasks.db")
    app = make_app(BGTASKS_STORE=db)
    other = make_app("other", BGTASKS_STORE=db)  # another process, as far as the row goes

    @bg.task(retries=1, retry_backoff=60)
    def slow_retry() -> None:
        raise ConnectionError("down")

    with app.app_context():
        result = slow_retry.submit()

    def waits_in_the_store() -> bool:
        record = bg.store(other).record(result.id)
        return record is not None and record.status is TaskStatus.QUEUED and record.attempt == 1

    wait_for(waits_in_the_store, 5, "the other process to see the task wait for its retry")
    # The row says queued while it waits: cancelled at once, for the store.
    assert bg.store(other).cancel(result.id) is True
    with pytest.raises(TaskCancelled):
        result.result(5)  # within about a second, not the 30 s or more of backoff
