"""The handle of a task: :class:`TaskResult`. It observes and cancels; it
runs nothing.

A handle either follows a task of this process, which settles it as a
:class:`concurrent.futures.Future` when it ends, or reads the record of a
task in a shared store, which may run in any process. Knows nothing of
Flask.
"""

from __future__ import annotations

import threading
import typing as t
from concurrent.futures import CancelledError, Future

from ._current import running_task
from ._errors import TaskCancelled
from ._future import LazyFuture
from ._record import (
    ENDED,
    TaskRecord,
    TaskStatus,
    as_datetime,
    stored_error,
    stored_value,
    this_process,
    wait_until_done,
)

if t.TYPE_CHECKING:
    from datetime import datetime

    from ._execution import Execution
    from .stores import TaskStore

R = t.TypeVar("R")


class TaskResult(LazyFuture[R]):
    """The handle of a submitted task: its id, status, progress and outcome.

    ``submit`` returns one, and :meth:`BGTasks.get
    <flask_bgtasks.BGTasks.get>` returns one for any id, with any store.

    .. code-block:: python

        result = build_report.submit(42)
        result.id          # 'kq3V1mH0...', give it to the client
        result.status      # TaskStatus.QUEUED
        result.result(10)  # wait up to 10 s for the return value

    The handle of a task of this process is a
    :class:`concurrent.futures.Future`: :func:`concurrent.futures.wait` and
    :func:`~concurrent.futures.as_completed` accept it, and its status and
    Future state agree at every moment. The handle of a task of another
    process, found through a shared store, reads the store instead: each
    attribute is read anew, ``result()`` polls, and ``wait()``,
    ``as_completed()`` and ``add_done_callback()`` refuse it with
    :class:`TypeError`.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
        Also the handle of a task in a shared store, which was
        ``StoredResult``.
    """

    __slots__ = ("_execution", "_store", "_last", "_stop")

    def __init__(
        self,
        execution: Execution | None = None,
        *,
        store: TaskStore | None = None,
        record: TaskRecord | None = None,
        stop: t.Callable[[str, bool], None] | None = None,
    ) -> None:
        super().__init__()
        self._execution = execution
        self._store = store
        self._last = record
        self._stop = stop

    @classmethod
    def from_record(
        cls, store: TaskStore, record: TaskRecord, stop: t.Callable[[str, bool], None] | None = None
    ) -> TaskResult[t.Any]:
        """A handle that reads ``store``, starting from ``record``; after a
        cancel, ``stop(id, queued)`` takes the task out of an engine's queue,
        or ends it by force for ``cancel(force=True)``, where it can."""
        return cls(store=store, record=record, stop=stop)

    # -- what it is ---------------------------------------------------------

    @property
    def id(self) -> str:
        """A URL-safe id with 144 random bits, unique to this task."""
        execution = self._execution
        if execution is None:
            return self._remote().id
        if not execution.kept and execution.observer is not None:
            # Once its id is out, the task can be looked up by it.
            execution.observer.keep(execution)
        return execution.message.id

    @property
    def name(self) -> str:
        """The task's name, ``module.function`` unless given."""
        execution = self._execution
        return self._remote().name if execution is None else execution.message.name

    @property
    def pool(self) -> str:
        """The pool it runs on."""
        execution = self._execution
        return self._remote().pool if execution is None else execution.message.pool

    @property
    def durable(self) -> bool:
        """Whether the task survives the death of its process."""
        execution = self._execution
        return self._remote().durable if execution is None else execution.message.durable

    @property
    def timeout(self) -> float | None:
        """Seconds the task may run, or ``None``; ``None`` too for a task of
        another process."""
        execution = self._execution
        return None if execution is None else execution.message.options.timeout

    @property
    def status(self) -> TaskStatus:
        """The task's :class:`TaskStatus` now.

        For a task of this process it agrees with the Future side at every
        moment: ``succeeded``, ``failed`` or ``cancelled`` exactly when
        ``done()``, ``running`` exactly when ``running()``, ``cancelled``
        exactly when ``cancelled()``. During a retry wait it is ``queued``.
        """
        execution = self._execution
        if execution is None:
            return self.record().status
        if self.done():
            return execution.status
        status = execution.status
        if status in ENDED:
            # Its end is being published (the store is told first, then the
            # Future settles): until it has, the task is what it was.
            return TaskStatus.QUEUED if execution.started_at is None else TaskStatus.RUNNING
        return status

    @property
    def progress(self) -> dict[str, t.Any] | None:
        """The last progress the task reported, or ``None`` before any: a
        dict with the keys ``current``, ``total`` and ``message``, as given
        to :meth:`current_task.set_progress()
        <flask_bgtasks.current_task.set_progress>`."""
        execution = self._execution
        if execution is None:
            return self.record().progress
        progress = execution.progress
        return None if progress is None else dict(progress)

    @property
    def attempt(self) -> int:
        """How many times a worker has started it: a retry is one more, and
        so is a rerun of a durable task after its process died."""
        execution = self._execution
        return self.record().attempt if execution is None else execution.attempt

    @property
    def errors(self) -> list[dict[str, t.Any]]:
        """One dict per failed attempt, oldest first: ``attempt``, ``type``,
        ``message``, ``traceback`` and ``at`` (a Unix time)."""
        execution = self._execution
        return self.record().errors if execution is None else list(execution.errors)

    @property
    def cancel_requested(self) -> bool:
        """``True`` once :meth:`cancel` was called on the running task, in
        this process or, with a shared store, in any other."""
        execution = self._execution
        return self.record().cancel_requested if execution is None else execution.cancel_requested

    @property
    def released(self) -> bool:
        """``True`` for a durable task that shutdown stopped or never
        started: its store keeps it, to run again in the next process."""
        execution = self._execution
        return False if execution is None else execution.released

    @property
    def submitted_at(self) -> datetime:
        """When the task was submitted (timezone-aware, UTC)."""
        execution = self._execution
        if execution is None:
            return self._remote().submitted_at
        return as_datetime(execution.message.submitted_at)  # type: ignore[return-value]

    @property
    def started_at(self) -> datetime | None:
        """When a worker first started it, or ``None``."""
        execution = self._execution
        if execution is None:
            return self.record().started_at
        return as_datetime(execution.started_at)

    @property
    def finished_at(self) -> datetime | None:
        """When it succeeded, failed or was cancelled, or ``None``."""
        execution = self._execution
        if execution is None:
            return self.record().finished_at
        return as_datetime(execution.finished_at) if self.done() else None

    def record(self) -> TaskRecord:
        """The task as a :class:`~flask_bgtasks.TaskRecord`, as the HTTP API
        and the CLI show it. For a task of another process, read from the
        store now; if the record has expired meanwhile, the last one read."""
        execution = self._execution
        if execution is None:
            assert self._store is not None and self._last is not None
            record = self._store.record(self._last.id)
            if record is not None:
                self._last = record
            return self._last
        status = self.status
        value = self.result(0) if status is TaskStatus.SUCCEEDED else None
        snapshot = execution.snapshot()
        if status is not snapshot.status:  # its end is being published
            snapshot = snapshot._replace(status=status, finished_at=None)
        return snapshot.record(this_process(), value)

    # -- the Future side ----------------------------------------------------

    def done(self) -> bool:
        """``True`` if the task succeeded, failed or was cancelled."""
        if self._execution is None:
            return self.record().done()
        return super().done()

    def cancelled(self) -> bool:
        """``True`` if the task was cancelled, before or while running."""
        return self.status is TaskStatus.CANCELLED

    def running(self) -> bool:
        """``True`` while a worker runs an attempt of the task. A task that
        waits for its next retry is ``queued``, not running."""
        return self.status is TaskStatus.RUNNING

    def cancel(self, *, force: bool = False) -> bool:
        """Cancel the task.

        A queued task, also one that waits for its next retry, is cancelled
        at once and runs no more: returns ``True``.
        A running task is asked to stop: :attr:`current_task.cancel_requested
        <flask_bgtasks.current_task.cancel_requested>` becomes ``True`` inside
        it, and the call returns ``False``, as for any running future. A
        finished task is left as it is. A task of another process is
        cancelled through the store, the same way.

        :param force: For a running task on a process pool, or on an RQ
            worker that forks (``--fork``): kill the process that runs it
            at once, and end the task as cancelled. A thread can't be
            killed: a thread task is only asked, as without ``force``.
        """
        execution = self._execution
        if execution is None:
            assert self._store is not None
            task_id = self._remote().id
            cancelled = self._store.cancel(task_id)
            if self._stop is not None and (cancelled or force):
                self._stop(task_id, cancelled)
            return cancelled
        if (
            execution.cancel_queued()
            or execution.cancel_waiting()
            or self.status is TaskStatus.CANCELLED
        ):
            return True
        if not self.done():
            execution.request_cancel()
            stop = execution.force_stop
            if force and stop is not None:
                stop()
        return False

    def result(self, timeout: float | None = None) -> R:
        """Wait for the task and return its value.

        Called inside another task while this one is still queued in this
        process, the waiting task runs it itself: a task that waits for a
        task in its own saturated pool would otherwise wait forever.

        :param timeout: Seconds to wait; ``None`` waits as long as it takes.
        :raises TimeoutError: If it did not finish in time.
        :raises TaskCancelled: If the task was cancelled.
        :raises TaskFailed: If a task of another process failed; the
            exception itself is in that process, so this carries its type
            name and message.
        :raises UsageError: If a task of another process returned a value
            that is not JSON, so only its ``repr`` was stored.
        :raises Exception: Whatever a task of this process raised.
        """
        execution = self._execution
        if execution is None:
            return t.cast(R, stored_value(self._wait_for_record(timeout)))
        if (
            not execution.claimed
            and execution.observer is not None
            and running_task.get(None) is not None
        ):
            execution.observer.run_here(execution)
        try:
            return super().result(timeout)
        except CancelledError:
            raise self._cancel_error() from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the task and return the exception it raised, or ``None``.

        :raises TaskCancelled: If the task was cancelled.
        """
        if self._execution is None:
            record = self._wait_for_record(timeout)
            if record.status is TaskStatus.SUCCEEDED:
                return None
            error = stored_error(record)
            if isinstance(error, TaskCancelled):
                raise error
            return error
        try:
            return super().exception(timeout)
        except CancelledError:
            raise self._cancel_error() from None

    def add_done_callback(self, fn: t.Callable[[Future[R]], object]) -> None:
        """Call ``fn(result)`` once the task has finished or was cancelled.

        It runs with the task's app available: in the worker, inside the
        task's app context, or, if the task is already done, at once in this
        thread inside a new app context. An exception it raises is logged on
        the ``flask_bgtasks`` logger, never raised into the worker.

        :raises TypeError: For a task of another process, whose end this
            process does not see.
        """
        self._check_local("add_done_callback()")
        super().add_done_callback(lambda _: self._call_back(fn))

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        # What wait() and as_completed() take first: for a task of another
        # process they would wait forever, so they get a TypeError instead.
        self._check_local("concurrent.futures.wait() and as_completed()")
        return super()._condition

    def __repr__(self) -> str:
        execution = self._execution
        if execution is None:
            last = self._remote()
            return f"<TaskResult {last.name!r} id={last.id} {last.status.value} (stored)>"
        message = execution.message
        return f"<TaskResult {message.name!r} id={message.id} {self.status.value}>"

    # -- helpers ------------------------------------------------------------

    def _remote(self) -> TaskRecord:
        last = self._last
        assert last is not None
        return last

    def _check_local(self, what: str) -> None:
        if self._execution is None:
            raise TypeError(
                f"{what} can't take this handle of task {self._remote().name!r} (id"
                f" {self._remote().id}): it reads the task's record in the store (the"
                " task runs in another process, or had ended when it was looked up),"
                " so nothing settles it as a Future. Wait with result(timeout) or"
                " exception(timeout), which read the store."
            )

    def _cancel_error(self) -> CancelledError:
        # What ended the task: cancelled while queued, asked to stop while
        # running, or interrupted at the shutdown deadline.
        execution = self._execution
        error = None if execution is None else execution.cancel_error
        return CancelledError() if error is None else error

    def _call_back(self, fn: t.Callable[[Future[R]], object]) -> None:
        execution = self._execution
        assert execution is not None
        running = running_task.get(None)
        if running is execution or execution.observer is None:
            fn(self)
        else:
            with execution.observer.callback_context():
                fn(self)

    def _wait_for_record(self, timeout: float | None) -> TaskRecord:
        return wait_until_done(self.record, timeout)
