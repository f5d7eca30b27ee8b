"""``Task``: a function made submittable by ``@bg.task``."""

from __future__ import annotations

import collections
import functools
import itertools
import time
import typing as t

from ._callables import async_function, describe_async
from ._context import Captured, capture, get_app
from ._errors import InvalidTaskError

if t.TYPE_CHECKING:
    from flask import Flask

    from ._options import TaskOptions
    from ._result import TaskResult
    from ._runtime import Runtime

P = t.ParamSpec("P")
R = t.TypeVar("R")


class Task(t.Generic[P, R]):
    """A function that can run in the background. Made by :meth:`BGTasks.task`.

    Calling it runs the function here and now, as before. :meth:`submit` and
    :meth:`map` run it on the app's task pool. It keeps the function's name,
    docstring and signature, also for type checkers.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        runtime_of: t.Callable[[Flask], Runtime],
        fn: t.Callable[P, R],
        options: TaskOptions,
        *,
        is_view: bool = False,
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
        #: How it runs: a frozen :class:`~flask_bgtasks.TaskOptions`.
        self.options = options
        self.fn = fn
        #: Whether it runs a view for :meth:`BGTasks.background_view`.
        self.is_view = is_view
        #: For a background view: what its route calls, which submits it.
        self.view: t.Callable[..., t.Any] | None = None
        self._runtime_of = runtime_of
        # Name and docstring, but not the function's __dict__, which could
        # overwrite the attributes above.
        functools.update_wrapper(self, fn, updated=())
        if options.durable:
            self.check_durable()

    @property
    def name(self) -> str:
        """The task's name, in logs and on its results."""
        return self.options.name

    @property
    def pool(self) -> str:
        """The name of the pool it runs on."""
        return self.options.pool

    @property
    def timeout(self) -> float | None:
        """Seconds the task may run, or ``None``."""
        return self.options.timeout

    @property
    def durable(self) -> bool | None:
        """``True`` or ``False``, or ``None`` to follow ``BGTASKS_DURABLE``."""
        return self.options.durable

    @property
    def expose_result(self) -> bool:
        """Whether the HTTP API shows the return value."""
        return self.options.expose_result

    @property
    def expose_error(self) -> bool:
        """Whether the HTTP API shows the error's message and traceback."""
        return self.options.expose_error

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
        :raises InvalidTaskError: If an argument is a Flask context proxy, or
            not JSON for a durable task.
        """
        app = get_app()
        captured = self._capture() if self.options.captures else None
        return self._runtime_of(app).submit(app, self, args, kwargs, captured)

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
        runtime = self._runtime_of(app)
        captured = self._capture() if self.options.captures else None
        deadline = None if timeout is None else time.monotonic() + timeout
        items = zip(*iterables)
        pending: collections.deque[TaskResult[R]] = collections.deque()

        def submit_next(count: int | None) -> None:
            for args in items if count is None else itertools.islice(items, count):
                pending.append(runtime.submit(app, self, args, {}, captured))

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
        return capture(self.name, self.options.copy_g, self.options.copy_request)

    def check_durable(self) -> None:
        """A durable task is found again by name, in a new process, and
        runs from its stored arguments alone.

        :raises InvalidTaskError: If it can't be.
        """
        if "<" in self.name:
            raise InvalidTaskError(
                f"Task {self.name!r} can't be durable: a new process could not"
                " find it by this name. Declare it at module level, or give it a"
                " stable name with @bg.task(name=...)."
            )
        if self.options.captures:
            raise InvalidTaskError(
                f"Task {self.name!r} can't be durable and copy the request or"
                " 'g': a durable task runs again from its JSON arguments alone."
                " Pass the values it needs as arguments, or declare it with"
                " durable=False."
            )

    def __repr__(self) -> str:
        return f"<Task {self.name!r} pool={self.pool!r}>"


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


def _cancel_all(results: t.Iterable[TaskResult[t.Any]]) -> None:
    for result in results:
        result.cancel()
