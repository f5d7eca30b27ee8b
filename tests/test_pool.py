from __future__ import annotations

import os
import threading
import typing as t

import pytest
from flask import Flask
from werkzeug.exceptions import ServiceUnavailable

from flask_bgtasks import BGTasks, BGTasksError, QueueFull, TaskStatus

from .servers import wait_for


def thread_name() -> str:
    return threading.current_thread().name


def test_threads_are_named_and_bounded(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app("named", BGTASKS_MAX_WORKERS=3)
    with app.app_context():
        blockers = [bg.submit(gate) for _ in range(3)]
        gate.wait_entered(3)
        workers = [t for t in threading.enumerate() if t.name.startswith("bgtasks-named-default-")]
        assert len(workers) == 3
        queued = bg.submit(thread_name)
        assert queued.status is TaskStatus.QUEUED
        # No fourth thread for the fourth task.
        assert len([t for t in threading.enumerate() if t.name.startswith("bgtasks-named-")]) == 3
    gate.open()
    assert queued.result(5) in {worker.name for worker in workers}
    for blocker in blockers:
        blocker.result(5)


def test_full_queue_raises_at_once(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1, BGTASKS_QUEUE_SIZE=2)
    with app.app_context():
        bg.submit(gate)
        gate.wait_entered()
        bg.submit(int)
        bg.submit(int)
        with pytest.raises(QueueFull) as info:
            bg.submit(int)
    error = info.value
    assert isinstance(error, BGTasksError)
    assert isinstance(error, ServiceUnavailable)
    assert error.code == 503
    assert "is full: 1 tasks running and 2 queued" in str(error)
    assert "BGTASKS_QUEUE_SIZE" in str(error)
    gate.open()
    assert bg.join(5)
    with app.app_context():  # room again
        assert bg.submit(int, "3").result(5) == 3


def test_unhandled_queue_full_in_a_view_is_a_503(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1, BGTASKS_QUEUE_SIZE=0)

    @app.post("/start")
    def start() -> tuple[str, int]:
        return bg.submit(gate).id, 202

    client = app.test_client()
    assert client.post("/start").status_code == 202
    gate.wait_entered()
    response = client.post("/start")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert b"is full" in response.data
    gate.open()


def test_named_pools_isolate_slow_tasks(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(
        "pools",
        BGTASKS_MAX_WORKERS=2,
        BGTASKS_POOLS={"slow": {"max_workers": 1, "queue_size": 1}},
    )
    slow = bg.task(pool="slow")(gate)
    fast = bg.task(thread_name)
    with app.app_context():
        slow.submit()
        gate.wait_entered()
        slow.submit()
        with pytest.raises(QueueFull, match="'pools-slow'"):
            slow.submit()
        # The slow pool is saturated; the default pool is not affected.
        assert fast.submit().result(5).startswith("bgtasks-pools-default-")
    gate.open()


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt, MemoryError])
def test_a_failing_task_never_kills_its_worker(
    make_app: t.Callable[..., Flask], bg: BGTasks, error: type[BaseException]
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)

    def fail() -> None:
        raise error("inside the task")

    with app.app_context():
        first = bg.submit(thread_name).result(5)
        failed = bg.submit(fail)
        with pytest.raises(error):
            failed.result(5)
        assert failed.status is TaskStatus.FAILED
        assert bg.submit(thread_name).result(5) == first  # same, living worker


def test_waiting_on_a_queued_task_inside_a_saturated_pool_runs_it_inline(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1, BGTASKS_QUEUE_SIZE=1)

    @bg.task
    def inner() -> str:
        return thread_name()

    @bg.task
    def outer() -> tuple[str, str]:
        # The only worker runs this task, so inner stays queued: waiting for
        # it from here must not deadlock.
        return thread_name(), inner.submit().result(5)

    with app.app_context():
        outer_thread, inner_thread = outer.submit().result(5)
    assert outer_thread == inner_thread
    assert bg.join(5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, 3.12+
def test_forked_child_starts_with_an_empty_pool(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1)
    runs: list[int] = []

    def count() -> int:
        runs.append(os.getpid())
        return os.getpid()

    with app.app_context():
        running = bg.submit(gate)
        gate.wait_entered()
        queued = bg.submit(count)
        queued_id = queued.id
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report on one line and leave without cleanup
        code = 1
        try:
            with app.app_context():
                lookup = bg.get(queued_id)
                value = bg.submit(count).result(5)
                report = f"{lookup is None} {value == os.getpid()} {runs == [os.getpid()]}"
            os.write(write_end, report.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "True True True"
    gate.open()
    assert queued.result(5) == os.getpid()
    assert running.result(5) is None
    assert runs == [os.getpid()]  # the parent's task ran once, in the parent


def test_an_idle_worker_is_reused_before_a_thread_starts(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_app("reuse", BGTASKS_MAX_WORKERS=4)
    # The pool's count of idle workers is private: a worker counts itself
    # idle a moment after the task's result is out, and the test waits for
    # that moment, which the public API does not show, before each submit.
    pool = bg._runtime(app).backend.pools["default"]  # type: ignore[attr-defined]

    def idle() -> bool:
        return bool(pool.idle_workers)

    names = set()
    with app.app_context():
        for _ in range(5):
            names.add(bg.submit(thread_name).result(5))
            wait_for(idle, 10, "the worker to wait for the next task")
    assert len(names) == 1
    assert [t.name for t in threading.enumerate() if t.name.startswith("bgtasks-reuse-")] == [
        names.pop()
    ]
