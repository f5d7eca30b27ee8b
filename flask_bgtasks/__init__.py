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
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
    UsageError,
)
from ._extension import BGTasks
from ._lifecycle import ShutdownSummary, install_sigterm_handler, quick_stop
from ._record import StoredResult, TaskRecord
from ._result import TaskResult, TaskStatus
from ._task import Task

__all__ = [
    "BGTasks",
    "BGTasksError",
    "ConfigError",
    "ConfigTypeError",
    "InvalidTaskError",
    "PayloadTooLarge",
    "QueueFull",
    "ShutdownError",
    "ShutdownSummary",
    "StoreError",
    "StoredResult",
    "Task",
    "TaskCancelled",
    "TaskFailed",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "TaskTimeout",
    "UsageError",
    "current_task",
    "install_sigterm_handler",
    "quick_stop",
    "signals",
]
