"""The SQLite store, in this process and through other processes using the
same file."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    ConfigError,
    InvalidTaskError,
    StoredResult,
    StoreError,
    TaskCancelled,
    TaskFailed,
    TaskStatus,
    UsageError,
    current_task,
)

from .conftest import Gate
from .servers import wait_for

OTHER_PROCESS = """
import sys
from flask import Flask
from flask_bgtasks import BGTasks
app = Flask("other")
app.config["BGTASKS_STORE"] = "sqlite:///" + sys.argv[1]
bg = BGTasks(app)
with app.app_context():
    task = bg.get(sys.argv[2])
    print(task.status.value if task else "missing", task.cancel() if task else "")
"""


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


@pytest.fixture
def store_app(make_app: t.Callable[..., Flask], db: str) -> Flask:
    return make_app(BGTASKS_STORE="sqlite:///" + db, BGTASKS_STORE_LEASE=0.3)


def rows(db: str, app: Flask | None = None) -> dict[str, sqlite3.Row]:
    """The rows, as another process sees them once ``app``'s writes are in."""
    if app is not None:
        app.extensions["bgtasks"].store(app).flush()
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {row["id"]: row for row in conn.execute("SELECT * FROM bgtasks_task")}


def in_other_process(db: str, task_id: str) -> str:
    """Look the task up and cancel it from another process."""
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, db, task_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_every_task_is_recorded_at_submit(
    store_app: Flask, bg: BGTasks, gate: Gate, db: str
) -> None:
    @bg.task
    def hold(number: int, label: str = "") -> int:
        gate()
        return number * 2

    with store_app.app_context():
        result = hold.submit(21, label="x")
        gate.wait_entered()
        row = rows(db, store_app)[result.id]
        assert row["name"] == hold.name
        assert row["status"] == "running"
        assert json.loads(row["arguments"]) == {"args": [21], "kwargs": {"label": "x"}}
        assert row["owner"] == f"{socket.gethostname()}:{os.getpid()}"
        assert row["attempt"] == 1
        gate.open()
        assert result.result(5) == 42
        record = bg.store().record(result.id)
    assert record is not None
    assert record.status is TaskStatus.SUCCEEDED
    assert record.result == 42
    assert record.args == [21] and record.kwargs == {"label": "x"}
    assert record.submitted_at <= record.started_at <= record.finished_at  # type: ignore[operator]


def test_get_returns_the_stored_truth(store_app: Flask, bg: BGTasks) -> None:
    @bg.task
    def report(pages: int) -> dict[str, int]:
        for page in range(pages):
            current_task.set_progress(page + 1, pages, f"page {page + 1}")
        return {"pages": pages}

    @bg.task
    def broken() -> None:
        raise KeyError("missing")

    @bg.task
    def opaque() -> object:
        return object()

    with store_app.app_context():
        ok, bad, odd = report.submit(3), broken.submit(), opaque.submit()
        bg.join(10)
        found = bg.get(ok.id)
        assert isinstance(found, StoredResult)
        assert found.status is TaskStatus.SUCCEEDED
        assert found.progress == {"current": 3, "total": 3, "message": "page 3"}
        assert found.result(1) == {"pages": 3}
        failed = bg.get(bad.id)
        assert failed is not None
        with pytest.raises(TaskFailed, match="KeyError: 'missing'") as info:
            failed.result(1)
        assert info.value.type == "KeyError"
        assert "raise KeyError" in info.value.record.errors[-1]["traceback"]
        stored_odd = bg.get(odd.id)
        assert stored_odd is not None
        with pytest.raises(UsageError, match="not JSON"):
            stored_odd.result(1)
        assert stored_odd.record().result_repr.startswith("<object object")  # type: ignore[union-attr]
        assert bg.get("no-such-id") is None


def test_another_process_sees_and_cancels_a_queued_task(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate, db: str
) -> None:
    app = make_app(BGTASKS_STORE="sqlite:///" + db, BGTASKS_MAX_WORKERS=1)
    ran = []

    @bg.task
    def hold() -> None:
        gate()

    @bg.task
    def later() -> None:
        ran.append(True)

    with app.app_context():
        busy = hold.submit()
        gate.wait_entered()
        queued = later.submit()
        bg.store().flush()  # as a request does before its response leaves
        assert in_other_process(db, queued.id) == "queued True"
        assert rows(db)[queued.id]["status"] == "cancelled"
        gate.open()
        busy.result(5)
        with pytest.raises(TaskCancelled):
            queued.result(5)
    assert ran == []
    assert rows(db)[queued.id]["status"] == "cancelled"


def test_another_process_cancels_a_running_task(store_app: Flask, bg: BGTasks, db: str) -> None:
    entered = threading.Event()

    @bg.task
    def loop() -> None:
        entered.set()
        while True:
            current_task.check_cancelled()
            threading.Event().wait(0.01)  # a unit of the task's own work

    with store_app.app_context():
        result = loop.submit()
        assert entered.wait(5)
        bg.store().flush()
        assert in_other_process(db, result.id) == "running False"
        with pytest.raises(TaskCancelled):
            result.result(10)
        assert result.status is TaskStatus.CANCELLED
    row = rows(db, store_app)[result.id]
    assert (row["status"], row["cancel_requested"]) == ("cancelled", 1)


def test_refused_submit_leaves_no_record(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate, db: str
) -> None:
    app = make_app(BGTASKS_STORE="sqlite:///" + db, BGTASKS_MAX_WORKERS=1, BGTASKS_QUEUE_SIZE=0)

    @bg.task
    def hold() -> None:
        gate()

    with app.app_context():
        first = hold.submit()
        with pytest.raises(Exception, match="is full"):
            hold.submit()
        gate.open()
        first.result(5)
    assert list(rows(db, app)) == [first.id]


def test_relative_path_is_in_the_instance_folder(
    make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(BGTASKS_STORE="sqlite:///sub/tasks.db")
    assert app.instance_path  # Flask's default, next to this module
    app2 = Flask("relative", instance_path=str(tmp_path / "instance"))
    app2.config["BGTASKS_STORE"] = "sqlite:///sub/tasks.db"
    bg2 = BGTasks(app2)
    assert (tmp_path / "instance" / "sub" / "tasks.db").exists()
    bg2.shutdown()
    del app


@pytest.mark.parametrize(
    ("value", "error"),
    [("sqlite://tasks.db", ConfigError), ("postgres://x", ConfigError), (3, TypeError)],
)
def test_bad_store_setting(
    make_app: t.Callable[..., Flask], value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="BGTASKS_STORE must be 'memory', or 'sqlite:///tasks.db'"):
        make_app(BGTASKS_STORE=value)


def test_corrupt_file_fails_at_init_app(make_app: t.Callable[..., Flask], db: str) -> None:
    Path(db).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="can't use the SQLite file .*tasks.db.*move it"):
        make_app(BGTASKS_STORE="sqlite:///" + db)


def test_folder_that_is_a_file_fails_at_init_app(
    make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="Make sure its folder exists"):
        make_app(BGTASKS_STORE="sqlite:///" + str(tmp_path / "file" / "tasks.db"))


# -- durable tasks --------------------------------------------------------


def test_durable_arguments_must_be_json(store_app: Flask, bg: BGTasks, db: str) -> None:
    @bg.task(durable=True, name="tests.send")
    def send(user_id: int, options: object = None) -> None: ...

    with store_app.app_context():
        with pytest.raises(InvalidTaskError, match=r"Argument 'options' of durable task .*set"):
            send.submit(1, options={1, 2})
        with pytest.raises(InvalidTaskError, match="Argument 0 of durable task"):
            send.submit(object())
    assert rows(db) == {}  # nothing half-written


def test_durable_return_value_must_be_json(store_app: Flask, bg: BGTasks) -> None:
    @bg.task(durable=True, name="tests.make")
    def make() -> object:
        return {1, 2}

    with store_app.app_context():
        result = make.submit()
        with pytest.raises(InvalidTaskError, match="returned set .* not JSON"):
            result.result(5)
        assert bg.get(result.id).record().error["type"] == "flask_bgtasks.InvalidTaskError"  # type: ignore[union-attr]


def test_durable_task_needs_a_stable_name(bg: BGTasks) -> None:
    with pytest.raises(InvalidTaskError, match="stable name"):
        bg.task(durable=True)(lambda: None)
    with pytest.raises(InvalidTaskError, match="copy the request"):

        @bg.task(durable=True, copy_request=True, name="copying")
        def copying() -> None: ...


def test_durable_needs_a_shared_store(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    with pytest.raises(ConfigError, match="BGTASKS_DURABLE is True"):
        make_app(BGTASKS_DURABLE=True)
    app = make_app("memory")

    @bg.task(durable=True, name="tests.durable_needs_store")
    def job() -> None: ...

    with app.app_context(), pytest.raises(UsageError, match="BGTASKS_STORE is 'memory'"):
        job.submit()


def test_durable_name_taken_by_another_task(store_app: Flask, bg: BGTasks) -> None:
    @bg.task(durable=True, name="tests.same")
    def first() -> None: ...

    @bg.task(durable=True, name="tests.same")
    def second() -> None: ...

    with store_app.app_context():
        with pytest.raises(InvalidTaskError, match="same name"):
            first.submit()
        second.submit().result(5)


def dead_row(db: str, task_id: str, name: str, durable: bool, args: list[t.Any]) -> None:
    """A row as a process that died while running the task left it."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO bgtasks_task (id, name, pool, durable, arguments, status, attempt,"
            " owner, lease_until, submitted_at, started_at)"
            " VALUES (?, ?, 'default', ?, ?, 'running', 1, 'gone:1', ?, ?, ?)",
            (
                task_id,
                name,
                int(durable),
                json.dumps({"args": args, "kwargs": {}}),
                time.time() - 1,
                time.time() - 5,
                time.time() - 4,
            ),
        )


def test_durable_task_of_a_dead_process_runs_again(store_app: Flask, bg: BGTasks, db: str) -> None:
    attempts = []

    @bg.task(durable=True, name="tests.resume")
    def resume(number: int) -> int:
        attempts.append(current_task.attempt)
        return number + 1

    dead_row(db, "dead-durable", "tests.resume", True, [41])
    dead_row(db, "dead-plain", "tests.plain", False, [])
    # A request starts the upkeep, as in a freshly started server worker.
    store_app.test_client().get("/")
    with store_app.app_context():
        found = bg.get("dead-durable")
        assert found is not None
        assert found.result(10) == 42
        assert found.attempt == 2
        lost = bg.get("dead-plain")
        assert lost is not None
        with pytest.raises(TaskFailed, match="TaskLost: The process gone:1 stopped"):
            lost.result(10)
    assert attempts == [2]


def test_tasks_of_a_live_process_are_never_taken(
    store_app: Flask, bg: BGTasks, gate: Gate, db: str
) -> None:
    from flask_bgtasks.stores.sqlite import SQLiteStore

    @bg.task(durable=True, name="tests.held")
    def held() -> None:
        gate()

    with store_app.app_context():
        result = held.submit()
        gate.wait_entered()
    # Another process's store (another owner), which knows the task too.
    other = SQLiteStore(db, None, 100, lease=0.3, process="other:2")
    taken = []
    other._recover, other._task_names = taken.append, lambda: ["tests.held"]  # type: ignore[method-assign,assignment]
    first_lease = rows(db, store_app)[result.id]["lease_until"]
    # Well past the first lease: our upkeep keeps renewing it meanwhile.
    wait_for(lambda: rows(db)[result.id]["lease_until"] > first_lease + 0.6, 10, "lease renewals")
    other.upkeep()
    assert taken == []
    assert rows(db)[result.id]["owner"] != "other:2"
    gate.open()
    result.result(5)
    other.close()


def test_shutdown_releases_durable_tasks_to_the_next_process(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate, db: str
) -> None:
    config = {"BGTASKS_STORE": "sqlite:///" + db, "BGTASKS_MAX_WORKERS": 1}
    app = make_app("first", **config)
    done = []

    @bg.task(durable=True, name="tests.later")
    def later(n: int) -> int:
        done.append(n)
        return n

    @bg.task
    def hold() -> None:
        gate()

    with app.app_context():
        hold.submit()
        gate.wait_entered()
        queued = [later.submit(n) for n in range(3)]
    summary = bg.shutdown(wait=False, cancel_pending=True)
    gate.open()
    bg.shutdown()
    assert sorted(summary.released) == sorted(result.id for result in queued)
    assert summary.cancelled == []
    assert done == []
    for result in queued:
        row = rows(db)[result.id]
        assert (row["status"], row["owner"], row["lease_until"]) == ("queued", None, 0)
    # The next process (here: a new app and extension on the same file).
    bg2 = BGTasks()
    app2 = Flask("second")
    app2.config.update(config)
    bg2.init_app(app2)
    bg2.task(durable=True, name="tests.later")(later.fn)
    app2.test_client().get("/")
    with app2.app_context():
        assert [bg2.get(result.id).result(10) for result in queued] == [0, 1, 2]  # type: ignore[union-attr]
    bg2.shutdown()


# -- records over time ----------------------------------------------------


def test_expired_records_disappear(make_app: t.Callable[..., Flask], bg: BGTasks, db: str) -> None:
    app = make_app(BGTASKS_STORE="sqlite:///" + db, BGTASKS_RESULT_TTL=0)
    with app.app_context():
        result = bg.submit(int)
        result.result(5)
        assert bg.get(result.id) is None  # at once, before the upkeep deletes it
    bg.store(app).upkeep()  # type: ignore[attr-defined]
    assert rows(db) == {}


def test_max_results_keeps_the_newest(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    app = make_app(BGTASKS_STORE="sqlite:///" + db, BGTASKS_MAX_RESULTS=3)
    with app.app_context():
        results = [bg.submit(int) for _ in range(10)]
        bg.join(10)
    bg.store(app).upkeep()  # type: ignore[attr-defined]
    newest = sorted(results, key=lambda result: result.finished_at.timestamp())[-3:]  # type: ignore[union-attr]
    assert set(rows(db)) == {result.id for result in newest}
    assert len(bg.store(app)) == 3


def test_upkeep_thread_stops_at_shutdown(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    app = make_app(BGTASKS_STORE="sqlite:///" + db)
    app.test_client().get("/")
    names = [thread.name for thread in threading.enumerate()]
    assert any(name.startswith("bgtasks-store-") for name in names)
    bg.shutdown()
    assert not any(thread.name.startswith("bgtasks-store-") for thread in threading.enumerate())


def test_cancelled_task_of_a_dead_process_is_not_run_again(
    store_app: Flask, bg: BGTasks, db: str
) -> None:
    ran = []

    @bg.task(durable=True, name="tests.unwanted")
    def unwanted() -> None:
        ran.append(True)

    dead_row(db, "dead-cancelled", "tests.unwanted", True, [])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE bgtasks_task SET cancel_requested = 1")
    store_app.test_client().get("/")
    with store_app.app_context():
        found = bg.get("dead-cancelled")
        assert found is not None
        with pytest.raises(TaskCancelled):
            found.result(10)
    assert ran == []


def test_memory_results_have_records_too(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        result = bg.submit(divmod, 7, 2)
        assert result.result(5) == (3, 1)
    record = result.record()
    assert (record.id, record.status, record.result, record.attempt) == (
        result.id,
        TaskStatus.SUCCEEDED,
        (3, 1),
        1,
    )


@pytest.mark.parametrize("asked_to_stop", [False, True])
def test_deadline_releases_durable_tasks_unless_asked_to_stop(
    store_app: Flask, bg: BGTasks, gate: Gate, db: str, asked_to_stop: bool
) -> None:
    @bg.task(durable=True, name="tests.stuck")
    def stuck() -> None:
        current_task.set_progress(1)
        gate()

    with store_app.app_context():
        result = stuck.submit()
        gate.wait_entered()
    if asked_to_stop:
        assert result.cancel() is False
    summary = bg.shutdown(timeout=0.1)
    if asked_to_stop:
        assert (summary.interrupted, summary.released) == ([result.id], [])
    else:
        assert (summary.interrupted, summary.released) == ([], [result.id])
    row = rows(db)[result.id]
    if asked_to_stop:
        assert (row["status"], row["cancel_requested"]) == ("cancelled", 1)
    else:
        # Ending it set its own cancel flag; that is no request to stop.
        assert (row["status"], row["owner"], row["cancel_requested"]) == ("queued", None, 0)
        assert json.loads(row["errors"]) == []  # not a failure of the task


def held_write_lock(db: str) -> sqlite3.Connection:
    """Another process's transaction, which holds the file's write lock."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


@pytest.mark.parametrize("durable", [False, True])
def test_submit_is_in_the_file_before_the_response_leaves(
    store_app: Flask, bg: BGTasks, db: str, durable: bool
) -> None:
    @bg.task(durable=durable, name="tests.written")
    def written() -> None: ...

    @store_app.post("/submit")
    def submit() -> dict[str, str]:
        return {"id": written.submit().id}

    client = store_app.test_client()
    client.get("/")  # starts the writer thread, as a server's first request does
    answers: list[str] = []
    lock = held_write_lock(db)
    thread = threading.Thread(target=lambda: answers.append(client.post("/submit").json["id"]))  # type: ignore[index]
    thread.start()
    try:
        # While another process holds the write lock, the task can't be
        # committed, so the response does not leave.
        thread.join(0.5)
        assert thread.is_alive() and answers == []
    finally:
        lock.execute("COMMIT")
        lock.close()
    thread.join(10)
    assert set(rows(db)) == set(answers)  # read without waiting for anything
    bg.join(5)


def counted_and_real(db: str) -> tuple[int, int]:
    """The count of finished rows the triggers keep, and the real one."""
    with sqlite3.connect(db) as conn:
        counted = conn.execute("SELECT value FROM bgtasks_count WHERE name = 'finished'").fetchone()
        real = conn.execute("SELECT count(*) FROM bgtasks_task WHERE finished_at IS NOT NULL")
        return counted[0], real.fetchone()[0]


def test_the_count_of_finished_rows_stays_exact(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    app = make_app(BGTASKS_STORE="sqlite:///" + db, BGTASKS_MAX_RESULTS=5, BGTASKS_RESULT_TTL=None)
    with app.app_context():
        for _ in range(12):
            bg.submit(int).result(10)
        queued = bg.submit(int)
        assert bg.join(10)
        assert counted_and_real(db) == (5, 5)
        assert bg.store().purge(0) == 5
        assert counted_and_real(db) == (0, 0)
        assert queued.done()


def test_a_schema_1_file_is_upgraded_with_its_count(
    make_app: t.Callable[..., Flask], bg: BGTasks, db: str
) -> None:
    # A file as version 1 wrote it: the table, finished rows, no count.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE bgtasks_task (id TEXT PRIMARY KEY, name TEXT NOT NULL, pool TEXT"
            " NOT NULL, durable INTEGER NOT NULL, arguments TEXT NOT NULL, status TEXT NOT"
            " NULL, progress TEXT, outcome TEXT, errors TEXT NOT NULL DEFAULT '[]', attempt"
            " INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0, owner"
            " TEXT, lease_until REAL NOT NULL DEFAULT 0, submitted_at REAL NOT NULL,"
            " started_at REAL, finished_at REAL)"
        )
        conn.executemany(
            "INSERT INTO bgtasks_task (id, name, pool, durable, arguments, status,"
            " submitted_at, finished_at) VALUES (?, 'n', 'default', 0, '{}', 'succeeded', ?, ?)",
            [(f"old{number}", number, number) for number in range(4)],
        )
        conn.execute("PRAGMA user_version = 1")
    app = make_app(BGTASKS_STORE="sqlite:///" + db, BGTASKS_MAX_RESULTS=3, BGTASKS_RESULT_TTL=None)
    assert counted_and_real(db) == (4, 4)
    with app.app_context():
        bg.submit(int).result(10)
        assert bg.join(10)
    # Its end applied the limit, in the same transaction, from the count.
    assert counted_and_real(db) == (3, 3)
    assert "old0" not in rows(db) and "old1" not in rows(db)
    with sqlite3.connect(db) as conn:
        # Schema 3 added the column retry_of to the old rows too.
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT retry_of FROM bgtasks_task WHERE id = 'old3'").fetchone() == (
            None,
        )
    with app.app_context():
        old = bg.get("old3")
        assert old is not None and old.record().retry_of is None
