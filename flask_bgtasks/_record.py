"""What a store knows about a task: :class:`TaskRecord`, and
:class:`StoredResult`, the handle of a task that a shared store holds.

Knows nothing of Flask.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import typing as t
from datetime import datetime

from ._errors import TaskCancelled, TaskFailed, UsageError
from ._result import TaskStatus, short_repr

if t.TYPE_CHECKING:
    from ._result import TaskResult
    from .stores import TaskStore

# One encoder for every call: json.dumps() with options builds a new one.
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def to_json(value: object) -> str | None:
    """``value`` as compact JSON, or ``None`` if it is not JSON."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """Everything a store knows about one task, at one moment.

    Returned by :meth:`StoredResult.record` and by the stores; the ``flask
    bgtasks`` commands show it. Values that are not JSON (arguments or a
    return value of a task that is not durable) are kept only as their
    ``repr``.

    .. versionadded:: 0.1
    """

    #: The task's id.
    id: str
    #: The task's name, ``module.function`` unless given.
    name: str
    #: The pool it runs on.
    pool: str
    #: Where it is in its life.
    status: TaskStatus
    #: Whether it survives the death of its process (``durable=True``).
    durable: bool
    #: Positional arguments, or ``None`` if they are not JSON.
    args: list[t.Any] | None
    #: Keyword arguments, or ``None`` if they are not JSON.
    kwargs: dict[str, t.Any] | None
    #: The ``repr`` of the arguments when they are not JSON.
    args_repr: str | None
    #: The last progress reported: ``current``, ``total`` and ``message``.
    progress: dict[str, t.Any] | None
    #: The return value of a succeeded task, if it is JSON.
    result: t.Any
    #: The ``repr`` of a return value that is not JSON.
    result_repr: str | None
    #: One dict per failed attempt, oldest first: ``attempt``, ``type``,
    #: ``message``, ``traceback`` and ``at`` (a Unix time).
    errors: list[dict[str, t.Any]]
    #: How many times a worker has started it, counting runs that a crash
    #: cut short.
    attempt: int
    #: Whether someone asked a running task to stop.
    cancel_requested: bool
    #: The process that runs or ran it, ``host:pid``, if the store knows.
    owner: str | None
    #: When it was submitted (timezone-aware, UTC).
    submitted_at: datetime
    #: When a worker first started it.
    started_at: datetime | None
    #: When it succeeded, failed or was cancelled.
    finished_at: datetime | None

    @property
    def error(self) -> dict[str, t.Any] | None:
        """The error of a failed or cancelled task's last attempt, or ``None``."""
        if self.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and self.errors:
            return self.errors[-1]
        return None

    def done(self) -> bool:
        """``True`` if the task succeeded, failed or was cancelled."""
        return self.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


def record_of(result: TaskResult[t.Any]) -> TaskRecord:
    """The record of a result object of this process."""
    status = result.status
    args, kwargs = result._arguments
    arguments: t.Any = {"args": list(args), "kwargs": kwargs}
    if to_json(arguments) is None:
        arguments = {"args": None, "kwargs": None, "repr": short_repr((args, kwargs))}
    value: t.Any = None
    value_repr = None
    if status is TaskStatus.SUCCEEDED:
        value = result.result(0)
        if to_json(value) is None:
            value, value_repr = None, short_repr(value)
    return TaskRecord(
        id=result.id,
        name=result.name,
        pool=result.pool,
        status=status,
        durable=result.durable,
        args=arguments["args"],
        kwargs=arguments["kwargs"],
        args_repr=arguments.get("repr"),
        progress=result.progress,
        result=value,
        result_repr=value_repr,
        errors=list(result.errors),
        attempt=result.attempt,
        cancel_requested=result._cancel_requested,
        owner=None,
        submitted_at=result.submitted_at,
        started_at=result.started_at,
        finished_at=result.finished_at,
    )


class StoredResult:
    """The handle of a task in a shared store, from any process.

    :meth:`BGTasks.get <flask_bgtasks.BGTasks.get>` returns one when
    ``BGTASKS_STORE`` is shared (SQLite). It has the attributes of a
    :class:`~flask_bgtasks.TaskResult` that make sense across processes; each
    reads the store again, so it is never stale.

    .. code-block:: python

        task = bg.get(task_id)
        task.status, task.progress
        task.cancel()

    .. versionadded:: 0.1
    """

    def __init__(self, store: TaskStore, record: TaskRecord) -> None:
        self._store = store
        self._last = record
        #: The task's id.
        self.id = record.id
        #: The task's name.
        self.name = record.name

    def record(self) -> TaskRecord:
        """The task's record now. If the record has expired meanwhile, the
        last one read."""
        record = self._store.record(self.id)
        if record is not None:
            self._last = record
        return self._last

    @property
    def status(self) -> TaskStatus:
        """The task's :class:`~flask_bgtasks.TaskStatus` now."""
        return self.record().status

    @property
    def progress(self) -> dict[str, t.Any] | None:
        """The last progress the task reported, or ``None``."""
        return self.record().progress

    @property
    def attempt(self) -> int:
        """How many times a worker has started the task."""
        return self.record().attempt

    @property
    def cancel_requested(self) -> bool:
        """``True`` once :meth:`cancel` was called on the running task."""
        return self.record().cancel_requested

    @property
    def submitted_at(self) -> datetime:
        """When the task was submitted (timezone-aware, UTC)."""
        return self._last.submitted_at

    @property
    def started_at(self) -> datetime | None:
        """When a worker first started it, or ``None``."""
        return self.record().started_at

    @property
    def finished_at(self) -> datetime | None:
        """When it succeeded, failed or was cancelled, or ``None``."""
        return self.record().finished_at

    def done(self) -> bool:
        """``True`` if the task succeeded, failed or was cancelled."""
        return self.record().done()

    def running(self) -> bool:
        """``True`` if a worker is running the task now."""
        return self.status is TaskStatus.RUNNING

    def cancelled(self) -> bool:
        """``True`` if the task was cancelled."""
        return self.status is TaskStatus.CANCELLED

    def cancel(self) -> bool:
        """Cancel the task, in whichever process holds it.

        A queued task is cancelled at once and never runs: returns ``True``.
        A running task is asked to stop, and sees it at its next
        :meth:`current_task.check_cancelled()
        <flask_bgtasks.current_task.check_cancelled>`: returns ``False``.
        """
        return self._store.cancel(self.id)

    def result(self, timeout: float | None = None) -> t.Any:
        """Wait for the task and return its value.

        A task of this process is waited for directly; one in another
        process by reading the store, at most every half second.

        :raises TimeoutError: If it did not finish in time.
        :raises TaskCancelled: If it was cancelled.
        :raises TaskFailed: If it failed; the exception itself is in the
            other process, so it carries the type name and message.
        :raises UsageError: If the value is not JSON, so only its ``repr``
            was stored.
        """
        record = self._wait(timeout)
        if record.status is TaskStatus.SUCCEEDED:
            if record.result_repr is not None:
                raise UsageError(
                    f"Task {record.name!r} (id {record.id}) returned a value"
                    f" that is not JSON, so the store kept only its repr:"
                    f" {record.result_repr}. Return JSON values to read them"
                    " from another process."
                )
            return record.result
        raise self._error(record)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the task; the error it failed with, or ``None``.

        :raises TaskCancelled: If it was cancelled.
        """
        record = self._wait(timeout)
        if record.status is TaskStatus.SUCCEEDED:
            return None
        error = self._error(record)
        if isinstance(error, TaskCancelled):
            raise error
        return error

    def _error(self, record: TaskRecord) -> BaseException:
        if record.status is TaskStatus.CANCELLED:
            return TaskCancelled(f"Task {record.name!r} (id {record.id}) was cancelled.")
        return TaskFailed(record)

    def _wait(self, timeout: float | None) -> TaskRecord:
        live = self._store.live(self.id)
        if live is not None:
            # Ours: wait on the future itself, then read what was stored.
            try:
                live.exception(timeout)
            except TaskCancelled:
                pass
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        waiter = threading.Event()  # never set: an interruptible pause
        while True:
            record = self.record()
            if record.done():
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"Task {self.name!r} (id {self.id}) did not finish in time.")
            # Another process's task can only be seen through the store, so
            # this polls, backing off to twice a second.
            waiter.wait(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.5)

    def __repr__(self) -> str:
        return f"<StoredResult {self.name!r} id={self.id} {self._last.status.value}>"
