"""Checked by mypy --strict in CI, never run: guards the public types."""

from __future__ import annotations

import typing as t
from concurrent.futures import Future

from flask import Flask

from flask_bgtasks import BGTasks, TaskResult, TaskStatus, current_task

app = Flask(__name__)
bg = BGTasks(app)


@bg.task
def build_report(user_id: int, *, title: str = "") -> str:
    return f"{user_id}{title}"


@bg.task(pool="reports", copy_request=True)
def count(items: list[str]) -> int:
    current_task.set_progress(1, 2, "half")
    current_task.check_cancelled()
    return len(items)


def check() -> None:
    t.assert_type(build_report(7), str)
    t.assert_type(build_report.submit(7, title="x"), TaskResult[str])
    t.assert_type(build_report.submit(7).result(), str)
    t.assert_type(build_report.map([1, 2]), t.Iterator[str])
    t.assert_type(count.submit(["a"]), TaskResult[int])
    t.assert_type(bg.submit(divmod, 7, 2), TaskResult[tuple[int, int]])
    t.assert_type(bg.get("id"), TaskResult[t.Any] | None)
    t.assert_type(bg.join(1.0), bool)
    result = build_report.submit(1)
    t.assert_type(result.status, TaskStatus)
    t.assert_type(result.id, str)
    t.assert_type(result.progress, dict[str, t.Any] | None)
    t.assert_type(result.cancel(), bool)
    future: Future[str] = result  # a real Future
    del future
    t.assert_type(current_task.id, str)
    t.assert_type(current_task.cancel_requested, bool)


def wrong_arguments_are_type_errors() -> None:
    build_report.submit("seven")  # type: ignore[arg-type]
    build_report.submit(7, titel="x")  # type: ignore[call-arg]
    count.submit()  # type: ignore[call-arg]
    bg.submit(divmod, "a")  # type: ignore[arg-type]
