"""``BGTASKS_BACKEND = "rq"``: tasks run on RQ workers, on any machine that
reaches the same Redis.

The web side (:class:`RQBackend`) puts each task's message, as JSON, on the
RQ queue of its pool, ``bgtasks.<pool>``. A worker (``flask bgtasks
worker``, or ``rq worker -w flask_bgtasks.backends.rq.Worker``) builds the
app once per process and runs each message with the same run function as a
thread pool, so ``current_task``, retries, timeouts, signals and the store
behave the same. The store, which must be the Redis store, decides: a
worker refuses a task whose record says cancelled.

Nothing crosses Redis as pickle: the jobs use RQ's JSON serializer, and a
worker runs no job but ours, so writing to Redis does not let anyone run
code in the workers.
"""

from __future__ import annotations

import logging
import signal
import threading
import typing as t

from .._errors import UsageError
from .._redis import client, import_redis, unavailable_as
from . import Backend, NothingHeldHere, Run

if t.TYPE_CHECKING:
    from .._config import Config, PoolConfig
    from .._message import TaskMessage, TaskSnapshot
    from ..stores import TaskStore
    from ..stores.redis import RedisStore

logger = logging.getLogger("flask_bgtasks")

#: The one function an RQ job of ours calls, by its import path.
ENTRY = "flask_bgtasks.backends.rq.run_job"
#: Seconds RQ keeps a job that failed (ours fail only if the worker breaks).
FAILURE_TTL = 7 * 24 * 3600


def queue_name(pool: str) -> str:
    """The RQ queue of a pool."""
    return f"bgtasks.{pool}"


def _import_rq() -> t.Any:
    try:
        import rq
    except ImportError:
        raise UsageError(
            "BGTASKS_BACKEND = 'rq' needs the 'rq' package: pip install 'flask-bgtasks[rq]'."
        ) from None
    return rq


class RQBackend(NothingHeldHere):
    """Queue tasks on RQ, in the Redis of ``BGTASKS_STORE``.

    :param url: The Redis URL.
    :param grace: Seconds past a task's ``timeout`` before RQ stops it hard.
    :param engine_timeout: RQ's hard limit for a task without ``timeout``,
        or ``None`` for none.

    .. versionadded:: 0.1
    """

    remote = True

    def __init__(
        self,
        pools: t.Mapping[str, PoolConfig],
        name: str,
        run: Run,
        *,
        url: str,
        grace: float = 3.0,
        engine_timeout: float | None = 3600.0,
    ) -> None:
        super().__init__(pools, name, run)
        rq = _import_rq()
        from rq.serializers import JSONSerializer

        self.url = url
        self.grace = grace
        self.engine_timeout = engine_timeout
        self.connection = client(url, decode=False)
        self._serializer = JSONSerializer
        self.queues = {
            pool: rq.Queue(queue_name(pool), connection=self.connection, serializer=JSONSerializer)
            for pool in pools
        }

    @classmethod
    def from_config(cls, config: Config, name: str, run: Run) -> Backend:
        kind, url = config.store
        if kind != "redis" or url is None:
            raise UsageError(
                "BGTASKS_BACKEND = 'rq' takes its Redis from BGTASKS_STORE, which must"
                " be 'redis://host:6379/0'."
            )
        return cls(
            config.pools,
            name,
            run,
            url=url,
            grace=config.timeout_grace,
            engine_timeout=config.engine_timeout,
        )

    def hard_limit(self, message: TaskMessage) -> int:
        """RQ's time limit for the task, a backstop for its cooperative
        ``timeout``: that plus the grace; for a task without one,
        ``BGTASKS_ENGINE_TIMEOUT``, never RQ's 180 s. ``-1`` for none."""
        timeout = message.options.timeout
        if timeout is not None:
            return int(timeout + self.grace) + 1
        return -1 if self.engine_timeout is None else int(self.engine_timeout)

    def send(self, store: TaskStore, snapshot: TaskSnapshot) -> None:
        """Record the task and queue its job in one Redis transaction, so
        that a lost connection leaves both undone: one round trip. The store
        is the Redis store on the same URL: :meth:`from_config` saw to it."""
        redis_store = t.cast("RedisStore", store)
        message = snapshot.message
        queue = self._queue(message.pool)
        with unavailable_as(self.url, f"record and queue task {message.name!r}"):
            pipe = self.connection.pipeline(transaction=True)
            pipe.multi()  # before the store's writes, as RQ wants
            redis_store.add(snapshot, pipe)
            self._enqueue(queue, message, pipe)
            pipe.execute()

    def submit(self, message: TaskMessage) -> None:
        """Queue a task that is recorded already: one taken over from a
        dead worker."""
        queue = self._queue(message.pool)
        with unavailable_as(self.url, f"queue task {message.name!r}"):
            if message.attempt:
                # Its old job leaves RQ's registries first, where RQ's
                # cleanup would fail it later.
                self._delete_job(message.id)
            self._enqueue(queue, message)

    def _queue(self, pool: str) -> t.Any:
        try:
            queue = self.queues[pool]
        except KeyError:
            raise self.unknown_pool(pool) from None
        self.check_open()
        return queue

    def _enqueue(self, queue: t.Any, message: TaskMessage, pipeline: t.Any = None) -> None:
        queue.enqueue(
            ENTRY,
            message.to_json(),
            job_id=message.id,
            job_timeout=self.hard_limit(message),
            # Our store keeps the outcome. 1 s rather than 0, which makes
            # RQ delete the job with 7 more round trips; it expires instead.
            result_ttl=1,
            failure_ttl=FAILURE_TTL,
            description=f"{message.name} (task {message.id})",
            pipeline=pipeline,
        )

    def _delete_job(self, job_id: str) -> None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            Job.fetch(job_id, connection=self.connection, serializer=self._serializer).delete()
        except NoSuchJobError:
            pass

    def stop_task(self, task_id: str, queued: bool) -> None:
        """A queued task's job leaves RQ's queue (a worker that took it
        already refuses it). For a running one, ask the worker to kill the
        process it runs it in: a :class:`ForkWorker` does; a :class:`Worker`
        runs tasks in its own process, which it can't kill, so there the
        cancel stays a request."""
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError

        try:
            with unavailable_as(self.url, "take the task out of RQ"):
                if queued:
                    self._delete_job(task_id)
                else:
                    send_stop_job_command(self.connection, task_id, serializer=self._serializer)
        except (NoSuchJobError, InvalidJobOperation) as exc:
            logger.info("Task %s was not stopped by force: %s", task_id, exc)

    def workers(self) -> dict[str, tuple[int | None, int | None]]:
        """The RQ workers that listen on each pool's queue, on any machine."""
        from rq import Worker

        with unavailable_as(self.url, "count the workers"):
            return {
                pool: (Worker.count(connection=self.connection, queue=queue), None)
                for pool, queue in self.queues.items()
            }

    def work(
        self, pools: t.Collection[str], *, burst: bool, fork: bool, quiet: bool = False
    ) -> None:
        """Run an RQ worker for ``pools`` in this process until it is
        stopped (SIGTERM or Ctrl-C: the running task finishes first) or,
        with ``burst``, until the queues are empty. If Redis goes away, wait
        until it is back and go on."""
        unknown = sorted(set(pools) - self.pool_names)
        if unknown:
            raise self.unknown_pool(unknown[0])
        side = self.worker_side
        if side is None:
            raise UsageError(f"{self.name!r} has no runtime to run its tasks.")
        from ._rq_worker import ForkWorker, Worker

        side.enter_process()
        worker_class = ForkWorker if fork else Worker
        connection = client(self.url, decode=False, timeout=None)
        names = [queue_name(pool) for pool in sorted(pools)]
        redis = import_redis()
        while True:
            try:
                worker = worker_class(names, connection=connection, side=side)
                # RQ's loggers are at INFO unless told otherwise.
                worker.work(burst=burst, logging_level="WARNING" if quiet else None)
            except redis.RedisError as exc:
                # RQ gives up on some lost connections (and its teardown then
                # fails too): this one waits for Redis instead.
                logger.warning("The worker stopped: %s: %s", type(exc).__name__, exc)
            else:
                if worker.stopping or burst:
                    return
            if not _wait_for_redis(connection, self.url):
                return


def _wait_for_redis(connection: t.Any, url: str) -> bool:
    """After the worker stopped on an error: wait until Redis answers again.
    ``False`` if a SIGTERM or Ctrl-C came first."""
    from .._redis import shown_url

    redis = import_redis()
    stop = threading.Event()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in handlers:
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        delay = 0.5
        logger.warning("Lost the Redis at %s; waiting for it to come back.", shown_url(url))
        while not stop.wait(delay):
            try:
                connection.ping()
            except redis.RedisError:
                delay = min(delay * 2, 5.0)
                continue
            logger.warning("The Redis at %s is back; the worker goes on.", shown_url(url))
            return True
        return False
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_job(data: str) -> None:
    """The function of every RQ job of ours: run the task's message."""
    from ._rq_worker import perform_job

    perform_job(data)


def __getattr__(name: str) -> t.Any:
    # The workers import rq's worker machinery, which a web process never
    # needs: loaded when first named, as 'rq worker -w' names them.
    if name in ("Worker", "ForkWorker"):
        from . import _rq_worker

        return getattr(_rq_worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
