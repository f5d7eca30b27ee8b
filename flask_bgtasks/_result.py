"""The handle of a submitted task: :class:`TaskResult` and :class:`TaskStatus`.

This module knows nothing of Flask. A task's life is driven through a few
private methods, used by the pools and backends:

``_claim()``
    take the job out of the result; exactly one caller wins it.
``_run(job)``
    run a claimed job in this thread, in a fresh :mod:`contextvars` context.
``_succeed(value)`` / ``_fail(exc)``
    publish the outcome; the job calls one of them.
"""

from __future__ import annotations

import enum
import logging
import secrets
import threading
import time
import traceback
import typing as t
from concurrent.futures import CancelledError, Future
from contextvars import Context
from datetime import UTC, datetime

from ._config import DEFAULT_POOL
from ._current import running_task
from ._errors import TaskCancelled, TaskTimeout
from ._timeouts import watchdog

if t.TYPE_CHECKING:
    from ._record import TaskRecord
    from ._retry import RetryPolicy

R = t.TypeVar("R")

logger = logging.getLogger("flask_bgtasks")

#: A job takes the result it belongs to, runs the task and publishes the
#: outcome with ``_succeed`` or ``_fail``.
Job = t.Callable[["TaskResult[t.Any]"], None]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Compares equal to its string value.

    .. versionadded:: 0.1
    """

    #: Waiting in a pool's queue.
    QUEUED = "queued"
    #: A worker is running it.
    RUNNING = "running"
    #: It returned a value.
    SUCCEEDED = "succeeded"
    #: It raised an exception.
    FAILED = "failed"
    #: It was cancelled while queued, or it stopped with
    #: :class:`~flask_bgtasks.TaskCancelled` after a cancel request.
    CANCELLED = "cancelled"


class TaskOwner(t.Protocol):
    """What a result needs from whoever submitted it."""

    def register(self, task_id: str, result: TaskResult[t.Any]) -> None:
        """Make the result findable by id. Called once, when the id is made."""

    def callback_context(self) -> t.ContextManager[object]:
        """The context in which a done-callback runs outside the task."""

    def cancelled(self, result: TaskResult[t.Any]) -> None:
        """Called when a queued task was cancelled, so it will never run."""

    def started(self, result: TaskResult[t.Any]) -> bool:
        """Called before each attempt; ``False`` if the task must not run."""

    def changed(self, result: TaskResult[t.Any]) -> None:
        """Called when progress, the cancel request or the errors change."""

    def unstorable(self, result: TaskResult[t.Any], value: object) -> BaseException | None:
        """The error to fail the task with if its store can't keep the value
        it returned (not JSON for a durable task, or too large); else ``None``."""

    def finished(self, result: TaskResult[t.Any], value: object = None) -> None:
        """Called once the outcome is published, before waiters wake."""

    def cancel_requested(self, result: TaskResult[t.Any]) -> bool:
        """Whether the task was asked to stop from outside this object."""


#: The statuses of a task that has ended.
_ENDED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def error_info(exc: BaseException, attempt: int) -> dict[str, t.Any]:
    """One attempt's error as a JSON object: type, message, traceback."""
    cls = type(exc)
    # The name people import it by: 'flask_bgtasks.TaskCancelled' rather
    # than the private module it is defined in.
    module = cls.__module__.rpartition(".")[0] if "._" in cls.__module__ else cls.__module__
    name = cls.__qualname__ if module in ("builtins", "") else f"{module}.{cls.__qualname__}"
    return {
        "attempt": attempt,
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "at": time.time(),
    }


def short_repr(value: object, limit: int = 1000) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _new_id() -> str:
    # 16 random bytes: 128 bits, URL-safe, neither sequential nor guessable.
    # Never starting with "-", which command lines take for an option.
    while True:
        task_id = secrets.token_urlsafe(16)
        if task_id[0] != "-":
            return task_id


def as_datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


class TaskResult(Future[R]):
    """The handle of a submitted task: its id, status, progress and outcome.

    A :class:`concurrent.futures.Future`, so :func:`concurrent.futures.wait`
    and :func:`~concurrent.futures.as_completed` accept it.

    .. code-block:: python

        result = build_report.submit(42)
        result.id          # 'kq3V1mH0...', give it to the client
        result.status      # TaskStatus.QUEUED
        result.result(10)  # wait up to 10 s for the return value

    You don't create it yourself; ``submit`` returns it.

    .. versionadded:: 0.1
    """

    # Set by __init__ and removed by _claim(), by whoever will run or cancel it.
    _job: Job

    # Class-level defaults, replaced on the instance when they change: fewer
    # stores in __init__, which runs on every submit.
    _status = TaskStatus.QUEUED
    _started: float | None = None
    _finished: float | None = None
    _progress: tuple[float, float | None, str | None] | None = None
    _cancel_requested = False
    _errors: tuple[dict[str, t.Any], ...] = ()
    # The arguments, for the record; set by submit.
    _arguments: tuple[tuple[t.Any, ...], dict[str, t.Any]] = ((), {})
    #: Whether the task survives the death of its process.
    durable = False
    #: How many times a worker has started it (a retry is one more).
    attempt = 0
    #: Set on a durable task that shutdown stopped or never started, which
    #: its store keeps to run again in the next process.
    released = False
    retry: RetryPolicy | None = None

    def __init__(
        self,
        name: str,
        job: Job,
        owner: TaskOwner | None = None,
        timeout: float | None = None,
        pool: str = DEFAULT_POOL,
    ) -> None:
        super().__init__()
        #: The task's name, ``module.function`` unless given.
        self.name = name
        #: Seconds the task may run before it is ended with
        #: :class:`~flask_bgtasks.TaskTimeout`, or ``None``.
        self.timeout = timeout
        #: The pool it runs on.
        self.pool = pool
        self._job = job
        self._unpublished = True
        self._owner = owner
        self._submitted = time.time()

    # The id is made the first time someone asks for it, not in ``submit``:
    # a task whose id nobody reads can't be looked up by id, so it needs
    # neither an id nor a place in the store, and ``submit`` stays cheap.
    @property
    def id(self) -> str:
        """A URL-safe id with 128 random bits, unique to this task."""
        try:
            return self.__dict__["_id"]  # type: ignore[no-any-return]
        except KeyError:
            pass
        new = _new_id()
        # setdefault is atomic: if two threads race, both see one id.
        task_id: str = self.__dict__.setdefault("_id", new)
        if task_id is new and self._owner is not None:
            self._owner.register(task_id, self)
        return task_id

    @property
    def status(self) -> TaskStatus:
        """The task's :class:`TaskStatus` now.

        It always agrees with the :class:`~concurrent.futures.Future` side:
        ``succeeded``, ``failed`` or ``cancelled`` exactly when ``done()``,
        ``running`` exactly when ``running()``, ``cancelled`` exactly when
        ``cancelled()``.
        """
        status = self._status
        if status in _ENDED and not Future.done(self):
            # The outcome is being published (the store is told first, then
            # the Future settles): until it has, the task is what it was.
            return TaskStatus.QUEUED if self._started is None else TaskStatus.RUNNING
        return status

    @property
    def submitted_at(self) -> datetime:
        """When the task was submitted (timezone-aware, UTC)."""
        return as_datetime(self._submitted)  # type: ignore[return-value]

    @property
    def started_at(self) -> datetime | None:
        """When a worker started it, or ``None``."""
        return as_datetime(self._started)

    @property
    def finished_at(self) -> datetime | None:
        """When it succeeded, failed or was cancelled, or ``None``."""
        return as_datetime(self._finished)

    @property
    def progress(self) -> dict[str, t.Any] | None:
        """The last progress the task reported, or ``None`` before any.

        A dict with the keys ``current``, ``total`` and ``message``, as given
        to :meth:`current_task.set_progress()
        <flask_bgtasks.current_task.set_progress>`.
        """
        progress = self._progress
        if progress is None:
            return None
        current, total, message = progress
        return {"current": current, "total": total, "message": message}

    @property
    def errors(self) -> list[dict[str, t.Any]]:
        """One dict per failed attempt, oldest first: ``attempt``, ``type``,
        ``message``, ``traceback`` and ``at`` (a Unix time)."""
        return list(self._errors)

    def record(self) -> TaskRecord:
        """The task as a :class:`~flask_bgtasks.TaskRecord`, as
        :meth:`StoredResult.record() <flask_bgtasks.StoredResult.record>`
        gives it."""
        from ._record import record_of  # which imports this module

        return record_of(self)

    @property
    def cancel_requested(self) -> bool:
        """``True`` once :meth:`cancel` was called on the running task, in
        this process or, with a shared store, in any other."""
        if not self._cancel_requested and self._owner is not None:
            if self._owner.cancel_requested(self):
                self._cancel_requested = True
        return self._cancel_requested

    def cancel(self) -> bool:
        """Cancel the task.

        A queued task is cancelled at once and never runs: returns ``True``.
        A running task is asked to stop: :attr:`current_task.cancel_requested
        <flask_bgtasks.current_task.cancel_requested>` becomes ``True`` inside
        it, and the call returns ``False``, as for any running future. A
        finished task is left as it is.
        """
        if self._cancel_queued() or self.status is TaskStatus.CANCELLED:
            return True
        if not self.done():
            self._cancel_requested = True
            self._wake()
            if self._owner is not None:
                self._owner.changed(self)
        return False

    def _cancel_queued(self, shutdown: bool = False) -> bool:
        """Cancel the task if it has not started; ``True`` if this call did.

        :param shutdown: Cancelled by a shutdown: a durable task is then
            released, to run in the next process, rather than cancelled
            for good.
        """
        if self._claim() is None:
            return False
        # The job is ours, so no worker will ever run it, and nothing else
        # publishes an outcome for a task that never started.
        self._publish()
        self.released = shutdown and self.durable
        self._settle(
            TaskStatus.CANCELLED,
            error=TaskCancelled(f"Task {self.name!r} was cancelled before it started."),
        )
        if self._owner is not None:
            self._owner.cancelled(self)
        return True

    def cancelled(self) -> bool:
        """``True`` if the task was cancelled, before or while running."""
        return self.status is TaskStatus.CANCELLED

    def running(self) -> bool:
        """``True`` while a worker runs an attempt of the task. A task that
        waits for its next retry is ``queued``, not running."""
        return self.status is TaskStatus.RUNNING

    def result(self, timeout: float | None = None) -> R:
        """Wait for the task and return its value.

        Called inside another task while this one is still queued, the
        waiting task runs it itself: a task that waits for a task in its own
        saturated pool would otherwise wait forever.

        :param timeout: Seconds to wait; ``None`` waits as long as it takes.
        :raises TimeoutError: If it did not finish in time.
        :raises TaskCancelled: If the task was cancelled.
        :raises Exception: Whatever the task raised.
        """
        if "_job" in self.__dict__ and running_task.get(None) is not None:
            job = self._claim()
            if job is not None:
                self._run(job)
        try:
            return super().result(timeout)
        except CancelledError as exc:
            raise self._as_task_cancelled(exc) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the task and return the exception it raised, or ``None``.

        :raises TaskCancelled: If the task was cancelled.
        """
        try:
            exc = super().exception(timeout)
        except CancelledError as cancel:
            raise self._as_task_cancelled(cancel) from None
        return exc

    def add_done_callback(self, fn: t.Callable[[Future[R]], object]) -> None:
        """Call ``fn(result)`` once the task has finished or was cancelled.

        It runs with the task's app available: in the worker, inside the
        task's app context, or, if the task is already done, at once in this
        thread inside a new app context. An exception it raises is logged on
        the ``flask_bgtasks`` logger, never raised into the worker.
        """
        super().add_done_callback(lambda _: self._call_back(fn))

    def __repr__(self) -> str:
        task_id = self.__dict__.get("_id")
        ident = f" id={task_id}" if task_id else ""
        return f"<TaskResult {self.name!r}{ident} {self._status.value}>"

    def _as_task_cancelled(self, exc: CancelledError) -> CancelledError:
        # What ended the task: cancelled while queued, asked to stop while
        # running, or interrupted at the shutdown deadline.
        error: CancelledError | None = self.__dict__.get("_cancel_error")
        return exc if error is None else error

    def _call_back(self, fn: t.Callable[[Future[R]], object]) -> None:
        try:
            if running_task.get(None) is self or self._owner is None:
                fn(self)
            else:
                with self._owner.callback_context():
                    fn(self)
        except BaseException:
            logger.exception("A done-callback of %r raised an exception.", self)

    def _claim(self) -> Job | None:
        # dict.pop is atomic, so of the worker, a task that waits for this one
        # and cancel(), exactly one gets the job and decides what happens.
        return self.__dict__.pop("_job", None)  # type: ignore[no-any-return]

    def _run(self, job: Job) -> None:
        # The Future stays PENDING while the task runs (running() reads the
        # status instead): from PENDING, Future.cancel() can still end it as
        # cancelled when it stops after a cancel request or at the shutdown
        # deadline, so that status and Future state never disagree.
        if self.timeout is not None:
            watchdog.watch(self, self.timeout)
        # A fresh context: nothing set by the submitter or by an earlier task
        # in this thread is visible, and nothing the task sets outlives it.
        Context().run(self._call_job, job)

    def _call_job(self, job: Job) -> None:
        running_task.set(self)
        while self._start_attempt():
            try:
                job(self)
            except BaseException as exc:
                # Jobs publish their own outcome; this only catches what went
                # wrong around the task, such as a teardown or signal receiver.
                if self.done():
                    logger.exception("Error after task %r finished.", self)
                else:
                    self._fail(exc)
            delay = self.__dict__.pop("_retry_in", None)
            if delay is None:
                return
            # The retry holds this worker while it waits. cancel(), a
            # timeout or the shutdown deadline wake it early.
            self._back_off(delay)
            if self.done():  # ended by its timeout or the shutdown deadline
                return
            if self.cancel_requested:
                self._fail(TaskCancelled(f"Task {self.name!r} (id {self.id}) was cancelled."))
                return

    def _back_off(self, delay: float) -> None:
        wake: threading.Event = self.__dict__["_wake_event"]
        until = time.monotonic() + delay
        # A cancel() here sets the event; one from another process only
        # shows in the store, so look there every second meanwhile.
        while not self.cancel_requested:
            left = until - time.monotonic()
            if left <= 0 or wake.wait(min(left, 1.0)):
                return

    def _start_attempt(self) -> bool:
        self.attempt += 1
        first = self._started is None
        if first:
            self._started = time.time()
        if self._owner is not None and not self._owner.started(self):
            if first:
                self._started = None
            self._refused()
            return False
        self._status = TaskStatus.RUNNING
        return True

    def _refused(self) -> None:
        # The store says no: another process cancelled the task while it was
        # queued, or took it over, and the record says so already. End it
        # here as cancel() ends a queued task.
        self.attempt -= 1
        if not self._publish():
            return
        logger.info(
            "Task %r (id %s) does not run here: its record says another process"
            " cancelled it or took it over.",
            self.name,
            self.id,
        )
        self._settle(
            TaskStatus.CANCELLED,
            error=TaskCancelled(f"Task {self.name!r} (id {self.id}) was cancelled."),
        )
        if self._owner is not None:
            self._owner.cancelled(self)

    def _set_progress(self, current: float, total: float | None, message: str | None) -> None:
        self._progress = (current, total, message)
        if self._owner is not None:
            self._owner.changed(self)

    def _wake(self) -> None:
        wake = self.__dict__.get("_wake_event")
        if wake is not None:
            wake.set()

    def _publish(self) -> bool:
        # dict.pop is atomic, so of the task itself, its timeout and the
        # shutdown deadline, exactly one publishes the outcome.
        return self.__dict__.pop("_unpublished", False)  # type: ignore[no-any-return]

    def _succeed(self, value: R) -> bool:
        """Publish the return value; ``False`` if the task was already ended."""
        if self._owner is not None and "_unpublished" in self.__dict__:
            # The store refuses what it can't keep (not JSON, or too large):
            # the task fails with that error rather than lose its outcome.
            problem = self._owner.unstorable(self, value)
            if problem is not None:
                return self._fail(problem)
        if not self._publish():
            logger.info("Task %r returned after it was ended; the value is discarded.", self)
            return False
        self._settle(TaskStatus.SUCCEEDED, value)
        return True

    def _fail(self, exc: BaseException) -> bool:
        """Publish the exception, or schedule a retry; ``False`` if the task
        was already ended or will run again."""
        if "_unpublished" not in self.__dict__:
            logger.info("Task %r raised %r after it was ended; it is discarded.", self, exc)
            return False
        self._errors += (error_info(exc, self.attempt),)
        if self._will_retry(exc):
            return False
        if not self._publish():
            logger.info("Task %r raised %r after it was ended; it is discarded.", self, exc)
            return False
        if isinstance(exc, CancelledError):
            logger.info("Task %r (id %s) was cancelled while running.", self.name, self.id)
            self._settle(TaskStatus.CANCELLED, error=exc)
        else:
            logger.error(
                "Task %r (id %s) failed.",
                self.name,
                self.id,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            self._settle(TaskStatus.FAILED, error=exc)
        return True

    def _settle(
        self, status: TaskStatus, value: object = None, error: BaseException | None = None
    ) -> None:
        """End the task with ``status``: the one place where a task ends.
        The caller has won :meth:`_publish`.

        The store is told first, so that a waiter that wakes finds the
        outcome there too; then the Future settles, which wakes
        ``result()``, ``wait()`` and ``as_completed()`` and runs the
        done-callbacks.
        """
        self._finished = time.time()
        self._status = status
        if self._owner is not None:
            self._owner.finished(self, value)
        if status is TaskStatus.SUCCEEDED:
            self.set_result(t.cast(R, value))
        elif status is TaskStatus.FAILED:
            self.set_exception(error)
        else:
            # The Future API's own way to CANCELLED_AND_NOTIFIED, the state
            # that wait() and as_completed() count as done: cancel() wakes
            # result() and runs the callbacks, set_running_or_notify_cancel()
            # wakes the waiters of wait() and as_completed(). The Future is
            # still PENDING here, even for a task that was running.
            self.__dict__["_cancel_error"] = error
            Future.cancel(self)
            Future.set_running_or_notify_cancel(self)

    def _will_retry(self, exc: BaseException) -> bool:
        if self.retry is None or isinstance(exc, CancelledError) or self.cancel_requested:
            return False
        delay = self.retry.delay(exc, len(self._errors))
        if delay is None:
            return False
        logger.warning(
            "Task %r (id %s) attempt %d failed; retrying in %.1f s.",
            self.name,
            self.id,
            self.attempt,
            delay,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        # Made before anyone can see that the task waits, so that a cancel()
        # from then on finds it to wake.
        self.__dict__["_wake_event"] = threading.Event()
        self.__dict__["_retry_in"] = delay
        self._status = TaskStatus.QUEUED
        if self._owner is not None:
            self._owner.changed(self)
        return True

    def _end(self, exc: TaskCancelled | TaskTimeout) -> bool:
        """End a running task from outside: ask it to stop, and publish
        ``exc`` now rather than when the function returns, which may be
        never. Python cannot stop a thread, so the worker stays busy until
        then, but the outcome is final and waiters are released.

        :return: ``False`` if the task had already finished.
        """
        self._cancel_requested = True
        self._wake()
        if not self._publish():
            return False
        if not self.released:  # not a failure of the task: it runs again
            self._errors += (error_info(exc, self.attempt),)
        if isinstance(exc, CancelledError):
            logger.warning("%s", exc)
            self._settle(TaskStatus.CANCELLED, error=exc)
        else:
            logger.error("%s", exc)
            self._settle(TaskStatus.FAILED, error=exc)
        return True

    def _time_out(self) -> None:
        self._end(
            TaskTimeout(
                f"Task {self.name!r} (id {self.id}) did not finish within its"
                f" timeout of {self.timeout:g} s. It was asked to stop; its worker"
                " thread stays busy until the function returns."
            )
        )

    def _interrupt(self) -> bool:
        # A durable task is not cancelled for good: its store keeps it, and
        # the next process runs it again. Unless someone asked it to stop.
        self.released = self.durable and not self.cancel_requested
        then = (
            "it is durable, so the next process will run it again"
            if self.released
            else "the process exits without waiting for it"
        )
        return self._end(
            TaskCancelled(
                f"Task {self.name!r} (id {self.id}) was still running at the"
                f" shutdown deadline and was interrupted. It was asked to stop;"
                f" {then}."
            )
        )
