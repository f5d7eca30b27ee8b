"""The SQLite store's file: its schema, and how a connection to it is
opened and the file checked.

Owns the table and its indexes, the schema version, and the statement that
keeps ``BGTASKS_MAX_RESULTS``. Knows nothing of tasks, threads, or Flask.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import typing as t

from .._errors import StoreError

#: Seconds a statement waits for another process's write to finish.
BUSY_TIMEOUT = 30.0

# 2: the count of finished rows, kept by triggers, so that keeping
# BGTASKS_MAX_RESULTS costs a lookup rather than a walk of the finished rows.
# 3: retry_of, the task that a task runs again.
_SCHEMA_VERSION = 3
# In one transaction: a row that finishes while another process upgrades
# the file is counted either way.
_SCHEMA = """
BEGIN IMMEDIATE;
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
    finished_at REAL,
    retry_of TEXT
);
CREATE INDEX IF NOT EXISTS bgtasks_task_lease
    ON bgtasks_task (lease_until) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS bgtasks_task_finished
    ON bgtasks_task (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS bgtasks_task_submitted ON bgtasks_task (submitted_at);
CREATE TABLE IF NOT EXISTS bgtasks_count (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO bgtasks_count (name, value)
    SELECT 'finished', count(*) FROM bgtasks_task WHERE finished_at IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS bgtasks_task_finishes
    AFTER UPDATE OF finished_at ON bgtasks_task
    WHEN old.finished_at IS NULL AND new.finished_at IS NOT NULL
    BEGIN UPDATE bgtasks_count SET value = value + 1 WHERE name = 'finished'; END;
CREATE TRIGGER IF NOT EXISTS bgtasks_task_finished_goes
    AFTER DELETE ON bgtasks_task WHEN old.finished_at IS NOT NULL
    BEGIN UPDATE bgtasks_count SET value = value - 1 WHERE name = 'finished'; END;
CREATE TRIGGER IF NOT EXISTS bgtasks_task_finished_comes
    AFTER INSERT ON bgtasks_task WHEN new.finished_at IS NOT NULL
    BEGIN UPDATE bgtasks_count SET value = value + 1 WHERE name = 'finished'; END;
CREATE TRIGGER IF NOT EXISTS bgtasks_task_unfinishes
    AFTER UPDATE OF finished_at ON bgtasks_task
    WHEN old.finished_at IS NOT NULL AND new.finished_at IS NULL
    BEGIN UPDATE bgtasks_count SET value = value - 1 WHERE name = 'finished'; END;
COMMIT;
"""

# Keeps the newest finished rows, as many as the parameter says: deletes the
# oldest ones past that number, which the count says without a scan.
EVICT_OLDEST = (
    "DELETE FROM bgtasks_task WHERE id IN (SELECT id FROM bgtasks_task"
    " WHERE finished_at IS NOT NULL ORDER BY finished_at LIMIT max(0,"
    " (SELECT value FROM bgtasks_count WHERE name = 'finished') - ?))"
)


def connect(path: str) -> sqlite3.Connection:
    """Open a connection to the store's file, in WAL mode."""
    db = sqlite3.connect(
        path,
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


class Readers:
    """One reading connection per thread: a shared one would make the
    threads wait for each other's reads, which WAL lets run at once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        #: Every connection open now, of any thread.
        self.all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def read(self, sql: str, params: t.Sequence[t.Any] = ()) -> list[sqlite3.Row]:
        """Run a query on this thread's connection, opened if needed."""
        reader: sqlite3.Connection | None = getattr(self._local, "db", None)
        if reader is None:
            reader = self._local.db = connect(self.path)
            with self._lock:
                self.all.append(reader)
        return reader.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close every thread's connection; each opens a new one on its next
        read."""
        with self._lock:
            readers, self.all = self.all, []
            self._local = threading.local()
        for reader in readers:
            reader.close()


def check_database(path: str) -> None:
    """Create the file and its folder if missing, and the schema.

    :raises StoreError: If the file can't be opened, written, was written by
        a newer version, or is not a healthy SQLite database.
    """
    folder = os.path.dirname(path)
    try:
        if folder:
            os.makedirs(folder, exist_ok=True)
        db = connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise _unusable(path, exc) from exc
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise StoreError(
                f"The task store {path} was written by a newer version of"
                f" Flask-BGTasks (schema {version}). Upgrade Flask-BGTasks, or"
                " point BGTASKS_STORE at another file."
            )
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check says: {check}")
        db.executescript(_SCHEMA)
        _add_column(db, "retry_of TEXT")  # a file of schema 1 or 2
        # Proves the file is writable, also when the schema existed.
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc
    finally:
        db.close()


def _add_column(db: sqlite3.Connection, column: str) -> None:
    name = column.split()[0]
    if any(row[1] == name for row in db.execute("PRAGMA table_info(bgtasks_task)")):
        return
    try:
        db.execute(f"ALTER TABLE bgtasks_task ADD COLUMN {column}")
    except sqlite3.OperationalError as exc:  # another process added it first
        if "duplicate column" not in str(exc):
            raise


def _unusable(path: str, exc: BaseException) -> StoreError:
    return StoreError(
        f"The task store BGTASKS_STORE can't use the SQLite file {path}:"
        f" {exc}. Make sure its folder exists and this process may write"
        " there; if the file is damaged or is not a SQLite database, move it"
        " away and a new one is created."
    )
