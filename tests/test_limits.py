"""The limits on what stores keep: BGTASKS_MAX_PAYLOAD_BYTES for one task's
arguments, value and errors in a shared store, BGTASKS_MAX_RESULTS in every
store, and the ceiling on a pool's worker threads."""

from __future__ import annotations

import sqlite3
import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    ConfigError,
    ConfigTypeError,
    InvalidTaskError,
    TaskFailed,
    TaskStatus,
)
from flask_bgtasks._errors import PayloadTooLarge

from .conftest import Gate

MiB = 1024 * 1024


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "t.db")


def sqlite_app(make_app: t.Callable[..., Flask], db: str, **config: t.Any) -> Flask:
    return make_app(BGTASKS_STORE="sqlite:///" + db, **config)


def row_count(bg: BGTasks, app: Flask, db: str) -> int:
    """The rows another process sees, once ``app``'s writes are in."""
    bg.store(app).flush()
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM bgtasks_task").fetchone()[0])


def stored_outcome(bg: BGTasks, app: Flask, db: str, task_id: str) -> str | None:
    bg.store(app).flush()
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT outcome FROM bgtasks_task WHERE id = ?", (task_id,)).fetchone()
    return row[0]


# -- arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        # JSON adds the quotes, and the list's brackets.
        ((1, "x" * (2 * MiB)), {}, f"positional argument 1, {2 * MiB + 2} bytes"),
        ((1,), {"data": ["y" * (2 * MiB)]}, f"keyword argument 'data', {2 * MiB + 4} bytes"),
    ],
)
@pytest.mark.parametrize("durable", [False, True])
def test_arguments_over_the_limit_are_refused_naming_them(
    make_app: t.Callable[..., Flask],
    bg: BGTasks,
    db: str,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    named: str,
    durable: bool,
) -> None:
    app = sqlite_app(make_app, db)  # the default limit, 1 MiB
    ran = []

    @bg.task(durable=durable, name="limits.load")
    def load(*args: t.Any, **kwargs: t.Any) -> None:
        ran.append(args)

    with app.app_context():
        load.submit(0).result(10)  # the store is in use
        before = row_count(bg, app, db)
        with pytest.raises(PayloadTooLarge) as info:
            load.submit(*args, **kwargs)
        assert bg.join(10)
    message = str(info.value)
    assert named in message
    assert "too large for the task store" in message
    assert "BGTASKS_MAX_PAYLOAD_BYTES (1048576 bytes)" in message
    assert "not stored or queued" in message
    assert "Pass an id or a file path" in message
    assert isinstance(info.value, InvalidTaskError)
    assert isinstance(info.value, ValueError)
    assert row_count(bg, app, db) == before  # nothing written
    assert ran == [(0,)]  # nothing queued


def test_arguments_at_the_limit_are_stored(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    # '{"args":["' + text + '"],"kwargs":{}}' is the stored JSON: 25 bytes more.
    app = sqlite_app(make_app, db, BGTASKS_MAX_PAYLOAD_BYTES=1000)

    @bg.task
    def echo(text: str) -> int:
        return len(text)

    with app.app_context():
        assert echo.submit("x" * 975).result(10) == 975
        with pytest.raises(PayloadTooLarge, match="1001 bytes as JSON"):
            echo.submit("x" * 976)


# -- return values --------------------------------------------------------


def test_a_value_over_the_limit_fails_the_task_and_is_dropped(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    # '{"value":"' + text + '"}' is the stored JSON: 12 bytes more.
    app = sqlite_app(make_app, db, BGTASKS_MAX_PAYLOAD_BYTES=1000)

    @bg.task
    def make(size: int) -> str:
        return "x" * size

    with app.app_context():
        fits = make.submit(988)
        too_large = make.submit(989)
        assert fits.result(10) == "x" * 988
        error = too_large.exception(10)
        assert isinstance(error, PayloadTooLarge)
        assert "returned a str too large for the task store: 1001 bytes" in str(error)
        assert "The value was dropped" in str(error)
        assert too_large.status is TaskStatus.FAILED
        assert bg.join(10)
        stored = bg.get(too_large.id)
        # Not the live handle: the task has ended, so this one reads the store.
        assert stored is not None and stored is not too_large
        record = stored.record()
        assert record.status is TaskStatus.FAILED
        assert record.result is None and record.result_repr is None
        assert record.error is not None
        assert record.error["type"] == "flask_bgtasks.PayloadTooLarge"
        with pytest.raises(TaskFailed, match="too large for the task store"):
            stored.result(0)
    assert stored_outcome(bg, app, db, too_large.id) is None
    assert stored_outcome(bg, app, db, fits.id) == '{"value":"' + "x" * 988 + '"}'


def test_a_durable_task_returning_no_json_still_fails_as_before(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    app = sqlite_app(make_app, db)

    @bg.task(durable=True, name="limits.odd")
    def odd() -> object:
        return {1, 2}

    with app.app_context():
        error = odd.submit().exception(10)
    assert isinstance(error, InvalidTaskError)
    assert "returned set {1, 2}, which is not JSON (Object of type set" in str(error)


def test_none_turns_the_limit_off(make_app: t.Callable[..., Flask], bg: BGTasks, db: str) -> None:
    app = sqlite_app(make_app, db, BGTASKS_MAX_PAYLOAD_BYTES=None)

    @bg.task
    def double(text: str) -> str:
        return text * 2

    with app.app_context():
        result = double.submit("x" * (2 * MiB))
        assert result.result(10) == "x" * (4 * MiB)
        assert bg.join(10)
        record = bg.store().record(result.id)
    assert record is not None and record.args == ["x" * (2 * MiB)]
    assert record.result == "x" * (4 * MiB)


def test_the_memory_store_keeps_any_size(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    # It keeps the live objects, which cost nothing more to keep.
    app = make_app(BGTASKS_MAX_PAYLOAD_BYTES=10)

    @bg.task
    def double(text: str) -> str:
        return text * 2

    with app.app_context():
        assert double.submit("x" * 100).result(10) == "x" * 200


# -- errors ---------------------------------------------------------------


def test_an_error_over_the_limit_keeps_its_type_and_drops_its_text(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    app = sqlite_app(make_app, db, BGTASKS_MAX_PAYLOAD_BYTES=4000)
    attempts = []

    @bg.task(retries=1, retry_backoff=0)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("small")
        raise KeyError("k" * 5000)

    with app.app_context():
        result = flaky.submit()
        error = result.exception(10)
        assert bg.join(10)
        record = bg.store().record(result.id)
    # Here the exception is whole.
    assert isinstance(error, KeyError) and error.args == ("k" * 5000,)
    assert result.errors[-1]["message"] == repr("k" * 5000)
    assert record is not None and record.status is TaskStatus.FAILED
    first, last = record.errors
    assert (first["type"], first["message"], first["attempt"]) == ("ValueError", "small", 1)
    assert "ValueError: small" in first["traceback"]
    assert last["type"] == "KeyError" and last["attempt"] == 2
    assert last["message"].startswith("The error's message and traceback were too large")
    assert "over BGTASKS_MAX_PAYLOAD_BYTES, 4000 bytes" in last["message"]
    assert last["traceback"] == ""
    assert "kkkk" not in str(record.errors)


# -- config ---------------------------------------------------------------


def init(**config: t.Any) -> Flask:
    app = Flask("limits_test")
    app.config.update(config)
    BGTasks(app)
    return app


def test_max_payload_bytes_default_and_accepted_values() -> None:
    assert init().config["BGTASKS_MAX_PAYLOAD_BYTES"] == 1048576
    init(BGTASKS_MAX_PAYLOAD_BYTES=None)
    init(BGTASKS_MAX_PAYLOAD_BYTES=1)
    init(BGTASKS_MAX_WORKERS=256, BGTASKS_POOLS={"wide": {"max_workers": 256}})


@pytest.mark.parametrize(
    ("key", "value", "error", "words"),
    [
        ("BGTASKS_MAX_PAYLOAD_BYTES", 0, ConfigError, "at least 1, or None for no limit; got 0"),
        ("BGTASKS_MAX_PAYLOAD_BYTES", "1MB", ConfigTypeError, "whole number"),
        ("BGTASKS_MAX_PAYLOAD_BYTES", 1.5, ConfigTypeError, "got 1.5 (float)"),
        ("BGTASKS_MAX_PAYLOAD_BYTES", True, ConfigTypeError, "got True (bool)"),
        ("BGTASKS_MAX_WORKERS", 257, ConfigError, "must be at most 256; got 257"),
        ("BGTASKS_MAX_WORKERS", 10**6, ConfigError, "OS thread with its own stack"),
        (
            "BGTASKS_POOLS",
            {"wide": {"max_workers": 1000}},
            ConfigError,
            "BGTASKS_POOLS['wide']['max_workers'] must be at most 256; got 1000",
        ),
    ],
)
def test_bad_limits_are_rejected(
    key: str, value: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        init(**{key: value})
    assert key in str(info.value)
    assert words in str(info.value)
    if "max_workers" in key.lower() or "POOLS" in key:
        assert "run more processes" in str(info.value)


# -- BGTASKS_MAX_RESULTS ----------------------------------------------------


def test_memory_store_never_holds_more_finished_records_than_the_limit(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate
) -> None:
    """1,000 tasks, every other one with its id read, through one worker: as
    each task runs, the tasks before it have ended, so what the store shows
    is fixed. Two tasks of another pool, one running and one queued all
    along, are never evicted."""
    app = make_app(
        BGTASKS_MAX_WORKERS=1,
        BGTASKS_QUEUE_SIZE=None,
        BGTASKS_MAX_RESULTS=50,
        BGTASKS_RESULT_TTL=None,
        BGTASKS_POOLS={"hold": {"max_workers": 1}},
    )
    start = Gate()
    seen: dict[int, tuple[int, int]] = {}

    @bg.task
    def count(index: int) -> None:
        if index == 0:
            start()
        store = bg.store()
        # Reading every record is slow: every fifth task, and near the limit.
        if index % 5 == 0 or 95 <= index <= 105:
            done = sum(record.done() for record in store.records(limit=10_000))
            seen[index] = (done, len(store))

    @bg.task(pool="hold")
    def held() -> None:
        gate()

    with app.app_context():
        running, queued = held.submit(), held.submit()
        hold_ids = [running.id, queued.id]
        gate.wait_entered()
        try:
            results = [count.submit(index) for index in range(1000)]
            ids = [result.id for result in results[::2]]  # the odd ones are never read
            start.wait_entered()
        finally:
            start.open()
        results[-1].result(10)

        for index, (done, length) in seen.items():
            # Each id read belongs to an even index: those before this task
            # have finished, the others (and the two held ones) have not.
            finished_before = (index + 1) // 2
            unfinished = 500 - finished_before + 2
            assert done == min(50, finished_before), index
            assert length == min(50, finished_before) + unfinished, index
        assert len(seen) == len({*range(0, 1000, 5), *range(95, 106)})

        store = bg.store()
        assert len(store) == 50 + 2
        assert [bg.get(task_id) for task_id in hold_ids] == [running, queued]
        assert running.status is TaskStatus.RUNNING
        assert queued.status is TaskStatus.QUEUED
        assert all(bg.get(task_id) is None for task_id in ids[:-50])
        assert all(bg.get(task_id) is not None for task_id in ids[-50:])

        # Whoever waited for a task finds the limit applied when it wakes.
        gate.open()
        running.result(10)
        queued.result(10)
        assert len(store) == 50
        assert bg.get(ids[-50]) is None and bg.get(ids[-49]) is None
        # A done-callback added before the id was read runs before any the
        # store adds then: the store counted the task before either.
        last = count.submit(1000)
        called = threading.Event()
        lengths = []
        last.add_done_callback(lambda _: (lengths.append(len(bg.store())), called.set()))
        last_id = last.id
        last.result(10)
        assert called.wait(10)
        assert lengths == [50]
        assert len(store) == 50
        assert bg.get(ids[-48]) is None
        assert bg.get(last_id) is last


def test_sqlite_store_never_shows_more_finished_rows_than_the_limit(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate, db: str
) -> None:
    """As above, with every task a row: each batch of writes that finishes
    tasks ends by deleting the oldest finished rows over the limit, in the
    same transaction, so no reader sees more, even between two rounds of
    the upkeep (15 s apart here)."""
    app = sqlite_app(
        make_app,
        db,
        BGTASKS_MAX_WORKERS=1,
        BGTASKS_QUEUE_SIZE=None,
        BGTASKS_MAX_RESULTS=50,
        BGTASKS_RESULT_TTL=None,
        BGTASKS_POOLS={"hold": {"max_workers": 1}},
    )
    start = Gate()
    seen: dict[int, tuple[int, int]] = {}
    reader = sqlite3.connect(db, check_same_thread=False)  # used by one thread at a time

    @bg.task
    def count(index: int) -> None:
        if index == 0:
            start()
        store = bg.store()
        store.flush()  # the earlier tasks' ends are committed
        finished = reader.execute(
            "SELECT count(*) FROM bgtasks_task WHERE finished_at IS NOT NULL"
        ).fetchone()[0]
        seen[index] = (finished, len(store))

    @bg.task(pool="hold")
    def held() -> None:
        gate()

    try:
        with app.app_context():
            running, queued = held.submit(), held.submit()
            gate.wait_entered()
            try:
                results = [count.submit(index) for index in range(1000)]
                ids = [result.id for result in results]
                start.wait_entered()
            finally:
                start.open()
            results[-1].result(10)

            for index, (finished, length) in seen.items():
                assert finished == min(50, index), index
                assert length == min(50, index) + (1000 - index) + 2, index
            assert len(seen) == 1000

            store = bg.store()
            store.flush()
            assert len(store) == 50 + 2
            assert store.record(running.id).status is TaskStatus.RUNNING  # type: ignore[union-attr]
            assert store.record(queued.id).status is TaskStatus.QUEUED  # type: ignore[union-attr]
            assert all(store.record(task_id) is None for task_id in ids[:-50])
            assert all(store.record(task_id) is not None for task_id in ids[-50:])

            gate.open()
            assert bg.join(10)
            assert len(store) == 50
            assert store.record(ids[-50]) is None and store.record(ids[-49]) is None
            assert store.record(running.id) is not None
    finally:
        reader.close()


def test_sqlite_upkeep_applies_the_limit_to_rows_of_other_writers(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    """Rows finished by a writer that does not apply the limit (an older
    version, or a `flask bgtasks` command) are deleted by the next upkeep."""
    app = sqlite_app(make_app, db, BGTASKS_MAX_RESULTS=3, BGTASKS_RESULT_TTL=None)
    with app.app_context():
        assert bg.submit(int).result(10) == 0
        assert bg.join(10)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO bgtasks_task (id, name, pool, durable, arguments, status,"
            " submitted_at, finished_at) VALUES (?, 'n', 'default', 0, '{}', 'succeeded', ?, ?)",
            [(f"old{number}", number, number) for number in range(10)],
        )
    store = bg.store(app)
    assert len(store) == 11
    store.upkeep()
    assert len(store) == 3
    assert store.record("old9") is not None and store.record("old8") is not None
    assert store.record("old7") is None
