from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    ConfigError,
    ConfigTypeError,
    TaskOptions,
    TaskResult,
    TaskStatus,
    UsageError,
)
from flask_bgtasks._execution import Execution
from flask_bgtasks._message import TaskMessage
from flask_bgtasks.stores.memory import MemoryStore


def queued(store: MemoryStore, task_id: str) -> Execution:
    """A task of this process, kept by the store, not run by anyone."""
    message = TaskMessage(task_id, "t", "default", (), {}, TaskOptions(name="t"), False, 0.0)
    execution = Execution(message, int, None, None)
    store.keep(task_id, execution.handle)
    return execution


def finish(store: MemoryStore, execution: Execution) -> None:
    """End it, and tell the store, as the runtime does."""
    assert execution.claim()
    assert execution.end(TaskStatus.SUCCEEDED, None)
    store.finished(execution.snapshot())


def finished(store: MemoryStore, task_id: str) -> TaskResult[t.Any]:
    execution = queued(store, task_id)
    finish(store, execution)
    return execution.handle


def test_max_results_evicts_oldest_finished_first() -> None:
    store = MemoryStore(ttl=None, max_results=2)
    first, second, third = (finished(store, name) for name in ("a", "b", "c"))
    assert store.handle("a") is None
    assert store.handle("b") is second
    assert store.handle("c") is third
    assert len(store) == 2
    del first


def test_ttl_expires_finished_records() -> None:
    store = MemoryStore(ttl=0, max_results=100)
    finished(store, "a")
    assert store.handle("a") is None
    assert len(store) == 0


def test_unfinished_records_are_never_evicted() -> None:
    store = MemoryStore(ttl=0, max_results=0)
    waiting = queued(store, "q")
    finished(store, "done")
    assert store.handle("q") is waiting.handle
    assert store.handle("done") is None
    finish(store, waiting)
    assert store.handle("q") is None  # finished now, so the policy applies


def test_memory_stays_bounded_after_100000_tasks(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=2, BGTASKS_MAX_RESULTS=500, BGTASKS_QUEUE_SIZE=5000)
    store = bg.store(app)
    first_ids: list[str] = []
    with app.app_context():
        for batch in range(20):
            ids = [bg.submit(int).id for _ in range(5000)]  # reading the id records it
            if batch == 0:
                first_ids = ids[:10]
            assert bg.join(30)
            assert len(store) <= 500
        assert all(bg.get(task_id) is None for task_id in first_ids)
        assert bg.get(ids[-1]) is not None


class CountingStore(MemoryStore):
    """A store of one's own: here, the memory store counting its ids."""

    def __init__(self, app: Flask) -> None:
        super().__init__(ttl=None, max_results=100)
        self.app_name = app.name
        self.registered = 0

    def keep(self, task_id: str, handle: TaskResult[t.Any]) -> None:
        self.registered += 1
        super().keep(task_id, handle)


def counting_store(app: Flask) -> CountingStore:
    return CountingStore(app)


def not_a_store(app: Flask) -> dict[str, str]:
    return {}


def test_store_of_your_own_by_import_path(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    app = make_app(BGTASKS_STORE="tests.test_store:counting_store")
    store = bg.store(app)
    assert type(store).__name__ == "CountingStore" and store.app_name == "test_app"  # type: ignore[attr-defined]
    with app.app_context():
        result = bg.submit(int, "7")
        assert bg.get(result.id) is result
        assert result.result(5) == 7
    assert store.registered == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("tests.no_such_module:make", ConfigError, "can't be imported"),
        ("tests.test_store:no_such_function", ConfigError, "can't be imported"),
        ("tests.test_store:not_a_store", ConfigTypeError, "returned dict; it must return"),
    ],
)
def test_bad_store_import_path(
    make_app: t.Callable[..., Flask], path: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make_app(BGTASKS_STORE=path)


def store_url(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """BGTASKS_STORE for a store kind; Redis only when a test asks for it."""
    if store == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/tasks.db" if store == "sqlite" else store


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
def test_a_finished_task_runs_again_linked_to_the_first(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    store: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = store_url(store, tmp_path, request)
    calls = []

    @bg.task
    def fails_once(value: int, *, scale: int) -> int:
        calls.append(value)
        if len(calls) == 1:
            raise ValueError("the first time")
        return value * scale

    @bg.task
    def raw(value: object) -> None:
        pass

    app = make_app(BGTASKS_STORE=url)
    with app.app_context():
        first = fails_once.submit(2, scale=10)
        assert first.exception(10) is not None
        again = bg.retry(first.id)
        assert again.result(10) == 20
        record = again.record()
        assert (record.retry_of, record.args, record.kwargs) == (first.id, [2], {"scale": 10})
        assert bg.get(again.id) is not None and bg.get(again.id).record().retry_of == first.id
        with pytest.raises(UsageError, match="No task with id nope"):
            bg.retry("nope")
        opaque = raw.submit(object())
        opaque.result(10)
        with pytest.raises(UsageError, match="were not JSON"):
            bg.retry(opaque.id)


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
def test_stats_count_by_status_and_pool(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    gate: t.Any,
    store: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = store_url(store, tmp_path, request)

    @bg.task
    def quick(value: int) -> int:
        return value

    @bg.task(pool="slow")
    def held() -> None:
        gate()

    app = make_app(BGTASKS_STORE=url, BGTASKS_POOLS={"slow": {"max_workers": 1}})
    with app.app_context():
        for value in range(3):
            done = quick.submit(value)
            assert done.id  # the memory store keeps the tasks whose id was read
            done.result(10)
        quick.submit(3).result(10)  # one it does not keep: not counted there
        running = held.submit()
        queued = held.submit()
        gate.wait_entered(1)
        stats = bg.stats()
        finished = 3 if store == "memory" else 4
        assert stats.by_status["succeeded"] == finished
        assert (stats.by_status["running"], stats.by_status["queued"]) == (1, 1)
        assert stats.finished_last_minute == finished
        slow = stats.pools["slow"]
        assert (slow.queued, slow.running, slow.workers, slow.max_workers) == (1, 1, 1, 1)
        assert stats.pools["default"].queued == 0
        assert stats.to_dict()["pools"]["slow"]["running"] == 1
        assert (stats.store, stats.shared) == (url.partition(":")[0], store != "memory")
        gate.open()
        running.result(10)
        queued.result(10)
