"""The per-app runtime: it turns a submit into a message, hands it to the
backend, runs it when the backend says so, and tells the store.

One :class:`Runtime` per app. It owns this process's tasks of that app (the
executions, by id), the durable policy, the recovery of durable tasks that a
dead process left, and the store events. What ``submit`` checks is in
:mod:`._admission`; with an engine backend (RQ), the web side is in
:mod:`._engine`, and an engine's worker runs what it receives through
:meth:`Runtime.perform`. :class:`~flask_bgtasks.BGTasks` wires config to
it; the shutdown procedure (:mod:`._shutdown`) takes it through its steps.
"""

from __future__ import annotations

import logging
import os
import time
import typing as t
import weakref

from . import signals
from ._admission import Admission, never_run, retry_problem
from ._context import check_not_forking_per_request, is_reloader_watcher
from ._engine import missing_task, register_runtime, send
from ._errors import QueueFull, ShutdownError, StoreUnavailable, UsageError
from ._execution import Execution
from ._message import NO_KWARGS, TaskMessage
from ._observer import StoreEvents
from ._options import TaskOptions
from ._process import ProcessLocal
from ._record import process_name
from ._result import TaskResult
from ._run import run
from ._stats import collect_stats
from .backends import backend_class
from .backends.eager import EagerBackend

if t.TYPE_CHECKING:
    from flask import Flask, Response

    from ._config import Config
    from ._context import Captured
    from ._record import TaskRecord
    from ._stats import TaskStats
    from ._task import Task
    from .backends import Backend
    from .stores import TaskStore

logger = logging.getLogger("flask_bgtasks")


class Runtime(ProcessLocal):
    """What the extension runs for one app in this process.

    :param app: The app; held weakly.
    :param config: Its validated ``BGTASKS_*`` settings.
    :param store: Its task store.
    :param tasks: The tasks of the extension by name, to find a durable
        task again.
    """

    def __init__(
        self,
        app: Flask,
        config: Config,
        store: TaskStore,
        tasks: t.Mapping[str, Task[..., t.Any]],
    ) -> None:
        # A weak reference: this object is the value of a WeakKeyDictionary
        # keyed by the app, and must not keep the app alive.
        self._app = weakref.ref(app)
        self.config = config
        self.store = store
        self.shared = store.shared
        self.tasks = tasks
        #: The pools whose tasks run in child processes.
        self.process_pools = frozenset(
            name for name, pool in config.pools.items() if pool.kind == "process"
        )
        chosen = backend_class(config.backend)
        #: The engine backend whose workers run the tasks, by its config
        #: name; its messages cross as JSON, also in eager mode, so that a
        #: test sees what a worker would refuse.
        self.engine = config.backend if chosen.remote else None
        #: Whether the tasks run elsewhere, and nothing of them is kept here.
        self.remote = chosen.remote and not config.eager
        # Eager mode, for tests, runs every task in submit() whatever the
        # backend.
        backend = EagerBackend if config.eager else chosen
        self.backend: Backend = backend.from_config(config, app.name, self.run_message)
        self.backend.claim = self.claim
        self.backend.worker_side = self
        self.admission = Admission(
            config, tasks, shared=self.shared, engine=self.engine, process_pools=self.process_pools
        )
        #: The process that submitted to this app last; ``None`` before any.
        #: A Gunicorn master with ``--preload`` or the reloader's watcher
        #: never submits, so the drain at exit leaves it alone.
        self.active_pid: int | None = None
        self.store_pid: int | None = None
        #: Set once shutdown has begun: no durable task is taken over then.
        self.closing = False
        #: Whether the on_shutdown hooks ran for this app.
        self.hooks_ran = False
        super().__init__()
        register_runtime(app, self)

    def _init_state(self) -> None:
        # This process's unfinished tasks, by id. A forked child starts
        # with none: its parent's tasks are not its own.
        self.executions: dict[str, Execution] = {}
        #: What the tasks of this process report to: the store, mostly.
        self.events = StoreEvents(
            self._app, self.store, self.executions, set(self.config.pools) - self.process_pools
        )

    @property
    def app(self) -> Flask:
        """The app. :raises UsageError: If it no longer exists."""
        return self.events.app

    def install(self, app: Flask) -> None:
        """Hook into ``app``: the store's upkeep in the processes that serve
        requests, and cleanup when the app is gone."""
        if self.shared:
            # A worker process that serves requests runs tasks, so it takes
            # part in the store's upkeep even before it submits any.
            app.before_request(self.activate_store)
            app.after_request(self.flush_store)
        # An app that is gone has no queued tasks (each holds its app), so
        # its idle workers may stop; without this they would wait for the
        # garbage collector to break the cycle between tasks and the store.
        weakref.finalize(app, self.backend.close)
        weakref.finalize(app, self.store.close)

    def join(self, deadline: float | None) -> bool:
        """Wait until no task is queued or running and the store has
        committed what they wrote, until the :func:`time.monotonic`
        ``deadline``; ``False`` if it passed first."""
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self.backend.join(left):
            return False
        self.store.flush()
        return True

    # -- this process -------------------------------------------------------

    def enter_process(self) -> bool:
        """The first submit in this process. Refuse a process forked for
        one request, since its tasks could never run.

        :return: ``False`` in the watcher of ``flask run``'s reloader, which
            must run no task, start no thread and write nothing: the
            process it starts to serve loads the app again, and runs them.
        """
        self.check_process()
        self.backend.check_process()
        check_not_forking_per_request()
        if is_reloader_watcher():
            return False
        self.active_pid = os.getpid()
        self.activate_store()
        return True

    def activate_store(self) -> None:
        """This process runs tasks: let a shared store start its upkeep,
        which also takes over the durable tasks of dead processes. Eager
        mode starts no thread."""
        if self.store_pid != os.getpid():
            self.store_pid = os.getpid()
            if not self.config.eager:
                self.store.activate(self.recover, self.durable_names)

    def flush_store(self, response: Response) -> Response:
        """Before a response leaves, commit what the request wrote, such as
        the tasks it submitted: a client may ask another process for them
        next."""
        self.store.flush()
        return response

    # -- the durable policy -------------------------------------------------

    def is_durable(self, task: Task[..., t.Any]) -> bool:
        durable = task.options.durable
        return self.config.durable if durable is None else durable

    def durable_names(self) -> list[str]:
        if self.closing:  # a process that shuts down takes nothing over
            return []
        return [name for name, task in list(self.tasks.items()) if self.is_durable(task)]

    # -- submit, recover, run -----------------------------------------------

    def submit(
        self,
        app: Flask,
        task: Task[..., t.Any],
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
        captured: Captured | None,
        retry_of: str | None = None,
    ) -> TaskResult[t.Any]:
        """Queue a task: check it, make its message, record it, hand it to
        the backend. Nothing is queued or written if a check fails."""
        if self.active_pid != os.getpid() and not self.enter_process():
            return never_run(task)
        message, call = self.admission.admit(task, args, kwargs, retry_of)
        if self.remote:
            return send(app, self.store, self.backend, message)
        execution = Execution(message, call, captured, self.events, app)
        self._accept(execution)
        handle = execution.handle
        if signals.task_submitted.receivers:
            signals.task_submitted.send(app, task=handle)
        return handle

    def _accept(self, execution: Execution, *, recorded: bool = False) -> None:
        message = execution.message
        executions = self.executions
        executions[message.id] = execution
        try:
            if self.shared and not recorded:
                # Recorded first, so that the worker finds the record;
                # removed again if the backend refuses the task.
                self.store.add(execution.snapshot())
                try:
                    self.backend.submit(message)
                except BaseException:
                    self.store.discard(message.id)
                    raise
            else:
                self.backend.submit(message)
        except BaseException:
            executions.pop(message.id, None)
            raise

    def recover(self, record: TaskRecord) -> bool:
        """Queue a durable task that the store took over from a dead process."""
        task = self.tasks.get(record.name)
        if task is None or self._app() is None:
            return False
        options = task.options
        message = TaskMessage(
            record.id,
            record.name,
            options.pool,
            tuple(record.args or ()),
            record.kwargs or NO_KWARGS,
            options,
            True,
            record.submitted_at.timestamp(),
            record.attempt,
            tuple(record.errors),
        )
        try:
            if self.remote:  # back to the engine's queue, for any of its workers
                self.backend.submit(message)
            else:
                execution = Execution(message, task.fn, None, self.events, self._app())
                self._accept(execution, recorded=True)
        except (QueueFull, ShutdownError, StoreUnavailable):
            return False
        except UsageError:  # the task names a pool this app does not have
            logger.exception("Durable task %r (id %s) can't run here.", record.name, record.id)
            return False
        # This process now runs tasks, so its exit drains them.
        self.active_pid = os.getpid()
        return True

    def run_message(self, message: TaskMessage) -> None:
        """Run a message in this thread; the backend calls this."""
        execution = self.claim(message)
        if execution is not None:
            run(execution, self.app)

    def perform(self, data: str | bytes) -> None:
        """Run, in this thread, a message that a worker of the engine
        received: the task is found by name among those of this app, and
        runs as on a thread pool. A task that is not declared here fails,
        saying so."""
        if self.active_pid != os.getpid():
            self.enter_process()
        message = TaskMessage.from_json(data, self._options)
        task = self.tasks.get(message.name)
        call = missing_task(message.name) if task is None else task.fn
        app = self.app
        execution = Execution(message, call, None, self.events, app)
        self.executions[message.id] = execution
        if execution.claim():
            run(execution, app)

    def abandoned(self, data: str | bytes, pid: int) -> None:
        """A forked process that ran a message died: a task it left
        unfinished is ended (or run again, if durable) now, as the store
        does for the tasks of dead processes."""
        message = TaskMessage.from_json(data, self._options)
        self.store.abandon(message.id, process_name(pid))

    def _options(self, name: str) -> TaskOptions:
        task = self.tasks.get(name)
        return TaskOptions(name=name) if task is None else task.options

    def claim(self, message: TaskMessage) -> Execution | None:
        """Take a message's task off the queue: its execution, or ``None``
        if it was cancelled, or taken, meanwhile."""
        execution = self.executions.get(message.id)
        return execution if execution is not None and execution.claim() else None

    # -- lookups ------------------------------------------------------------

    def get(self, task_id: str) -> TaskResult[t.Any] | None:
        """The handle of a task by id: of this process if it runs here, else
        from the store."""
        execution = self.executions.get(task_id)
        if execution is not None:
            return execution.handle
        handle = self.store.handle(task_id)
        if handle is not None:
            return handle
        if not self.shared:
            return None
        record = self.store.record(task_id)
        if record is None:
            return None
        return TaskResult.from_record(self.store, record, self.backend.stop_task)

    def cancel(self, task_id: str) -> bool:
        """Cancel a task by id, here or through the store."""
        execution = self.executions.get(task_id)
        if execution is not None:
            return execution.handle.cancel()
        if self.remote:  # the handle also takes it out of the engine's queue
            handle = self.get(task_id)
            return handle is not None and handle.cancel()
        return self.store.cancel(task_id)

    def retry(self, app: Flask, task_id: str) -> TaskResult[t.Any]:
        """Submit a finished task again, with the same arguments."""
        handle = self.get(task_id)
        record = None if handle is None else handle.record()
        problem = retry_problem(task_id, record, self.tasks)
        if problem is not None or record is None:
            raise UsageError(problem)
        task = self.tasks[record.name]
        return self.submit(app, task, tuple(record.args or ()), record.kwargs or {}, None, task_id)

    def stats(self) -> TaskStats:
        """The store's counts and the backend's workers, now."""
        # Read only for a memory store, which needs them.
        unfinished = (execution.handle.record() for execution in self.unfinished())
        return collect_stats(self.store, self.backend, unfinished, self.config)

    def unfinished(self) -> list[Execution]:
        """This process's tasks of this app that have not ended."""
        return [execution for execution in list(self.executions.values()) if not execution.ended]

    def cancel_dropped(self, messages: t.Iterable[TaskMessage]) -> list[Execution]:
        """Cancel the messages a backend took off its queue at shutdown:
        durable ones are released to the next process."""
        cancelled = []
        for message in messages:
            execution = self.executions.get(message.id)
            if execution is not None and execution.cancel_queued(release=True):
                _log_cancelled(execution, "was queued at shutdown")
                cancelled.append(execution)
        return cancelled

    def interrupt(self) -> tuple[list[Execution], list[Execution]]:
        """At the shutdown deadline, after the backend stopped starting
        tasks: cancel the queued ones, end the running ones."""
        cancelled: list[Execution] = []
        interrupted: list[Execution] = []
        for execution in self.unfinished():
            if execution.cancel_queued(release=True):
                _log_cancelled(execution, "was still queued at the shutdown deadline")
                cancelled.append(execution)
            elif execution.interrupt():
                interrupted.append(execution)
        return cancelled, interrupted


def _log_cancelled(execution: Execution, when: str) -> None:
    if execution.released:
        then = "was left in the store for the next process to run"
    else:
        then = "was cancelled"
    message = execution.message
    logger.warning("Task %r (id %s) %s and %s.", message.name, execution.handle.id, when, then)
