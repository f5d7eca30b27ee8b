"""The progress example through Flask's test client. ``test_browser.py``
drives the same page in a real browser."""

from __future__ import annotations

import os
import typing as t

from flask import Flask
from flask.testing import FlaskClient
from progress_app import bg

HEADERS = {"X-Requested-With": "fetch"}


def start(client: FlaskClient) -> dict[str, t.Any]:
    client.get("/")  # the page gives the browser its user id
    response = client.post("/reports", headers=HEADERS)
    assert response.status_code == 202
    return response.get_json()  # type: ignore[no-any-return]


def test_page(app: Flask) -> None:
    page = app.test_client().get("/")
    assert page.status_code == 200
    assert b'id="start"' in page.data and b"A report of 3 pages" in page.data


def test_report_runs_to_the_end(app: Flask) -> None:
    client = app.test_client()
    started = start(client)
    assert bg.join(10)
    status = client.get(started["status_url"]).get_json()
    assert status["status"] == "succeeded"
    assert status["progress"] == {"current": 3, "total": 3, "message": "Rendering page 3 of 3"}
    result = status["result"]
    assert (result["title"], result["pages"]) == ("Quarterly report, 3 pages", 3)
    assert result["pid"] != os.getpid()  # rendered in a child process


def test_cancel(app: Flask) -> None:
    # Long enough to be cancelled first; it stops at the next page.
    app.config.update(PAGES=200, STEP_SECONDS=0.05)
    client = app.test_client()
    started = start(client)
    cancel_url = client.get(started["status_url"]).get_json()["links"]["cancel"]
    assert client.post(cancel_url, headers=HEADERS).status_code == 202
    assert bg.join(10)
    status = client.get(started["status_url"]).get_json()
    assert status["status"] == "cancelled"
    assert (status["progress"] or {"current": 0})["current"] < 200


def test_other_browsers_see_nothing(app: Flask) -> None:
    started = start(app.test_client())
    stranger = app.test_client()
    stranger.get("/")
    unknown = stranger.get("/tasks/" + "x" * 22)
    theirs = stranger.get(started["status_url"])
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.data == unknown.data
    assert stranger.post(started["status_url"] + "/cancel", headers=HEADERS).status_code == 404
    assert bg.join(10)
