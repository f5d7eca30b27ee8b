"""The SQLite store's periodic upkeep, which its writer thread runs every
third of the lease.

One round renews the leases of this process's tasks, marks the tasks of dead
processes lost (or cancelled, if someone asked them to stop), takes over the
durable tasks of dead processes in batches and hands them to the runtime,
and deletes the records past ``BGTASKS_RESULT_TTL`` and
``BGTASKS_MAX_RESULTS``.
"""

from __future__ import annotations

import logging
import time
import typing as t

from ._fields import make_record
from ._sqlite_schema import EVICT_OLDEST

if t.TYPE_CHECKING:
    from . import Recover, TaskNames
    from ._writer import Statement, Writer

logger = logging.getLogger("flask_bgtasks")

#: Most durable tasks taken over in one go.
RECOVER_BATCH = 100


class Upkeep:
    """The upkeep of one process's SQLite store; made anew in a forked child.

    :param writer: The store's writer, whose thread runs :meth:`run`.
    :param process: This process, as the row's owner column names it.
    :param lease: Seconds a lease lasts once renewed.
    :param ttl: Seconds to keep a finished record, or ``None``.
    :param max_results: Most finished records kept.
    :param owned: The store's set of the ids of the unfinished tasks this
        process runs. A task taken over is added to it before it can run.
    """

    def __init__(
        self,
        writer: Writer,
        process: str,
        lease: float,
        ttl: float | None,
        max_results: int,
        owned: set[str],
    ) -> None:
        self._writer = writer
        self._process = process
        self._lease = lease
        self._ttl = ttl
        self._max_results = max_results
        self._owned = owned

    def run(self, recover: Recover, task_names: TaskNames) -> None:
        """One round of upkeep; ``recover`` and ``task_names`` are what the
        runtime gave :meth:`~flask_bgtasks.stores.TaskStore.activate`."""
        now = time.time()
        self._writer.write(
            "UPDATE bgtasks_task SET lease_until = ? WHERE owner = ? AND finished_at IS NULL",
            (now + self._lease, self._process),
        )
        self._mark_lost(now)
        self._take_over(now, recover, task_names)
        self._evict(now)

    def _write(self, sql: str, params: t.Any) -> Statement:
        return self._writer.write(sql, params, wait=True)

    def _mark_lost(self, now: float) -> None:
        # Tasks of dead processes that someone asked to stop: done with.
        self._write(
            "UPDATE bgtasks_task SET status = 'cancelled', finished_at = ?, lease_until = 0"
            " WHERE finished_at IS NULL AND lease_until < ? AND cancel_requested = 1",
            (now, now),
        )
        rows = self._write(
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

    def _take_over(self, now: float, recover: Recover, task_names: TaskNames) -> None:
        names = sorted(task_names())
        if names:
            # Those released at shutdown first: they have no owner.
            self._take_over_batches(now, names, recover, released=True)
            self._take_over_batches(now, names, recover, released=False)

    def _take_over_batches(
        self, now: float, names: list[str], recover: Recover, *, released: bool
    ) -> None:
        marks = ", ".join("?" * len(names))
        owner = "owner IS NULL" if released else "owner IS NOT NULL"
        while True:
            rows = self._write(
                "UPDATE bgtasks_task SET owner = ?, lease_until = ?, status = 'queued',"
                " progress = NULL WHERE id IN (SELECT id FROM bgtasks_task WHERE"
                f" finished_at IS NULL AND durable = 1 AND lease_until < ? AND {owner}"
                f" AND name IN ({marks}) ORDER BY submitted_at LIMIT ?) RETURNING *",
                (self._process, now + self._lease, now, *names, RECOVER_BATCH),
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
                if not recover(record):
                    self._owned.discard(record.id)
                    refused.append(record.id)
            if refused:
                self._write(
                    "UPDATE bgtasks_task SET owner = NULL, lease_until = 0 WHERE owner = ?"
                    f" AND status = 'queued' AND id IN ({', '.join('?' * len(refused))})",
                    (self._process, *refused),
                )
            if len(rows) < RECOVER_BATCH or refused:
                return

    def _evict(self, now: float) -> None:
        if self._ttl is not None:
            self._write("DELETE FROM bgtasks_task WHERE finished_at < ?", (now - self._ttl,))
        self._write(EVICT_OLDEST, (self._max_results,))
