"""What ``bg.stats()`` reports, for the ``flask bgtasks stats`` command and
the dashboard: how many tasks are in each status, per pool, how many
finished in the last minute, and each pool's workers.

The counts come from the store, so with a shared store they cover every
process; the workers come from the backend. Plain values, no live objects.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

from ._record import TaskStatus

if t.TYPE_CHECKING:
    from ._config import Config
    from ._record import TaskRecord
    from .backends import Backend
    from .stores import TaskStore


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """One pool, now.

    .. versionadded:: 0.1
    """

    #: The pool's name.
    name: str
    #: Tasks waiting in its queue (or for a retry).
    queued: int
    #: Tasks a worker runs now.
    running: int
    #: Workers that serve it now, as far as this process can tell: the
    #: threads or child processes of a pool here, the engine's workers that
    #: listen on its queue; ``None`` if unknown.
    workers: int | None
    #: The most workers a pool of this process starts; ``None`` on an engine.
    max_workers: int | None


@dataclasses.dataclass(frozen=True)
class TaskStats:
    """Every task the store knows, counted. See :meth:`BGTasks.stats
    <flask_bgtasks.BGTasks.stats>`.

    .. versionadded:: 0.1
    """

    #: How many tasks are in each status (every status is a key).
    by_status: dict[str, int]
    #: Each pool of the app, by name.
    pools: dict[str, PoolStats]
    #: Tasks that ended in the last 60 seconds.
    finished_last_minute: int
    #: The store's kind (``"memory"``, ``"sqlite"``, ``"redis"``, ...), and
    #: whether it covers every process (``shared``).
    store: str
    shared: bool
    #: ``BGTASKS_BACKEND``.
    backend: str

    def to_dict(self) -> dict[str, t.Any]:
        """As plain JSON values, for ``--json`` and the dashboard."""
        return dataclasses.asdict(self)


#: Counts of tasks by (pool, status), as a store gives them.
Counts = dict[tuple[str, str], int]


def count_records(records: t.Iterable[TaskRecord], since: float) -> tuple[Counts, int]:
    """Count records by pool and status, and those finished after ``since``
    (a Unix time): what a store without a faster way returns."""
    counts: Counts = {}
    finished = 0
    for record in records:
        key = (record.pool, record.status.value)
        counts[key] = counts.get(key, 0) + 1
        if record.finished_at is not None and record.finished_at.timestamp() > since:
            finished += 1
    return counts, finished


def collect_stats(
    store: TaskStore, backend: Backend, unfinished: t.Iterable[TaskRecord], config: Config
) -> TaskStats:
    """The store's counts and the backend's workers. ``unfinished`` are the
    records of this process's tasks that have not ended, which a memory
    store does not hold unless their id was read."""
    since = time.time() - 60
    if store.shared:
        counts, finished = store.counts(since)
    else:
        records = {record.id: record for record in store.records(None, 1_000_000)}
        for record in unfinished:
            records.setdefault(record.id, record)
        counts, finished = count_records(records.values(), since)
    return make_stats(
        counts,
        finished,
        backend.workers(),
        store=config.store[0],
        shared=store.shared,
        backend=config.backend,
    )


def make_stats(
    counts: Counts,
    finished: int,
    pools: t.Mapping[str, tuple[int | None, int | None]],
    *,
    store: str,
    shared: bool,
    backend: str,
) -> TaskStats:
    """Put a store's counts and a backend's workers together.

    :param pools: Per pool of the app: its workers now and its most workers.
    """
    by_status = {status.value: 0 for status in TaskStatus}
    for (_, status), number in counts.items():
        by_status[status] = by_status.get(status, 0) + number
    names = sorted(set(pools) | {pool for pool, _ in counts})
    return TaskStats(
        by_status=by_status,
        pools={
            name: PoolStats(
                name=name,
                queued=counts.get((name, TaskStatus.QUEUED.value), 0),
                running=counts.get((name, TaskStatus.RUNNING.value), 0),
                workers=pools.get(name, (None, None))[0],
                max_workers=pools.get(name, (None, None))[1],
            )
            for name in names
        },
        finished_last_minute=finished,
        store=store,
        shared=shared,
        backend=backend,
    )
