"""How tasks are executed. A backend receives results whose job is set.

Two backends ship: :class:`~flask_bgtasks.backends.threads.ThreadBackend`
(the default: bounded thread pools) and
:class:`~flask_bgtasks.backends.eager.EagerBackend` (``BGTASKS_EAGER``: run
each task inside ``submit``, for tests). A backend never touches Flask; the
job it is handed already carries the app and knows how to enter its context.
"""

from __future__ import annotations

import abc
import typing as t

from .._errors import UsageError

if t.TYPE_CHECKING:
    from .._config import PoolConfig
    from .._result import TaskResult


class Backend(abc.ABC):
    """The interface between the extension and what runs the tasks.

    :param pools: The validated pool settings, by pool name.
    :param name: A label for this app's backend, used in thread names.
    """

    def __init__(self, pools: t.Mapping[str, PoolConfig], name: str) -> None:
        self.pool_names = frozenset(pools)
        self.name = name

    @abc.abstractmethod
    def submit(self, result: TaskResult[t.Any], pool: str) -> None:
        """Accept a task into the named pool, or raise without side effects.

        :raises QueueFull: If the pool has no room.
        :raises ShutdownError: After :meth:`shutdown`.
        :raises UsageError: If there is no pool with that name.
        """

    @abc.abstractmethod
    def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is queued or running; ``False`` at the timeout."""

    @abc.abstractmethod
    def unfinished(self) -> list[TaskResult[t.Any]]:
        """The accepted tasks that have not finished."""

    # Shutdown comes in three steps, so that the extension can take every
    # app's backend through each step together, under one deadline.

    @abc.abstractmethod
    def close(self, cancel_pending: bool = False) -> list[TaskResult[t.Any]]:
        """Accept no more tasks; with ``cancel_pending``, cancel the queued
        ones and return them. Safe to call more than once."""

    @abc.abstractmethod
    def wait(self, deadline: float | None = None) -> bool:
        """After :meth:`close`, wait until the accepted tasks are done, until
        the :func:`time.monotonic` ``deadline``; ``True`` if they are."""

    @abc.abstractmethod
    def interrupt(self) -> tuple[list[TaskResult[t.Any]], list[TaskResult[t.Any]]]:
        """At the deadline: cancel what is queued, end what is running.
        Returns the cancelled and the interrupted tasks."""

    def unknown_pool(self, pool: str) -> UsageError:
        """The error for a task that names a pool this app does not have."""
        known = ", ".join(sorted(self.pool_names))
        return UsageError(
            f"There is no task pool named {pool!r} in {self.name!r}; the pools"
            f" are: {known}. Add it to BGTASKS_POOLS or fix the task's 'pool'."
        )
