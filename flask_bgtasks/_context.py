"""Everything that touches Flask's contexts: the only module that does.

At submit, in the submitting thread: find the real app, refuse context
proxies as arguments, and copy what a task asked for (chosen ``g`` values, a
snapshot of the request). In the worker: run the task in a fresh app context
(or a request context built from the snapshot) and publish its outcome.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import sys
import typing as t
from urllib.parse import urlencode

from flask import Flask, current_app, g, has_request_context, request
from werkzeug.local import LocalProxy

from . import signals
from ._errors import InvalidTaskError, TaskCancelled, UsageError
from ._record import TaskStatus, short_repr

if t.TYPE_CHECKING:
    from ._execution import Execution
    from ._result import TaskResult


def get_app() -> Flask:
    """The real app object of the active app context.

    :raises UsageError: If there is no app context.
    """
    try:
        # The proxy's documented way to the object behind it (Werkzeug's
        # LocalProxy has no other); the name only looks private.
        return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]  # noqa: SLF001
    except RuntimeError:
        raise UsageError(
            "Submitting or looking up a task needs an application context, and"
            " there is none. Do it in a view or a CLI command, or inside"
            " 'with app.app_context():'."
        ) from None


# Values with nothing inside to look at. Most arguments are one of these, and
# each costs one set lookup, which keeps submit with plain values fast.
_ATOMS = frozenset({int, float, complex, bool, str, bytes, type(None)})
_CONTAINERS = (list, tuple, set, frozenset, dict)
# Containers are opened this many levels deep: the proxy in [[[[request]]]]
# is found, one more level is not looked into. Arguments are rarely nested
# deeper, and each level costs time on every submit.
MAX_DEPTH = 4
# At most this many items are looked at per submit, so that a long list does
# not make submit slow; what is left after that is not checked.
MAX_ITEMS = 10_000
# Steps in the path to a refused value that have no subscript.
_KEY = object()
_MEMBER = object()


def check_arguments(task: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
    """Refuse ``request``, ``session``, ``g`` or ``current_app`` as arguments,
    and ORM instances attached to a database session, also inside lists,
    tuples, sets and dicts (``MAX_DEPTH`` levels deep, ``MAX_ITEMS`` items
    in all).

    A proxy resolves in the thread that uses it, and there is no request in
    the worker. The session of an ORM instance belongs to the submitting
    request or app context, which closes it.
    """
    left = [MAX_ITEMS]
    for position, value in enumerate(args):
        if type(value) not in _ATOMS:
            found = _find(value, 0, left)
            if found is not None:
                _refuse(task, f"argument {position}", *found)
    for name, value in kwargs.items():
        if type(value) not in _ATOMS:
            found = _find(value, 0, left)
            if found is not None:
                _refuse(task, f"argument {name!r}", *found)


def _find(value: object, depth: int, left: list[int]) -> tuple[list[object], object] | None:
    """The steps to a proxy or an attached ORM instance in ``value``
    (innermost first) and that value, or ``None``. ``left[0]`` counts down
    the items that may still be looked at."""
    # type(), not isinstance(), looks at a proxy itself rather than its target.
    if issubclass(type(value), LocalProxy):
        return [], value
    if not isinstance(value, _CONTAINERS):
        return ([], value) if _attached_to_session(value) else None
    if depth >= MAX_DEPTH:
        return None
    steps: t.Iterable[tuple[object, object]]
    if isinstance(value, dict):
        steps = (pair for key, item in value.items() for pair in ((_KEY, key), (key, item)))
    elif isinstance(value, (set, frozenset)):
        steps = ((_MEMBER, item) for item in value)
    else:
        steps = enumerate(value)
    for step, item in steps:
        left[0] -= 1
        if left[0] < 0:
            return None
        if type(item) in _ATOMS:
            continue
        found = _find(item, depth + 1, left)
        if found is not None:
            found[0].append(step)
            return found
    return None


def _attached_to_session(value: object) -> bool:
    """Whether ``value`` is an instance mapped by SQLAlchemy (Flask-SQLAlchemy
    models included) that is attached to a session."""
    # Not a dependency: never imported here. If nothing imported it, nothing
    # is mapped.
    sqlalchemy = sys.modules.get("sqlalchemy")
    if sqlalchemy is None:
        return False
    # sqlalchemy.inspect() is the public way to ask. The class is asked
    # first: inspecting a class has no side effects, while inspecting some
    # instances has (an Engine connects to build an Inspector).
    if sqlalchemy.inspect(type(value), raiseerr=False) is None:
        return False
    # InstanceState.session is the session the instance is pending or
    # persistent in, None once it is transient or detached.
    state = sqlalchemy.inspect(value, raiseerr=False)
    return getattr(state, "session", None) is not None


def check_not_forking_per_request() -> None:
    """Refuse to run in a process forked for one request, which exits right
    after it, as ``app.run(processes=N)`` does: its tasks could never run.

    :raises UsageError: In such a process.
    """
    if not has_request_context():
        return
    environ = request.environ
    if environ.get("wsgi.multiprocess") and str(environ.get("SERVER_SOFTWARE", "")).startswith(
        "Werkzeug/"
    ):
        raise UsageError(
            "Background tasks cannot run under the development server with"
            " processes > 1: it forks a process per request, which exits"
            " before its tasks could run. Use threaded=True (the default) or"
            " a production server such as Gunicorn."
        )


def served_by_waitress() -> bool:
    """Whether the current request came through Waitress: it puts its own
    ``waitress.*`` keys in the WSGI environ, and names itself in
    ``SERVER_SOFTWARE`` unless its ``ident`` was changed.
    """
    if not has_request_context():
        return False
    environ = request.environ
    return "waitress.client_disconnected" in environ or str(
        environ.get("SERVER_SOFTWARE", "")
    ).startswith("waitress")


def is_reloader_watcher() -> bool:
    """Whether this process is the watcher of ``flask run``'s reloader.

    ``flask run --debug`` loads the app in the process it starts, to report
    import errors early, then only watches the files and restarts a child
    process that loads the app again and serves. Werkzeug marks that child
    with ``WERKZEUG_RUN_MAIN``. So the watcher is the process that runs the
    ``run`` command with the reloader on, without that mark. (The watcher of
    ``app.run(debug=True)`` can't be told apart before ``app.run`` is
    called.)
    """
    # Imported here: only ever needed for the first submit of a process.
    import click
    from flask.cli import run_command
    from flask.helpers import get_debug_flag
    from werkzeug.serving import is_running_from_reloader

    if is_running_from_reloader():
        return False
    context = click.get_current_context(silent=True)
    if context is None or context.command is not run_command:
        return False
    reload = context.params.get("reload")
    # --reload/--no-reload, or else on with --debug, as run_command decides.
    return bool(get_debug_flag() if reload is None else reload)


def _refuse(task: str, where: str, steps: list[object], value: object) -> t.NoReturn:
    which = _describe(where, reversed(steps))
    which = which[0].upper() + which[1:]
    if issubclass(type(value), LocalProxy):
        raise InvalidTaskError(
            f"{which} of task {task!r} is a Flask context proxy ({object.__repr__(value)});"
            " it does not work in another thread. Pass plain values instead, such"
            " as request.args['id'] or g.user.id, or declare the task with"
            " copy_request=True / copy_g=[...] to give it a copy."
        )
    # No repr(): a model's repr could load attributes from the database.
    model = type(value).__name__
    raise InvalidTaskError(
        f"{which} of task {task!r} is a {model} instance attached to a database"
        " session, which belongs to the submitting request or app context and"
        " is closed when it ends: the task could not load its attributes. Pass"
        " its primary key instead, and load it in the task with"
        f" db.session.get({model}, id)."
    )


def _describe(where: str, steps: t.Iterable[object]) -> str:
    """Say where a value is: "argument 0[2]['user']", "a key of argument 1"."""
    base, subscripts, inside = where, "", False
    for step in steps:
        if step is _KEY or step is _MEMBER:
            whole = f"item {subscripts} of {base}" if inside and subscripts else base + subscripts
            base = f"{'a key of' if step is _KEY else 'an item of'} {whole}"
            subscripts, inside = "", True
        else:
            subscripts += f"[{short_repr(step, 40)}]"
    return f"item {subscripts} of {base}" if inside and subscripts else base + subscripts


def refuse_awaitable(task: str, value: object) -> None:
    """Fail a task whose function returned a coroutine or other awaitable,
    which no event loop will ever run."""
    if type(value) in _ATOMS or not inspect.isawaitable(value):
        return
    if inspect.iscoroutine(value):
        value.close()  # closed, it does not warn that it was never awaited
    raise InvalidTaskError(
        f"Task {task!r} returned a {type(value).__qualname__}, which is awaitable:"
        " its function is async, or calls one without awaiting it. Background"
        " tasks run plain functions in threads, so it never ran. Make it a plain"
        " 'def', or wrap it: 'def task(...): return asyncio.run(coroutine(...))'."
    )


@dataclasses.dataclass(frozen=True)
class Captured:
    """What a task copies from the submitting context."""

    g_values: dict[str, t.Any]
    #: The string values of the WSGI environ, or ``None`` without a request.
    environ: dict[str, str] | None
    body: bytes


def capture(task: str, copy_g: tuple[str, ...], copy_request: bool) -> Captured:
    """Copy the ``g`` names and the request a task asked for.

    :raises UsageError: If ``copy_request`` is set and there is no request.
    """
    g_values = {name: getattr(g, name) for name in copy_g if name in g}
    if not copy_request:
        return Captured(g_values, None, b"")
    if not has_request_context():
        raise UsageError(
            f"Task {task!r} copies the request (copy_request=True) but was"
            " submitted outside a request. Submit it from a view, or declare"
            " it without copy_request and pass the values it needs."
        )
    req = request._get_current_object()  # type: ignore[attr-defined]  # noqa: SLF001 - see get_app()
    # Only the strings: the CGI and HTTP_* variables. This leaves out the
    # live request object, the input stream and server internals.
    environ = {key: value for key, value in req.environ.items() if isinstance(value, str)}
    body = req.get_data(cache=True)
    if not body and req.form:
        # The view read the form, which consumed the body: encode it again.
        # Uploaded files are not copied.
        body = urlencode(list(req.form.items(multi=True))).encode()
        environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
    environ["CONTENT_LENGTH"] = str(len(body))
    return Captured(g_values, environ, body)


def _request_environ(captured: Captured, environ: dict[str, str]) -> dict[str, t.Any]:
    return {
        **environ,
        "wsgi.input": io.BytesIO(captured.body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def in_task_context(
    app: Flask,
    captured: Captured | None,
    body: t.Callable[[Execution, Flask], tuple[BaseException | None, float | None]],
    execution: Execution,
) -> float | None:
    """Call ``body(execution, app)`` in a fresh context of ``app``: an app
    context, or a request context made from the captured request, with the
    captured ``g`` values. Teardown runs once, right after, with the
    exception ``body`` returns. Returns what ``body`` returns second."""
    if captured is not None and captured.environ is not None:
        ctx: t.Any = app.request_context(_request_environ(captured, captured.environ))
    else:
        ctx = app.app_context()
    ctx.push()
    error = None
    try:
        if captured is not None:
            for name, value in captured.g_values.items():
                setattr(g, name, value)
        error, delay = body(execution, app)
    finally:
        ctx.pop(error)
    return delay


def outcome_receivers() -> bool:
    """Whether anyone listens for how tasks end: a check that costs less
    than finding out how one ended."""
    return bool(
        signals.task_succeeded.receivers
        or signals.task_failed.receivers
        or signals.task_cancelled.receivers
    )


def send_outcome(app: Flask, handle: TaskResult[t.Any]) -> None:
    """Send the signal of how a settled task ended, in its context."""
    status = handle.status
    if status is TaskStatus.SUCCEEDED:
        if signals.task_succeeded.receivers:
            signals.task_succeeded.send(app, task=handle, result=handle.result(0))
        return
    if status is TaskStatus.CANCELLED:
        if signals.task_cancelled.receivers:
            try:
                handle.exception(0)
            except TaskCancelled as exc:  # what stopped it, as result() raises it
                signals.task_cancelled.send(app, task=handle, exception=exc)
    elif signals.task_failed.receivers:
        signals.task_failed.send(app, task=handle, exception=handle.exception(0))


def app_context(app: Flask) -> t.ContextManager[object]:
    """A new app context, for done-callbacks that run outside the task."""
    return app.app_context()


def send_cancelled(app: Flask, result: TaskResult[t.Any]) -> None:
    """Send ``task_cancelled`` for a task cancelled while queued."""
    if signals.task_cancelled.receivers:
        with app.app_context():
            signals.task_cancelled.send(app, task=result, exception=None)
