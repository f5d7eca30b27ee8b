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
from .._process import ForkGate, ProcessLocal

logger = logging.getLogger("flask_bgtasks")

Params = t.Mapping[str, t.Any] | t.Sequence[t.Any]

#: Most statements in one transaction.
MAX_BATCH = 2000

#: Connections that a forked child copied from its parent while they were
#: open (a fork done from C, which skips the before-fork handler). Closing
#: one in the child could delete or truncate files that the parent still
#: uses (SQLite's "How To Corrupt An SQLite Database File", 2.6), so they are
#: kept here, never used and never closed.
inherited_connections: list[object] = []


class Statement:
    """A queued statement, and once it ran, what it returned."""

    __slots__ = (
        "cleanup",
        "done",
        "error",
        "params",
        "rowcount",
        "rows",
        "skip",
        "sql",
        "then",
    )

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
        #: Its batch ends with the writer's cleanup statement.
        self.cleanup = False


class Writer(ProcessLocal):
    """Run statements on one connection: inline until :meth:`start`, then
    queued and committed in batches by a thread, which also calls ``tick``
    every ``interval`` seconds.

    :param connect: Opens the connection, in autocommit mode.
    :param name: The writer thread's name.
    :param cleanup: A statement that ends, in the same transaction, every
        batch with a statement written with ``cleanup=True``.
    """

    def __init__(
        self,
        connect: t.Callable[[], sqlite3.Connection],
        name: str,
        tick: t.Callable[[], None],
        interval: float,
        busy_timeout: float,
        cleanup: tuple[str, Params] | None = None,
    ) -> None:
        self._connect = connect
        self._cleanup = cleanup
        self.name = name
        self._tick = tick
        self._interval = interval
        self._busy_timeout = busy_timeout
        super().__init__()

    def _init_state(self) -> None:
        if self.__dict__.get("_db") is not None:  # a reset in a forked child
            inherited_connections.append(self._db)
        #: Every call into SQLite of this connection and of the store's
        #: reading connections holds it: see :meth:`pause`.
        self.gate = ForkGate()
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
        # start() was called: statements are queued, and the thread that
        # pause() stopped starts again when a statement comes.
        self._started = False
        self._stopping = False
        # Between pause() and resume(): the thread stops once it committed
        # the statements queued before _pause_target; later ones wait.
        self._paused = False
        self._pause_target = 0
        # Since a fork, nothing here read through the store: this process
        # may be a server's master, which should keep no thread. The thread
        # then exits whenever it is idle and _needed() says no task of this
        # process is unfinished; a write starts it again.
        self._dormant = False
        self._needed: t.Callable[[], bool] = lambda: False

    def start(self) -> None:
        """Start the writer thread. Idempotent; not after :meth:`close`."""
        self.check_process()
        with self._lock:
            self._started = True
            self._restart()

    def _restart(self) -> None:
        # Called under _lock.
        if self._thread is None and self._started and not self._stopping and not self._paused:
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()

    def write(
        self,
        sql: str,
        params: Params = (),
        *,
        wait: bool = False,
        then: t.Callable[[Statement], None] | None = None,
        cleanup: bool = False,
    ) -> Statement:
        """Run a statement that writes, now or in the next batch.

        :param wait: Return once it is committed, with its rows.
        :param then: Call this with the statement once it is committed.
        :param cleanup: End its batch with the cleanup statement.
        :raises StoreError: If it waited, and the statement failed.
        """
        self.check_process()
        statement = Statement(sql, params, then, None)
        statement.cleanup = cleanup
        with self._lock:
            self._restart()
            # Checked under the lock: a thread that is stopping takes no
            # more statements once it has decided to stop. While a fork is
            # under way they wait in the queue, in their order.
            queue = (
                self._thread is not None or (self._paused and self._started and not self._stopping)
            ) and self._thread is not threading.current_thread()
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
        self.check_process()
        with self._lock:
            self._dormant = False
            self._restart()
            if self._thread is threading.current_thread():
                return
            if self._thread is None and not self._pending:
                return
            target = self._queued
            self._changed.wait_for(
                lambda: self._committed >= target or (self._thread is None and not self._paused)
            )

    def close(self) -> None:
        """Commit what is queued, stop the thread, close the connection."""
        self.check_process()
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self.gate:
            self.disconnect()

    def pause(self) -> None:
        """Before a fork: commit what is queued, then stop the thread, so
        that the child copies no lock of SQLite held by it, and the parent
        keeps no idle thread. Statements written until :meth:`resume` wait
        in the queue. Then close :attr:`gate` and :meth:`disconnect`."""
        with self._lock:
            self._paused = True
            self._dormant = True
            self._pause_target = self._queued
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def resume(self, *, needed: t.Callable[[], bool]) -> None:
        """After a fork, in the parent: undo :meth:`pause`. The thread starts
        again if statements wait or ``needed()`` (to renew leases, say),
        else with the next statement. Until a :meth:`flush`, it stops when
        it is idle and not ``needed()``."""
        with self._lock:
            self._paused = False
            self._needed = needed
            if self._pending or needed():
                self._restart()
            self._changed.notify_all()

    def disconnect(self) -> None:
        """Close the connection; the next statement opens a new one. Call it
        inside :attr:`gate`, or with the gate closed."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _main(self) -> None:
        # Started again after a fork: the upkeep has been done recently.
        next_tick = time.monotonic() + (self._interval if self._dormant else 0)
        while True:
            with self._lock:
                while not self._pending and not self._stopping and not self._paused:
                    if self._dormant and not self._needed():
                        self._thread = None
                        return
                    left = next_tick - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                if self._paused and self._committed >= self._pause_target:
                    self._thread = None
                    self._changed.notify_all()
                    return
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
            if time.monotonic() >= next_tick and not self._paused:
                try:
                    self._tick()
                except Exception:
                    logger.exception("The task store's upkeep failed; it runs again later.")
                next_tick = time.monotonic() + self._interval

    def _run_batch(self, batch: list[Statement]) -> None:
        cleanup = None
        if self._cleanup is not None and any(statement.cleanup for statement in batch):
            cleanup = Statement(*self._cleanup, None, None)
        with self.gate, self._db_lock:
            try:
                if len(batch) == 1 and cleanup is None:
                    # Autocommit: one statement, one transaction.
                    self._run_statement(batch[0])
                    return
                self._execute("BEGIN IMMEDIATE")
                try:
                    for statement in batch:
                        self._run_statement(statement)
                    if cleanup is not None:
                        self._run_statement(cleanup)
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
