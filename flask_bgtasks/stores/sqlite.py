"""A store in a SQLite file, shared by every process that opens it.

Every task is a row, written when it is submitted, started, changes and
finishes; other processes read the rows, and cancel through them. Each
unfinished row names its owner process and holds a lease, which the owner
renews: a durable task of a process that died is taken over and run again,
another one fails with ``TaskLost``.

Concurrency: WAL and a busy timeout, so that writers in many processes wait
for each other. One writer thread per process commits the writes of all its
threads in batches (:mod:`._writer`); reads have their own connections and
first wait for this process's queued writes.

The file is in :mod:`._sqlite_schema`, a task's row in :mod:`._sqlite_rows`,
and the upkeep (leases, lost tasks, take-over, eviction) in :mod:`._sqlite_upkeep`.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
import time
import typing as t

from .._process import ProcessLocal
from .._record import TaskRecord, TaskStatus, this_process
from . import DEFAULT_MAX_PAYLOAD_BYTES, Recover, TaskNames, TaskStore
from ._fields import (
    NO_ARGUMENTS,
    arguments_json,
    final_outcome_json,
    make_record,
    outcome_json,
    progress_json,
)
from ._payload import errors_json
from ._sqlite_rows import (
    ADD,
    CHANGE,
    COUNTS,
    FINISH,
    RELEASE,
    START,
    check_started,
    check_stored,
)
from ._sqlite_schema import BUSY_TIMEOUT, EVICT_OLDEST, Readers, check_database, connect
from ._sqlite_upkeep import Upkeep
from ._writer import Statement, Writer, inherited_connections

if t.TYPE_CHECKING:
    from .._message import TaskSnapshot
    from .._stats import Counts

_store_numbers = itertools.count()


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
    :param process: The name of this process in the rows; ``host:pid`` by
        default. Two stores with different names act as two processes.
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
        process: str | None = None,
    ) -> None:
        self.path = path
        self.ttl = ttl
        self.max_results = max_results
        self.lease = lease
        self.max_payload_bytes = max_payload_bytes
        self._process_name = process
        self._number = next(_store_numbers)
        check_database(path)
        ProcessLocal.__init__(self)

    def _init_state(self) -> None:
        # A reset in a child forked from C: see inherited_connections.
        inherited: Readers | None = self.__dict__.get("_readers")
        if inherited is not None:
            inherited_connections.extend(inherited.all)
        self._writer = Writer(
            functools.partial(connect, self.path),
            f"bgtasks-store-{self._number}",
            self.upkeep,
            self.lease / 3,
            BUSY_TIMEOUT,
            # A batch that finished tasks ends by applying BGTASKS_MAX_RESULTS,
            # in the same transaction: no reader ever sees more finished rows.
            cleanup=(EVICT_OLDEST, (self.max_results,)),
        )
        self._readers = Readers(self.path)
        # The ids of the unfinished tasks this process runs, whose leases
        # need renewing.
        self._owned: set[str] = set()
        # Per task id: its start, written behind; its return value as JSON.
        self._start_writes: dict[str, Statement] = {}
        self._outcomes: dict[str, str] = {}
        # Per task id added here: its INSERT, and its arguments as JSON, so
        # that a task that ends before its INSERT ran is written once.
        self._adds: dict[str, tuple[Statement, str]] = {}
        # This process, as the row's owner column names it.
        self._process = self._process_name or this_process()
        self._recover: Recover = lambda record: False
        self._task_names: TaskNames = lambda: ()
        self._upkeep = Upkeep(
            self._writer, self._process, self.lease, self.ttl, self.max_results, self._owned
        )

    # -- the connection -------------------------------------------------

    def _read(
        self, sql: str, params: t.Sequence[t.Any] = (), flush: bool = True
    ) -> list[sqlite3.Row]:
        """Run a query on the reading connection; with ``flush``, after this
        process's queued writes are committed."""
        self.check_process()
        if flush:
            self._writer.flush()
        # Not around the flush, which waits for the writer thread to pass
        # the same gate.
        with self._writer.gate:
            return self._readers.read(sql, params)

    # -- the life of a task ---------------------------------------------

    def add(self, snapshot: TaskSnapshot) -> None:
        message = snapshot.message
        # Raises over the limit: before anything is written, and before the
        # task is queued.
        arguments = arguments_json(message, self.max_payload_bytes)
        self.check_process()
        self._owned.add(message.id)
        # A durable task is committed before submit returns, so that it is
        # never lost; other tasks are written behind.
        self._adds[message.id] = (
            self._writer.write(
                ADD,
                (
                    message.id,
                    message.name,
                    message.pool,
                    int(message.durable),
                    arguments,
                    self._process,
                    time.time() + self.lease,
                    message.submitted_at,
                    message.retry_of,
                ),
                wait=message.durable,
            ),
            arguments,
        )

    def discard(self, task_id: str) -> None:
        self._owned.discard(task_id)
        self._adds.pop(task_id, None)
        self._writer.write(
            "DELETE FROM bgtasks_task WHERE id = ? AND owner = ?", (task_id, self._process)
        )

    def started(self, snapshot: TaskSnapshot) -> bool:
        task_id = snapshot.message.id
        add = self._adds.get(task_id)
        # A read, not waiting for the writes: the row may not be written yet,
        # but if it says the task was cancelled or taken over, it is so. No
        # read while its INSERT has not run: no other process has seen it.
        unwritten = add is not None and add[0].rowcount < 0 and add[0].error is None
        rows = (
            []
            if unwritten
            else self._read(
                "SELECT status, owner FROM bgtasks_task WHERE id = ?", (task_id,), flush=False
            )
        )
        if rows and (rows[0][0] == "cancelled" or rows[0][1] != self._process):
            self._owned.discard(task_id)  # the record is not ours to finish
            return False

        # Kept, so that finished() can drop it if it is still queued then: a
        # quick task is written once, when it finishes.
        self._start_writes[task_id] = self._writer.write(
            START,
            (
                snapshot.attempt,
                snapshot.started_at,
                time.time() + self.lease,
                task_id,
                self._process,
            ),
            then=functools.partial(check_started, snapshot),
        )
        return True

    def changed(self, snapshot: TaskSnapshot) -> None:
        self._writer.write(
            CHANGE,
            (
                snapshot.status.value,
                progress_json(snapshot),
                errors_json(snapshot, self.max_payload_bytes),
                int(snapshot.cancel_requested),
                snapshot.message.id,
                self._process,
            ),
        )

    def check_value(self, snapshot: TaskSnapshot, value: object) -> BaseException | None:
        if value is None:
            return None
        outcome = outcome_json(snapshot, value, self.max_payload_bytes)
        if isinstance(outcome, BaseException):
            return outcome
        # Handed on to finished(), which comes next in this thread, so that
        # the value is encoded once.
        self._outcomes[snapshot.message.id] = outcome
        return None

    def finished(self, snapshot: TaskSnapshot, value: object = None) -> None:
        task_id = snapshot.message.id
        self._owned.discard(task_id)
        start_write = self._start_writes.pop(task_id, None)
        encoded = self._outcomes.pop(task_id, None)
        add, arguments = self._adds.pop(task_id, (None, NO_ARGUMENTS))
        if start_write is not None:
            # This write sets what it would have; a cancel from another
            # process in between makes this one change nothing, as it would.
            start_write.skip = True
        if add is not None and not snapshot.released:
            # Likewise, if its INSERT is still queued: the upsert below writes
            # the whole row. Skipped after the start, so that the start never
            # runs without the row. If the INSERT ran meanwhile, the upsert
            # updates the row as an UPDATE would.
            add.skip = True
        if snapshot.released:
            # Shutdown stopped a durable task: see RELEASE.
            self._writer.write(
                RELEASE,
                (
                    progress_json(snapshot),
                    errors_json(snapshot, self.max_payload_bytes),
                    task_id,
                    self._process,
                ),
            )
            return
        outcome = None
        if snapshot.status is TaskStatus.SUCCEEDED:
            outcome = encoded or final_outcome_json(value)
        message = snapshot.message
        # The arguments are only written by an insert: a task that was not
        # added here (taken over from a dead process) has its row already.
        self._writer.write(
            FINISH,
            (
                task_id,
                message.name,
                message.pool,
                int(message.durable),
                arguments,
                self._process,
                message.submitted_at,
                snapshot.status.value,
                outcome,
                progress_json(snapshot),
                errors_json(snapshot, self.max_payload_bytes),
                int(snapshot.cancel_requested),
                snapshot.attempt,
                snapshot.started_at,
                snapshot.finished_at,
                message.retry_of,
            ),
            then=functools.partial(check_stored, snapshot, self.lease),
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

    def counts(self, since: float) -> tuple[Counts, int]:
        rows = self._read(COUNTS, (self.ttl, time.time() - (self.ttl or 0), since))
        counts = {(pool, status): number for pool, status, number, _ in rows}
        return counts, sum(row[3] for row in rows)

    def cancel(self, task_id: str) -> bool:
        # A task of this process is cancelled through its handle by the
        # runtime, which asks here only for the others. One statement
        # decides, atomically, against the owner's start.
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
        return sum(self.counts(time.time())[0].values())

    # -- upkeep ---------------------------------------------------------

    def activate(self, recover: Recover, task_names: TaskNames) -> None:
        """Start this process's writer thread, which also does the upkeep
        every third of the lease: it renews the leases of this process's
        tasks, takes over the durable tasks of dead processes, marks their
        other tasks lost, and deletes expired records."""
        self.check_process()
        self._recover = recover
        self._task_names = task_names
        self._writer.start()

    def upkeep(self) -> None:
        """One round of upkeep; the writer thread calls it."""
        self._upkeep.run(self._recover, self._task_names)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self.check_process()
        self._writer.close()
        with self._writer.gate:
            self._readers.close()

    # -- forks ------------------------------------------------------------

    def _before_fork(self) -> None:
        # A thread inside SQLite holds its global mutexes, which a child
        # would copy locked and wait for forever. And SQLite forbids a child
        # to use, or even close, a connection open at the fork: so the
        # parent closes them, and opens new ones when it needs them.
        self._writer.pause()
        self._writer.gate.close()
        self._writer.disconnect()
        self._readers.close()

    def _after_fork_in_parent(self) -> None:
        self._writer.gate.open()
        # While tasks of this process are unfinished, their leases need
        # renewing. Reads and writes of a live dict need no lock.
        self._writer.resume(needed=lambda: bool(self._owned))
