"""A task's row in the SQLite store: the statements that write it, and what
it means when a write to it changed nothing.

What goes into its JSON columns, and the record made from a row, are in
:mod:`._fields`. A write of this process that changes no row lost a race
with another process, which cancelled the task or took it over; the checks
here log that. Knows nothing of connections, threads, or Flask.
"""

from __future__ import annotations

import logging
import typing as t

from .._record import TaskStatus

if t.TYPE_CHECKING:
    from .._message import TaskSnapshot
    from ._writer import Statement

logger = logging.getLogger("flask_bgtasks")

#: A task was submitted: parameters id, name, pool, durable, arguments,
#: owner, lease_until, submitted_at, retry_of.
ADD = (
    "INSERT INTO bgtasks_task (id, name, pool, durable, arguments, status,"
    " owner, lease_until, submitted_at, retry_of)"
    " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)"
)
#: An attempt starts, unless another process cancelled or took the task:
#: attempt, started_at, lease_until, id, owner.
START = (
    "UPDATE bgtasks_task SET status = 'running', attempt = ?,"
    " started_at = coalesce(started_at, ?), lease_until = ?"
    " WHERE id = ? AND owner = ? AND status = 'queued'"
)
#: Progress, errors, the cancel flag or a retry wait changed: status,
#: progress, errors, cancel_requested, id, owner.
CHANGE = (
    "UPDATE bgtasks_task SET status = ?, progress = ?, errors = ?,"
    " cancel_requested = max(cancel_requested, ?)"
    " WHERE id = ? AND owner = ? AND finished_at IS NULL"
)
#: Shutdown stopped a durable task: back to the queue, with no owner and no
#: lease, so the next process takes it at once. Being ended set its cancel
#: flag, which is not a request to stop: cleared, or the next process would
#: cancel the task. Parameters: progress, errors, id, owner.
RELEASE = (
    "UPDATE bgtasks_task SET status = 'queued', owner = NULL,"
    " lease_until = 0, cancel_requested = 0, progress = ?, errors = ?"
    " WHERE id = ? AND owner = ? AND finished_at IS NULL"
)
#: A task's end: its whole row, inserted if its INSERT never ran (a quick
#: task is written once), else updated as long as this process owns it and
#: it has not ended elsewhere. The parameters: id, name, pool, durable,
#: arguments, owner, submitted_at, then the end's status, outcome, progress,
#: errors, cancel_requested, attempt, started_at, finished_at and retry_of.
FINISH = (
    "INSERT INTO bgtasks_task (id, name, pool, durable, arguments, owner, submitted_at,"
    " status, outcome, progress, errors, cancel_requested, attempt, started_at,"
    " finished_at, retry_of, lease_until)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
    " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
    " outcome = excluded.outcome, progress = excluded.progress, errors = excluded.errors,"
    " cancel_requested = max(cancel_requested, excluded.cancel_requested),"
    " attempt = excluded.attempt, started_at = coalesce(started_at, excluded.started_at),"
    " finished_at = excluded.finished_at, lease_until = 0"
    " WHERE owner = excluded.owner AND finished_at IS NULL"
)


#: Per pool and status, the tasks within BGTASKS_RESULT_TTL, and those that
#: finished after a time: ttl, now - ttl, since.
COUNTS = (
    "SELECT pool, status, count(*), sum(coalesce(finished_at, 0) > ?3) FROM bgtasks_task"
    " WHERE finished_at IS NULL OR ?1 IS NULL OR finished_at > ?2 GROUP BY pool, status"
)


def check_started(snapshot: TaskSnapshot, statement: Statement) -> None:
    """After the write of a task's start: log if it changed no row."""
    if statement.rowcount:
        return
    # Another process cancelled the task in the moment between a worker
    # taking it and its start being written. It runs: its next look at
    # cancel_requested reads the cancelled row and stops it.
    logger.warning(
        "Task %r (id %s) was cancelled from another process just as it started;"
        " it was asked to stop.",
        snapshot.message.name,
        snapshot.message.id,
    )


def check_stored(snapshot: TaskSnapshot, lease: float, statement: Statement) -> None:
    """After the write of a task's end: log if it changed no row, unless the
    task was cancelled."""
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
