"""A bounded pool of worker threads. Knows nothing of Flask.

Written after CPython's ``concurrent.futures.thread``: a lock-free
:class:`queue.SimpleQueue` feeds daemon worker threads, started lazily; a
``None`` sentinel stops the workers; they hold only a weak reference to their
pool, so a forgotten pool does not keep its threads alive.

The accepted, unfinished tasks are kept in a set. Submitters add to it under
the pool's lock; workers discard from it without taking any lock (set
operations are atomic), because a lock taken by every worker after every task
is contended by the submitters and costs more than the task itself.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import typing as t
import weakref
from queue import Empty, SimpleQueue

from ._errors import QueueFull, ShutdownError
from ._process import ProcessLocal
from ._result import TaskResult, logger


class _Retire:
    """Put on the queue before a fork: the worker that takes it exits."""


_RETIRE = _Retire()
_Queue = SimpleQueue[TaskResult[t.Any] | _Retire | None]
_pool_numbers = itertools.count()


class WorkerPool(ProcessLocal):
    """Run :class:`TaskResult` jobs on at most ``max_workers`` threads.

    :param name: Used in the worker threads' names: ``bgtasks-<name>-<n>``.
    :param max_workers: Most threads that run tasks at once.
    :param queue_size: Most tasks that may wait for a free worker, or
        ``None`` for no limit.
    """

    def __init__(self, name: str, max_workers: int, queue_size: int | None) -> None:
        self.name = name
        self.max_workers = max_workers
        self.queue_size = queue_size
        # Accepted but unfinished tasks are at most the running ones plus a
        # full queue.
        self._capacity = math.inf if queue_size is None else max_workers + queue_size
        self._number = next(_pool_numbers)
        super().__init__()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: _Queue = SimpleQueue()
        self._threads: list[threading.Thread] = []
        # About one token per worker that waits for a task, as in CPython's
        # ThreadPoolExecutor: a submit that takes one leaves the task to
        # that worker instead of starting a new thread.
        self._idle_workers = threading.Semaphore(0)
        self._in_flight: set[TaskResult[t.Any]] = set()
        self._joiners = 0
        self._closed = False
        # Set at the shutdown deadline: from then on workers start nothing.
        self._past_deadline = threading.Event()

    def submit(self, result: TaskResult[t.Any]) -> None:
        """Queue a result whose job is set. Never blocks.

        :raises QueueFull: If ``queue_size`` tasks are already waiting.
        :raises ShutdownError: After :meth:`close`.
        """
        self._check_process()
        with self._lock:
            if self._closed:
                raise ShutdownError(
                    f"The task pool {self.name!r} is shut down and accepts no new"
                    " tasks. Submit before shutdown(), or create a new app."
                )
            if len(self._in_flight) >= self._capacity:
                raise QueueFull(
                    f"The task pool {self.name!r} is full: {self.max_workers}"
                    f" tasks running and {self.queue_size} queued. Retry later,"
                    " or raise BGTASKS_QUEUE_SIZE or BGTASKS_MAX_WORKERS (or the"
                    " pool's entry in BGTASKS_POOLS)."
                )
            self._in_flight.add(result)
            self._queue.put(result)
            if self._idle_workers.acquire(blocking=False):
                return
            if len(self._threads) < self.max_workers:
                self._start_worker()

    def _start_worker(self) -> None:
        queue = self._queue

        # When the pool is garbage collected, wake the workers so they exit.
        def wake(_: object) -> None:
            queue.put(None)

        thread = threading.Thread(
            target=_work,
            args=(weakref.ref(self, wake), queue, self._idle_workers, self._past_deadline),
            name=f"bgtasks-{self.name}-{self._number}_{len(self._threads)}",
            # Daemon threads, so that a stuck task can't keep the process
            # alive; draining at exit is the shutdown's job.
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def _before_fork(self) -> None:
        # One retire token per worker, behind the queued tasks: the idle
        # workers exit at once and the busy ones after the tasks queued now,
        # so a process that forks, such as a Gunicorn master, is left with
        # none of our threads. Workers start again on the next submit. The
        # token is not waited for: a thread that waits for a task holds no
        # lock that the child could copy.
        with self._lock:
            for _ in self._threads:
                self._queue.put(_RETIRE)

    def _retire(self, thread: threading.Thread) -> None:
        with self._lock:
            if thread in self._threads:
                self._threads.remove(thread)

    def _task_done(self, result: TaskResult[t.Any]) -> None:
        self._in_flight.discard(result)
        # A joiner counts itself under the lock before it looks at the set,
        # so if it is waiting, it is counted by now and this wakes it.
        if self._joiners and not self._in_flight:
            with self._idle:
                self._idle.notify_all()

    def unfinished(self) -> list[TaskResult[t.Any]]:
        """The accepted tasks that have not finished yet."""
        self._check_process()
        # A task cancelled while queued stays in the set until a worker
        # takes it off the queue, which after the deadline never happens.
        return [result for result in list(self._in_flight) if not result.done()]

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is queued or running.

        :return: ``True`` if the pool went idle, ``False`` at the timeout.
        """
        self._check_process()
        with self._idle:
            self._joiners += 1
            try:
                return self._idle.wait_for(lambda: not self._in_flight, timeout)
            finally:
                self._joiners -= 1

    def close(self, cancel_pending: bool = False) -> list[TaskResult[t.Any]]:
        """Stop accepting tasks; the workers exit once the queue is empty.

        Safe to call more than once, from any thread.

        :param cancel_pending: Cancel the queued tasks instead of running them.
        :return: The tasks it cancelled.
        """
        self._check_process()
        with self._lock:
            self._closed = True
        cancelled = self._cancel_queued() if cancel_pending else []
        # One sentinel; each worker puts it back for the next before exiting.
        self._queue.put(None)
        return cancelled

    def wait(self, deadline: float | None = None) -> bool:
        """After :meth:`close`, wait for the workers to exit.

        :param deadline: A :func:`time.monotonic` time to give up at.
        :return: ``True`` if every worker has exited.
        """
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def interrupt(self) -> tuple[list[TaskResult[t.Any]], list[TaskResult[t.Any]]]:
        """At the shutdown deadline: cancel the tasks still queued and end
        the ones still running (see :meth:`TaskResult._interrupt`).

        :return: The cancelled and the interrupted tasks.
        """
        # First stop the workers from starting queued tasks, or a worker that
        # is freed while this runs would start one after the deadline.
        self._past_deadline.set()
        cancelled: list[TaskResult[t.Any]] = []
        interrupted: list[TaskResult[t.Any]] = []
        for result in self.unfinished():
            if result._cancel_queued(shutdown=True):
                _log_cancelled(result, "was still queued at the shutdown deadline")
                cancelled.append(result)
            elif result._interrupt():
                interrupted.append(result)
        return cancelled, interrupted

    def _cancel_queued(self) -> list[TaskResult[t.Any]]:
        cancelled: list[TaskResult[t.Any]] = []
        while True:
            try:
                result = self._queue.get_nowait()
            except Empty:
                return cancelled
            if result is None or isinstance(result, _Retire):
                continue
            if result._cancel_queued(shutdown=True):
                _log_cancelled(result, "was queued at shutdown")
                cancelled.append(result)
            self._task_done(result)


def _log_cancelled(result: TaskResult[t.Any], when: str) -> None:
    if result.released:
        then = "was left in the store for the next process to run"
    else:
        then = "was cancelled"
    logger.warning("Task %r (id %s) %s and %s.", result.name, result.id, when, then)


def _work(
    pool_ref: weakref.ref[WorkerPool],
    queue: _Queue,
    idle_workers: threading.Semaphore,
    past_deadline: threading.Event,
) -> None:
    while True:
        try:
            result = queue.get_nowait()
        except Empty:
            # Nothing to do: count this worker as idle while it waits, and
            # take the token back once it has a task, unless the submitter of
            # that task took it already. So the tokens follow the idle workers
            # closely, and a busy worker is never counted as idle for long.
            idle_workers.release()
            result = queue.get()
            idle_workers.acquire(blocking=False)
        if result is None:
            queue.put(None)
            return
        if isinstance(result, _Retire):
            pool = pool_ref()
            if pool is not None:
                pool._retire(threading.current_thread())
            return
        if past_deadline.is_set():
            # Left in the in-flight set, where interrupt() cancels it.
            continue
        job = result._claim()
        if job is not None:
            result._run(job)
        pool = pool_ref()
        if pool is None:
            return
        pool._task_done(result)
        del result, job, pool
