"""The ``BGTasks`` extension object: wires config, store and backend into a
runtime per app."""

from __future__ import annotations

import logging
import time
import types
import typing as t
import weakref

from . import _config
from ._context import get_app
from ._current import running_task
from ._errors import ConfigError, UsageError
from ._options import TaskOptions
from ._runtime import Runtime
from ._shutdown import UNSET, ShutdownSummary, drain, drain_at_exit, keyword_arguments, shutdown
from ._task import Task
from ._uwsgi import check_uwsgi
from ._waitress import check_waitress
from ._web import WebMixin
from .backends import backend_class
from .stores import open_store

if t.TYPE_CHECKING:
    from flask import Flask

    from ._options import TaskOptionArgs
    from ._record import TaskRecord
    from ._result import TaskResult
    from ._stats import TaskStats
    from .stores import TaskStore

P = t.ParamSpec("P")
R = t.TypeVar("R")
F = t.TypeVar("F", bound=t.Callable[[], object])

logger = logging.getLogger("flask_bgtasks")


class BGTasks(WebMixin):
    """Run functions in the background of a Flask app.

    .. code-block:: python

        bg = BGTasks(app)          # or bg = BGTasks(); bg.init_app(app)

        @bg.task
        def build_report(user_id: int) -> str: ...

        result = build_report.submit(7)

    One instance can serve several apps; tasks declared with it before any
    app exists find their app through ``current_app`` when submitted.

    :param app: Call :meth:`init_app` with this app.

    .. versionadded:: 0.1
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._apps: weakref.WeakKeyDictionary[Flask, Runtime] = weakref.WeakKeyDictionary()
        self._shutdown_hooks: list[t.Callable[[], object]] = []
        self._tasks: dict[str, Task[..., t.Any]] = {}
        self._authorize: t.Callable[[TaskRecord], bool] | None = None
        self._authorize_dashboard: t.Callable[[], bool] | None = None
        if app is not None:
            self.init_app(app)

    @property
    def tasks(self) -> t.Mapping[str, Task[..., t.Any]]:
        """Every task declared with this instance, by name (read-only).

        .. versionadded:: 0.1
        """
        return types.MappingProxyType(self._tasks)

    def init_app(self, app: Flask) -> None:
        """Register the extension with an app: read and check its
        ``BGTASKS_*`` config and prepare its task pools. No thread starts
        here; each pool starts its threads on its first task. At interpreter
        exit the pools are drained within ``BGTASKS_SHUTDOWN_TIMEOUT``.

        :raises UsageError: If this app is already registered.
        :raises ConfigError: If a setting is out of range.
        :raises ConfigTypeError: If a setting has the wrong type.
        """
        if app in self._apps or "bgtasks" in app.extensions:
            raise UsageError(
                f"Flask-BGTasks is already registered on the app {app.name!r}."
                " Call init_app() once per app, or use the BGTasks instance"
                " that app.extensions['bgtasks'] holds."
            )
        config = _config.load(app.config)
        if config.api and self._authorize is None:
            raise ConfigError(
                "BGTASKS_API is True, but no authorization callback is"
                " registered, and the API must not show every task to"
                " everyone. Decorate a function with @bg.authorize before"
                " init_app(): it gets each task's record and returns"
                " whether the current user may see and cancel it."
            )
        if config.dashboard and self._authorize_dashboard is None:
            raise ConfigError(
                "BGTASKS_DASHBOARD is True, but no dashboard authorization"
                " callback is registered, and the dashboard must not show"
                " every task to everyone. Decorate a function of no arguments"
                " with @bg.authorize_dashboard before init_app(): it returns"
                " whether the current user may open the dashboard."
            )
        if not config.eager:  # eager mode starts no thread
            check_uwsgi(config.shutdown_timeout)
            app.before_request(check_waitress)
        # With an engine (RQ), queued tasks wait in its queue, not here.
        engine = backend_class(config.backend).remote and not config.eager
        runtime = Runtime(app, config, open_store(app, config, engine=engine), self._tasks)
        self._apps[app] = runtime
        app.extensions["bgtasks"] = self
        from ._cli import cli  # here, so that importing the package stays light

        app.cli.add_command(cli)
        if config.api and self._authorize is not None:
            from ._http import make_blueprint

            app.register_blueprint(make_blueprint(self, self._authorize, config.api_prefix))
        if config.dashboard and self._authorize_dashboard is not None:
            from ._dashboard import make_dashboard

            app.register_blueprint(
                make_dashboard(
                    self, self._authorize_dashboard, self._authorize, config.dashboard_prefix
                )
            )
        runtime.install(app)
        drain_at_exit(self._drain_at_exit)

    def _runtime(self, app: Flask) -> Runtime:
        try:
            return self._apps[app]
        except KeyError:
            raise UsageError(
                f"The app {app.name!r} is not registered with this BGTasks"
                " instance; did you call init_app()?"
            ) from None

    @t.overload
    def task(self, fn: t.Callable[P, R], /, **options: t.Unpack[TaskOptionArgs]) -> Task[P, R]: ...

    @t.overload
    def task(
        self, fn: None = None, /, **options: t.Unpack[TaskOptionArgs]
    ) -> t.Callable[[t.Callable[P, R]], Task[P, R]]: ...

    def task(
        self, fn: t.Callable[P, R] | None = None, /, **options: t.Unpack[TaskOptionArgs]
    ) -> Task[P, R] | t.Callable[[t.Callable[P, R]], Task[P, R]]:
        """Make a function a background task. Use bare or with options.

        .. code-block:: python

            @bg.task
            def send_welcome(user_id: int) -> None: ...

            @bg.task(pool="reports", copy_request=True)
            def export() -> str: ...

            @bg.task(durable=True, retries=3, retry_on=ConnectionError)
            def send_invoice(invoice_id: int) -> None: ...

        The task keeps its options as :attr:`Task.options
        <flask_bgtasks.Task.options>`.

        :param fn: The function, when used bare as ``@bg.task``.
        :param options: The fields of :class:`~flask_bgtasks.TaskOptions`,
            which says what each one does and its default: ``name``,
            ``pool``, ``copy_request``, ``copy_g``, ``timeout``, ``durable``,
            ``retries``, ``retry_backoff``, ``retry_on``, ``expose_result``
            and ``expose_error``.
        :return: A :class:`~flask_bgtasks.Task`, or, with options only, a
            decorator that makes one.
        :raises InvalidTaskError: If ``fn`` is not callable, is ``async``,
            or an option has the wrong type, or if a durable task copies
            the request or ``g``.
        :raises TypeError: If an option has an unknown name.

        .. versionadded:: 0.1
        """

        def decorate(fn: t.Callable[P, R]) -> Task[P, R]:
            task = Task(self._runtime, fn, TaskOptions.for_function(fn, **options))
            # By name, so that a durable task left by a dead process can be
            # found again. The last declaration of a name wins.
            self._tasks[task.name] = task
            return task

        if fn is None:
            return decorate
        return decorate(fn)

    def submit(self, fn: t.Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> TaskResult[R]:
        """Run any callable on the default pool, without decorating it.

        .. code-block:: python

            result = bg.submit(send_mail, to="a@example.com")

        :raises UsageError: Outside an app context.
        :raises QueueFull: If the pool's queue is full.
        :raises InvalidTaskError: If ``fn`` is not callable or an argument is
            a context proxy.
        """
        # Not declared, so a new process could not find it: never durable.
        options = TaskOptions.for_function(fn, durable=False)
        return Task(self._runtime, fn, options).submit(*args, **kwargs)

    def get(self, task_id: str) -> TaskResult[t.Any] | None:
        """The handle of the task with this id, or ``None`` if the id is
        unknown or the record expired.

        With the memory store, a task submitted to the current app in this
        process. With a shared store, a task submitted by any process using
        the same store; if it runs in another process, its handle reads the
        store (see :class:`~flask_bgtasks.TaskResult`).

        :raises UsageError: Outside an app context.

        .. versionchanged:: 0.1
            Always a :class:`~flask_bgtasks.TaskResult`.
        """
        if not isinstance(task_id, str):
            raise TypeError(f"A task id is a string, got {type(task_id).__name__}.")
        return self._runtime(get_app()).get(task_id)

    def cancel(self, task_id: str) -> bool:
        """Cancel the task with this id, as :meth:`TaskResult.cancel
        <flask_bgtasks.TaskResult.cancel>` does, in whichever process holds
        it; ``False`` if the id is unknown.

        :raises UsageError: Outside an app context.

        .. versionadded:: 0.1
        """
        return self._runtime(get_app()).cancel(task_id)

    def retry(self, task_id: str) -> TaskResult[t.Any]:
        """Run a task that has ended (failed, cancelled, or succeeded) again:
        a new task, with the same name and arguments, whose record's
        ``retry_of`` is this id. Works from any process with a shared store.

        :raises UsageError: If the task is unknown or unfinished, is not
            declared with ``@bg.task``, copies the request, or its arguments
            were not JSON (its record kept only their ``repr``).

        .. versionadded:: 0.1
        """
        app = get_app()
        return self._runtime(app).retry(app, task_id)

    def stats(self) -> TaskStats:
        """The tasks of the current app, counted: by status and pool (queued
        and running), finished in the last minute, and each pool's workers.
        With a shared store the counts cover every process; the memory
        store counts this process's unfinished tasks, and the finished ones
        whose id was read (the ones it keeps).

        .. versionadded:: 0.1
        """
        return self._runtime(get_app()).stats()

    def store(self, app: Flask | None = None) -> TaskStore:
        """The task store of ``app``, by default the current app.

        .. versionadded:: 0.1
        """
        return self._runtime(app if app is not None else get_app()).store

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no task of any app of this extension is queued or
        running, and what they wrote to a shared store is committed. For
        tests and scripts.

        :param timeout: The most seconds to wait.
        :return: ``True`` once idle, ``False`` if the timeout passed first.
        :raises UsageError: Inside a task, which would wait for itself.
        """
        if running_task.get(None) is not None:
            raise UsageError(
                "bg.join() inside a task would wait for that task itself. Wait"
                " for the results you need with result() instead."
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(runtime.join(deadline) for runtime in list(self._apps.values()))

    def on_shutdown(self, fn: F) -> F:
        """Register a function to call once per app, in its app context,
        after its pools have drained: by the first :meth:`shutdown` that
        waits, or at interpreter exit in a process that submitted tasks to
        that app. Its exceptions are logged.

        .. code-block:: python

            @bg.on_shutdown
            def close_clients():
                current_app.extensions["mailer"].close()

        .. versionadded:: 0.1
        """
        self._shutdown_hooks.append(fn)
        return fn

    def shutdown(
        self,
        *args: t.Any,
        wait: bool = UNSET,
        timeout: float | None = UNSET,
        cancel_pending: bool = UNSET,
    ) -> ShutdownSummary:
        """Stop every app's pools: accept no new task (``submit`` then
        raises :class:`ShutdownError`), and with ``wait``, return once the
        accepted tasks are done and the :meth:`on_shutdown` hooks have run.
        Safe to call more than once, from any thread.

        .. code-block:: python

            bg.shutdown(wait=True, timeout=30)

        :param wait: Wait for the queued and running tasks (default ``True``).
        :param timeout: With ``wait``, the most seconds to wait. Then the
            tasks still queued are cancelled and the ones still running are
            asked to stop and ended as ``cancelled``, each with a log line.
        :param cancel_pending: Cancel the queued tasks instead of running them.
        :return: What happened to the tasks that were unfinished.
        :raises UsageError: If called with ``wait`` inside a task.

        .. versionchanged:: 0.1
            The arguments are keyword-only; positional ones still work, with
            a :class:`DeprecationWarning`.
        """
        wait, timeout, cancel = keyword_arguments(args, wait, timeout, cancel_pending)
        if wait and running_task.get(None) is not None:
            raise UsageError(
                "bg.shutdown(wait=True) inside a task would wait for that task"
                " itself. Call it from the main thread, or with wait=False."
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        plan = [(runtime, cancel, deadline) for runtime in list(self._apps.values())]
        return shutdown(plan, wait, self._shutdown_hooks)

    def _drain_at_exit(self) -> None:
        drain(list(self._apps.values()), self._shutdown_hooks)
