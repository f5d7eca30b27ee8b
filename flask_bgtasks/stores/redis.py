"""A store in Redis, shared by every process on every machine that uses the
same Redis: ``BGTASKS_STORE = "redis://host:6379/0"``.

Every task is a hash, written when it is submitted, and changed by one
atomic script at each step (see :mod:`._redis_scripts`), so a worker never
starts a task whose record says cancelled, and an end never overwrites a
cancel. The writes are synchronous: one round trip each, and at most two
per task in a worker that runs it (start and end) unless it reports
progress.

Leases work as in the SQLite store: the process that holds an unfinished
task renews its lease; a lease that ended means a dead process, whose
durable tasks another process takes over and runs again, and whose other
tasks fail as lost. With an engine backend (RQ), queued tasks are held by
the engine's queue, not by a process, so only running tasks have leases.
"""

from __future__ import annotations

import logging
import time
import typing as t

from .._errors import StoreUnavailable
from .._process import ProcessLocal
from .._record import TaskRecord, TaskStatus, this_process
from .._redis import check_reachable, client, shown_url, unavailable_as
from . import DEFAULT_MAX_PAYLOAD_BYTES, Recover, TaskNames, TaskStore
from ._fields import (
    arguments_json,
    final_outcome_json,
    outcome_json,
    progress_json,
    record_from_hash,
    time_field,
)
from ._payload import errors_json
from ._redis_scripts import Scripts
from ._redis_upkeep import Upkeep

if t.TYPE_CHECKING:
    from redis.client import Pipeline

    from .._message import TaskSnapshot
    from .._stats import Counts

logger = logging.getLogger("flask_bgtasks")


class RedisStore(TaskStore, ProcessLocal):
    """Keep task records in Redis.

    :param url: ``redis://[user:password@]host:port/db``, or ``rediss://``
        for TLS.
    :param ttl: Seconds to keep a finished record, or ``None``.
    :param max_results: Most finished records kept; the oldest go first.
    :param lease: Seconds after which the running tasks of a process that
        stopped renewing them count as lost.
    :param max_payload_bytes: Most bytes of JSON kept of one task's
        arguments, value and errors; ``None`` for no limit.
    :param engine: Queued tasks wait in an engine's queue (RQ) rather than
        in a process, and values cross as JSON only.
    :param prefix: Put before every key.
    :param process: The name of this process in the records; ``host:pid``
        by default.
    :raises StoreError: If Redis can't be reached, or refuses the
        credentials.

    .. versionadded:: 0.1
    """

    shared = True
    distributed = True

    def __init__(
        self,
        url: str,
        ttl: float | None,
        max_results: int,
        lease: float,
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        engine: bool = False,
        prefix: str = "bgtasks:",
        process: str | None = None,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.max_results = max_results
        self.lease = lease
        self.max_payload_bytes = max_payload_bytes
        self.engine = engine
        self.prefix = prefix
        self._process_name = process
        ProcessLocal.__init__(self)
        check_reachable(self._redis, url)

    def _init_state(self) -> None:
        redis = self._redis = client(self.url, decode=True)
        self._scripts = scripts = Scripts(redis, self.url, self.prefix)
        self._keys = scripts.sets()
        self._process = self._process_name or this_process()
        # The ids of the unfinished tasks this process holds, whose leases
        # need renewing; values encoded by check_value, for finished().
        self._held: set[str] = set()
        self._outcomes: dict[str, str] = {}
        self._upkeep = Upkeep(
            scripts,
            self._process,
            self.lease,
            self._close_args(),
            self._held,
            engine=self.engine,
            expire=self._expire,
        )

    def __repr__(self) -> str:
        return f"<RedisStore {shown_url(self.url)}>"

    def _key(self, task_id: str) -> str:
        return self._scripts.key(task_id)

    def _run(self, script: str, keys: list[str], args: list[t.Any], doing: str) -> t.Any:
        self.check_process()
        return self._scripts.run(script, keys, args, doing)

    def _close_args(self) -> list[t.Any]:
        ttl_ms = 0 if self.ttl is None else max(1, int(self.ttl * 1000))
        return [ttl_ms, self.max_results, self.prefix]

    # -- the life of a task ---------------------------------------------

    def add(self, snapshot: TaskSnapshot, pipeline: Pipeline | None = None) -> None:
        """Record a new task. With ``pipeline``, a transaction on the same
        Redis, the writes join it and the caller executes it: an engine
        queues the task's job in the same transaction."""
        message = snapshot.message
        arguments = arguments_json(message, self.max_payload_bytes)
        self.check_process()
        held = not self.engine
        fields: dict[str, str | int] = {
            "id": message.id,
            "name": message.name,
            "pool": message.pool,
            "durable": int(message.durable),
            "arguments": arguments,
            "status": TaskStatus.QUEUED.value,
            "outcome": "",
            "progress": "",
            "errors": errors_json(snapshot, self.max_payload_bytes),
            "attempt": message.attempt,
            "cancel_requested": 0,
            "owner": self._process if held else "",
            "submitted_at": repr(message.submitted_at),
            "started_at": "",
            "finished_at": "",
            "retry_of": message.retry_of or "",
        }
        index, _, leases = self._keys
        with unavailable_as(self.url, f"record task {message.name!r}"):
            pipe = self._redis.pipeline(transaction=True) if pipeline is None else pipeline
            pipe.hset(self._key(message.id), mapping=t.cast(t.Any, fields))
            pipe.zadd(index, {message.id: message.submitted_at})
            if held:
                pipe.zadd(leases, {message.id: time.time() + self.lease})
            if pipeline is None:
                pipe.execute()
        if held:
            self._held.add(message.id)

    def discard(self, task_id: str) -> None:
        self._held.discard(task_id)
        index, _, leases = self._keys
        try:
            with unavailable_as(self.url, "remove a task it could not queue"):
                pipe = self._redis.pipeline(transaction=True)
                pipe.delete(self._key(task_id))
                pipe.zrem(index, task_id)
                pipe.zrem(leases, task_id)
                pipe.execute()
        except StoreUnavailable:
            logger.exception("Task %s could not be queued, and its record not removed.", task_id)

    def started(self, snapshot: TaskSnapshot) -> bool:
        task_id = snapshot.message.id
        may = self._run(
            "start",
            [self._key(task_id), self._keys[2]],
            [
                task_id,
                self._process,
                snapshot.attempt,
                time_field(snapshot.started_at),
                time.time() + self.lease,
            ],
            f"start task {snapshot.message.name!r}",
        )
        if may:
            self._held.add(task_id)
        else:
            self._held.discard(task_id)
        return bool(may)

    def changed(self, snapshot: TaskSnapshot) -> None:
        # Progress is worth less than the task: a lost connection is logged,
        # and the task goes on.
        try:
            self._run(
                "change",
                [self._key(snapshot.message.id)],
                [
                    self._process,
                    snapshot.status.value,
                    progress_json(snapshot) or "",
                    errors_json(snapshot, self.max_payload_bytes),
                    int(snapshot.cancel_requested),
                ],
                "record the task's progress",
            )
        except StoreUnavailable as exc:
            logger.warning("%s", exc)

    def check_value(self, snapshot: TaskSnapshot, value: object) -> BaseException | None:
        if value is None:
            return None
        outcome = outcome_json(snapshot, value, self.max_payload_bytes, json_only=self.engine)
        if isinstance(outcome, BaseException):
            return outcome
        self._outcomes[snapshot.message.id] = outcome
        return None

    def finished(self, snapshot: TaskSnapshot, value: object = None) -> None:
        message = snapshot.message
        task_id = message.id
        self._held.discard(task_id)
        encoded = self._outcomes.pop(task_id, None)
        key = self._key(task_id)
        errors = errors_json(snapshot, self.max_payload_bytes)
        if snapshot.released:
            self._run(
                "release",
                [key, self._keys[2]],
                [task_id, self._process, progress_json(snapshot) or "", errors],
                "release the task",
            )
            return
        outcome = ""
        if snapshot.status is TaskStatus.SUCCEEDED:
            outcome = encoded or final_outcome_json(value) or ""
        written = self._run(
            "finish",
            [key, *self._keys],
            [
                task_id,
                self._process,
                snapshot.status.value,
                outcome,
                progress_json(snapshot) or "",
                errors,
                int(snapshot.cancel_requested),
                snapshot.attempt,
                time_field(snapshot.started_at),
                time_field(snapshot.finished_at),
                *self._close_args(),
            ],
            f"record the end of task {message.name!r}",
        )
        if not written and snapshot.status is not TaskStatus.CANCELLED:
            logger.warning(
                "Task %r (id %s) ended here as %s, but its record was finished or"
                " taken over elsewhere first (cancelled by another process, or"
                " taken over after this process failed to renew its lease for"
                " BGTASKS_STORE_LEASE, %g s). The outcome here is not stored.",
                message.name,
                task_id,
                snapshot.status.value,
                self.lease,
            )

    def abandon(self, task_id: str, process: str) -> None:
        if self._run(
            "abandon",
            [self._key(task_id), self._keys[2]],
            [task_id, process],
            "end the lease of a task whose process is gone",
        ):
            self._upkeep.run()

    def cancel_requested(self, task_id: str) -> bool:
        self.check_process()
        with unavailable_as(self.url, "read the task's cancel flag"):
            flag, status = self._redis.hmget(self._key(task_id), ["cancel_requested", "status"])
        return flag == "1" or status == TaskStatus.CANCELLED.value

    # -- lookups --------------------------------------------------------

    def record(self, task_id: str) -> TaskRecord | None:
        self.check_process()
        with unavailable_as(self.url, "read the task"):
            fields: dict[str, str] = self._redis.hgetall(self._key(task_id))  # type: ignore[assignment]
        return record_from_hash(fields) if fields else None

    def records(self, status: TaskStatus | None = None, limit: int = 50) -> list[TaskRecord]:
        self.check_process()
        self._expire()
        found: list[TaskRecord] = []
        page = max(limit, 100)
        start = 0
        with unavailable_as(self.url, "list the tasks"):
            while len(found) < limit:
                ids: list[str] = self._redis.zrevrange(  # type: ignore[assignment]
                    self._keys[0], start, start + page - 1
                )
                if not ids:
                    break
                pipe = self._redis.pipeline(transaction=False)
                for task_id in ids:
                    pipe.hgetall(self._key(task_id))
                for fields in pipe.execute():
                    if fields and (status is None or fields["status"] == status):
                        found.append(record_from_hash(fields))
                start += page
        return found[:limit]

    def counts(self, since: float) -> tuple[Counts, int]:
        self.check_process()
        self._expire()
        pairs, finished = self._run(
            "count", [self._keys[0], self._keys[1]], [self.prefix, repr(since)], "count the tasks"
        )
        counts: Counts = {}
        for pool, status in zip(pairs[::2], pairs[1::2]):
            counts[pool, status] = counts.get((pool, status), 0) + 1
        return counts, int(finished)

    def cancel(self, task_id: str) -> bool:
        status = self._run(
            "cancel",
            [self._key(task_id), *self._keys],
            [task_id, repr(time.time()), *self._close_args()],
            "cancel the task",
        )
        return bool(status == TaskStatus.CANCELLED.value)

    def purge(self, older_than: float) -> int:
        return int(
            self._run(
                "purge",
                [self._keys[0], self._keys[1]],
                [repr(time.time() - older_than), self.prefix],
                "delete old records",
            )
        )

    def _expire(self) -> None:
        # Records past BGTASKS_RESULT_TTL: Redis deletes their hashes, this
        # takes their ids out of the sets.
        if self.ttl is not None:
            self.purge(self.ttl)

    def __len__(self) -> int:
        self.check_process()
        self._expire()
        with unavailable_as(self.url, "count the tasks"):
            return int(self._redis.zcard(self._keys[0]))

    # -- upkeep ---------------------------------------------------------

    def activate(self, recover: Recover, task_names: TaskNames) -> None:
        """Start this process's upkeep thread (:mod:`._redis_upkeep`)."""
        self.check_process()
        self._upkeep.start(recover, task_names)

    def upkeep(self) -> None:
        """One round of upkeep, as the thread does it."""
        self.check_process()
        self._upkeep.run()

    def close(self) -> None:
        self.check_process()
        self._upkeep.stop()
        self._redis.close()
