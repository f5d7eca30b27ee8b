"""Flask-BGTasks: managed background tasks for Flask."""

from __future__ import annotations

from . import signals
from ._current import current_task
from ._errors import (
    BGTasksError,
    ConfigError,
    ConfigTypeError,
    InvalidTaskError,
    PayloadTooLarge,
    QueueFull,
    ShutdownError,
    StoreError,
    StoreUnavailable,
    TaskCancelled,
    TaskCrashed,
    TaskFailed,
    TaskTimeout,
    UsageError,
)
from ._extension import BGTasks
from ._message import TaskMessage, TaskSnapshot
from ._options import TaskOptions
from ._record import TaskRecord, TaskStatus
from ._result import TaskResult
from ._shutdown import ShutdownSummary, install_sigterm_handler, quick_stop
from ._stats import PoolStats, TaskStats
from ._task import Task

#: The handle of a task in a shared store: now the same class as every
#: handle, :class:`TaskResult`. Deprecated alias.
StoredResult = TaskResult

__all__ = [
    "BGTasks",
    "BGTasksError",
    "ConfigError",
    "ConfigTypeError",
    "InvalidTaskError",
    "PayloadTooLarge",
    "PoolStats",
    "QueueFull",
    "ShutdownError",
    "ShutdownSummary",
    "StoreError",
    "StoreUnavailable",
    "StoredResult",
    "Task",
    "TaskCancelled",
    "TaskCrashed",
    "TaskFailed",
    "TaskMessage",
    "TaskOptions",
    "TaskRecord",
    "TaskResult",
    "TaskSnapshot",
    "TaskStats",
    "TaskStatus",
    "TaskTimeout",
    "UsageError",
    "current_task",
    "install_sigterm_handler",
    "quick_stop",
    "signals",
]
