"""The web side of an engine backend (RQ): a task is recorded in the store
that every machine sees and its message goes to the engine's queue, in one
step, and the caller gets a handle that reads the store. Nothing of the
task stays in this process.

The worker side is :meth:`Runtime.perform <._runtime.Runtime.perform>`,
which runs a received message with the same run function as a thread pool;
a worker finds the runtime of the app it loaded with :func:`runtime_of`.
"""

from __future__ import annotations

import typing as t
import weakref

from . import signals
from ._errors import InvalidTaskError, UsageError
from ._message import TaskSnapshot
from ._record import TaskStatus
from ._result import TaskResult

if t.TYPE_CHECKING:
    from flask import Flask

    from ._message import TaskMessage
    from ._runtime import Runtime
    from .backends import Backend
    from .stores import TaskStore


# The runtime of each app: an engine's worker finds it by the app it loaded.
_runtimes: weakref.WeakKeyDictionary[Flask, Runtime] = weakref.WeakKeyDictionary()


def runtime_of(app: Flask) -> Runtime:
    """The runtime of an app registered with a BGTasks instance.

    :raises UsageError: If there is none.
    """
    try:
        return _runtimes[app]
    except KeyError:
        raise UsageError(
            f"The app {app.name!r} is not registered with Flask-BGTasks; did you call init_app()?"
        ) from None


def register_runtime(app: Flask, runtime: Runtime) -> None:
    """Make ``runtime`` the one :func:`runtime_of` finds for ``app``."""
    _runtimes[app] = runtime


def send(app: Flask, store: TaskStore, backend: Backend, message: TaskMessage) -> TaskResult[t.Any]:
    """Record the task and queue it, both or neither (the backend sees to
    that), and return a handle that reads the store."""
    snapshot = TaskSnapshot(
        message, TaskStatus.QUEUED, message.attempt, None, message.errors, False, None, None
    )
    backend.send(store, snapshot)
    handle = TaskResult.from_record(store, snapshot.record(None), backend.stop_task)
    if signals.task_submitted.receivers:
        signals.task_submitted.send(app, task=handle)
    return handle


def missing_task(name: str) -> t.Callable[..., t.Any]:
    """What a worker runs for a task its app does not declare: it fails,
    saying so, and its record says so too."""

    def missing(*args: object, **kwargs: object) -> t.NoReturn:
        raise InvalidTaskError(
            f"Task {name!r} is not declared in the app this worker loaded. Declare it"
            " with @bg.task in a module the app imports, and run the workers with"
            " the same code as the web processes."
        )

    return missing
