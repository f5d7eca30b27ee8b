"""The HTTP side: the status API blueprint, its Server-Sent Events stream,
and ``@bg.background_view``.

Imported by ``init_app`` only when ``BGTASKS_API`` is on, or by
``background_view``. Every answer about a task goes through the app's
authorization callback, and a task the caller may not see answers exactly
as an id that never existed.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
import typing as t
import warnings
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ._errors import UsageError
from ._options import TaskOptions
from ._record import TaskStatus

if t.TYPE_CHECKING:
    from flask import Flask

    from ._extension import BGTasks
    from ._record import TaskRecord
    from ._runtime import Runtime
    from ._task import Task

#: What a task id looks like: URL-safe base64 of 16 random bytes (22
#: characters); a little slack, and nothing else reaches a store.
TASK_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")

#: Seconds a client should wait before it asks again about an unfinished task.
RETRY_AFTER = 1
#: How often the event stream reads the store, and sends a comment to keep
#: the connection open when nothing changed.
EVENTS_POLL = 0.25
EVENTS_KEEPALIVE = 15.0


def make_blueprint(
    bg: BGTasks, authorize: t.Callable[[TaskRecord], bool], prefix: str
) -> Blueprint:
    """The status API for the apps of ``bg``, mounted at ``prefix``."""
    bp = Blueprint("bgtasks_api", __name__, url_prefix=prefix)

    def find(task_id: str) -> TaskRecord:
        # Malformed, unknown, expired and forbidden ids all end here alike.
        if not TASK_ID.fullmatch(task_id):
            raise _NotFound()
        record = bg.store().record(task_id)
        if record is None or not authorize(record):
            raise _NotFound()
        return record

    @bp.get("/<task_id>")
    def status(task_id: str) -> Response:
        record = find(task_id)
        return _status_response(bg, record)

    @bp.post("/<task_id>/cancel")
    def cancel(task_id: str) -> Response:
        check_same_origin()
        response = _status_response(bg, cancel_record(bg, find(task_id)))
        response.status_code = 202
        return response

    # The same, for clients that prefer DELETE on the task's own URL.
    bp.add_url_rule("/<task_id>", "delete", cancel, methods=["DELETE"])

    @bp.get("/<task_id>/events")
    def events(task_id: str) -> Response:
        record = find(task_id)
        stream = stream_with_context(_event_stream(bg, record))
        response = Response(stream, mimetype="text/event-stream")
        private(response)
        response.headers["X-Accel-Buffering"] = "no"  # nginx: don't buffer the stream
        return response

    @bp.get("/<task_id>/result")
    def result(task_id: str) -> Response:
        record = find(task_id)
        task = bg.tasks.get(record.name)
        if task is None or not task.is_view:
            raise _NotFound()
        if not record.done():
            response = _status_response(bg, record)
            response.status_code = 202
            return response
        return _view_response(record)

    # Anything else under the prefix, such as an "id" with a slash, is
    # unknown too, and answers the same JSON.
    @bp.get("/<path:anything>")
    def unknown(anything: str) -> Response:
        if anything.endswith("/cancel") and anything.count("/") == 1:
            # Routing came here only because this rule takes GET.
            raise MethodNotAllowed(valid_methods=["POST"])
        raise _NotFound()

    @bp.errorhandler(_NotFound)
    def not_found(error: _NotFound) -> tuple[Response, int]:
        return _error(404, "No task with this id."), 404

    @bp.errorhandler(Forbidden)
    def forbidden(error: Forbidden) -> tuple[Response, int]:
        return _error(403, str(error.description)), 403

    return bp


class _NotFound(HTTPException):
    code = 404


class Forbidden(HTTPException):
    code = 403


def _error(code: int, message: str) -> Response:
    response = jsonify(error={"code": code, "message": message})
    private(response)
    return response


def private(response: Response) -> None:
    # Every answer depends on who asks. Vary names the cookie even when the
    # authorization callback did not read the session, so that the headers
    # of a refused task and of an unknown id are the same.
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("Cookie")


def check_same_origin() -> None:
    """Refuse a state change that a page of another site could have sent.

    A cross-site form or script can't set a custom header without the
    browser asking this server first (CORS), which it does not allow; and
    browsers say where a request comes from in ``Sec-Fetch-Site`` and
    ``Origin``.
    """
    if not request.headers.get("X-Requested-With"):
        raise Forbidden(
            "Send the header 'X-Requested-With' (any value) to cancel a task:"
            " it shows that the request does not come from a form of another site."
        )
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if (site is not None and site not in ("same-origin", "none")) or (
        origin is not None and urlsplit(origin).netloc != request.host
    ):
        raise Forbidden("Tasks can only be cancelled from pages of this site.")


def status_json(bg: BGTasks, record: TaskRecord) -> dict[str, t.Any]:
    """What the status API says about a task."""
    task = bg.tasks.get(record.name)
    body: dict[str, t.Any] = {
        "id": record.id,
        "name": record.name,
        "status": record.status.value,
        "progress": record.progress,
        "attempt": record.attempt,
        "cancel_requested": record.cancel_requested,
        "submitted_at": record.submitted_at.isoformat(),
        "started_at": None if record.started_at is None else record.started_at.isoformat(),
        "finished_at": None if record.finished_at is None else record.finished_at.isoformat(),
        "links": {
            "self": url_for("bgtasks_api.status", task_id=record.id),
            "cancel": url_for("bgtasks_api.cancel", task_id=record.id),
            "events": url_for("bgtasks_api.events", task_id=record.id),
        },
    }
    if task is not None and task.is_view:
        body["links"]["result"] = url_for("bgtasks_api.result", task_id=record.id)
    elif record.status is TaskStatus.SUCCEEDED and task is not None and task.expose_result:
        body.update(_exposed_result(bg, record))
    error = record.error
    if error is not None:
        body["error"] = {"type": error["type"]}
        if task is not None and task.expose_error:
            body["error"].update(message=error["message"], traceback=error["traceback"])
    return body


#: Stands for a return value that no process can show any more.
_GONE = object()


def _exposed_result(bg: BGTasks, record: TaskRecord) -> dict[str, t.Any]:
    """``{"result": value}``, the value as the app's JSON provider writes it,
    as ``jsonify`` would (a datetime, UUID, Decimal or dataclass too); or
    ``{"result_unavailable": why}`` for a value that can't be shown."""
    if record.result_repr is None:  # JSON already
        return {"result": record.result}
    # Not JSON, so the store kept only its repr; if the task ran in this
    # process, its handle may still hold the value itself.
    handle = bg.get(record.id)
    try:
        value = _GONE if handle is None else handle.result(timeout=0)
    except UsageError:  # a handle that reads the store: the repr only
        value = _GONE
    if value is _GONE:
        return {
            "result_unavailable": "The return value is not JSON, so the task store kept"
            " only its repr. Return a JSON value (a date as a string, say) to see it here."
        }
    try:
        # Strict JSON: a NaN would make the whole status unreadable in a browser.
        return {"result": json.loads(current_app.json.dumps(value), parse_constant=_no_nan)}
    except (TypeError, ValueError, OverflowError):
        return {
            "result_unavailable": "The return value is neither JSON nor a value that the"
            " app's JSON provider can serialize."
        }


def _no_nan(constant: str) -> t.NoReturn:
    raise ValueError(f"{constant} is not JSON.")


def _status_response(bg: BGTasks, record: TaskRecord) -> Response:
    response = jsonify(status_json(bg, record))
    private(response)  # a status changes: no proxy or browser may keep it
    if not record.done():
        response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def _event_stream(bg: BGTasks, record: TaskRecord) -> t.Iterator[str]:
    """``status`` events, one per change, until the task has finished."""
    pause = threading.Event()  # never set: the pause between two reads
    last = None
    quiet_since = time.monotonic()
    while True:
        # By the app's JSON provider, as the status is; one that indents
        # writes several lines, and each must be a data line of the event.
        data = current_app.json.dumps(status_json(bg, record)).replace("\n", "\ndata: ")
        if data != last:
            last = data
            quiet_since = time.monotonic()
            yield f"event: status\ndata: {data}\n\n"
        elif time.monotonic() - quiet_since > EVENTS_KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        if record.done():
            return
        pause.wait(EVENTS_POLL)
        # The store is the truth, also for a task of another process.
        fresh = bg.store().record(record.id)
        if fresh is None:  # expired or purged meanwhile: nothing more to say
            return
        record = fresh


# -- background views -------------------------------------------------------


def user_key(
    user: t.Callable[[], t.Any] | None, owner: t.Callable[[], t.Any] | None
) -> tuple[str, t.Callable[[], t.Any] | None]:
    """The record key and the function of a background view's ``user=``,
    or of its deprecated old name ``owner=``."""
    if owner is None:
        return "user", user
    if user is not None:
        raise TypeError("background_view() takes user= or owner=, not both.")
    warnings.warn(
        "background_view(owner=...) is deprecated; use user=..., which the"
        ' record keeps as record.kwargs["user"].',
        DeprecationWarning,
        stacklevel=3,
    )
    return "owner", owner


def background_view(
    runtime_of: t.Callable[[Flask], Runtime],
    view: t.Callable[..., t.Any],
    pool: str,
    key: str,
    user: t.Callable[[], t.Any] | None,
) -> Task[..., dict[str, t.Any]]:
    """The task that runs ``view``; its :attr:`~flask_bgtasks.Task.view` is
    what the route calls: it submits the task and answers ``202 Accepted``
    at once.

    With ``user``, its value in the request is kept on the task's record as
    ``record.kwargs[key]``, for the authorization callback; the view does
    not get it.
    """
    from ._task import Task

    name = f"{view.__module__}.{view.__qualname__}"
    task: Task[..., dict[str, t.Any]] = Task(
        runtime_of,
        functools.partial(run_view, view, key if user is not None else None),
        # It runs from the copy of its request, which no store keeps.
        TaskOptions(name=name, pool=pool, copy_request=True, durable=False),
        is_view=True,
    )

    @functools.wraps(view)
    def start(**view_args: t.Any) -> Response:
        if "bgtasks_api" not in current_app.blueprints:
            raise UsageError(
                f"The background view {name!r} needs the status API, to tell"
                " the client where its result will be. Set BGTASKS_API = True"
                " and register an authorization callback with @bg.authorize."
            )
        if user is not None:
            if key in view_args:
                raise UsageError(
                    f"The background view {name!r} has a URL variable named"
                    f" {key!r}, which is where its record keeps the value of"
                    f" {key}=. Rename the variable."
                )
            view_args = {**view_args, key: user()}
        result = task.submit(**view_args)
        status_url = url_for("bgtasks_api.status", task_id=result.id)
        response = jsonify(
            id=result.id,
            status_url=status_url,
            result_url=url_for("bgtasks_api.result", task_id=result.id),
        )
        response.status_code = 202
        response.headers["Location"] = status_url
        response.headers["Cache-Control"] = "no-store"
        return response

    task.view = start
    return task


def run_view(view: t.Callable[..., t.Any], key: str | None, **view_args: t.Any) -> dict[str, t.Any]:
    """Run a background view in its task, in a request context made from
    the copy of the request: the view sees its URL, arguments, headers and
    body. Its response becomes the task's JSON value."""
    if key is not None:
        del view_args[key]  # for the record only
    try:
        rv = view(**view_args)
    except HTTPException as exc:  # abort(404) and friends, as in a request
        rv = current_app.handle_http_exception(exc)
    response = current_app.make_response(rv)
    # send_file() answers in "direct passthrough" mode, for the server to
    # stream; here the body is read into the result.
    response.direct_passthrough = False
    try:
        body = response.get_data()
    finally:
        response.close()
    return {
        "status": response.status_code,
        "headers": [[key, value] for key, value in response.headers.items()],
        "body": base64.b64encode(body).decode("ascii"),
    }


def _view_response(record: TaskRecord) -> Response:
    if record.status is not TaskStatus.SUCCEEDED or not isinstance(record.result, dict):
        # Its traceback is in the log; the client learns only that it failed.
        status = 500 if record.status is TaskStatus.FAILED else 409
        message = (
            "The request failed on the server."
            if status == 500
            else "The request was cancelled before it finished."
        )
        response = _error(status, message)
        response.status_code = status
        return response
    stored = record.result
    response = Response(base64.b64decode(stored["body"]), status=stored["status"])
    response.headers.clear()
    for key, value in stored["headers"]:
        response.headers.add(key, value)
    # It answers one user's request: no shared cache may keep it, unless
    # the view said otherwise.
    response.headers.setdefault("Cache-Control", "private, no-store")
    return response


def cancel_record(bg: BGTasks, record: TaskRecord) -> TaskRecord:
    """Cancel the task of ``record`` unless it has ended; its record after."""
    if record.done():
        return record
    bg.cancel(record.id)
    return bg.store().record(record.id) or record
