"""Flask-BGTasks: managed background tasks for Flask."""

from __future__ import annotations

from . import signals
from ._current import current_task
from ._errors import BGTasksError
from ._errors import ConfigError
from ._errors import ConfigTypeError
from ._errors import InvalidTaskError
from ._errors import QueueFull
from ._errors import ShutdownError
from ._errors import TaskCancelled
from ._errors import UsageError
from ._extension import BGTasks
from ._result import TaskResult
from ._result import TaskStatus
from ._task import Task

__all__ = [
    "BGTasks",
    "BGTasksError",
    "ConfigError",
    "ConfigTypeError",
    "InvalidTaskError",
    "QueueFull",
    "ShutdownError",
    "Task",
    "TaskCancelled",
    "TaskResult",
    "TaskStatus",
    "UsageError",
    "current_task",
    "signals",
]
