"""A store in a SQLite file, shared by every process that opens it.

Every task is a row, written when it is submitted, started, changes and
finishes. Other processes read the rows, and cancel through them.

Durable tasks survive their process. Each unfinished row names its owner
process and holds a lease, which a thread of the owner renews; a row whose
lease expired belongs to a process that died. A durable one is then taken
over by a live process and run again (at least once delivery); a row that is
not durable is marked ``failed`` with the error type ``TaskLost``.

Concurrency: WAL journal and a busy timeout, so that writers in many
processes wait for each other instead of failing. In each process one writer
thread commits the writes of all its threads in batches (see
:mod:`._writer`); reads have their own connection, and first wait for this
process's queued writes, so a process always reads what it wrote. A single
``UPDATE ... RETURNING`` claims rows atomically.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import typing as t

from .._errors import StoreError
from .._process import ProcessLocal
from .._record import TaskRecord, TaskStatus, as_datetime, short_repr, this_process, to_json
from . import DEFAULT_MAX_PAYLOAD_BYTES, Recover, TaskNames, TaskStore
from ._payload import arguments_too_large, errors_json, not_json, value_too_large
from ._writer import Statement, Writer, inherited_connections

if t.TYPE_CHECKING:
    from .._message import TaskSnapshot

logger = logging.getLogger("flask_bgtasks")

#: Seconds a statement waits for another process's write to finish.
BUSY_TIMEOUT = 30.0
#: Most durable tasks taken over in one go.
RECOVER_BATCH = 100

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS bgtasks_task (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    pool TEXT NOT NULL,
    durable INTEGER NOT NULL,
    arguments TEXT NOT NULL,
    status TEXT NOT NULL,
    progress TEXT,
    outcome TEXT,
    errors TEXT NOT NULL DEFAULT '[]',
    attempt INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS bgtasks_task_lease
    ON bgtasks_task (lease_until) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS bgtasks_task_finished
    ON bgtasks_task (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS bgtasks_task_submitted ON bgtasks_task (submitted_at);
"""

_store_numbers = itertools.count()
_NO_ARGUMENTS = '{"args":[],"kwargs":{}}'
_NO_VALUE = '{"value":null}'
# Keeps the newest finished rows, as many as the parameter says.
_EVICT_OLDEST = (
    "DELETE FROM bgtasks_task WHERE id IN (SELECT id FROM bgtasks_task"
    " WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT -1 OFFSET ?)"
)


class SQLiteStore(TaskStore, ProcessLocal):
    """Keep task records in a SQLite database file.

    :param path: The database file; created with its folder if missing.
    :param ttl: Seconds to keep a finished record, or ``None``.
    :param max_results: Most finished records kept; the oldest go first.
    :param lease: Seconds after which the unfinished tasks of a process
        that stopped renewing them count as lost.
    :param max_payload_bytes: Most bytes of JSON kept of one task's
        arguments, of its return value, and of its errors; ``None`` for no
        limit.
    :raises StoreError: If the file can't be opened, written, or is not a
        healthy SQLite database.
    """

    shared = True

    def __init__(
        self,
        path: str,
        ttl: float | None,
        max_results: int,
        lease: float,
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.path = path
        self.ttl = ttl
        self.max_results = max_results
        self.lease = lease
        self.max_payload_bytes = max_payload_bytes
        self._number = next(_store_numbers)
        self._check_database()
        ProcessLocal.__init__(self)

    def _init_state(self) -> None:
        # A reset in a child forked from C: see inherited_connections.
        inherited_connections.extend(self.__dict__.get("_all_readers", ()))
        self._writer = Writer(
            self._connect,
            f"bgtasks-store-{self._number}",
            self.upkeep,
            self.lease / 3,
            BUSY_TIMEOUT,
            # A batch that finished tasks ends by applying BGTASKS_MAX_RESULTS,
            # in the same transaction: no reader ever sees more finished rows.
            cleanup=(_EVICT_OLDEST, (self.max_results,)),
        )
        # One reading connection per thread: a shared one would make the
        # threads wait for each other's reads, which WAL lets run at once.
        self._readers = threading.local()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # The ids of the unfinished tasks this process runs, whose leases
        # need renewing.
        self._owned: set[str] = set()
        # Per task id: its start, written behind; its return value as JSON.
        self._start_writes: dict[str, Statement] = {}
        self._outcomes: dict[str, str] = {}
        # This process, as the row's owner column names it.
        self._process = this_process()
        self._recover: Recover = lambda record: False
        self._task_names: TaskNames = lambda: ()

    # -- the connection -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,  # autocommit: each statement is a transaction
            check_same_thread=False,  # shared by this process's threads, under _lock
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL loses no data on a process crash, only on
        # power loss, and saves an fsync per commit.
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _check_database(self) -> None:
        folder = os.path.dirname(self.path)
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
            db = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise self._unusable(exc) from exc
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"The task store {self.path} was written by a newer version of"
                    f" Flask-BGTasks (schema {version}). Upgrade Flask-BGTasks, or"
                    " point BGTASKS_STORE at another file."
                )
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check says: {check}")
            db.executescript(_SCHEMA)
            # Proves the file is writable, also when the schema existed.
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise self._unusable(exc) from exc
        finally:
            db.close()

    def _unusable(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"The task store BGTASKS_STORE can't use the SQLite file {self.path}:"
            f" {exc}. Make sure its folder exists and this process may write"
            " there; if the file is damaged or is not a SQLite database, move it"
            " away and a new one is created."
        )

    def _read(
        self, sql: str, params: t.Sequence[t.Any] = (), flush: bool = True
    ) -> list[sqlite3.Row]:
        """Run a query on the reading connection; with ``flush``, after this
        process's queued writes are committed."""
        self._check_process()
        if flush:
            self._writer.flush()
        # Not around the flush, which waits for the writer thread to pass
        # the same gate.
        with self._writer.gate:
            reader: sqlite3.Connection | None = getattr(self._readers, "db", None)
            if reader is None:
                reader = self._readers.db = self._connect()
                with self._readers_lock:
                    self._all_readers.append(reader)
            return reader.execute(sql, params).fetchall()

    # -- the life of a task ---------------------------------------------

    def add(self, snapshot: TaskSnapshot) -> None:
        message = snapshot.message
        args, kwargs = message.args, message.kwargs
        arguments = to_json({"args": args, "kwargs": kwargs}) if args or kwargs else _NO_ARGUMENTS
        if arguments is None:
            # Not JSON: only a repr is kept, cut short, so no limit applies.
            arguments = json.dumps({"repr": short_repr((args, kwargs))})
        elif self.max_payload_bytes is not None and len(arguments) > self.max_payload_bytes:
            # Before anything is written, and before the task is queued.
            raise arguments_too_large(
                message.name, args, kwargs, len(arguments), self.max_payload_bytes
            )
        self._check_process()
        self._owned.add(message.id)
        # A durable task is committed before submit returns, so that it is
        # never lost; other tasks are written behind.
        self._writer.write(
            "INSERT INTO bgtasks_task (id, name, pool, durable, arguments, status,"
            " owner, lease_until, submitted_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            (
                message.id,
                message.name,
                message.pool,
                int(message.durable),
                arguments,
                self._process,
                time.time() + self.lease,
                message.submitted_at,
            ),
            wait=message.durable,
        )

    def discard(self, task_id: str) -> None:
        self._owned.discard(task_id)
        self._writer.write(
            "DELETE FROM bgtasks_task WHERE id = ? AND owner = ?", (task_id, self._process)
        )

    def started(self, snapshot: TaskSnapshot) -> bool:
        task_id = snapshot.message.id
        # A read, not waiting for the writes: the row may not be written yet,
        # but if it says the task was cancelled or taken over, it is so.
        rows = self._read(
            "SELECT status, owner FROM bgtasks_task WHERE id = ?", (task_id,), flush=False
        )
        if rows and (rows[0][0] == "cancelled" or rows[0][1] != self._process):
            self._owned.discard(task_id)  # the record is not ours to finish
            return False

        def too_late(statement: Statement) -> None:
            if statement.rowcount == 0:
                _cancelled_as_it_started(snapshot)

        # Kept, so that finished() can drop it if it is still queued then: a
        # quick task is written once, when it finishes.
        self._start_writes[task_id] = self._writer.write(
            "UPDATE bgtasks_task SET status = 'running', attempt = ?,"
            " started_at = coalesce(started_at, ?), lease_until = ?"
            " WHERE id = ? AND owner = ? AND status = 'queued'",
            (
                snapshot.attempt,
                snapshot.started_at,
                time.time() + self.lease,
                task_id,
                self._process,
            ),
            then=too_late,
        )
        return True

    def changed(self, snapshot: TaskSnapshot) -> None:
        self._writer.write(
            "UPDATE bgtasks_task SET status = ?, progress = ?, errors = ?,"
            " cancel_requested = max(cancel_requested, ?)"
            " WHERE id = ? AND owner = ? AND finished_at IS NULL",
            (
                snapshot.status.value,
                _progress(snapshot),
                errors_json(snapshot, self.max_payload_bytes),
                int(snapshot.cancel_requested),
                snapshot.message.id,
                self._process,
            ),
        )

    def check_value(self, snapshot: TaskSnapshot, value: object) -> BaseException | None:
        if value is None:
            return None
        outcome = to_json({"value": value})
        if outcome is None:
            if snapshot.message.durable:
                return not_json(snapshot, value)
            # Not JSON: only a repr is kept, cut short, so no limit applies.
            outcome = json.dumps({"repr": short_repr(value)})
        elif self.max_payload_bytes is not None and len(outcome) > self.max_payload_bytes:
            return value_too_large(snapshot, value, len(outcome), self.max_payload_bytes)
        # Handed on to finished(), which comes next in this thread, so that
        # the value is encoded once.
        self._outcomes[snapshot.message.id] = outcome
        return None

    def finished(self, snapshot: TaskSnapshot, value: object = None) -> None:
        task_id = snapshot.message.id
        self._owned.discard(task_id)
        start_write = self._start_writes.pop(task_id, None)
        encoded = self._outcomes.pop(task_id, None)
        if start_write is not None:
            # This write sets what it would have; a cancel from another
            # process in between makes this one change nothing, as it would.
            start_write.skip = True
        if snapshot.released:
            # Shutdown stopped a durable task: back to the queue, with no
            # owner and no lease, so the next process takes it at once.
            # Being ended set its cancel flag, which is not a request to stop:
            # clear it, or the next process would cancel the task.
            self._writer.write(
                "UPDATE bgtasks_task SET status = 'queued', owner = NULL,"
                " lease_until = 0, cancel_requested = 0, progress = ?, errors = ?"
                " WHERE id = ? AND owner = ? AND finished_at IS NULL",
                (
                    _progress(snapshot),
                    errors_json(snapshot, self.max_payload_bytes),
                    task_id,
                    self._process,
                ),
            )
            return
        outcome = None
        if snapshot.status is TaskStatus.SUCCEEDED:
            outcome = encoded or (
                _NO_VALUE
                if value is None
                else to_json({"value": value}) or to_json({"repr": short_repr(value)})
            )
        self._writer.write(
            "UPDATE bgtasks_task SET status = ?, outcome = ?, progress = ?, errors = ?,"
            " cancel_requested = max(cancel_requested, ?), attempt = ?,"
            " started_at = coalesce(started_at, ?), finished_at = ?, lease_until = 0"
            " WHERE id = ? AND owner = ? AND finished_at IS NULL",
            (
                snapshot.status.value,
                outcome,
                _progress(snapshot),
                errors_json(snapshot, self.max_payload_bytes),
                int(snapshot.cancel_requested),
                snapshot.attempt,
                snapshot.started_at,
                snapshot.finished_at,
                task_id,
                self._process,
            ),
            then=functools.partial(_check_stored, snapshot, self.lease),
            cleanup=True,
        )

    def cancel_requested(self, task_id: str) -> bool:
        rows = self._read(
            "SELECT cancel_requested, status FROM bgtasks_task WHERE id = ?",
            (task_id,),
            flush=False,
        )
        return bool(rows) and (bool(rows[0][0]) or rows[0][1] == "cancelled")

    # -- lookups --------------------------------------------------------

    def record(self, task_id: str) -> TaskRecord | None:
        rows = self._read(
            "SELECT * FROM bgtasks_task WHERE id = ? AND (finished_at IS NULL OR ? IS NULL"
            " OR finished_at > ?)",
            (task_id, self.ttl, time.time() - (self.ttl or 0)),
        )
        return make_record(rows[0]) if rows else None

    def records(self, status: TaskStatus | None = None, limit: int = 50) -> list[TaskRecord]:
        rows = self._read(
            "SELECT * FROM bgtasks_task WHERE (? IS NULL OR status = ?) AND (finished_at IS"
            " NULL OR ? IS NULL OR finished_at > ?) ORDER BY submitted_at DESC LIMIT ?",
            (status, status, self.ttl, time.time() - (self.ttl or 0), limit),
        )
        return [make_record(row) for row in rows]

    def cancel(self, task_id: str) -> bool:
        # A task of this process is cancelled through its handle by the
        # runtime, which asks here only for the others. One statement decides, atomically, against the owner's start.
        # SET expressions see the row as it was before the update.
        rows = self._writer.write(
            "UPDATE bgtasks_task SET cancel_requested = 1,"
            " status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END,"
            " finished_at = CASE status WHEN 'queued' THEN ? ELSE finished_at END"
            " WHERE id = ? AND finished_at IS NULL RETURNING status",
            (time.time(), task_id),
            wait=True,
            cleanup=True,
        ).rows
        if rows:
            return bool(rows[0][0] == "cancelled")
        # Finished already: as Future.cancel(), True if that was a cancel.
        record = self.record(task_id)
        return record is not None and record.status is TaskStatus.CANCELLED

    def purge(self, older_than: float) -> int:
        return self._writer.write(
            "DELETE FROM bgtasks_task WHERE finished_at < ?", (time.time() - older_than,), wait=True
        ).rowcount

    def __len__(self) -> int:
        # As lookups: a record past BGTASKS_RESULT_TTL is gone, even before
        # the upkeep deletes its row.
        rows = self._read(
            "SELECT count(*) FROM bgtasks_task WHERE finished_at IS NULL OR ? IS NULL"
            " OR finished_at > ?",
            (self.ttl, time.time() - (self.ttl or 0)),
        )
        return int(rows[0][0])

    # -- upkeep ---------------------------------------------------------

    def activate(self, recover: Recover, task_names: TaskNames) -> None:
        """Start this process's writer thread, which also does the upkeep
        every third of the lease: it renews the leases of this process's
        tasks, takes over the durable tasks of dead processes, marks their
        other tasks lost, and deletes expired records."""
        self._check_process()
        self._recover = recover
        self._task_names = task_names
        self._writer.start()

    def upkeep(self) -> None:
        """One round of upkeep; the writer thread calls it."""
        now = time.time()
        self._writer.write(
            "UPDATE bgtasks_task SET lease_until = ? WHERE owner = ? AND finished_at IS NULL",
            (now + self.lease, self._process),
        )
        self._mark_lost(now)
        self._take_over(now)
        self._evict(now)

    def _upkeep_write(self, sql: str, params: t.Any) -> Statement:
        return self._writer.write(sql, params, wait=True)

    def _mark_lost(self, now: float) -> None:
        # Tasks of dead processes that someone asked to stop: done with.
        self._upkeep_write(
            "UPDATE bgtasks_task SET status = 'cancelled', finished_at = ?, lease_until = 0"
            " WHERE finished_at IS NULL AND lease_until < ? AND cancel_requested = 1",
            (now, now),
        )
        rows = self._upkeep_write(
            "UPDATE bgtasks_task SET status = 'failed', finished_at = :now, lease_until = 0,"
            " errors = json_insert(errors, '$[#]', json_object("
            "   'attempt', attempt, 'type', 'TaskLost', 'traceback', '', 'at', :now,"
            "   'message', 'The process ' || coalesce(owner, '?') || ' stopped without"
            " finishing it. It is not durable, so it does not run again.'))"
            " WHERE finished_at IS NULL AND durable = 0 AND lease_until < :now RETURNING id, name",
            {"now": now},
        ).rows
        for task_id, name in rows:
            logger.error(
                "Task %r (id %s) was lost: its process stopped without finishing it.",
                name,
                task_id,
            )

    def _take_over(self, now: float) -> None:
        names = sorted(self._task_names())
        if names:
            # Those released at shutdown first: they have no owner.
            self._take_over_batches(now, names, released=True)
            self._take_over_batches(now, names, released=False)

    def _take_over_batches(self, now: float, names: list[str], released: bool) -> None:
        marks = ", ".join("?" * len(names))
        owner = "owner IS NULL" if released else "owner IS NOT NULL"
        while True:
            rows = self._upkeep_write(
                "UPDATE bgtasks_task SET owner = ?, lease_until = ?, status = 'queued',"
                " progress = NULL WHERE id IN (SELECT id FROM bgtasks_task WHERE"
                f" finished_at IS NULL AND durable = 1 AND lease_until < ? AND {owner}"
                f" AND name IN ({marks}) ORDER BY submitted_at LIMIT ?) RETURNING *",
                (self._process, now + self.lease, now, *names, RECOVER_BATCH),
            ).rows
            refused = []
            for row in rows:
                record = make_record(row)
                if released:
                    logger.info(
                        "Task %r (id %s) was left queued by a process that shut down;"
                        " running it here.",
                        record.name,
                        record.id,
                    )
                elif record.attempt:
                    logger.warning(
                        "Task %r (id %s) was left unfinished by a process that stopped"
                        " without shutting down; running it again here (attempt %d).",
                        record.name,
                        record.id,
                        record.attempt + 1,
                    )
                else:
                    logger.warning(
                        "Task %r (id %s) was left queued by a process that stopped"
                        " without shutting down; running it here.",
                        record.name,
                        record.id,
                    )
                # Ours before it can run, and end, here.
                self._owned.add(record.id)
                if not self._recover(record):
                    self._owned.discard(record.id)
                    refused.append(record.id)
            if refused:
                self._upkeep_write(
                    "UPDATE bgtasks_task SET owner = NULL, lease_until = 0 WHERE owner = ?"
                    f" AND status = 'queued' AND id IN ({', '.join('?' * len(refused))})",
                    (self._process, *refused),
                )
            if len(rows) < RECOVER_BATCH or refused:
                return

    def _evict(self, now: float) -> None:
        if self.ttl is not None:
            self._upkeep_write("DELETE FROM bgtasks_task WHERE finished_at < ?", (now - self.ttl,))
        self._upkeep_write(_EVICT_OLDEST, (self.max_results,))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._check_process()
        self._writer.close()
        with self._writer.gate:
            self._close_readers()

    def _close_readers(self) -> None:
        with self._readers_lock:
            readers, self._all_readers = self._all_readers, []
            self._readers = threading.local()
        for reader in readers:
            reader.close()

    # -- forks ------------------------------------------------------------

    def _before_fork(self) -> None:
        # A thread inside SQLite holds its global mutexes, which a child
        # would copy locked and wait for forever. And SQLite forbids a child
        # to use, or even close, a connection open at the fork: so the
        # parent closes them, and opens new ones when it needs them.
        self._writer.pause()
        self._writer.gate.close()
        self._writer.disconnect()
        self._close_readers()

    def _after_fork_in_parent(self) -> None:
        self._writer.gate.open()
        # While tasks of this process are unfinished, their leases need
        # renewing. Reads and writes of a live dict need no lock.
        self._writer.resume(needed=lambda: bool(self._owned))


def _cancelled_as_it_started(snapshot: TaskSnapshot) -> None:
    # Another process cancelled the task in the moment between a worker
    # taking it and its start being written. It runs: its next look at
    # cancel_requested reads the cancelled row and stops it.
    logger.warning(
        "Task %r (id %s) was cancelled from another process just as it started;"
        " it was asked to stop.",
        snapshot.message.name,
        snapshot.message.id,
    )


def _check_stored(snapshot: TaskSnapshot, lease: float, statement: Statement) -> None:
    if statement.rowcount or snapshot.status is TaskStatus.CANCELLED:
        # A cancelled task whose record was finished first was cancelled
        # from another process too: the record says so already.
        return
    logger.warning(
        "Task %r (id %s) ended here as %s, but its record was finished"
        " elsewhere first: cancelled by another process just as it started, or"
        " taken over after this process failed to renew its lease for"
        " BGTASKS_STORE_LEASE (%g s). The outcome here is not stored.",
        snapshot.message.name,
        snapshot.message.id,
        snapshot.status.value,
        lease,
    )


def make_record(row: sqlite3.Row) -> TaskRecord:
    """A record from a row of the SQLite store (JSON held as text)."""
    arguments = json.loads(row["arguments"])
    outcome = json.loads(row["outcome"]) if row["outcome"] else {}
    return TaskRecord(
        id=row["id"],
        name=row["name"],
        pool=row["pool"],
        status=TaskStatus(row["status"]),
        durable=bool(row["durable"]),
        args=arguments.get("args"),
        kwargs=arguments.get("kwargs"),
        args_repr=arguments.get("repr"),
        progress=json.loads(row["progress"]) if row["progress"] else None,
        result=outcome.get("value"),
        result_repr=outcome.get("repr"),
        errors=json.loads(row["errors"]),
        attempt=row["attempt"],
        cancel_requested=bool(row["cancel_requested"]),
        process=row["owner"],
        submitted_at=as_datetime(row["submitted_at"]),  # type: ignore[arg-type]
        started_at=as_datetime(row["started_at"]),
        finished_at=as_datetime(row["finished_at"]),
    )


def _progress(snapshot: TaskSnapshot) -> str | None:
    progress = snapshot.progress
    return None if progress is None else to_json(progress)
