"""The Redis store's upkeep: a thread per process that, every third of the
lease, renews the leases of the tasks this process holds, takes over the
durable tasks of dead processes (handing them to the runtime), fails their
other tasks as lost, and drops the records past ``BGTASKS_RESULT_TTL``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import typing as t

from .._errors import StoreUnavailable
from .._redis import import_redis, unavailable_as
from ._fields import record_from_hash

if t.TYPE_CHECKING:
    from . import Recover, TaskNames
    from ._redis_scripts import Scripts

logger = logging.getLogger("flask_bgtasks")

#: Most tasks of dead processes looked at in one round.
RECOVER_BATCH = 100
_numbers = itertools.count()


class Upkeep:
    """The upkeep of one process's Redis store; made anew in a forked child.

    :param scripts: The store's scripts and keys.
    :param process: This process, as records name it.
    :param lease: Seconds a lease lasts once renewed.
    :param close_args: The TTL in ms and ``BGTASKS_MAX_RESULTS``, for a
        record that the take-over finishes.
    :param held: The store's set of the ids of the unfinished tasks this
        process holds. A task taken over is added before it can run.
    :param engine: Queued tasks wait in an engine's queue: one taken over is
        handed to it, and this process does not hold it.
    :param expire: Drops the records past the TTL.
    """

    def __init__(
        self,
        scripts: Scripts,
        process: str,
        lease: float,
        close_args: list[t.Any],
        held: set[str],
        *,
        engine: bool,
        expire: t.Callable[[], None],
    ) -> None:
        self._scripts = scripts
        self._process = process
        self._lease = lease
        self._close_args = close_args
        self._held = held
        self._engine = engine
        self._expire = expire
        self._recover: Recover = lambda record: False
        self._task_names: TaskNames = lambda: ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, recover: Recover, task_names: TaskNames) -> None:
        """Start the thread, once."""
        self._recover = recover
        self._task_names = task_names
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(
                target=self._loop, name=f"bgtasks-redis-{next(_numbers)}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        redis = import_redis()
        while not self._stop.wait(self._lease / 3):
            try:
                self.run()
            except (redis.RedisError, StoreUnavailable) as exc:
                # Redis is away: try again next round, when it may be back.
                logger.warning("Task store upkeep failed: %s", exc)
            except Exception:  # pragma: no cover - a bug; keep renewing
                logger.exception("Task store upkeep failed.")

    def run(self) -> None:
        """One round."""
        scripts = self._scripts
        now = time.time()
        held = list(self._held)
        if held:
            with unavailable_as(scripts.url, "renew its leases"):
                scripts.redis.zadd(scripts.leases, dict.fromkeys(held, now + self._lease), xx=True)
        taken, lost = scripts.run(
            "take_over",
            # The first key is the script's own, set per task: a key under
            # the prefix stands in, so that a Redis ACL limited to it allows it.
            [scripts.key(""), *scripts.sets()],
            [
                repr(now),
                self._process,
                now + self._lease,
                RECOVER_BATCH,
                scripts.prefix,
                *self._close_args[:2],
                *sorted(self._task_names()),
            ],
            "take over the tasks of dead processes",
        )
        for task_id in lost:
            logger.error("Task %s was lost: its process stopped without finishing it.", task_id)
        for task_id in taken:
            self._take_over(task_id)
        self._expire()

    def _take_over(self, task_id: str) -> None:
        scripts = self._scripts
        with unavailable_as(scripts.url, "read the task"):
            fields: dict[str, str] = scripts.redis.hgetall(scripts.key(task_id))  # type: ignore[assignment]
        if not fields:  # pragma: no cover - expired in between
            return
        record = record_from_hash(fields)
        logger.warning(
            "Task %r (id %s) was left unfinished by a process that stopped; running it"
            " again (attempt %d).",
            record.name,
            task_id,
            record.attempt + 1,
        )
        if self._engine:
            # Held by nobody before it is queued, since a worker may start it
            # at once, and must find no other process holding it.
            self._hand_over(task_id, "engine")
            queued = self._recover(record)
            self._hand_over(task_id, "queued" if queued else "release")
            return
        self._held.add(task_id)  # held here before it can run, and end
        if not self._recover(record):
            self._held.discard(task_id)
            self._hand_over(task_id, "release")

    def _hand_over(self, task_id: str, how: str) -> None:
        scripts = self._scripts
        scripts.run(
            "hand_over",
            [scripts.key(task_id), scripts.leases],
            [task_id, self._process, how, time.time() + self._lease],
            "hand the task over",
        )
