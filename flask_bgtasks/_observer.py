"""What a running task reports, and to whom: the :class:`Observer`
protocol, and :class:`StoreEvents`, which turns each report into a call of
the app's store with a snapshot.

An :class:`~._execution.Execution` reports to one observer: the
:class:`StoreEvents` of its app's runtime in the process that holds its
handle, or a :class:`~._child.ChildObserver` in a child process, which
passes the reports to the parent over a pipe.
"""

from __future__ import annotations

import typing as t

from ._context import app_context, send_cancelled
from ._run import run

if t.TYPE_CHECKING:
    from flask import Flask

    from ._execution import Execution
    from .stores import TaskStore


class Observer(t.Protocol):
    """What an execution reports to."""

    def may_start(self, execution: Execution) -> bool:
        """Before each attempt; ``False`` if the store says it must not
        run (cancelled or taken over by another process)."""

    def changed(self, execution: Execution) -> None:
        """Progress, the cancel request, the errors or a retry wait changed."""

    def check_value(self, execution: Execution, value: object) -> BaseException | None:
        """The error to fail the task with if its store can't keep ``value``."""

    def ended(
        self, execution: Execution, value: object, error: BaseException | None, kept: bool
    ) -> None:
        """The task ended with ``value`` or ``error`` (``kept``: its handle
        was looked up by id); called before its waiters wake."""

    def cancel_requested(self, execution: Execution) -> bool:
        """Whether another process asked the task to stop."""

    def cancelled_while_queued(self, execution: Execution) -> None:
        """It was cancelled before it started, so it will never run."""

    def keep(self, execution: Execution) -> None:
        """Its id was handed out: it must be found by id from now on."""

    def run_here(self, execution: Execution) -> None:
        """Run it in this thread now, if nobody has taken it yet."""

    def callback_context(self) -> t.ContextManager[object]:
        """The context in which a done-callback runs outside the task."""


class StoreEvents:
    """The observer of an app's tasks in this process: it tells the store,
    with a snapshot, and drops a task from ``executions`` when it ends.

    :param app: Returns the app, or ``None`` once it is gone.
    :param store: The app's store; a store that other processes can't see
        is told only about the tasks whose id was handed out.
    :param executions: The unfinished tasks of this process, by id.
    """

    def __init__(
        self,
        app: t.Callable[[], Flask | None],
        store: TaskStore,
        executions: t.MutableMapping[str, Execution],
        thread_pools: t.Collection[str],
    ) -> None:
        self._app = app
        self.store = store
        self.shared = store.shared
        self.executions = executions
        #: The pools whose tasks may run in any thread of this process.
        self.thread_pools = frozenset(thread_pools)

    @property
    def app(self) -> Flask:
        app = self._app()
        if app is None:  # pragma: no cover - a task outlived its app
            from ._errors import UsageError

            raise UsageError("The app this task belongs to no longer exists.")
        return app

    def may_start(self, execution: Execution) -> bool:
        return not self.shared or self.store.started(execution.snapshot())

    def changed(self, execution: Execution) -> None:
        if self.shared:
            self.store.changed(execution.snapshot())

    def check_value(self, execution: Execution, value: object) -> BaseException | None:
        if not self.shared:
            return None
        return self.store.check_value(execution.snapshot(), value)

    def ended(
        self, execution: Execution, value: object, error: BaseException | None, kept: bool
    ) -> None:
        self.executions.pop(execution.message.id, None)
        if self.shared or kept:
            self.store.finished(execution.snapshot(), value)

    def cancel_requested(self, execution: Execution) -> bool:
        return self.shared and self.store.cancel_requested(execution.message.id)

    def cancelled_while_queued(self, execution: Execution) -> None:
        send_cancelled(self.app, execution.handle)

    def keep(self, execution: Execution) -> None:
        # The store first, then the mark: if the task ended in between, the
        # mark says so, and its end is counted here rather than by ended().
        self.store.keep(execution.message.id, execution.handle)
        if execution.keep() and not self.shared:
            self.store.finished(execution.snapshot())

    def run_here(self, execution: Execution) -> None:
        # Not a task of a process pool: it must run in a child.
        if execution.message.pool in self.thread_pools and execution.claim():
            run(execution, self.app)

    def callback_context(self) -> t.ContextManager[object]:
        return app_context(self.app)
