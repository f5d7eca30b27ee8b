from __future__ import annotations

import typing as t

from flask import Flask

from flask_bgtasks import BGTasks, TaskResult
from flask_bgtasks.stores.memory import MemoryStore


def noop_job(result: TaskResult[t.Any]) -> None:
    result._succeed(None)


def finished(store: MemoryStore, name: str) -> TaskResult[t.Any]:
    result: TaskResult[t.Any] = TaskResult(name, noop_job)
    store.register(name, result)
    result._run(result._claim())  # type: ignore[arg-type]
    return result


def test_max_results_evicts_oldest_finished_first() -> None:
    store = MemoryStore(ttl=None, max_results=2)
    first, second, third = (finished(store, name) for name in ("a", "b", "c"))
    assert store.get("a") is None
    assert store.get("b") is second
    assert store.get("c") is third
    assert len(store) == 2
    del first


def test_ttl_expires_finished_records() -> None:
    store = MemoryStore(ttl=0, max_results=100)
    finished(store, "a")
    assert store.get("a") is None
    assert len(store) == 0


def test_unfinished_records_are_never_evicted() -> None:
    store = MemoryStore(ttl=0, max_results=0)
    queued: TaskResult[t.Any] = TaskResult("q", noop_job)
    store.register("q", queued)
    finished(store, "done")
    assert store.get("q") is queued
    assert store.get("done") is None
    queued.cancel()
    assert store.get("q") is None  # finished now, so the policy applies


def test_memory_stays_bounded_after_100000_tasks(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=2, BGTASKS_MAX_RESULTS=500, BGTASKS_QUEUE_SIZE=5000)
    store = bg._get_state(app).store
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
