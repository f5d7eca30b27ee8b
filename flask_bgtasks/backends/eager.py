"""``BGTASKS_EAGER``: run each task synchronously inside ``submit``."""

from __future__ import annotations

import typing as t

from . import NothingHeldHere

if t.TYPE_CHECKING:
    from .._message import TaskMessage


class EagerBackend(NothingHeldHere):
    """Run every task at once in the submitting thread.

    The task still gets a fresh app context and a fresh :mod:`contextvars`
    context through the same run function, and ``submit`` still returns a
    :class:`~flask_bgtasks.TaskResult`, finished. Meant for your own tests:
    no threads, no waiting, exceptions stored on the result exactly as in
    production.
    """

    def submit(self, message: TaskMessage) -> None:
        if message.pool not in self.pool_names:
            raise self.unknown_pool(message.pool)
        self.check_open()
        self.run(message)
