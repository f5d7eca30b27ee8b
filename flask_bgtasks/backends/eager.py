"""``BGTASKS_EAGER``: run each task synchronously inside ``submit``."""

from __future__ import annotations

import typing as t

from .._errors import ShutdownError
from . import Backend

if t.TYPE_CHECKING:
    from .._result import TaskResult


class EagerBackend(Backend):
    """Run every task at once in the submitting thread.

    The task still gets a fresh app context and a fresh :mod:`contextvars`
    context, and ``submit`` still returns a :class:`TaskResult`, finished.
    Meant for your own tests: no threads, no waiting, exceptions stored on
    the result exactly as in production.
    """

    _closed = False

    def submit(self, result: TaskResult[t.Any], pool: str) -> None:
        if pool not in self.pool_names:
            raise self.unknown_pool(pool)
        if self._closed:
            raise ShutdownError(
                f"{self.name!r} is shut down and accepts no new tasks."
                " Submit before shutdown(), or create a new app."
            )
        job = result._claim()
        if job is not None:
            result._run(job)

    def join(self, timeout: float | None = None) -> bool:
        return True

    def unfinished(self) -> list[TaskResult[t.Any]]:
        return []

    def close(self, cancel_pending: bool = False) -> list[TaskResult[t.Any]]:
        self._closed = True
        return []

    def wait(self, deadline: float | None = None) -> bool:
        return True

    def interrupt(self) -> tuple[list[TaskResult[t.Any]], list[TaskResult[t.Any]]]:
        return [], []
