"""Write-behind for the SQLite store: any thread queues a statement, one
thread commits the queue in batches.

A commit, and handing a connection's lock from thread to thread, cost far
more than the statements of a task. So the threads that submit and run tasks
only queue their statements, and the writer thread runs everything queued
in one transaction. Who needs the outcome of a statement (a durable submit,
a claim) waits for the commit of its batch; everyone else goes on at once.
Between batches, the same thread runs the store's periodic upkeep.

Knows nothing of Flask or of tasks.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import typing as t

from .._errors import StoreError
from .._process import ProcessLocal

logger = logging.getLogger("flask_bgtasks")

Params = t.Union[t.Mapping[str, t.Any], t.Sequence[t.Any]]

#: Most statements in one transaction.
MAX_BATCH = 2000


class Statement:
    """A queued statement, and once it ran, what it returned."""

    __slots__ = ("sql", "params", "then", "done", "rows", "rowcount", "error", "skip")

    def __init__(
        self,
        sql: str,
        params: Params,
        then: t.Callable[[Statement], None] | None,
        done: threading.Event | None,
    ) -> None:
        self.sql = sql
        self.params = params
        #: Called in the writer thread once the statement's batch committed.
        self.then = then
        #: Set once the statement's batch committed, for a waiting caller.
        self.done = done
        self.rows: list[sqlite3.Row] = []
        self.rowcount = -1
        self.error: BaseException | None = None
        #: Set by the caller while it is queued: a later statement made it
        #: unnecessary, so it does not run.
        self.skip = False


class Writer(ProcessLocal):
    """Run statements on one connection: inline until :meth:`start`, then
    queued and committed in batches by a thread, which also calls ``tick``
    every ``interval`` seconds.

    :param connect: Opens the connection, in autocommit mode.
    :param name: The writer thread's name.
    """

    def __init__(
        self,
        connect: t.Callable[[], sqlite3.Connection],
        name: str,
        tick: t.Callable[[], None],
        interval: float,
        busy_timeout: float,
    ) -> None:
        self._connect = connect
        self.name = name
        self._tick = tick
        self._interval = interval
        self._busy_timeout = busy_timeout
        super().__init__()

    def _init_state(self) -> None:
        # _db_lock guards the connection; _lock the queue, so that queueing
        # never waits for a batch to run.
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: list[Statement] = []
        self._queued = 0
        self._committed = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the writer thread. Idempotent; not after :meth:`close`."""
        self._check_process()
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()

    def write(
        self,
        sql: str,
        params: Params = (),
        *,
        wait: bool = False,
        then: t.Callable[[Statement], None] | None = None,
    ) -> Statement:
        """Run a statement that writes, now or in the next batch.

        :param wait: Return once it is committed, with its rows.
        :param then: Call this with the statement once it is committed.
        :raises StoreError: If it waited, and the statement failed.
        """
        self._check_process()
        statement = Statement(sql, params, then, None)
        with self._lock:
            # Checked under the lock: a thread that is stopping takes no
            # more statements once it has decided to stop.
            queue = self._thread is not None and self._thread is not threading.current_thread()
            if queue:
                if wait:
                    statement.done = threading.Event()
                self._pending.append(statement)
                self._queued += 1
                if len(self._pending) == 1:
                    # All: flush() waits on the same condition as the thread.
                    self._changed.notify_all()
        if not queue:
            self._run_batch([statement])
            if statement.error is not None:
                raise statement.error
            if then is not None:
                then(statement)
            return statement
        if statement.done is not None:
            statement.done.wait()
            if statement.error is not None:
                raise statement.error
        return statement

    def flush(self) -> None:
        """Wait until every statement queued so far is committed, so that a
        read sees this process's own writes."""
        self._check_process()
        with self._lock:
            if self._thread is None or self._thread is threading.current_thread():
                return
            target = self._queued
            self._changed.wait_for(lambda: self._committed >= target or self._thread is None)

    def close(self) -> None:
        """Commit what is queued, stop the thread, close the connection."""
        self._check_process()
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _main(self) -> None:
        next_tick = time.monotonic()
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    left = next_tick - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                stopping = self._stopping and not self._pending
            if batch:
                self._run_batch(batch)
            with self._lock:
                self._committed += len(batch)
                if stopping:
                    self._thread = None
                self._changed.notify_all()
            for statement in batch:
                if statement.done is not None:
                    statement.done.set()
                if statement.then is not None and statement.error is None:
                    try:
                        statement.then(statement)
                    except Exception:
                        logger.exception("A task store callback failed.")
            if stopping:
                return
            if time.monotonic() >= next_tick:
                try:
                    self._tick()
                except Exception:
                    logger.exception("The task store's upkeep failed; it runs again later.")
                next_tick = time.monotonic() + self._interval

    def _run_batch(self, batch: list[Statement]) -> None:
        with self._db_lock:
            try:
                if len(batch) == 1:  # autocommit: one statement, one transaction
                    self._run_statement(batch[0])
                    return
                self._execute("BEGIN IMMEDIATE")
                try:
                    for statement in batch:
                        self._run_statement(statement)
                finally:
                    self._execute("COMMIT")
            except Exception as exc:  # a waiter must never wait forever
                error = StoreError(f"The task store could not write: {exc}.")
                logger.error("%s", error)
                for statement in batch:
                    if statement.error is None:
                        statement.error = error

    def _run_statement(self, statement: Statement) -> None:
        if statement.skip:
            return
        try:
            cursor = self._execute(statement.sql, statement.params)
            statement.rows = cursor.fetchall()
            statement.rowcount = cursor.rowcount
        except Exception as exc:
            # One bad statement does not undo the others of its batch.
            statement.error = StoreError(f"A task store statement failed: {exc}.")
            logger.error("%s (%s)", statement.error, statement.sql)

    def _execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        if self._db is None:
            self._db = self._connect()
        deadline = time.monotonic() + self._busy_timeout
        pause = threading.Event()  # never set: a pause between tries
        while True:
            try:
                return self._db.execute(sql, params)
            except sqlite3.OperationalError as exc:
                # The busy handler already waited; this is the rare "locked"
                # it gives up on at once. Try again, up to the same timeout,
                # rather than fail the user's request.
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                pause.wait(0.005)
