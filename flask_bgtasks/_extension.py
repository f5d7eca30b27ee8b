"""The ``BGTasks`` extension object: wires config, backend and store per app."""

from __future__ import annotations

import logging
import os
import time
import typing as t
import weakref

from . import _config
from ._context import (
    app_context,
    check_not_forking_per_request,
    get_app,
    is_reloader_watcher,
    send_cancelled,
)
from ._current import running_task
from ._errors import ConfigError, QueueFull, ShutdownError, UsageError
from ._lifecycle import (
    ShutdownSummary,
    drain_at_exit,
    quick_stop_signals,
    stopping_quickly,
    wait_unless_stopped,
)
from ._result import TaskStatus
from ._task import Task
from ._uwsgi import check_uwsgi
from ._waitress import check_waitress
from .backends import Backend
from .backends.eager import EagerBackend
from .backends.threads import ThreadBackend
from .stores import TaskStore
from .stores.memory import MemoryStore

if t.TYPE_CHECKING:
    from flask import Flask, Response

    from ._record import StoredResult, TaskRecord
    from ._result import TaskResult

P = t.ParamSpec("P")
R = t.TypeVar("R")
F = t.TypeVar("F", bound=t.Callable[[], object])
A = t.TypeVar("A", bound=t.Callable[["TaskRecord"], bool])
V = t.TypeVar("V", bound=t.Callable[..., t.Any])

logger = logging.getLogger("flask_bgtasks")


class _AppState:
    """What the extension keeps for one app. It owns that app's results."""

    def __init__(
        self, app: Flask, config: _config.Config, tasks: t.Mapping[str, Task[..., t.Any]]
    ) -> None:
        # A weak reference: this object is the value of a WeakKeyDictionary
        # keyed by the app, and must not keep the app alive.
        self._app = weakref.ref(app)
        self.config = config
        backend_class = EagerBackend if config.eager else ThreadBackend
        self.backend: Backend = backend_class(config.pools, app.name)
        self.store = _open_store(app, config)
        #: The tasks of the extension by name, to take over durable ones.
        self.tasks = tasks
        #: The process that submitted to this app last; ``None`` before any.
        #: A Gunicorn master with ``--preload`` or the reloader's watcher
        #: never submits, so the drain at exit leaves it alone.
        self.active_pid: int | None = None
        self.store_pid: int | None = None
        self.closing = False
        self.hooks_ran = False

    def enter_process(self) -> bool:
        """The first submit in this process. Refuse a process forked for
        one request, since its tasks could never run.

        :return: ``False`` in the watcher of ``flask run``'s reloader, which
            must run no task, start no thread and write nothing: the
            process it starts to serve loads the app again, and runs them.
        """
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

    def durable_names(self) -> list[str]:
        if self.closing:  # a process that shuts down takes nothing over
            return []
        return [name for name, task in list(self.tasks.items()) if self.is_durable(task)]

    def is_durable(self, task: Task[..., t.Any]) -> bool:
        return self.config.durable if task.durable is None else task.durable

    def recover(self, record: TaskRecord) -> bool:
        """Queue a durable task that the store took over from a dead process."""
        task = self.tasks.get(record.name)
        app = self._app()
        if task is None or app is None:
            return False
        result = task._resubmittable(app, self, record)
        try:
            self.backend.submit(result, task.pool)
        except (QueueFull, ShutdownError):
            return False
        except UsageError:  # the task names a pool this app does not have
            logger.exception("Durable task %r (id %s) can't run here.", record.name, record.id)
            return False
        # This process now runs tasks, so its exit drains them.
        self.active_pid = os.getpid()
        return True

    def register(self, task_id: str, result: TaskResult[t.Any]) -> None:
        self.store.register(task_id, result)

    def started(self, result: TaskResult[t.Any]) -> bool:
        return self.store.started(result)

    def changed(self, result: TaskResult[t.Any]) -> None:
        self.store.changed(result)

    def unstorable(self, result: TaskResult[t.Any], value: object) -> BaseException | None:
        return self.store.unstorable(result, value)

    def finished(self, result: TaskResult[t.Any], value: object = None) -> None:
        self.store.finished(result, value)

    def cancel_requested(self, result: TaskResult[t.Any]) -> bool:
        return self.store.cancel_requested(result)

    def callback_context(self) -> t.ContextManager[object]:
        return app_context(self._live_app())

    def cancelled(self, result: TaskResult[t.Any]) -> None:
        send_cancelled(self._live_app(), result)

    def _live_app(self) -> Flask:
        app = self._app()
        if app is None:  # pragma: no cover - a result outlived its app
            raise UsageError("The app this task belongs to no longer exists.")
        return app


def _open_store(app: Flask, config: _config.Config) -> TaskStore:
    kind, path = config.store
    if kind == "memory" or path is None:
        return MemoryStore(config.result_ttl, config.max_results)
    if kind == "import":
        from .stores import from_import_path

        return from_import_path(path, app)
    from .stores.sqlite import SQLiteStore

    # os.path.join keeps an absolute path as it is.
    return SQLiteStore(
        os.path.join(app.instance_path, path),
        config.result_ttl,
        config.max_results,
        config.store_lease,
        max_payload_bytes=config.max_payload_bytes,
    )


class BGTasks:
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
        self._apps: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        self._shutdown_hooks: list[t.Callable[[], object]] = []
        #: Every task declared with this instance, by name.
        self._tasks: dict[str, Task[..., t.Any]] = {}
        self._authorize: t.Callable[[TaskRecord], bool] | None = None
        if app is not None:
            self.init_app(app)

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
        if not config.eager:  # eager mode starts no thread
            check_uwsgi(config.shutdown_timeout)
            app.before_request(check_waitress)
        state = _AppState(app, config, self._tasks)
        self._apps[app] = state
        app.extensions["bgtasks"] = self
        from ._cli import cli  # here, so that importing the package stays light

        app.cli.add_command(cli)
        if config.api:
            from ._http import make_blueprint

            app.register_blueprint(make_blueprint(self, config.api_prefix))
        if state.store.shared:
            # A worker process that serves requests runs tasks, so it takes
            # part in the store's upkeep even before it submits any.
            app.before_request(state.activate_store)
            app.after_request(state.flush_store)
        # An app that is gone has no queued tasks (each holds its app), so
        # its idle workers may stop; without this they would wait for the
        # garbage collector to break the cycle between results and the store.
        weakref.finalize(app, state.backend.close)
        weakref.finalize(app, state.store.close)
        drain_at_exit(self)

    def _get_state(self, app: Flask) -> _AppState:
        try:
            return self._apps[app]
        except KeyError:
            raise UsageError(
                f"The app {app.name!r} is not registered with this BGTasks"
                " instance; did you call init_app()?"
            ) from None

    @t.overload
    def task(
        self,
        fn: t.Callable[P, R],
        /,
        *,
        name: str | None = ...,
        pool: str = ...,
        copy_request: bool = ...,
        copy_g: t.Iterable[str] = ...,
        timeout: float | None = ...,
        durable: bool | None = ...,
        retries: int = ...,
        retry_backoff: float = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
        expose_result: bool = ...,
        expose_error: bool = ...,
    ) -> Task[P, R]: ...

    @t.overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = ...,
        pool: str = ...,
        copy_request: bool = ...,
        copy_g: t.Iterable[str] = ...,
        timeout: float | None = ...,
        durable: bool | None = ...,
        retries: int = ...,
        retry_backoff: float = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
        expose_result: bool = ...,
        expose_error: bool = ...,
    ) -> t.Callable[[t.Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: t.Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        pool: str = _config.DEFAULT_POOL,
        copy_request: bool = False,
        copy_g: t.Iterable[str] = (),
        timeout: float | None = None,
        durable: bool | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        expose_result: bool = False,
        expose_error: bool = False,
    ) -> Task[P, R] | t.Callable[[t.Callable[P, R]], Task[P, R]]:
        """Make a function a background task. Use bare or with options.

        .. code-block:: python

            @bg.task
            def send_welcome(user_id: int) -> None: ...

            @bg.task(pool="reports", copy_request=True)
            def export() -> str: ...

        :param name: The name in logs and results; ``module.qualname`` by
            default.
        :param pool: The pool it runs on, from ``BGTASKS_POOLS``.
        :param copy_request: Run it in a read-only copy of the submitting
            request, so ``request.args`` and external ``url_for`` work.
        :param copy_g: Names of ``g`` attributes to copy into the task's ``g``.
        :param timeout: Seconds the task may run. Then it is asked to stop
            and its result fails with :class:`TaskTimeout`; see
            :doc:`/shutdown` for what that can and cannot do.
        :param durable: Keep the task in the store until it has finished, so
            that it runs again if its process dies (see :doc:`/persistence`).
            ``None`` follows ``BGTASKS_DURABLE``.
        :param retries: Run it again up to this many times after it raised
            one of ``retry_on``.
        :param retry_backoff: Seconds before the first retry, doubled for
            each next one, with jitter.
        :param retry_on: The exception types that are worth a retry.
        :param expose_result: Let the HTTP API (:doc:`/http`) show the return
            value; by default it shows only the status.
        :param expose_error: Let the HTTP API show a failed task's error
            message and traceback; by default it shows only the type.
        :raises InvalidTaskError: If ``fn`` is not callable, is ``async``,
            or an option has the wrong type.
        """

        def decorate(fn: t.Callable[P, R]) -> Task[P, R]:
            task = Task(
                self,
                fn,
                name=name,
                pool=pool,
                copy_request=copy_request,
                copy_g=copy_g,
                timeout=timeout,
                durable=durable,
                retries=retries,
                retry_backoff=retry_backoff,
                retry_on=retry_on,
                expose_result=expose_result,
                expose_error=expose_error,
            )
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
        return Task(self, fn, durable=False).submit(*args, **kwargs)

    def get(self, task_id: str) -> TaskResult[t.Any] | StoredResult | None:
        """The task with this id, or ``None`` if the id is unknown or the
        record expired.

        With the memory store, that is the :class:`TaskResult` of a task
        submitted to the current app in this process. With a shared store,
        a :class:`StoredResult` of a task submitted by any process using
        the same store.

        :raises UsageError: Outside an app context.
        """
        if not isinstance(task_id, str):
            raise TypeError(f"A task id is a string, got {type(task_id).__name__}.")
        return self._get_state(get_app()).store.get(task_id)

    def store(self, app: Flask | None = None) -> TaskStore:
        """The task store of ``app``, by default the current app.

        .. versionadded:: 0.1
        """
        return self._get_state(app if app is not None else get_app()).store

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
        for state in list(self._apps.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not state.backend.join(left):
                return False
            state.store.flush()
        return True

    def authorize(self, fn: A) -> A:
        """Register the function that decides who may see and cancel a task
        through the HTTP API (:doc:`/http`). Required when ``BGTASKS_API``
        is on; register it before ``init_app``.

        It is called in the request, with the task's :class:`TaskRecord`,
        and returns whether the current user may see it. A task it refuses
        answers exactly like an unknown id: ``404``.

        .. code-block:: python

            @bg.authorize
            def may_see(record):
                user_id = session.get("user_id")
                return user_id is not None and user_id == (record.kwargs or {}).get("user_id")

        .. versionadded:: 0.1
        """
        self._authorize = fn
        return fn

    @t.overload
    def background_view(self, view: V, /) -> V: ...
    @t.overload
    def background_view(
        self,
        view: None = None,
        /,
        *,
        pool: str = ...,
        owner: t.Callable[[], t.Any] | None = ...,
    ) -> t.Callable[[V], V]: ...
    def background_view(
        self,
        view: V | None = None,
        /,
        *,
        pool: str = _config.DEFAULT_POOL,
        owner: t.Callable[[], t.Any] | None = None,
    ) -> V | t.Callable[[V], V]:
        """Run a view in the background: the request answers ``202
        Accepted`` at once, with the task's id and a ``Location`` header
        that points at its status in the HTTP API. Once it has finished,
        the status links to a result URL that answers with the view's own
        response. Put it under the route decorator.

        .. code-block:: python

            @app.post("/reports")
            @bg.background_view
            def make_report():
                return render_template("report.html", rows=slow_query())

        The view runs as a task with a copy of the request
        (``copy_request=True``). An exception it raises is logged, and its
        result URL answers ``500``.

        :param pool: The pool it runs on.
        :param owner: Called in the request; its value (JSON, such as a user
            id) is kept on the task's record as ``record.kwargs["owner"]``,
            so that the authorization callback can let only that user see
            the result. The view does not get it.

        .. code-block:: python

            @app.post("/exports")
            @bg.background_view(owner=lambda: session["user_id"])
            def export(): ...

        .. versionadded:: 0.1
        """
        from ._http import background_view

        def decorate(view: V) -> V:
            return t.cast(V, background_view(self, view, pool, owner))

        if view is None:
            return decorate
        return decorate(view)

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
        self, wait: bool = True, timeout: float | None = None, cancel_pending: bool = False
    ) -> ShutdownSummary:
        """Stop every app's pools: accept no new task (``submit`` then
        raises :class:`ShutdownError`), and with ``wait``, return once the
        accepted tasks are done and the :meth:`on_shutdown` hooks have run.
        Safe to call more than once, from any thread.

        :param wait: Wait for the queued and running tasks.
        :param timeout: With ``wait``, the most seconds to wait. Then the
            tasks still queued are cancelled and the ones still running are
            asked to stop and ended as ``cancelled``, each with a log line.
        :param cancel_pending: Cancel the queued tasks instead of running them.
        :return: What happened to the tasks that were unfinished.
        :raises UsageError: If called with ``wait`` inside a task.
        """
        if wait and running_task.get(None) is not None:
            raise UsageError(
                "bg.shutdown(wait=True) inside a task would wait for that task"
                " itself. Call it from the main thread, or with wait=False."
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        plan = [(state, cancel_pending, deadline) for state in list(self._apps.values())]
        return self._shutdown(plan, wait)

    def _drain_at_exit(self) -> None:
        start = time.monotonic()
        pid = os.getpid()
        states = list(self._apps.values())
        # Nothing submits from here on, in any app, also from an exit handler
        # or a thread that is still running: an app that never ran a task in
        # this process (the master of a pre-forking server) is closed too.
        for state in states:
            if state.active_pid != pid:
                state.backend.close()
        quick = stopping_quickly()
        plan = [
            (
                state,
                quick or state.config.shutdown_queued == "cancel",
                start + (0 if quick else state.config.shutdown_timeout),
            )
            for state in states
            if state.active_pid == pid
        ]
        pending = [result.id for state, _, _ in plan for result in state.backend.unfinished()]
        if pending and quick:
            logger.warning(
                "Stopping quickly: ending %d background tasks now: %s",
                len(pending),
                ", ".join(pending),
            )
        elif pending:
            # Named up front, so that a kill before the deadline (a server's
            # own timeout, say) still leaves a trace of what was lost.
            logger.warning(
                "Draining %d background tasks at exit, for at most %g s: %s",
                len(pending),
                max(deadline for _, _, deadline in plan) - start,
                ", ".join(pending),
            )
        with quick_stop_signals():
            summary = self._shutdown(plan, wait=True, at_exit=True)
        if summary.cancelled or summary.interrupted:
            logger.warning(
                "Background tasks at exit: %d finished, %d cancelled while queued,"
                " %d interrupted at the deadline.",
                summary.finished,
                len(summary.cancelled),
                len(summary.interrupted),
            )
        if summary.released:
            logger.warning(
                "Durable background tasks left in the store for the next process: %s",
                ", ".join(summary.released),
            )

    def _shutdown(
        self,
        plan: t.Sequence[tuple[_AppState, bool, float | None]],
        wait: bool,
        at_exit: bool = False,
    ) -> ShutdownSummary:
        # Each step for every app before the next step, so that all apps
        # stop accepting work at once and share the time until the deadline.
        for state, _, _ in plan:
            state.closing = True
        unfinished = [result for state, _, _ in plan for result in state.backend.unfinished()]
        cancelled = [result for state, cancel, _ in plan for result in state.backend.close(cancel)]
        if not wait:
            return ShutdownSummary(
                cancelled=[result.id for result in cancelled if not result.released],
                released=[result.id for result in cancelled if result.released],
                unfinished=[result.id for result in unfinished if not result.done()],
            )
        interrupted = []
        for state, _, deadline in plan:
            # At exit, a quick stop (a second Ctrl-C, say) ends the wait.
            done = (
                wait_unless_stopped(state.backend.wait, deadline)
                if at_exit
                else state.backend.wait(deadline)
            )
            if not done:
                late_cancelled, late_interrupted = state.backend.interrupt()
                cancelled += late_cancelled
                interrupted += late_interrupted
        for state, _, _ in plan:
            self._run_shutdown_hooks(state)
            # Last, so that the tasks' outcomes are written and the upkeep
            # renewed their leases until they ended.
            state.store.close()
        finished = (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
        return ShutdownSummary(
            finished=sum(1 for result in unfinished if result.status in finished),
            cancelled=[result.id for result in cancelled if not result.released],
            interrupted=[result.id for result in interrupted if not result.released],
            released=[result.id for result in cancelled + interrupted if result.released],
        )

    def _run_shutdown_hooks(self, state: _AppState) -> None:
        if state.hooks_ran or not self._shutdown_hooks:
            return
        state.hooks_ran = True
        with app_context(state._live_app()):
            for hook in self._shutdown_hooks:
                try:
                    hook()
                except Exception:
                    logger.exception("The on_shutdown hook %r raised an exception.", hook)
