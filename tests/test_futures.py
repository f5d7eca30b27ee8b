"""TaskResult as a concurrent.futures.Future, under every timing.

The cases follow CPython's own tests of Future, wait() and as_completed()
(Lib/test/test_concurrent_futures), written anew with real TaskResults in
place of bare futures: tasks that block, succeed, fail, time out, are
cancelled while queued or while running, wait for a retry, or end at the
shutdown deadline. Every moment is fixed by an event before it is asserted
on, so no test depends on which thread runs first.
"""

from __future__ import annotations

import gc
import threading
import typing as t
import weakref
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    as_completed,
    wait,
)

import pytest
from flask import Flask

from flask_bgtasks import BGTasks, TaskCancelled, TaskResult, TaskStatus, TaskTimeout, current_task

from .conftest import Gate
from .servers import wait_for

ENDED = {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}


def assert_agrees(result: TaskResult[t.Any]) -> None:
    """The status, TaskResult's methods and the Future's own state agree."""
    status = result.status
    assert result.done() is Future.done(result) is (status in ENDED)
    assert result.running() is (status is TaskStatus.RUNNING)
    # Future.running() is False throughout: the Future stays PENDING while
    # the task runs, so that a cancel can still end it as cancelled.
    assert result.cancelled() is Future.cancelled(result) is (status is TaskStatus.CANCELLED)


class Cooperative:
    """A task that waits for ``go``, then stops if it was asked to."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> str:
        self.entered.set()
        assert self.go.wait(10), "The test never let the task go on."
        current_task.check_cancelled()
        return "not cancelled"


@pytest.fixture
def app(make_app: t.Callable[..., Flask]) -> Flask:
    return make_app(BGTASKS_MAX_WORKERS=4, BGTASKS_POOLS={"one": {"max_workers": 1}})


@pytest.fixture
def submit(app: Flask, bg: BGTasks) -> t.Callable[..., TaskResult[t.Any]]:
    """Submit ``fn(*args)`` to the default pool in the app's context."""

    def submit(fn: t.Callable[..., t.Any], *args: t.Any) -> TaskResult[t.Any]:
        with app.app_context():
            return bg.submit(fn, *args)

    return submit


@pytest.fixture
def queued_cancelled(app: Flask, bg: BGTasks, gate: Gate) -> TaskResult[t.Any]:
    """A task cancelled while it waited behind a blocked one in pool 'one'."""

    @bg.task(pool="one")
    def in_pool_one(fn: t.Callable[[], t.Any]) -> t.Any:
        return fn()

    with app.app_context():
        in_pool_one.submit(gate)
        gate.wait_entered()
        result = in_pool_one.submit(int)
    assert result.status is TaskStatus.QUEUED
    assert result.cancel() is True
    return result


def cancelled_while_running(
    submit: t.Callable[..., TaskResult[t.Any]],
) -> tuple[TaskResult[t.Any], Cooperative]:
    task = Cooperative()
    result = submit(task)
    assert task.entered.wait(10)
    assert result.status is TaskStatus.RUNNING
    assert result.cancel() is False  # running: only asked to stop
    return result, task


# -- the state of one result --------------------------------------------


def test_a_queued_task_agrees(queued_cancelled: TaskResult[t.Any], gate: Gate) -> None:
    # Its neighbour in pool 'one' is blocked, so this one stays queued.
    assert_agrees(queued_cancelled)
    assert queued_cancelled.status is TaskStatus.CANCELLED


def test_a_running_task_agrees(submit: t.Callable[..., TaskResult[t.Any]], gate: Gate) -> None:
    result = submit(gate)
    gate.wait_entered()
    assert result.status is TaskStatus.RUNNING
    assert_agrees(result)
    assert result.running() and not result.done()
    gate.open()
    assert result.result(10) is None
    assert_agrees(result)


def test_cancelled_while_queued(queued_cancelled: TaskResult[t.Any]) -> None:
    result = queued_cancelled
    assert Future.cancelled(result) and Future.done(result)
    with pytest.raises(TaskCancelled, match="cancelled before it started"):
        result.result(0)
    with pytest.raises(TaskCancelled):
        result.exception(0)
    with pytest.raises(CancelledError):  # TaskCancelled is one
        Future.result(result, 0)
    assert result.cancel() is True  # still cancelled, as Future.cancel() says


def test_cancelled_while_running(submit: t.Callable[..., TaskResult[t.Any]]) -> None:
    result, task = cancelled_while_running(submit)
    assert_agrees(result)  # asked to stop, still running
    task.go.set()
    with pytest.raises(TaskCancelled):
        result.result(10)
    assert result.status is TaskStatus.CANCELLED
    assert_agrees(result)
    # Status and Future agree: the Future says cancelled, not finished.
    assert Future.cancelled(result)
    with pytest.raises(TaskCancelled):
        result.exception(0)
    assert result.cancel() is True


def test_succeeded_and_failed(submit: t.Callable[..., TaskResult[t.Any]]) -> None:
    good = submit(int, "7")
    bad = submit(int, "x")
    assert good.result(10) == 7
    assert isinstance(bad.exception(10), ValueError)
    for result in (good, bad):
        assert_agrees(result)
        assert not Future.cancelled(result)
        assert result.cancel() is False  # finished: as Future.cancel()
    assert good.status is TaskStatus.SUCCEEDED
    assert bad.status is TaskStatus.FAILED


def test_timed_out_task_failed(app: Flask, bg: BGTasks, gate: Gate) -> None:
    @bg.task(timeout=0.05)
    def slow() -> None:
        gate()

    with app.app_context():
        result = slow.submit()
    assert isinstance(result.exception(10), TaskTimeout)
    assert result.status is TaskStatus.FAILED
    assert_agrees(result)
    gate.open()


def test_waiting_for_a_retry_is_queued_not_running(app: Flask, bg: BGTasks) -> None:
    failed_once = threading.Event()

    @bg.task(retries=1, retry_backoff=30)
    def flaky() -> str:
        if current_task.attempt == 1:
            failed_once.set()
            raise ConnectionError("try again")
        return "second"

    with app.app_context():
        result = flaky.submit()
    assert failed_once.wait(10)
    # The status turns queued as the retry's wait begins; the Future never
    # ran, so nothing can disagree meanwhile.
    wait_for(lambda: result.status is TaskStatus.QUEUED, 10, "the retry's wait")
    assert_agrees(result)
    assert not result.running() and not result.done()
    # cancel() ends the wait: cancelled, never retried.
    result.cancel()
    with pytest.raises(TaskCancelled):
        result.result(10)
    assert result.attempt == 1
    assert_agrees(result)


def test_ended_at_the_shutdown_deadline(make_app: t.Callable[..., Flask], gate: Gate) -> None:
    bg = BGTasks()
    app = Flask("deadline")
    app.config.update(BGTASKS_MAX_WORKERS=1)
    bg.init_app(app)
    with app.app_context():
        stuck = bg.submit(gate)
        gate.wait_entered()
        queued = bg.submit(int)
    callbacks: list[TaskResult[t.Any]] = []
    stuck.add_done_callback(callbacks.append)  # type: ignore[arg-type]
    summary = bg.shutdown(timeout=0.05)
    assert summary.interrupted == [stuck.id] and summary.cancelled == [queued.id]
    for result in (stuck, queued):
        assert result.status is TaskStatus.CANCELLED
        assert_agrees(result)
    assert callbacks == [stuck]
    done, not_done = wait([stuck, queued], timeout=10)
    assert done == {stuck, queued} and not not_done
    assert set(as_completed([stuck, queued], timeout=10)) == {stuck, queued}
    with pytest.raises(TaskCancelled, match="shutdown deadline"):
        stuck.result(0)
    gate.open()
    bg.shutdown()
    assert stuck.status is TaskStatus.CANCELLED  # its late return changes nothing


# -- done-callbacks -----------------------------------------------------


def test_callbacks_run_once_for_each_way_of_ending(
    submit: t.Callable[..., TaskResult[t.Any]], queued_cancelled: TaskResult[t.Any]
) -> None:
    calls: list[tuple[TaskResult[t.Any], TaskStatus]] = []
    arrived = threading.Condition()

    def record(future: Future[t.Any]) -> None:
        assert isinstance(future, TaskResult)
        with arrived:
            calls.append((future, future.status))
            arrived.notify_all()

    good = submit(int, "1")
    running, task = cancelled_while_running(submit)
    good.result(10)
    for result in (good, running, queued_cancelled):
        result.add_done_callback(record)
    task.go.set()
    # A Future wakes result() before it runs the callbacks: wait for them.
    with arrived:
        assert arrived.wait_for(lambda: len(calls) == 3, 10)
    assert {(id(result), status) for result, status in calls} == {
        (id(good), TaskStatus.SUCCEEDED),
        (id(running), TaskStatus.CANCELLED),
        (id(queued_cancelled), TaskStatus.CANCELLED),
    }
    assert len(calls) == 3


def test_callback_sees_the_final_status(submit: t.Callable[..., TaskResult[t.Any]]) -> None:
    seen: list[tuple[TaskStatus, bool]] = []
    called = threading.Event()
    running, task = cancelled_while_running(submit)

    def record(future: Future[t.Any]) -> None:
        seen.append((running.status, future.cancelled()))
        called.set()

    running.add_done_callback(record)
    task.go.set()
    assert called.wait(10)
    assert seen == [(TaskStatus.CANCELLED, True)]


# -- wait() -------------------------------------------------------------


def test_wait_all_completed_counts_a_queued_cancel_as_done(
    submit: t.Callable[..., TaskResult[t.Any]], queued_cancelled: TaskResult[t.Any]
) -> None:
    good = submit(int, "3")
    # Without a timeout this used to hang: the cancel never reached wait().
    done, not_done = wait([good, queued_cancelled], timeout=10)
    assert done == {good, queued_cancelled}
    assert not not_done


def test_wait_woken_by_a_cancel_during_the_call(
    submit: t.Callable[..., TaskResult[t.Any]], gate: Gate
) -> None:
    # Whether the cancel lands before or during the call, wait() sees it.
    blocked = submit(gate)
    gate.wait_entered()
    running, task = cancelled_while_running(submit)
    waiter = threading.Thread(target=task.go.set)
    waiter.start()
    done, not_done = wait([blocked, running], return_when=FIRST_COMPLETED, timeout=10)
    waiter.join()
    assert done == {running} and not_done == {blocked}
    assert running.cancelled()
    gate.open()


def test_first_exception_ignores_cancels_wherever_they_land(
    submit: t.Callable[..., TaskResult[t.Any]], gate: Gate
) -> None:
    # A task cancelled while running is a cancel, not an exception, for
    # FIRST_EXCEPTION, whether it ended before wait() or during it: wait()
    # returns when everything is done, and never early because of it.
    before, task_before = cancelled_while_running(submit)
    task_before.go.set()
    with pytest.raises(TaskCancelled):
        before.result(10)
    blocked = submit(gate)
    gate.wait_entered()
    during, task_during = cancelled_while_running(submit)

    def finish() -> None:
        task_during.go.set()
        with pytest.raises(TaskCancelled):
            during.result(10)
        gate.open()  # only once the cancelled task has ended

    finisher = threading.Thread(target=finish)
    finisher.start()
    done, not_done = wait([before, blocked, during], return_when=FIRST_EXCEPTION, timeout=10)
    finisher.join()
    assert done == {before, blocked, during}
    assert not not_done


def test_first_exception_returns_on_a_failure(
    submit: t.Callable[..., TaskResult[t.Any]], gate: Gate, queued_cancelled: TaskResult[t.Any]
) -> None:
    blocked = submit(gate)
    gate.wait_entered()
    bad = submit(int, "x")
    done, not_done = wait([queued_cancelled, blocked, bad], return_when=FIRST_EXCEPTION, timeout=10)
    assert done == {queued_cancelled, bad}
    assert not_done == {blocked}
    gate.open()


def test_first_exception_one_already_failed(
    submit: t.Callable[..., TaskResult[t.Any]], gate: Gate
) -> None:
    bad = submit(int, "x")
    bad.exception(10)
    blocked = submit(gate)
    gate.wait_entered()
    done, not_done = wait([bad, blocked], return_when=FIRST_EXCEPTION)
    assert done == {bad} and not_done == {blocked}
    gate.open()


def test_wait_first_completed_some_already_completed(
    submit: t.Callable[..., TaskResult[t.Any]], gate: Gate, queued_cancelled: TaskResult[t.Any]
) -> None:
    good = submit(int, "1")
    good.result(10)
    blocked = submit(gate)
    gate.wait_entered()
    done, not_done = wait([good, queued_cancelled, blocked], return_when=FIRST_COMPLETED)
    assert done == {good, queued_cancelled} and not_done == {blocked}
    gate.open()


def test_wait_timeout_leaves_the_running(
    submit: t.Callable[..., TaskResult[t.Any]], gate: Gate
) -> None:
    blocked = submit(gate)
    gate.wait_entered()
    good = submit(int, "2")
    good.result(10)
    done, not_done = wait([good, blocked], timeout=0.01, return_when=ALL_COMPLETED)
    assert done == {good} and not_done == {blocked}
    gate.open()


def test_wait_with_the_same_result_twice(
    submit: t.Callable[..., TaskResult[t.Any]], queued_cancelled: TaskResult[t.Any]
) -> None:
    good = submit(int, "5")
    done, not_done = wait([good, good, queued_cancelled, queued_cancelled], timeout=10)
    assert done == {good, queued_cancelled} and not not_done


# -- as_completed() -----------------------------------------------------


def test_as_completed_yields_every_kind(
    submit: t.Callable[..., TaskResult[t.Any]], queued_cancelled: TaskResult[t.Any]
) -> None:
    good = submit(int, "1")
    bad = submit(int, "x")
    running, task = cancelled_while_running(submit)
    task.go.set()
    seen = set(as_completed([good, bad, running, queued_cancelled], timeout=10))
    assert seen == {good, bad, running, queued_cancelled}


def test_as_completed_reports_the_unfinished_at_the_timeout(
    submit: t.Callable[..., TaskResult[t.Any]], gate: Gate, queued_cancelled: TaskResult[t.Any]
) -> None:
    blocked = submit(gate)
    gate.wait_entered()
    seen = []
    with pytest.raises(TimeoutError, match="1 \\(of 2\\) futures unfinished"):
        for future in as_completed([queued_cancelled, blocked], timeout=0.05):
            seen.append(future)
    assert seen == [queued_cancelled]
    gate.open()


def test_as_completed_with_duplicates(
    submit: t.Callable[..., TaskResult[t.Any]], queued_cancelled: TaskResult[t.Any]
) -> None:
    good = submit(int, "1")
    assert sorted(map(id, as_completed([good, good, queued_cancelled], timeout=10))) == sorted(
        map(id, [good, queued_cancelled])
    )


# -- Task.map() ---------------------------------------------------------


class Value:
    """A return value that a weak reference can follow."""


def test_map_keeps_no_reference_to_a_consumed_value(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate
) -> None:
    app = make_app("map", BGTASKS_MAX_WORKERS=1)

    @bg.task
    def make(_: int) -> Value:
        return Value()

    with app.app_context():
        values = make.map(range(2))
        first = next(values)
        # The one worker has left both tasks behind once it runs the gate.
        bg.submit(gate)
    gate.wait_entered()
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None, "map's iterator kept the value it had yielded"
    assert isinstance(next(values), Value)
    gate.open()
