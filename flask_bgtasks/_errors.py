"""The exceptions Flask-BGTasks raises.

Every error is a :class:`BGTasksError` and also the builtin (or Werkzeug)
exception it is closest to, so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import typing as t
from concurrent.futures import CancelledError

from werkzeug.exceptions import ServiceUnavailable

if t.TYPE_CHECKING:
    from ._record import TaskRecord


class BGTasksError(Exception):
    """Base class of every error raised by Flask-BGTasks.

    .. versionadded:: 0.1
    """


class QueueFull(BGTasksError, ServiceUnavailable):
    """A task pool has no room for another task.

    ``submit`` raises it at once instead of blocking the caller. It is also an
    HTTP 503 error with a ``Retry-After`` header, so if a view does not handle
    it, the client gets "503 Service Unavailable, retry later" rather than a
    500.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(description=message, retry_after=retry_after)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ShutdownError(BGTasksError, RuntimeError):
    """A task was submitted after the extension was shut down.

    .. versionadded:: 0.1
    """


class TaskCancelled(BGTasksError, CancelledError):
    """The task was cancelled.

    Raised by :meth:`~flask_bgtasks.TaskResult.result` of a cancelled task,
    and by :meth:`current_task.check_cancelled()
    <flask_bgtasks.current_task.check_cancelled>` inside a task whose
    cancellation was requested.

    .. versionadded:: 0.1
    """


class TaskFailed(BGTasksError, RuntimeError):
    """A task that ran in another process failed.

    The original exception lives in that process; this carries its type
    name and message, and the whole :class:`TaskRecord`.

    .. versionadded:: 0.1
    """

    def __init__(self, record: TaskRecord) -> None:
        error = record.error or {"type": "Exception", "message": ""}
        super().__init__(
            f"Task {record.name!r} (id {record.id}) failed with {error['type']}: {error['message']}"
        )
        #: The record of the failed task.
        self.record = record
        #: The exception's type name, such as ``'ValueError'``.
        self.type: str = error["type"]


class StoreError(BGTasksError, RuntimeError):
    """The task store can't be used: its file is missing, read-only or
    damaged, or it stayed locked too long.

    .. versionadded:: 0.1
    """


class StoreUnavailable(StoreError, ServiceUnavailable):
    """The task store can't be reached now (Redis went away). Nothing was
    written. Like :class:`QueueFull`, it is an HTTP 503 error with a
    ``Retry-After`` header, so a view that does not handle it answers "503
    Service Unavailable, retry later". The connection comes back by itself
    when the store does.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, retry_after: int = 5) -> None:
        # RuntimeError comes first in the MRO, and takes no keywords.
        ServiceUnavailable.__init__(self, description=message, retry_after=retry_after)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TaskCrashed(BGTasksError, RuntimeError):
    """The child process that ran the task died while running it (it called
    ``os._exit``, crashed, or was killed); the message names its exit code
    or signal. Only that task fails; the pool starts a new child.

    .. versionadded:: 0.1
    """


class TaskTimeout(BGTasksError, TimeoutError):
    """The task ran longer than its ``timeout`` and was ended.

    Its result raises this. Python cannot kill a thread: a thread task was
    asked to stop (``current_task.cancel_requested`` is ``True``), and its
    worker thread is only free again once the function returns. A task on a
    process pool that has not stopped after ``BGTASKS_TIMEOUT_GRACE`` more
    seconds has its child process killed.

    .. versionadded:: 0.1
    """


class UsageError(BGTasksError, RuntimeError):
    """The API was used where it cannot work, such as outside an app context.

    .. versionadded:: 0.1
    """


class InvalidTaskError(BGTasksError, TypeError):
    """A task, or an argument given to one, cannot be run in the background.

    .. versionadded:: 0.1
    """


class PayloadTooLarge(InvalidTaskError, ValueError):
    """A task's arguments or return value are larger than a shared store
    keeps for one task (:data:`BGTASKS_MAX_PAYLOAD_BYTES`).

    ``submit`` raises it for arguments, and stores nothing; a task whose
    return value is too large fails with it, and the value is dropped. It is
    an :class:`InvalidTaskError` and a :class:`ValueError`.

    .. versionadded:: 0.1
    """


class ConfigError(BGTasksError, ValueError):
    """A ``BGTASKS_*`` configuration value is out of range.

    .. versionadded:: 0.1
    """


class ConfigTypeError(ConfigError, TypeError):
    """A ``BGTASKS_*`` configuration value has the wrong type.

    It is also a :class:`ConfigError`, so one ``except`` catches every bad
    setting.

    .. versionadded:: 0.1
    """
