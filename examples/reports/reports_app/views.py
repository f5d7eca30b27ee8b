"""The HTTP API: submit a report, poll its status, cancel it."""

from __future__ import annotations

import typing as t
from datetime import datetime

from flask import Blueprint, Response, jsonify, render_template_string, request, url_for

from flask_bgtasks import TaskResult, TaskStatus

from .extensions import bg
from .tasks import build_report

bp = Blueprint("reports", __name__)

MIN_ROWS = 1
MAX_ROWS = 100
DEFAULT_ROWS = 5

INDEX_HTML = """<!doctype html>
<title>Flask-BGTasks reports</title>
<h1>Build a report in the background</h1>
<form method="post" action="{{ url_for('reports.submit') }}">
  <label>Rows ({{ min_rows }}-{{ max_rows }}):
    <input name="n" type="number" min="{{ min_rows }}" max="{{ max_rows }}"
           value="{{ default_rows }}">
  </label>
  <button type="submit">Build</button>
</form>
<p>The answer is JSON with a <code>status_url</code>. Poll it with:</p>
<pre>curl -s -X POST -d n=5 {{ request.host_url }}reports
curl -s {{ request.host_url }}reports/&lt;id&gt;
curl -s -X POST {{ request.host_url }}reports/&lt;id&gt;/cancel</pre>
"""


def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify(error=message), status


def _parse_rows() -> int | None:
    """The ``n`` field of a JSON body or a form, or ``None`` if it is invalid."""
    data = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(data, t.Mapping):
        return None
    value = data.get("n", DEFAULT_ROWS)
    if isinstance(value, bool):  # bool is an int, but not a row count
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    if isinstance(value, float) and value != n:
        return None
    return n if MIN_ROWS <= n <= MAX_ROWS else None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _describe(result: TaskResult[t.Any]) -> dict[str, t.Any]:
    data: dict[str, t.Any] = {
        "id": result.id,
        "name": result.name,
        "status": result.status.value,
        "progress": result.progress,
        "submitted_at": _iso(result.submitted_at),
        "started_at": _iso(result.started_at),
        "finished_at": _iso(result.finished_at),
    }
    # Only read the outcome of a finished task: result() would wait otherwise.
    if result.status is TaskStatus.SUCCEEDED:
        data["result"] = result.result()
    elif result.status is TaskStatus.FAILED:
        data["error"] = type(result.exception()).__name__
    return data


@bp.get("/")
def index() -> str:
    return render_template_string(
        INDEX_HTML, min_rows=MIN_ROWS, max_rows=MAX_ROWS, default_rows=DEFAULT_ROWS
    )


@bp.post("/reports")
def submit() -> tuple[Response, int] | Response:
    n = _parse_rows()
    if n is None:
        return _error(f"'n' must be a whole number from {MIN_ROWS} to {MAX_ROWS}.", 400)
    # A full queue raises QueueFull, which Flask turns into a 503 response.
    result = build_report.submit(n)
    status_url = url_for("reports.status", task_id=result.id)
    response = jsonify(id=result.id, status_url=status_url)
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


@bp.get("/reports/<task_id>")
def status(task_id: str) -> tuple[Response, int] | dict[str, t.Any]:
    result = bg.get(task_id)
    if result is None:
        return _error(f"No task with id {task_id!r}.", 404)
    return _describe(result)


@bp.post("/reports/<task_id>/cancel")
def cancel(task_id: str) -> tuple[Response, int] | dict[str, t.Any]:
    result = bg.get(task_id)
    if result is None:
        return _error(f"No task with id {task_id!r}.", 404)
    # True for a queued task, cancelled at once; a running task is only
    # asked to stop and ends as "cancelled" at its next check_cancelled().
    cancelled = result.cancel()
    return {"id": result.id, "cancelled": cancelled, "status": result.status.value}
