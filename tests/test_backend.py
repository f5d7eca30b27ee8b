"""A backend of one's own, behind the documented interface, chosen with
``BGTASKS_BACKEND``. The backend here is the one docs/architecture.rst shows."""

from __future__ import annotations

import threading
import time
import typing as t

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    ConfigError,
    ConfigTypeError,
    ShutdownError,
    TaskCancelled,
    TaskMessage,
    TaskStatus,
    current_task,
)
from flask_bgtasks.backends import Backend, Run
from tests.conftest import Gate


class ThreadPerTaskBackend(Backend):
    """Run each message on a thread of its own: no queue, no bound."""

    def __init__(self, pools: t.Mapping[str, t.Any], name: str, run: Run) -> None:
        super().__init__(pools, name, run)
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, message: TaskMessage) -> None:
        if message.pool not in self.pool_names:
            raise self.unknown_pool(message.pool)
        thread = threading.Thread(
            target=self._work, args=(message,), name=f"bgtasks-{self.name}", daemon=True
        )
        with self._lock:
            if self._closed:
                raise ShutdownError(f"{self.name!r} is shut down and accepts no new tasks.")
            self._threads.add(thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads.discard(thread)
            raise

    def _work(self, message: TaskMessage) -> None:
        try:
            self.run(message)  # the whole task: attempts, store events, its end
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def join(self, timeout: float | None = None) -> bool:
        return self.wait(None if timeout is None else time.monotonic() + timeout)

    def close(self, cancel_pending: bool = False) -> list[TaskMessage]:
        with self._lock:
            self._closed = True
        return []  # nothing ever waits in a queue here

    def wait(self, deadline: float | None = None) -> bool:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._lock:
            return not self._threads

    def stop(self) -> None:
        pass  # nothing is queued, so there is nothing left not to start


SPEC = "tests.test_backend:ThreadPerTaskBackend"


def test_a_backend_of_ones_own_runs_tasks_through_the_same_path(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate
) -> None:
    app = make_app(BGTASKS_BACKEND=SPEC)

    @bg.task(retries=1, retry_backoff=0)
    def flaky(n: int) -> int:
        current_task.set_progress(1, 2)
        if current_task.attempt == 1:
            raise ConnectionError("once")
        return n * 2

    @bg.task
    def held() -> None:
        gate()
        current_task.check_cancelled()

    with app.app_context():
        result = flaky.submit(21)
        assert result.result(5) == 42
        assert (result.attempt, result.progress) == (2, {"current": 1, "total": 2, "message": None})
        assert [error["type"] for error in result.errors] == ["ConnectionError"]
        running = held.submit()
        gate.wait_entered()
        assert running.status is TaskStatus.RUNNING
        assert running.cancel() is False
        gate.open()
        with pytest.raises(TaskCancelled):
            running.result(5)
        assert bg.get(running.id) is running
    summary = bg.shutdown(wait=True, timeout=5)
    assert summary.interrupted == [] and summary.cancelled == []
    with app.app_context(), pytest.raises(ShutdownError):
        flaky.submit(1)


def test_eager_mode_wins_over_the_backend(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    app = make_app(BGTASKS_BACKEND=SPEC, BGTASKS_EAGER=True)
    with app.app_context():
        result = bg.submit(threading.current_thread)
    assert result.done() and result.result(0) is threading.current_thread()


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (42, ConfigTypeError, "BGTASKS_BACKEND must be 'threads', 'rq', or the import path"),
        ("rq worker", ConfigError, "BGTASKS_BACKEND must be 'threads', 'rq', or the import path"),
        ("tests.no_such_module:Backend", ConfigError, "can't be imported"),
        ("tests.test_backend:SPEC", ConfigTypeError, "must be a subclass of"),
    ],
)
def test_a_bad_backend_is_refused_at_init_app(
    make_app: t.Callable[..., Flask], value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make_app(BGTASKS_BACKEND=value)
