"""What is known about a task: :class:`TaskStatus` and :class:`TaskRecord`,
and the helpers that turn values into what a record holds.

Knows nothing of Flask.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import socket
import threading
import time
import traceback
import typing as t
from datetime import UTC, datetime

from ._errors import TaskCancelled, TaskFailed, UsageError


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Compares equal to its string value.

    .. versionadded:: 0.1
    """

    #: Waiting in a pool's queue, or for its next retry.
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


#: The statuses of a task that has ended.
ENDED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


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


_process_names: dict[int, str] = {}


def this_process() -> str:
    """This process as records name it: ``host:pid``."""
    pid = os.getpid()
    name = _process_names.get(pid)
    if name is None:
        name = _process_names[pid] = process_name(pid)
    return name


def process_name(pid: int) -> str:
    """A process of this machine as records name it: ``host:pid``."""
    return f"{socket.gethostname()}:{pid}"


def as_datetime(timestamp: float | None) -> datetime | None:
    """A Unix time as a timezone-aware UTC datetime; ``None`` stays ``None``."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


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

    Returned by :meth:`TaskResult.record() <flask_bgtasks.TaskResult.record>`
    and by the stores; the HTTP API and the ``flask bgtasks`` commands show
    it. Values that are not JSON (arguments or a return value of a task
    that is not durable) are kept only as their ``repr``.

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
    #: The process that runs or ran it, ``host:pid``, if known: a task of
    #: another process that the memory store can't see is not found at all.
    #: Once called ``owner``, which was also the user of a background
    #: view; that name still works, for reading.
    process: str | None
    #: When it was submitted (timezone-aware, UTC).
    submitted_at: datetime
    #: When a worker first started it.
    started_at: datetime | None
    #: When it succeeded, failed or was cancelled.
    finished_at: datetime | None
    #: The id of the task this one runs again (:meth:`BGTasks.retry
    #: <flask_bgtasks.BGTasks.retry>`), or ``None``.
    retry_of: str | None = None

    @property
    def error(self) -> dict[str, t.Any] | None:
        """The error of a failed or cancelled task's last attempt, or ``None``."""
        if self.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and self.errors:
            return self.errors[-1]
        return None

    def done(self) -> bool:
        """``True`` if the task succeeded, failed or was cancelled."""
        return self.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)

    @property
    def owner(self) -> str | None:
        """The old name of :attr:`process`.

        .. deprecated:: 0.1
            Use :attr:`process`.
        """
        return self.process


def stored_value(record: TaskRecord) -> object:
    """What a task of another process returned, read from its record.

    :raises TaskCancelled: If it was cancelled.
    :raises TaskFailed: If it failed.
    :raises UsageError: If the store kept only the value's ``repr``.
    """
    if record.status is not TaskStatus.SUCCEEDED:
        raise stored_error(record)
    if record.result_repr is not None:
        raise UsageError(
            f"Task {record.name!r} (id {record.id}) returned a value that is"
            f" not JSON, so the store kept only its repr: {record.result_repr}."
            " Return JSON values to read them from another process."
        )
    return record.result


def stored_error(record: TaskRecord) -> BaseException:
    """The error that stands for how a task of another process ended."""
    if record.status is TaskStatus.CANCELLED:
        return TaskCancelled(f"Task {record.name!r} (id {record.id}) was cancelled.")
    return TaskFailed(record)


def wait_until_done(read: t.Callable[[], TaskRecord], timeout: float | None) -> TaskRecord:
    """Read a task's record until it is done, for at most ``timeout``
    seconds. Another process's task can only be seen through its store, so
    this polls, backing off to twice a second.

    :raises TimeoutError: If it did not finish in time.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    pause = threading.Event()  # never set: an interruptible pause
    while True:
        record = read()
        if record.done():
            return record
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"Task {record.name!r} (id {record.id}) did not finish in time.")
        pause.wait(delay if left is None else min(delay, left))
        delay = min(delay * 2, 0.5)
