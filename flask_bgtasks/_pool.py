"""A bounded pool of worker threads. Knows nothing of Flask.

Written after CPython's ``concurrent.futures.thread``: a lock-free
:class:`queue.SimpleQueue` feeds daemon worker threads, started lazily; a
``None`` sentinel stops the workers; they hold only a weak reference to their
pool, so a forgotten pool does not keep its threads alive.

It queues task messages and hands each to the ``run`` function it was given;
what a task is, and how it ends, is not its business. The ids of the
accepted, unfinished messages are kept in a set. Submitters add to it under
the pool's lock; workers discard from it without taking any lock (set
operations are atomic), because a lock taken by every worker after every
task is contended by the submitters and costs more than the task itself.
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
from ._message import TaskMessage
from ._process import ProcessLocal


class _Retire:
    """Put on the queue before a fork: the worker that takes it exits."""


class Worker(t.Protocol):
    """What a worker thread of a pool runs its messages with, if not
    ``run``: a child process it looks after, say. One per thread."""

    def run(self, message: TaskMessage) -> None:
        """Run one message to its end."""

    def stop(self) -> None:
        """At the shutdown deadline: end what runs now, for real if it can."""

    def close(self) -> None:
        """The thread exits: release what the worker holds."""


_RETIRE = _Retire()
_Queue = SimpleQueue[TaskMessage | _Retire | None]
_pool_numbers = itertools.count()


class WorkerPool(ProcessLocal):
    """Run task messages on at most ``max_workers`` threads.

    :param name: Used in the worker threads' names: ``bgtasks-<name>-<n>``.
    :param max_workers: Most threads that run tasks at once.
    :param queue_size: Most tasks that may wait for a free worker, or
        ``None`` for no limit.
    :param run: Runs one message in the calling worker thread.
    :param make_worker: Makes, for each worker thread, the :class:`Worker`
        that runs its messages instead of ``run``.
    """

    def __init__(
        self,
        name: str,
        max_workers: int,
        queue_size: int | None,
        run: t.Callable[[TaskMessage], None],
        make_worker: t.Callable[[], Worker] | None = None,
    ) -> None:
        self.name = name
        self.max_workers = max_workers
        self.queue_size = queue_size
        self.run = run
        self.make_worker = make_worker
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
        self._workers: list[Worker] = []
        # About one token per worker that waits for a task, as the semaphore
        # of CPython's ThreadPoolExecutor: a submit that takes one leaves the
        # task to that worker instead of starting a new thread. A list, whose
        # append() and pop() are atomic, costs a fraction of a Semaphore.
        self._idle_tokens: list[None] = []
        self._in_flight: set[str] = set()
        self._joiners = 0
        self._closed = False
        # Set at the shutdown deadline: from then on workers start nothing.
        self._past_deadline = threading.Event()

    @property
    def workers(self) -> int:
        """How many worker threads this pool has now, in this process."""
        return len(self._threads)

    @property
    def idle_workers(self) -> int:
        """About how many workers wait for a task now."""
        return len(self._idle_tokens)

    def submit(self, message: TaskMessage) -> None:
        """Queue a message. Never blocks.

        :raises QueueFull: If ``queue_size`` tasks are already waiting.
        :raises ShutdownError: After :meth:`close`.
        """
        # No check_process() here, on the hot path: the runtime calls it
        # through the backend when it sees a new process.
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
            self._in_flight.add(message.id)
            self._queue.put(message)
            try:
                self._idle_tokens.pop()
            except IndexError:
                if len(self._threads) < self.max_workers:
                    self._start_worker()

    def _start_worker(self) -> None:
        queue = self._queue

        # When the pool is garbage collected, wake the workers so they exit.
        def wake(_: object) -> None:
            queue.put(None)

        worker = None if self.make_worker is None else self.make_worker()
        if worker is not None:
            self._workers.append(worker)
        thread = threading.Thread(
            target=_work,
            args=(weakref.ref(self, wake), queue, self._idle_tokens, self._past_deadline, worker),
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

    def retire(self, thread: threading.Thread) -> None:
        """A worker took a retire token and exits."""
        with self._lock:
            if thread in self._threads:
                self._threads.remove(thread)

    def forget(self, worker: Worker) -> None:
        """A worker thread exits, and its worker is closed."""
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)

    def task_done(self, task_id: str) -> None:
        """A worker is done with a message."""
        self._in_flight.discard(task_id)
        # A joiner counts itself under the lock before it looks at the set,
        # so if it is waiting, it is counted by now and this wakes it.
        if self._joiners and not self._in_flight:
            with self._idle:
                self._idle.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is queued or running.

        :return: ``True`` if the pool went idle, ``False`` at the timeout.
        """
        self.check_process()
        with self._idle:
            self._joiners += 1
            try:
                return self._idle.wait_for(lambda: not self._in_flight, timeout)
            finally:
                self._joiners -= 1

    def close(self, cancel_pending: bool = False) -> list[TaskMessage]:
        """Stop accepting tasks; the workers exit once the queue is empty.

        Safe to call more than once, from any thread.

        :param cancel_pending: Take the queued messages off the queue
            instead of running them.
        :return: The messages it took off the queue.
        """
        self.check_process()
        with self._lock:
            self._closed = True
        dropped = self._drop_queued() if cancel_pending else []
        # One sentinel; each worker puts it back for the next before exiting.
        self._queue.put(None)
        return dropped

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

    def stop(self) -> None:
        """At the shutdown deadline: start no more queued messages. They
        stay in the queue; whoever submitted them cancels them. Workers that
        can end their running task for real do."""
        self._past_deadline.set()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.stop()

    def _drop_queued(self) -> list[TaskMessage]:
        dropped: list[TaskMessage] = []
        while True:
            try:
                message = self._queue.get_nowait()
            except Empty:
                return dropped
            if isinstance(message, TaskMessage):
                dropped.append(message)
                self.task_done(message.id)


def _work(
    pool_ref: weakref.ref[WorkerPool],
    queue: _Queue,
    idle_tokens: list[None],
    past_deadline: threading.Event,
    worker: Worker | None,
) -> None:
    try:
        while True:
            try:
                message = queue.get_nowait()
            except Empty:
                # Nothing to do: count this worker as idle while it waits, and
                # take a token back once it has a task, unless the submitter of
                # that task took one already. So the tokens follow the idle
                # workers closely, and a busy worker is never counted for long.
                idle_tokens.append(None)
                message = queue.get()
                try:
                    idle_tokens.pop()
                except IndexError:
                    pass
            if message is None:
                queue.put(None)
                return
            pool = pool_ref()
            if pool is None:
                return
            if isinstance(message, _Retire):
                pool.retire(threading.current_thread())
                return
            if not past_deadline.is_set():
                if worker is None:
                    pool.run(message)
                else:
                    worker.run(message)
                pool.task_done(message.id)
            # Past the deadline, a message stays in the in-flight set: whoever
            # submitted it cancels it.
            del message, pool
    finally:
        if worker is not None:
            worker.close()
            pool = pool_ref()
            if pool is not None:
                pool.forget(worker)
