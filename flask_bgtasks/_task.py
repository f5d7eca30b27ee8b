"""``Task``: a function made submittable by ``@bg.task``."""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import time
import typing as t

from . import signals
from ._callables import async_function, describe_async
from ._config import DEFAULT_POOL
from ._context import Captured, capture, check_arguments, get_app, run_task
from ._errors import InvalidTaskError, UsageError
from ._record import to_json
from ._result import TaskResult, short_repr
from ._retry import RetryPolicy

logger = logging.getLogger("flask_bgtasks")

if t.TYPE_CHECKING:
    from flask import Flask

    from ._extension import BGTasks, _AppState
    from ._record import TaskRecord

P = t.ParamSpec("P")
R = t.TypeVar("R")


class Task(t.Generic[P, R]):
    """A function that can run in the background. Made by :meth:`BGTasks.task`.

    Calling it runs the function here and now, as before. :meth:`submit` and
    :meth:`map` run it on the app's task pool. It keeps the function's name,
    docstring and signature, also for type checkers.

    Everything that can be decided about the function is decided here, once,
    so that ``submit`` does as little as possible.

    .. versionadded:: 0.1
    """

    # Set on the tasks that run a view for @bg.background_view.
    _view = False

    def __init__(
        self,
        extension: BGTasks,
        fn: t.Callable[P, R],
        *,
        name: str | None = None,
        pool: str = DEFAULT_POOL,
        copy_request: bool = False,
        copy_g: t.Iterable[str] = (),
        timeout: float | None = None,
        durable: bool | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        expose_result: bool = False,
        expose_error: bool = False,
    ) -> None:
        if not callable(fn):
            raise InvalidTaskError(
                f"@bg.task needs a function, got {fn!r} ({type(fn).__name__})."
                " Put the decorator directly above a 'def'."
            )
        found = async_function(fn)
        if found is not None:
            raise InvalidTaskError(
                f"{describe_async(fn, found)}; background tasks run plain functions in"
                " threads. Make it a plain 'def', or wrap it: 'def task(...):"
                " return asyncio.run(coroutine(...))'."
            )
        if name is None:
            # Callable objects have no __qualname__ of their own: use their class's.
            named = fn if hasattr(fn, "__qualname__") else type(fn)
            name = f"{named.__module__}.{named.__qualname__}"
        if not isinstance(name, str) or not name:
            raise InvalidTaskError(f"A task's name must be a non-empty string, got {name!r}.")
        if not isinstance(pool, str) or not pool:
            raise InvalidTaskError(f"Task {name!r}: 'pool' must be a pool name, got {pool!r}.")
        if not isinstance(copy_request, bool):
            raise InvalidTaskError(
                f"Task {name!r}: 'copy_request' must be True or False, got {copy_request!r}."
            )
        if isinstance(copy_g, str) or not all(isinstance(key, str) for key in copy_g):
            raise InvalidTaskError(
                f"Task {name!r}: 'copy_g' must be a list of attribute names of"
                f" 'g', such as ['user_id'], got {copy_g!r}."
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise InvalidTaskError(
                f"Task {name!r}: 'timeout' must be a number of seconds above 0,"
                f" or None, got {timeout!r}."
            )
        if durable is not None and not isinstance(durable, bool):
            raise InvalidTaskError(
                f"Task {name!r}: 'durable' must be True, False or None (follow"
                f" BGTASKS_DURABLE), got {durable!r}."
            )
        for option, value in (("expose_result", expose_result), ("expose_error", expose_error)):
            if not isinstance(value, bool):
                raise InvalidTaskError(
                    f"Task {name!r}: {option!r} must be True or False, got {value!r}."
                )
        #: Whether the HTTP API shows the return value, and the error's
        #: message and traceback, rather than only the error's type.
        self.expose_result = expose_result
        self.expose_error = expose_error
        self.retry = _retry_policy(name, retries, retry_backoff, retry_on)
        self.fn = fn
        #: ``True`` or ``False``, or ``None`` to follow ``BGTASKS_DURABLE``.
        self.durable = durable
        #: Seconds the task may run, or ``None``.
        self.timeout = timeout
        #: The task's name, in logs and on its results.
        self.name = name
        #: The name of the pool it runs on.
        self.pool = pool
        self.copy_request = copy_request
        self.copy_g = tuple(copy_g)
        self._extension = extension
        self._captures = copy_request or bool(self.copy_g)
        # Name and docstring, but not the function's __dict__, which could
        # overwrite the attributes above.
        functools.update_wrapper(self, fn, updated=())
        if durable:
            self._check_durable()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, like the undecorated function."""
        return self.fn(*args, **kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskResult[R]:
        """Queue the task for the current app and return at once.

        .. code-block:: python

            result = build_report.submit(user_id=42)
            return {"task": result.id}, 202

        :raises UsageError: Outside an app context, or for an unknown pool.
        :raises QueueFull: If the pool's queue is full (an HTTP 503).
        :raises ShutdownError: After the extension was shut down.
        :raises InvalidTaskError: If an argument is a Flask context proxy.
        """
        app = get_app()
        captured = self._capture() if self._captures else None
        return self._submit(app, captured, args, kwargs)

    def map(
        self,
        *iterables: t.Iterable[t.Any],
        timeout: float | None = None,
        buffersize: int | None = None,
    ) -> t.Iterator[R]:
        """Run the task once per item and yield the results in input order.

        Like :meth:`concurrent.futures.Executor.map`: all tasks are submitted
        before this returns, unless ``buffersize`` caps how many are
        submitted ahead of the results you have consumed. Leaving the loop
        early cancels the tasks that have not started.

        .. code-block:: python

            sizes = list(thumbnail.map(paths, buffersize=20))

        :param timeout: Seconds from now after which waiting for a result
            raises :class:`TimeoutError`.
        :param buffersize: Most tasks in flight at once; use it for long
            inputs that would not fit in the queue.
        :raises QueueFull: If the tasks do not fit in the queue; nothing of
            this call keeps running then.
        """
        if buffersize is not None and (isinstance(buffersize, bool) or buffersize < 1):
            raise ValueError(
                f"buffersize must be a whole number of at least 1, got {buffersize!r}."
            )
        app = get_app()
        captured = self._capture() if self._captures else None
        deadline = None if timeout is None else time.monotonic() + timeout
        items = zip(*iterables)
        pending: collections.deque[TaskResult[R]] = collections.deque()

        def submit_next(count: int | None) -> None:
            for args in items if count is None else itertools.islice(items, count):
                pending.append(self._submit(app, captured, args, {}))

        try:
            submit_next(buffersize)
        except BaseException:
            _cancel_all(pending)
            raise
        return self._yield_results(pending, deadline, submit_next if buffersize else None)

    @staticmethod
    def _yield_results(
        pending: collections.deque[TaskResult[R]],
        deadline: float | None,
        submit_next: t.Callable[[int], None] | None,
    ) -> t.Iterator[R]:
        try:
            while pending:
                # No local name holds the value or its result while the
                # caller has it: dropping the value frees it (bpo-14406).
                yield _next_result(pending, deadline, submit_next)
        finally:
            _cancel_all(pending)

    def _capture(self) -> Captured:
        return capture(self.name, self.copy_g, self.copy_request)

    def _submit(
        self,
        app: Flask,
        captured: Captured | None,
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
    ) -> TaskResult[R]:
        state = self._extension._get_state(app)
        if state.active_pid != os.getpid() and not state.enter_process():
            return _not_run_in_watcher(self.name)
        if args or kwargs:
            check_arguments(self.name, args, kwargs)
        durable = state.is_durable(self)
        if durable:
            self._check_durable(state)
            _check_json(self.name, args, kwargs)
        job = functools.partial(run_task, app, self.fn, args, kwargs, captured)
        result: TaskResult[R] = TaskResult(self.name, job, state, self.timeout, self.pool)
        if args or kwargs:
            result._arguments = (args, kwargs)
        if durable:
            result.durable = True
        if self.retry is not None:
            result.retry = self.retry
        store = state.store
        if store.shared:
            # Recorded first, so that the worker finds the record; removed
            # again if the pool refuses the task.
            store.add(result, args, kwargs)
            try:
                state.backend.submit(result, self.pool)
            except BaseException:
                store.discard(result)
                raise
        else:
            state.backend.submit(result, self.pool)
        if signals.task_submitted.receivers:
            signals.task_submitted.send(app, task=result)
        return result

    def _resubmittable(self, app: Flask, state: _AppState, record: TaskRecord) -> TaskResult[R]:
        """A new result for a durable task that a dead process left."""
        args = tuple(record.args or ())
        kwargs = record.kwargs or {}
        job = functools.partial(run_task, app, self.fn, args, kwargs, None)
        result: TaskResult[R] = TaskResult(self.name, job, state, self.timeout, self.pool)
        result.__dict__["_id"] = record.id
        result.durable = True
        result.retry = self.retry
        result.attempt = record.attempt
        result._errors = tuple(record.errors)
        state.register(record.id, result)
        return result

    def _check_durable(self, state: _AppState | None = None) -> None:
        """A durable task is found again by name, in a new process, and
        runs from its stored arguments alone."""
        if "<" in self.name:
            raise InvalidTaskError(
                f"Task {self.name!r} can't be durable: a new process could not"
                " find it by this name. Declare it at module level, or give it a"
                " stable name with @bg.task(name=...)."
            )
        if self._captures:
            raise InvalidTaskError(
                f"Task {self.name!r} can't be durable and copy the request or"
                " 'g': a durable task runs again from its JSON arguments alone."
                " Pass the values it needs as arguments, or declare it with"
                " durable=False."
            )
        if state is not None and not state.store.shared:
            raise UsageError(
                f"Task {self.name!r} is durable, but BGTASKS_STORE is 'memory',"
                " which dies with the process. Set BGTASKS_STORE ="
                " 'sqlite:///tasks.db', or declare the task with durable=False."
            )
        if state is not None and state.tasks.get(self.name) is not self:
            raise InvalidTaskError(
                f"Durable task {self.name!r} is not the task declared under that"
                " name with @bg.task on this BGTasks instance (another task has"
                " the same name, or the function was submitted with bg.submit)."
                " A new process finds a durable task by its name: give each a"
                " unique name, and declare it with @bg.task."
            )

    def __repr__(self) -> str:
        return f"<Task {self.name!r} pool={self.pool!r}>"


def _retry_policy(
    name: str,
    retries: object,
    backoff: object,
    retry_on: object,
) -> RetryPolicy | None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidTaskError(
            f"Task {name!r}: 'retries' must be a whole number of at least 0, got {retries!r}."
        )
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise InvalidTaskError(
            f"Task {name!r}: 'retry_backoff' must be a number of seconds of at"
            f" least 0, got {backoff!r}."
        )
    types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not types or not all(
        isinstance(cls, type) and issubclass(cls, BaseException) for cls in types
    ):
        raise InvalidTaskError(
            f"Task {name!r}: 'retry_on' must be an exception class or a tuple"
            f" of them, such as (ConnectionError, TimeoutError), got {retry_on!r}."
        )
    if retries == 0:
        return None
    return RetryPolicy(retries, float(backoff), types)


def _check_json(name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
    """Refuse arguments of a durable task that JSON can't hold."""
    if to_json([args, kwargs]) is not None:
        return
    named = [(f"Argument {position}", value) for position, value in enumerate(args)]
    named += [(f"Argument {key!r}", value) for key, value in kwargs.items()]
    for which, value in named:
        if to_json(value) is None:
            raise InvalidTaskError(
                f"{which} of durable task {name!r} is {type(value).__name__}"
                f" {short_repr(value, 80)}, which is not JSON. A durable task is"
                " stored with its arguments as JSON: pass str, int, float, bool,"
                " None, or lists and dicts of them (an id rather than an object)."
            )


def _next_result(
    pending: collections.deque[TaskResult[R]],
    deadline: float | None,
    submit_next: t.Callable[[int], None] | None,
) -> R:
    """Wait for the oldest pending task's value, then top up the buffer."""
    result = pending.popleft()
    try:
        value = result.result(None if deadline is None else deadline - time.monotonic())
    except BaseException:
        result.cancel()  # a timeout: like the tasks still pending, it is not wanted
        raise
    if submit_next is not None:
        submit_next(1)
    return value


def _not_run_in_watcher(name: str) -> TaskResult[t.Any]:
    # A result that is already cancelled, known to no store and no pool: the
    # caller gets a result as anywhere else, and the task runs once, in the
    # process that serves.
    result: TaskResult[t.Any] = TaskResult(name, _never_run)
    result.cancel()
    logger.info(
        "Task %r was not run in the watcher process of the reloader (pid %d);"
        " the process that serves loads the app again and runs it there.",
        name,
        os.getpid(),
    )
    return result


def _never_run(result: TaskResult[t.Any]) -> None:  # pragma: no cover - never runs
    raise AssertionError("A task submitted in the reloader's watcher ran.")


def _cancel_all(results: t.Iterable[TaskResult[t.Any]]) -> None:
    for result in results:
        result.cancel()
