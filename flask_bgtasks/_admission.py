"""What ``submit`` checks before a task is queued, and the message it makes.

:class:`Admission` refuses, with an error that names the problem and the
fix, what could not run where the task runs: arguments bound to the request,
a durable task with a store that dies with the process, arguments that
can't cross to a child process (pickle) or to an engine's worker (JSON), a
copied request for a task that leaves the process. Nothing is written or
queued before it has passed. :func:`retry_problem` says why a task can't
run again; :func:`never_run` is the handle of a submit in the reloader's
watcher process, which runs nothing. Knows nothing of stores or backends.
"""

from __future__ import annotations

import logging
import os
import time
import typing as t

from ._context import check_arguments
from ._errors import InvalidTaskError, UsageError
from ._execution import Execution
from ._message import NO_KWARGS, TaskMessage, check_json, check_pickle, json_round_trip, new_id

logger = logging.getLogger("flask_bgtasks")

if t.TYPE_CHECKING:
    from ._config import Config
    from ._record import TaskRecord
    from ._result import TaskResult
    from ._task import Task


class Admission:
    """The checks of one app's submits.

    :param config: The app's validated settings.
    :param tasks: The declared tasks by name: a durable task, or one for a
        child process or an engine's worker, is found again by its name.
    :param shared: Whether the store outlives the process.
    :param engine: The name of the engine backend, whose messages cross as
        JSON (also in eager mode), or ``None``.
    :param process_pools: The pools whose tasks run in child processes.
    """

    def __init__(
        self,
        config: Config,
        tasks: t.Mapping[str, Task[..., t.Any]],
        *,
        shared: bool,
        engine: str | None,
        process_pools: t.Collection[str],
    ) -> None:
        self.config = config
        self.tasks = tasks
        self.shared = shared
        self.engine = engine
        self.process_pools = frozenset(process_pools)

    def admit(
        self,
        task: Task[..., t.Any],
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
        retry_of: str | None = None,
    ) -> tuple[TaskMessage, t.Callable[..., t.Any]]:
        """The message for a call of ``task``, and the function to run it
        with, once every check passed.

        :raises InvalidTaskError: If the task or its arguments can't run
            where it runs; the message says why and what to do.
        :raises UsageError: If a durable task has no store to survive in.
        """
        options = task.options
        if args or kwargs:
            check_arguments(options.name, args, kwargs)
        durable = self.config.durable if options.durable is None else options.durable
        message = TaskMessage(
            new_id(),
            options.name,
            options.pool,
            args,
            kwargs or NO_KWARGS,
            options,
            durable,
            time.time(),
            retry_of=retry_of,
        )
        if durable:
            self._check_durable(task)
            if self.engine is None:  # an engine checks it below
                check_json(message)
        call = task.fn
        if self.engine is not None:
            where = f"runs on a worker of BGTASKS_BACKEND = {self.engine!r}"
            self._refuse_captures(task, where)
            if self.tasks.get(task.name) is not task:
                raise InvalidTaskError(
                    f"Task {task.name!r} {where}, which finds it by its name, but it"
                    " is not the task declared under that name with @bg.task on this"
                    " BGTasks instance (another task has the same name, or the"
                    " function was submitted with bg.submit). Declare it with"
                    " @bg.task, with a unique name."
                )
            if self.config.eager:
                # Run here, but as a worker would get it: through JSON.
                message, call = json_round_trip(message, call, self.engine)
            else:
                check_json(message, engine=self.engine)
        elif options.pool in self.process_pools:
            self._refuse_captures(task, f"runs in a child process (pool {message.pool!r})")
            if not self.config.eager:
                # A declared task is found by name in the child; anything else
                # travels by reference.
                check_pickle(message, None if self.tasks.get(task.name) is task else task.fn)
        return message, call

    def _check_durable(self, task: Task[..., t.Any]) -> None:
        task.check_durable()
        if not self.shared:
            raise UsageError(
                f"Task {task.name!r} is durable, but BGTASKS_STORE is 'memory',"
                " which dies with the process. Set BGTASKS_STORE ="
                " 'sqlite:///tasks.db' (one machine) or 'redis://host:6379/0'"
                " (several), or declare the task with durable=False."
            )
        if self.tasks.get(task.name) is not task:
            raise InvalidTaskError(
                f"Durable task {task.name!r} is not the task declared under that"
                " name with @bg.task on this BGTasks instance (another task has"
                " the same name, or the function was submitted with bg.submit)."
                " A new process finds a durable task by its name: give each a"
                " unique name, and declare it with @bg.task."
            )

    @staticmethod
    def _refuse_captures(task: Task[..., t.Any], where: str) -> None:
        if task.options.captures:
            raise InvalidTaskError(
                f"Task {task.name!r} copies the request or 'g' (copy_request,"
                f" copy_g), but it {where}, where no copy goes. Pass the values it"
                " needs as arguments."
            )


def retry_problem(
    task_id: str, record: TaskRecord | None, tasks: t.Mapping[str, Task[..., t.Any]]
) -> str | None:
    """Why the task with this record can't run again, or ``None`` if it can:
    it must have ended, be declared by name, with arguments the store kept."""
    if record is None:
        return f"No task with id {task_id} (unknown, or its record expired)."
    name = record.name
    if not record.done():
        return (
            f"Task {name!r} (id {task_id}) is still {record.status.value}: only a task"
            " that has ended runs again. Cancel it first, or wait for it."
        )
    task = tasks.get(name)
    if task is None:
        return (
            f"Task {name!r} (id {task_id}) is not declared with @bg.task on this app,"
            " so it can't be found again by its name."
        )
    if task.options.captures:
        return (
            f"Task {name!r} copies the request or 'g' (copy_request, copy_g), which a"
            " retry can't give it. Submit it again from a request."
        )
    if record.args is None or record.kwargs is None:
        return (
            f"The arguments of task {name!r} (id {task_id}) were not JSON, so its"
            f" record kept only their repr, {record.args_repr}. Submit it again"
            " with the values it needs."
        )
    return None


def never_run(task: Task[..., t.Any]) -> TaskResult[t.Any]:
    """The handle of a task submitted in the watcher process of ``flask
    run``'s reloader, which must run nothing."""
    # A task that is already cancelled, known to no store and no
    # backend: the caller gets a handle as anywhere else, and the task
    # runs once, in the process that serves.
    message = TaskMessage(
        new_id(), task.name, task.options.pool, (), NO_KWARGS, task.options, False, time.time()
    )
    execution = Execution(message, task.fn, None, None)
    execution.cancel_queued()
    logger.info(
        "Task %r was not run in the watcher process of the reloader (pid %d);"
        " the process that serves loads the app again and runs it there.",
        task.name,
        os.getpid(),
    )
    return execution.handle
