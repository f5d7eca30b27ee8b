"""What travels: task ids, :class:`TaskMessage` and :class:`TaskSnapshot`."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import threading
import time
import typing as t
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    InvalidTaskError,
    TaskMessage,
    TaskOptions,
    TaskSnapshot,
    TaskStatus,
    _message,
)
from flask_bgtasks._message import check_json, new_id
from tests.test_fork import in_child

ID = re.compile(r"[A-Za-z0-9_-]{24}")

#: Seconds a forked child may take; far more than it needs.


def make_message(*args: t.Any, **kwargs: t.Any) -> TaskMessage:
    options = TaskOptions(name="tests.message", durable=True)
    return TaskMessage(
        new_id(), options.name, options.pool, args, kwargs, options, True, time.time()
    )


# -- ids ------------------------------------------------------------------


def test_ids_are_unique_url_safe_and_never_an_option() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        assert ID.fullmatch(task_id), task_id
        assert not task_id.startswith("-"), task_id


def test_ids_made_in_many_threads_at_once_are_unique() -> None:
    threads_count, per_thread = 8, 2_000
    barrier = threading.Barrier(threads_count)
    made: list[list[str]] = [[] for _ in range(threads_count)]

    def make(into: list[str]) -> None:
        barrier.wait(10)  # all start together, to contend for the same batch
        into.extend(new_id() for _ in range(per_thread))

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    ids = [task_id for into in made for task_id in into]
    assert len(ids) == threads_count * per_thread
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="os.fork on Linux only")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, 3.12+
def test_forked_child_never_gets_the_ids_its_parent_hands_out() -> None:
    # The parent holds ids made ahead; a child that kept them would hand out
    # the very ids its parent hands out next.
    new_id()
    while not _message._ids:
        new_id()
    count = 200
    child_ids = in_child(lambda: "\n".join(new_id() for _ in range(count))).split("\n")
    parent_ids = [new_id() for _ in range(count)]
    assert len(child_ids) == count
    assert all(ID.fullmatch(task_id) for task_id in child_ids)
    assert not set(child_ids) & set(parent_ids)


# -- messages and snapshots -------------------------------------------------


def test_message_is_immutable_plain_data() -> None:
    message = make_message(1, "two", flag=True)
    assert isinstance(message, tuple)
    with pytest.raises(AttributeError):
        message.attempt = 3  # type: ignore[misc]
    again = message._replace(attempt=3)
    assert (message.attempt, again.attempt) == (0, 3)
    assert again.id == message.id
    assert message.args == (1, "two")
    assert message.kwargs == {"flag": True}
    assert message.errors == ()


def test_snapshot_is_immutable_plain_data() -> None:
    message = make_message(5)
    snapshot = TaskSnapshot(message, TaskStatus.QUEUED, 0, None, (), False, None, None)
    assert snapshot.released is False
    with pytest.raises(AttributeError):
        snapshot.status = TaskStatus.RUNNING  # type: ignore[misc]
    record = snapshot.record("host:1")
    assert record.id == message.id
    assert record.status is TaskStatus.QUEUED
    assert record.args == [5]
    assert record.process == "host:1"
    assert record.submitted_at == datetime.fromtimestamp(message.submitted_at, UTC)


def test_to_json_round_trips() -> None:
    message = make_message(1, "two", [3.5, None], when="2024-01-01", nested={"a": [1]})
    message = message._replace(
        attempt=2, errors=({"attempt": 1, "type": "KeyError"},), retry_of="earlier-id"
    )
    data = json.loads(message.to_json())
    assert data == {
        "id": message.id,
        "name": "tests.message",
        "pool": "default",
        "args": [1, "two", [3.5, None]],
        "kwargs": {"when": "2024-01-01", "nested": {"a": [1]}},
        "durable": True,
        "submitted_at": message.submitted_at,
        "attempt": 2,
        "errors": [{"attempt": 1, "type": "KeyError"}],
        "retry_of": "earlier-id",
    }
    # The options travel as the name: the worker has the same task declared.
    assert "options" not in data
    assert TaskMessage.from_json(message.to_json(), lambda name: message.options) == message


def test_check_json_accepts_json_arguments() -> None:
    check_json(make_message())
    check_json(make_message(1, 2.5, "x", None, True, [1, {"a": [None]}], key={"b": 1}))


def test_check_json_names_a_positional_argument_and_its_type() -> None:
    message = make_message(0, object(), "after")
    with pytest.raises(
        InvalidTaskError, match=r"Argument 1 of durable task 'tests.message'"
    ) as caught:
        check_json(message)
    assert "is object <object object at" in str(caught.value)
    with pytest.raises(InvalidTaskError, match="Argument 1 "):
        message.to_json()


def test_check_json_names_a_keyword_argument_and_its_type() -> None:
    message = make_message(1, when=datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidTaskError) as caught:
        check_json(message)
    text = str(caught.value)
    assert text.startswith("Argument 'when' of durable task 'tests.message' is datetime ")
    assert "not JSON" in text


def test_check_json_finds_a_value_deep_inside() -> None:
    message = make_message([1, {"ok": 2, "bad": {3}}])
    with pytest.raises(InvalidTaskError, match="Argument 0 .* is list "):
        check_json(message)


def count_rows(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM bgtasks_task").fetchone()[0])


def test_durable_submit_with_a_non_json_argument_writes_nothing(
    make_app: t.Callable[..., Flask], bg: BGTasks, tmp_path: Path
) -> None:
    db = str(tmp_path / "tasks.db")
    app = make_app(BGTASKS_STORE="sqlite:///" + db)

    @bg.task(durable=True, name="tests.message.remind")
    def remind(user_id: int, when: object = None) -> int:
        return user_id

    with app.app_context():
        with pytest.raises(InvalidTaskError) as caught:
            remind.submit(7, when=datetime(2024, 1, 1, tzinfo=UTC))
        bg.store().flush()
        assert "Argument 'when' of durable task 'tests.message.remind' is datetime" in str(
            caught.value
        )
        assert count_rows(db) == 0
        assert bg.store().records() == []
        # The same task with JSON arguments is written, and runs.
        result = remind.submit(7, when="2024-01-01")
        assert result.result(10) == 7
        assert bg.join(10)
    assert count_rows(db) == 1
