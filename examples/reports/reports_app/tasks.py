"""Background tasks. Declared at import time, before any app exists:
``@bg.task`` finds the app through ``current_app`` when a task is submitted.
"""

from __future__ import annotations

import threading

from flask import current_app

from flask_bgtasks import current_task

from .extensions import bg


@bg.task(pool="reports")
def build_report(n: int) -> dict[str, object]:
    """Build a report of ``n`` rows, one slow step per row."""
    step_seconds: float = current_app.config["REPORT_STEP_SECONDS"]
    for i in range(n):
        # Stop here, between steps, if someone asked to cancel the task.
        current_task.check_cancelled()
        # Stand-in for slow work: a database query, a file to render, ...
        threading.Event().wait(step_seconds)
        current_task.set_progress(i + 1, n, f"step {i + 1} of {n}")
    return {"rows": n, "app": current_app.name}
