"""The parts of :class:`~flask_bgtasks.BGTasks` that serve HTTP: the
authorization callbacks of the status API and of the dashboard, and
background views. The views themselves are in :mod:`._http` and
:mod:`._dashboard`, imported when first used."""

from __future__ import annotations

import typing as t

from . import _config

if t.TYPE_CHECKING:
    from flask import Flask

    from ._record import TaskRecord
    from ._runtime import Runtime
    from ._task import Task

A = t.TypeVar("A", bound=t.Callable[["TaskRecord"], bool])
V = t.TypeVar("V", bound=t.Callable[..., t.Any])
D = t.TypeVar("D", bound=t.Callable[[], bool])


class WebMixin:
    """Mixed into :class:`~flask_bgtasks.BGTasks`, which holds the state."""

    _authorize: t.Callable[[TaskRecord], bool] | None
    _authorize_dashboard: t.Callable[[], bool] | None
    _tasks: dict[str, Task[..., t.Any]]

    if t.TYPE_CHECKING:

        def _runtime(self, app: Flask) -> Runtime: ...

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

    def authorize_dashboard(self, fn: D) -> D:
        """Register the function that decides who may open the task
        dashboard (:doc:`/dashboard`). Required when ``BGTASKS_DASHBOARD``
        is on; register it before ``init_app``.

        It is called in each request to the dashboard, without arguments,
        and returns whether the current user may open it. A refused user
        gets ``404`` on every dashboard URL. Each task the dashboard shows
        must also pass :meth:`authorize`, if one is registered.

        .. code-block:: python

            @bg.authorize_dashboard
            def is_admin():
                return session.get("role") == "admin"

        .. versionadded:: 0.1
        """
        self._authorize_dashboard = fn
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
        user: t.Callable[[], t.Any] | None = ...,
        owner: t.Callable[[], t.Any] | None = ...,
    ) -> t.Callable[[V], V]: ...
    def background_view(
        self,
        view: V | None = None,
        /,
        *,
        pool: str = _config.DEFAULT_POOL,
        user: t.Callable[[], t.Any] | None = None,
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
        :param user: Called in the request; its value (JSON, such as a user
            id) is kept on the task's record as ``record.kwargs["user"]``,
            so that the authorization callback can let only that user see
            the result. The view does not get it.
        :param owner: The old name of ``user``, kept on the record as
            ``record.kwargs["owner"]``; deprecated.

        .. code-block:: python

            @app.post("/exports")
            @bg.background_view(user=lambda: session["user_id"])
            def export(): ...

        .. versionadded:: 0.1
        .. versionchanged:: 0.1
            ``owner=`` is now ``user=``.
        """
        from ._http import background_view, user_key

        key, user = user_key(user, owner)

        def decorate(view: V) -> V:
            task = background_view(self._runtime, view, pool, key, user)
            self._tasks[task.name] = task
            return t.cast(V, task.view)

        if view is None:
            return decorate
        return decorate(view)
