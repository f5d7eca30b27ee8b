"""``current_task``: what a running task may ask about itself."""

from __future__ import annotations

import typing as t
from contextvars import ContextVar

from ._errors import UsageError

if t.TYPE_CHECKING:
    from ._execution import Execution
    from ._result import TaskResult

#: The task running in this context. Every task runs in a fresh
#: :class:`contextvars.Context`, so setting it never needs a reset.
running_task: ContextVar[Execution] = ContextVar("flask_bgtasks.running_task")


def _running() -> Execution:
    try:
        return running_task.get()
    except LookupError:
        raise UsageError(
            "'current_task' is only available inside a running background task."
            " Use it in a function decorated with '@bg.task', not in a view or"
            " at import time."
        ) from None


class _CurrentTask:
    """The task that is running in this thread.

    Import it as ``from flask_bgtasks import current_task`` and use it inside a
    task function. Outside a task every attribute raises
    :class:`~flask_bgtasks.UsageError` (a :class:`RuntimeError`).

    .. code-block:: python

        @bg.task
        def export(rows):
            for i, row in enumerate(rows):
                current_task.check_cancelled()
                write(row)
                current_task.set_progress(i + 1, len(rows))

    .. versionadded:: 0.1
    """

    __slots__ = ()

    @property
    def id(self) -> str:
        """The id of the running task."""
        return _running().handle.id

    @property
    def name(self) -> str:
        """The name of the running task."""
        return _running().message.name

    @property
    def attempt(self) -> int:
        """Which attempt this is: 1 for the first run, one more for each
        retry and each rerun of a durable task after its process died."""
        return _running().attempt

    @property
    def result(self) -> TaskResult[t.Any]:
        """The :class:`~flask_bgtasks.TaskResult` of the running task."""
        return _running().handle

    @property
    def cancel_requested(self) -> bool:
        """``True`` once someone called ``cancel()`` on this running task."""
        return _running().cancel_requested

    def check_cancelled(self) -> None:
        """Raise :class:`~flask_bgtasks.TaskCancelled` if cancellation was
        requested.

        Let the exception propagate: the task then ends with the status
        ``cancelled``. Call it at points where stopping is safe.
        """
        execution = _running()
        if execution.cancel_requested:
            raise execution.cancelled_error()

    def set_progress(
        self,
        current: float,
        total: float | None = None,
        message: str | None = None,
    ) -> None:
        """Record how far the task has got.

        :param current: Work done so far, in any unit.
        :param total: Total work in the same unit, if known.
        :param message: A short text for people, such as ``"Rendering page 3"``.
        :raises TypeError: If a value has the wrong type.
        """
        _check_number("current", current)
        if total is not None:
            _check_number("total", total)
        if message is not None and not isinstance(message, str):
            raise TypeError(
                f"set_progress(message=...) must be a str or None, got {type(message).__name__}."
            )
        _running().set_progress(current, total, message)

    def __repr__(self) -> str:
        try:
            return f"<current_task {_running().handle!r}>"
        except UsageError:
            return "<current_task (no task running)>"


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"set_progress({name}=...) must be an int or a float, got {type(value).__name__}."
        )


current_task = _CurrentTask()
