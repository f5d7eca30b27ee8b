from __future__ import annotations

import threading
import time
import typing as t

import pytest
from flask import Flask
from flask.testing import FlaskClient
from reports_app.extensions import bg
from werkzeug.test import TestResponse

from flask_bgtasks import TaskCancelled, TaskResult
from flask_bgtasks.signals import task_started


def body(response: TestResponse) -> dict[str, t.Any]:
    data = response.get_json()
    assert isinstance(data, dict)
    return data


def get_result(app: Flask, task_id: str) -> TaskResult[t.Any]:
    with app.app_context():
        result = bg.get(task_id)
    assert result is not None
    return result


def submit(client: FlaskClient, n: int) -> str:
    response = client.post("/reports", data={"n": n})
    assert response.status_code == 202
    task_id: str = body(response)["id"]
    return task_id


def poll_until_done(app: Flask, client: FlaskClient, task_id: str) -> dict[str, t.Any]:
    """GET the status until the task has finished. No sleeping: between
    polls, wait on the task itself."""
    deadline = time.monotonic() + 10
    while True:
        data = body(client.get(f"/reports/{task_id}"))
        if data["status"] in {"succeeded", "failed", "cancelled"}:
            return data
        left = deadline - time.monotonic()
        assert left > 0, f"task still {data['status']} after the deadline"
        try:
            get_result(app, task_id).result(timeout=left)
        except Exception:
            pass  # the next GET reports how it ended


def test_index(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert b'<form method="post" action="/reports">' in response.data
    assert b"curl" in response.data


def test_submit_and_poll(app: Flask, client: FlaskClient) -> None:
    response = client.post("/reports", data={"n": "3"})
    assert response.status_code == 202
    task_id = body(response)["id"]
    status_url = f"/reports/{task_id}"
    assert body(response)["status_url"] == status_url
    assert response.headers["Location"] == status_url

    data = poll_until_done(app, client, task_id)
    assert data["id"] == task_id
    assert data["name"] == "reports_app.tasks.build_report"
    assert data["status"] == "succeeded"
    assert data["result"] == {"rows": 3, "app": app.name}
    assert data["progress"] == {"current": 3, "total": 3, "message": "step 3 of 3"}
    assert data["submitted_at"] <= data["started_at"] <= data["finished_at"]
    assert "error" not in data


def test_submit_json_and_default(app: Flask, client: FlaskClient) -> None:
    json_id = body(client.post("/reports", json={"n": 2}))["id"]
    default_id = body(client.post("/reports"))["id"]
    assert poll_until_done(app, client, json_id)["result"]["rows"] == 2
    assert poll_until_done(app, client, default_id)["result"]["rows"] == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {"n": "0"}},
        {"data": {"n": "101"}},
        {"data": {"n": "many"}},
        {"json": {"n": 2.5}},
        {"json": {"n": True}},
        {"json": ["n", 5]},
    ],
)
def test_bad_input(client: FlaskClient, kwargs: dict[str, t.Any]) -> None:
    response = client.post("/reports", **kwargs)
    assert response.status_code == 400
    assert "error" in body(response)


@pytest.mark.parametrize(
    ("method", "url"), [("GET", "/reports/nope"), ("POST", "/reports/nope/cancel")]
)
def test_unknown_id(client: FlaskClient, method: str, url: str) -> None:
    response = client.open(url, method=method)
    assert response.status_code == 404
    assert body(response) == {"error": "No task with id 'nope'."}


@pytest.fixture
def slow_app(app: Flask) -> Flask:
    # 100 steps of 0.05 s: about 5 s, unless cancelled.
    app.config["REPORT_STEP_SECONDS"] = 0.05
    return app


def test_cancel_running(slow_app: Flask, client: FlaskClient) -> None:
    started = threading.Event()

    def on_started(sender: Flask, task: TaskResult[t.Any]) -> None:
        started.set()

    with task_started.connected_to(on_started, sender=slow_app):
        task_id = submit(client, 100)
        assert started.wait(timeout=10)

    assert body(client.get(f"/reports/{task_id}"))["status"] == "running"
    response = client.post(f"/reports/{task_id}/cancel")
    # A running task is only asked to stop; it does at its next step, which
    # may come before the view reads the status it answers.
    answer = body(response)
    assert answer["status"] in {"running", "cancelled"}, answer
    assert answer == {"id": task_id, "cancelled": False, "status": answer["status"]}

    with pytest.raises(TaskCancelled):
        get_result(slow_app, task_id).result(timeout=10)

    data = body(client.get(f"/reports/{task_id}"))
    assert data["status"] == "cancelled"
    assert data["finished_at"] is not None
    # It stopped early: before its first step, or somewhere after it.
    progress = data["progress"]
    assert progress is None or progress["current"] < 100
    assert "result" not in data


def test_cancel_queued(slow_app: Flask, client: FlaskClient) -> None:
    # The "reports" pool has one worker: the second report waits in the queue.
    running_id = submit(client, 100)
    queued_id = submit(client, 1)

    response = client.post(f"/reports/{queued_id}/cancel")
    assert body(response) == {"id": queued_id, "cancelled": True, "status": "cancelled"}
    with pytest.raises(TaskCancelled):
        get_result(slow_app, queued_id).result(timeout=10)
    assert body(client.get(f"/reports/{queued_id}"))["started_at"] is None

    # Don't make the teardown wait for the 5 s report.
    client.post(f"/reports/{running_id}/cancel")
    assert poll_until_done(slow_app, client, running_id)["status"] == "cancelled"
