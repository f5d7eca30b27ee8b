"""The task dashboard: an HTML page that lists tasks with their progress,
lets an operator cancel them or run them again, and shows each pool's
queue; and the JSON its script polls to keep the page live.

Imported by ``init_app`` only when ``BGTASKS_DASHBOARD`` is on. Every URL
of it, its assets too, answers ``404`` unless the dashboard's own
authorization callback lets the user in; then each task must also pass the
status API's callback, if there is one, or it is neither listed nor
acted on. The templates and assets are in ``dashboard/`` next to this
module: no CDN.
"""

from __future__ import annotations

import math
import typing as t
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, jsonify, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from ._errors import UsageError
from ._http import TASK_ID, Forbidden, cancel_record, check_same_origin, private
from ._record import TaskStatus

if t.TYPE_CHECKING:
    from werkzeug.datastructures import MultiDict

    from ._extension import BGTasks
    from ._record import TaskRecord

#: The most rows the page shows, and the most records it reads from the
#: store to find them when it filters by name or pool.
ROWS = 100
SCAN = 1000
#: Milliseconds between two reads of the page's script.
POLL_MS = 1000
#: Statuses from which a task can run again from the page.
RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})


def make_dashboard(
    bg: BGTasks,
    allowed: t.Callable[[], bool],
    authorize: t.Callable[[TaskRecord], bool] | None,
    prefix: str,
) -> Blueprint:
    """The dashboard of the apps of ``bg``, mounted at ``prefix``.

    :param allowed: ``@bg.authorize_dashboard``: may the user open it.
    :param authorize: ``@bg.authorize``: may the user see this task; with
        ``None``, every task.
    """
    bp = Blueprint(
        "bgtasks_dashboard",
        __name__,
        url_prefix=prefix,
        template_folder="dashboard/templates",
        static_folder="dashboard/static",
        static_url_path="/static",
    )

    def visible(record: TaskRecord) -> bool:
        return authorize is None or authorize(record)

    @bp.before_request
    def let_in() -> None:
        # Also before the static files: a refused user learns nothing, not
        # even that a dashboard is there.
        if not allowed():
            abort(404)

    def find(task_id: str) -> TaskRecord:
        if not TASK_ID.fullmatch(task_id):
            abort(404)
        record = bg.store().record(task_id)
        if record is None or not visible(record):
            abort(404)
        return record

    @bp.get("/")
    def index() -> Response:
        listing = list_tasks(bg, visible, request.args)
        page = render_template(
            "bgtasks/dashboard.html",
            statuses=[status.value for status in TaskStatus],
            poll_ms=POLL_MS,
            **listing,
        )
        return _answer(Response(page, mimetype="text/html"))

    @bp.get("/tasks.json")
    def tasks_json() -> Response:
        return _answer(jsonify(list_tasks(bg, visible, request.args)))

    @bp.post("/tasks/<task_id>/cancel")
    def cancel(task_id: str) -> Response:
        check_same_origin()
        return _answer(jsonify(task=task_row(cancel_record(bg, find(task_id)))))

    @bp.post("/tasks/<task_id>/retry")
    def retry(task_id: str) -> Response:
        check_same_origin()
        record = find(task_id)
        if record.status not in RETRYABLE:
            return _failure(409, "Only a failed or cancelled task runs again from here.")
        try:
            result = bg.retry(task_id)
        except UsageError as error:
            return _failure(409, str(error))
        new = bg.store().record(result.id)
        response = jsonify(task=None if new is None else task_row(new), id=result.id)
        response.status_code = 201
        return _answer(response)

    @bp.errorhandler(Forbidden)  # the status API's same-origin check
    def forbidden(error: HTTPException) -> Response:
        return _failure(403, str(error.description))

    return bp


def list_tasks(
    bg: BGTasks, visible: t.Callable[[TaskRecord], bool], args: MultiDict[str, str]
) -> dict[str, t.Any]:
    """The rows the filters in ``args`` select, newest first, and the
    stats: what the page shows and its script reads."""
    status = args.get("status", "")
    name = args.get("name", "").strip()
    pool = args.get("pool", "")
    task_id = args.get("id", "").strip()
    if task_id:
        found = bg.store().record(task_id) if TASK_ID.fullmatch(task_id) else None
        records = [] if found is None else [found]
    else:
        wanted = TaskStatus(status) if status in {s.value for s in TaskStatus} else None
        records = bg.store().records(wanted, SCAN)
    records = [
        record
        for record in records
        if (not name or name in record.name)
        and (not pool or record.pool == pool)
        and visible(record)
    ]
    now = datetime.now(UTC)
    return {
        "tasks": [task_row(record, now) for record in records[:ROWS]],
        "more": len(records) > ROWS,
        "stats": bg.stats().to_dict(),
        "filters": {"status": status, "name": name, "pool": pool, "id": task_id},
    }


def task_row(record: TaskRecord, now: datetime | None = None) -> dict[str, t.Any]:
    """One task as the dashboard shows it: the fields of the status API
    that apply, and what the page computes from them."""
    progress = record.progress or {}
    percent = _percent(progress.get("current"), progress.get("total"))
    if record.status is TaskStatus.SUCCEEDED:
        percent = 100
    duration = None
    if record.started_at is not None:
        end = record.finished_at or now or datetime.now(UTC)
        duration = max(0.0, (end - record.started_at).total_seconds())
    return {
        "id": record.id,
        "name": record.name,
        "pool": record.pool,
        "status": record.status.value,
        "progress": record.progress,
        "percent": percent,
        "attempt": record.attempt,
        "submitted_at": record.submitted_at.isoformat(),
        "started_at": None if record.started_at is None else record.started_at.isoformat(),
        "finished_at": None if record.finished_at is None else record.finished_at.isoformat(),
        "duration": duration,
        "duration_text": format_duration(duration),
        "retry_of": record.retry_of,
        "can_cancel": not record.done(),
        "can_retry": record.status in RETRYABLE,
        "links": {
            "self": url_for("bgtasks_dashboard.index", id=record.id),
            "retry_of": None
            if record.retry_of is None
            else url_for("bgtasks_dashboard.index", id=record.retry_of),
            "cancel": url_for("bgtasks_dashboard.cancel", task_id=record.id),
            "retry": url_for("bgtasks_dashboard.retry", task_id=record.id),
        },
    }


def _percent(current: object, total: object) -> int | None:
    numbers = (int, float)
    if not isinstance(current, numbers) or not isinstance(total, numbers) or total <= 0:
        return None
    share = 100 * current / total
    if not math.isfinite(share):
        return None
    return max(0, min(100, math.floor(share)))


def format_duration(seconds: float | None) -> str:
    """``"0.4 s"``, ``"12 s"``, ``"3 min 05 s"``, ``"2 h 03 min"``; ``""`` for none."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _failure(code: int, message: str) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = code
    return _answer(response)


def _answer(response: Response) -> Response:
    private(response)  # it depends on who asks, and changes
    return response
