"""``BGTASKS_EAGER``: run each task synchronously inside ``submit``."""

from __future__ import annotations

import typing as t

from .._errors import ShutdownError
from . import Backend

if t.TYPE_CHECKING:
    from .._message import TaskMessage


class EagerBackend(Backend):
    """Run every task at once in the submitting thread.

    The task still gets a fresh app context and a fresh :mod:`contextvars`
    context through the same run function, and ``submit`` still returns a
    :class:`~flask_bgtasks.TaskResult`, finished. Meant for your own tests:
    no threads, no waiting, exceptions stored on the result exactly as in
    production.
    """

    _closed = False

    def submit(self, message: TaskMessage) -> None:
        if message.pool not in self.pool_names:
            raise self.unknown_pool(message.pool)
        if self._closed:
            raise ShutdownError(
                f"{self.name!r} is shut down and accepts no new tasks."
                " Submit before shutdown(), or create a new app."
            )
        self.run(message)

    def join(self, timeout: float | None = None) -> bool:
        return True

    def close(self, cancel_pending: bool = False) -> list[TaskMessage]:
        self._closed = True
        return []

    def wait(self, deadline: float | None = None) -> bool:
        return True

    def stop(self) -> None:
        pass
