"""Everything that touches Flask's contexts: the only module that does.

At submit, in the submitting thread: find the real app, refuse context
proxies as arguments, and copy what a task asked for (chosen ``g`` values, a
snapshot of the request). In the worker: run the task in a fresh app context
(or a request context built from the snapshot) and publish its outcome.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import typing as t
from concurrent.futures import Future
from urllib.parse import urlencode

from flask import Flask, current_app, g, has_request_context, request
from werkzeug.local import LocalProxy

from . import signals
from ._errors import InvalidTaskError, UsageError
from ._result import TaskStatus

if t.TYPE_CHECKING:
    from ._result import TaskResult


def get_app() -> Flask:
    """The real app object of the active app context.

    :raises UsageError: If there is no app context.
    """
    try:
        return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]
    except RuntimeError:
        raise UsageError(
            "Submitting or looking up a task needs an application context, and"
            " there is none. Do it in a view or a CLI command, or inside"
            " 'with app.app_context():'."
        ) from None


def check_arguments(task: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
    """Refuse ``request``, ``session``, ``g`` or ``current_app`` as arguments.

    A proxy resolves in the thread that uses it, and there is no request in
    the worker. ``type() is`` looks at the proxy itself, not its target.
    """
    for position, value in enumerate(args):
        if type(value) is LocalProxy:
            _refuse(task, f"Argument {position}", value)
    for name, value in kwargs.items():
        if type(value) is LocalProxy:
            _refuse(task, f"Argument {name!r}", value)


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


def _refuse(task: str, which: str, value: object) -> t.NoReturn:
    raise InvalidTaskError(
        f"{which} of task {task!r} is a Flask context proxy ({object.__repr__(value)});"
        " it does not work in another thread. Pass plain values instead, such"
        " as request.args['id'] or g.user.id, or declare the task with"
        " copy_request=True / copy_g=[...] to give it a copy."
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
    req = request._get_current_object()  # type: ignore[attr-defined]
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


def run_task(
    app: Flask,
    call: t.Callable[..., t.Any],
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    captured: Captured | None,
    result: TaskResult[t.Any],
) -> None:
    """Run a task in a fresh context of ``app`` and publish its outcome.

    The outcome is published inside the context, so done-callbacks and the
    signal receivers see the app; teardown runs once, right after.
    """
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
        if signals.task_started.receivers:
            signals.task_started.send(app, task=result)
        try:
            value = call(*args, **kwargs)
        except BaseException as exc:
            error = exc
            result._fail(exc)
        else:
            result._succeed(value)
        _send_outcome(app, result)
    finally:
        ctx.pop(error)


def _send_outcome(app: Flask, result: TaskResult[t.Any]) -> None:
    # What was published, which is not what the function did if a timeout
    # or the shutdown deadline ended the task first.
    if not result.done():  # it failed, and will be retried
        return
    status = result.status
    if status is TaskStatus.SUCCEEDED:
        if signals.task_succeeded.receivers:
            signals.task_succeeded.send(app, task=result, result=result.result(0))
        return
    signal = signals.task_cancelled if status is TaskStatus.CANCELLED else signals.task_failed
    if signal.receivers:
        signal.send(app, task=result, exception=Future.exception(result, 0))


def app_context(app: Flask) -> t.ContextManager[object]:
    """A new app context, for done-callbacks that run outside the task."""
    return app.app_context()


def send_cancelled(app: Flask, result: TaskResult[t.Any]) -> None:
    """Send ``task_cancelled`` for a task cancelled while queued."""
    if signals.task_cancelled.receivers:
        with app.app_context():
            signals.task_cancelled.send(app, task=result, exception=None)
