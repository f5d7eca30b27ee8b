"""The Redis store against a real ``redis-server``: records, cancels across
processes, limits, the take-over of the tasks of dead processes, and the
errors for a Redis that is away, misnamed, or refuses the password."""

from __future__ import annotations

import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    ConfigError,
    PayloadTooLarge,
    StoreError,
    StoreUnavailable,
    TaskOptions,
    TaskStatus,
)
from flask_bgtasks._message import TaskMessage, TaskSnapshot, new_id
from flask_bgtasks.stores.redis import RedisStore
from tests.redis_server import RedisServer
from tests.servers import free_port, wait_for


def make_store(url: str, process: str = "a", **options: t.Any) -> RedisStore:
    settings: dict[str, t.Any] = dict(ttl=3600.0, max_results=100, lease=15.0)
    settings.update(options)
    return RedisStore(
        url,
        settings.pop("ttl"),
        settings.pop("max_results"),
        settings.pop("lease"),
        process=process,
        **settings,
    )


def snapshot(
    name: str = "job",
    *,
    durable: bool = False,
    args: tuple[t.Any, ...] = (1,),
    status: TaskStatus = TaskStatus.QUEUED,
    task_id: str | None = None,
    attempt: int = 0,
) -> TaskSnapshot:
    message = TaskMessage(
        task_id or new_id(),
        name,
        "default",
        args,
        {},
        TaskOptions(name=name),
        durable,
        time.time(),
    )
    started = time.time() if status is not TaskStatus.QUEUED else None
    finished = time.time() if status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED) else None
    return TaskSnapshot(message, status, attempt, None, (), False, started, finished)


@pytest.fixture
def store(redis_url: str) -> t.Iterator[RedisStore]:
    store = make_store(redis_url)
    yield store
    store.close()


def test_a_task_is_recorded_started_and_finished(store: RedisStore) -> None:
    queued = snapshot(args=(1, [2, 3]))
    store.add(queued)
    record = store.record(queued.message.id)
    assert record is not None
    assert (record.status, record.args, record.process) == (TaskStatus.QUEUED, [1, [2, 3]], "a")

    running = queued._replace(status=TaskStatus.RUNNING, attempt=1, started_at=time.time())
    assert store.started(running)
    store.changed(running._replace(progress={"current": 1, "total": 2, "message": "half"}))
    record = store.record(queued.message.id)
    assert record is not None
    assert (record.status, record.attempt) == (TaskStatus.RUNNING, 1)
    assert record.progress == {"current": 1, "total": 2, "message": "half"}

    done = running._replace(status=TaskStatus.SUCCEEDED, finished_at=time.time())
    assert store.check_value(done, {"total": 3}) is None
    store.finished(done, {"total": 3})
    record = store.record(queued.message.id)
    assert record is not None
    assert (record.status, record.result, record.done()) == (
        TaskStatus.SUCCEEDED,
        {"total": 3},
        True,
    )
    assert record.finished_at is not None and record.started_at is not None
    assert len(store) == 1
    assert [found.id for found in store.records()] == [queued.message.id]
    assert store.records(status=TaskStatus.RUNNING) == []


def test_records_are_newest_first_and_filtered(store: RedisStore) -> None:
    added = []
    for number in range(5):
        queued = snapshot(f"job{number}")
        store.add(queued)
        added.append(queued.message.id)
    finished = snapshot("job-done")
    store.add(finished)
    store.started(finished._replace(status=TaskStatus.RUNNING, attempt=1, started_at=time.time()))
    store.finished(finished._replace(status=TaskStatus.FAILED, attempt=1, finished_at=time.time()))
    assert [record.id for record in store.records(limit=3)] == [
        finished.message.id,
        added[4],
        added[3],
    ]
    assert [record.id for record in store.records(TaskStatus.FAILED)] == [finished.message.id]
    assert len(store.records(TaskStatus.QUEUED, limit=2)) == 2


def test_a_queued_task_cancelled_elsewhere_never_starts(redis_url: str, store: RedisStore) -> None:
    other = make_store(redis_url, process="b")
    try:
        queued = snapshot()
        store.add(queued)
        assert other.cancel(queued.message.id) is True
        record = other.record(queued.message.id)
        assert record is not None and record.status is TaskStatus.CANCELLED
        running = queued._replace(status=TaskStatus.RUNNING, attempt=1, started_at=time.time())
        assert store.started(running) is False
        # Its end in the owning process does not overwrite the cancel.
        store.finished(running._replace(status=TaskStatus.SUCCEEDED, finished_at=time.time()))
        record = other.record(queued.message.id)
        assert record is not None and record.status is TaskStatus.CANCELLED
    finally:
        other.close()


def test_a_running_task_cancelled_elsewhere_is_asked_to_stop(
    redis_url: str, store: RedisStore
) -> None:
    other = make_store(redis_url, process="b")
    try:
        queued = snapshot()
        store.add(queued)
        running = queued._replace(status=TaskStatus.RUNNING, attempt=1, started_at=time.time())
        assert store.started(running)
        assert store.cancel_requested(queued.message.id) is False
        assert other.cancel(queued.message.id) is False
        assert store.cancel_requested(queued.message.id) is True
        record = other.record(queued.message.id)
        assert record is not None
        assert (record.status, record.cancel_requested) == (TaskStatus.RUNNING, True)
        assert other.cancel("no-such-id") is False
    finally:
        other.close()


def test_max_results_keeps_the_newest_finished(redis_url: str) -> None:
    store = make_store(redis_url, max_results=2)
    try:
        ids = []
        for _ in range(4):
            queued = snapshot()
            store.add(queued)
            ids.append(queued.message.id)
            running = queued._replace(status=TaskStatus.RUNNING, attempt=1, started_at=time.time())
            store.started(running)
            store.finished(running._replace(status=TaskStatus.SUCCEEDED, finished_at=time.time()))
        assert len(store) == 2
        assert [store.record(task_id) is not None for task_id in ids] == [False, False, True, True]
    finally:
        store.close()


def test_purge_deletes_finished_records_only(store: RedisStore) -> None:
    queued = snapshot()
    store.add(queued)
    done = snapshot()
    store.add(done)
    running = done._replace(status=TaskStatus.RUNNING, attempt=1, started_at=time.time())
    store.started(running)
    store.finished(running._replace(status=TaskStatus.SUCCEEDED, finished_at=time.time() - 100))
    assert store.purge(50) == 1
    assert store.record(done.message.id) is None
    assert store.record(queued.message.id) is not None
    assert len(store) == 1


def test_arguments_over_the_limit_write_nothing(redis_url: str) -> None:
    store = make_store(redis_url, max_payload_bytes=100)
    try:
        with pytest.raises(PayloadTooLarge, match="positional argument 0"):
            store.add(snapshot(args=("x" * 200,)))
        assert len(store) == 0
    finally:
        store.close()


def test_an_engine_store_refuses_a_value_that_is_not_json(redis_url: str) -> None:
    store = make_store(redis_url, engine=True)
    try:
        done = snapshot(status=TaskStatus.SUCCEEDED)
        error = store.check_value(done, {1, 2})
        assert error is not None and "which is not JSON" in str(error)
        # Queued tasks wait in the engine, held by no process.
        queued = snapshot()
        store.add(queued)
        record = store.record(queued.message.id)
        assert record is not None and record.process is None
    finally:
        store.close()


def test_the_durable_tasks_of_a_dead_process_are_taken_over(redis_url: str) -> None:
    dead = make_store(redis_url, process="dead", lease=0.05)
    live = make_store(redis_url, process="live", lease=30.0)
    try:
        durable = snapshot("durable-job", durable=True)
        plain = snapshot("plain-job")
        for queued in (durable, plain):
            dead.add(queued)
            dead.started(queued._replace(status=TaskStatus.RUNNING, attempt=1, started_at=1.0))
        recovered = []

        def recover(record: t.Any) -> bool:
            recovered.append(record)
            return True

        live.activate(recover, lambda: ["durable-job"])

        # The dead process's leases end 0.05 s after they were written.
        def taken_over() -> bool:
            live.upkeep()
            return bool(recovered)

        wait_for(taken_over, 10, "the dead process's tasks to be taken over")
        assert [record.id for record in recovered] == [durable.message.id]
        taken = live.record(durable.message.id)
        assert taken is not None
        assert (taken.status, taken.process, taken.attempt) == (TaskStatus.QUEUED, "live", 1)
        lost = live.record(plain.message.id)
        assert lost is not None and lost.status is TaskStatus.FAILED
        assert lost.errors[-1]["type"] == "TaskLost"
        assert "dead stopped without finishing it" in lost.errors[-1]["message"]
    finally:
        dead.close()
        live.close()


def test_an_unreachable_redis_fails_at_init_app_naming_the_host_not_the_password(
    make_app: t.Callable[..., Flask],
) -> None:
    port = free_port()
    url = f"redis://user:s3cret-pw@127.0.0.1:{port}/0"
    with pytest.raises(StoreError) as caught:
        make_app(BGTASKS_STORE=url)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message and "***" in message


def test_a_wrong_password_is_refused_at_init_app(
    make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    with RedisServer(tmp_path, password="right-pw") as server:
        url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        with pytest.raises(StoreError, match="refused the user name or password") as caught:
            make_app(BGTASKS_STORE=url)
        assert "wrong-pw" not in str(caught.value)
        app = make_app("right", BGTASKS_STORE=server.url)
        assert len(app.extensions["bgtasks"].store(app)) == 0


def test_a_bad_redis_url_is_refused(make_app: t.Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="not a Redis URL") as caught:
        make_app(BGTASKS_STORE="redis://:pw-in-url@127.0.0.1:notaport/0")
    assert "pw-in-url" not in str(caught.value)


def test_redis_away_then_back(tmp_path: Path, bg: BGTasks) -> None:
    """Submit while Redis is away: a 503 error, nothing written; when it is
    back, the same app goes on without a restart."""
    with RedisServer(tmp_path) as server:
        app = Flask("away")
        app.config.update(BGTASKS_STORE=server.url, BGTASKS_MAX_WORKERS=1, BGTASKS_API=True)

        @bg.task
        def double(value: int) -> int:
            return value * 2

        bg.authorize(lambda record: True)
        bg.init_app(app)
        client = app.test_client()
        with app.app_context():
            first = double.submit(1)
            assert first.result(10) == 2
            assert client.get(f"/tasks/{first.id}").json["status"] == "succeeded"
            server.stop()
            with pytest.raises(StoreUnavailable, match="unavailable") as caught:
                double.submit(2)
            assert caught.value.code == 503
            response = client.get(f"/tasks/{first.id}")
            assert response.status_code == 503
            assert "Redis at redis://127.0.0.1" in response.get_data(as_text=True)
            server.start()  # empty: nothing was saved
            assert len(bg.store()) == 0
            assert double.submit(3).result(10) == 6
            assert len(bg.store()) == 1


def test_a_task_taken_over_for_an_engine_may_start_before_it_is_handed_over(
    redis_url: str,
) -> None:
    """A worker can start a re-queued task while the process that took it
    over has not returned from queueing it: the worker's start must win,
    and the task must keep the worker's lease."""
    dead = make_store(redis_url, process="dead", lease=0.05, engine=True)
    taker = make_store(redis_url, process="taker", engine=True)
    worker = make_store(redis_url, process="worker", engine=True)
    try:
        durable = snapshot("durable-job", durable=True)
        dead.add(durable)
        dead.started(durable._replace(status=TaskStatus.RUNNING, attempt=1, started_at=1.0))
        started = []

        def recover(record: t.Any) -> bool:
            # Queued in the engine, and a worker starts it at once.
            again = durable._replace(status=TaskStatus.RUNNING, attempt=2, started_at=1.0)
            started.append(worker.started(again))
            return True

        taker.activate(recover, lambda: ["durable-job"])

        def taken_over() -> bool:
            taker.upkeep()
            return bool(started)

        wait_for(taken_over, 10, "the dead process's task to be taken over")
        assert started == [True]
        running = taker.record(durable.message.id)
        assert running is not None
        assert (running.status, running.process, running.attempt) == (
            TaskStatus.RUNNING,
            "worker",
            2,
        )
        # Still leased by the worker: the next rounds leave it alone.
        taker.upkeep()
        record = taker.record(durable.message.id)
        assert record is not None and record.process == "worker"
    finally:
        for store in (dead, taker, worker):
            store.close()
