"""The HTTP layer (``_http.py``): the status API blueprint, cancelling over
HTTP, the authorization callback, the Server-Sent Events stream, and
``@bg.background_view``.

The ``app`` fixture of this module has the API on, behind an authorization
callback that refuses the ids in ``denied``. Tests marked ``both_stores`` run
with the memory store and with a SQLite file. Tasks wait at the ``gate`` (or
at events the test sets) wherever a test needs them in a given state, and
every test lets its tasks finish.
"""

from __future__ import annotations

import dataclasses
import decimal
import io
import itertools
import json
import sys
import textwrap
import threading
import types
import typing as t
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask
import pytest
from flask import Flask, abort, jsonify, request, session
from flask.json.provider import DefaultJSONProvider
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_bgtasks import (
    BGTasks,
    ConfigError,
    ConfigTypeError,
    Task,
    TaskRecord,
    UsageError,
    _http,
    current_task,
)

from .conftest import Gate

#: What a page of the app's own site sends with a cancel request.
HEADERS = {"X-Requested-With": "fetch"}
#: An id that is well formed but was never given to a task.
UNKNOWN = "A" * 22
#: The keys of every status answer, besides ``result`` and ``error``.
STATUS_KEYS = {
    "id",
    "name",
    "status",
    "progress",
    "attempt",
    "cancel_requested",
    "submitted_at",
    "started_at",
    "finished_at",
    "links",
}

both_stores = pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)

Json = dict[str, t.Any]


# -- fixtures and helpers ---------------------------------------------------


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``BGTASKS_STORE``: memory, unless parametrized with ``"sqlite"``."""
    if getattr(request, "param", "memory") == "memory":
        return "memory"
    return "sqlite:///" + str(tmp_path / "tasks.db")  # 4 slashes: absolute


@pytest.fixture
def denied(bg: BGTasks) -> set[str]:
    """Register the authorization callback: it refuses the ids in this set."""
    refused: set[str] = set()

    @bg.authorize
    def may_see(record: TaskRecord) -> bool:
        return record.id not in refused

    return refused


@pytest.fixture
def make_api_app(
    make_app: t.Callable[..., Flask], denied: set[str], store: str
) -> t.Callable[..., Flask]:
    """Make an app with the API on, using ``store``."""

    def make_api_app(name: str = "test_app", **config: t.Any) -> Flask:
        return make_app(name, BGTASKS_API=True, BGTASKS_STORE=store, **config)

    return make_api_app


@pytest.fixture
def app(make_api_app: t.Callable[..., Flask]) -> Flask:
    return make_api_app()


@pytest.fixture
def held(bg: BGTasks, gate: Gate) -> Task[[], str]:
    """A task that waits at the gate, then stops if it was asked to."""

    @bg.task
    def held() -> str:
        gate()
        current_task.check_cancelled()
        return "done"

    return held


def submit(app: Flask, task: Task[..., t.Any], *args: t.Any, **kwargs: t.Any) -> str:
    with app.app_context():
        return task.submit(*args, **kwargs).id


def get_status(client: FlaskClient, task_id: str) -> Json:
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.data
    return t.cast(Json, response.get_json())


def read_events(response: TestResponse) -> t.Iterator[Json]:
    """The ``status`` events of a streamed response, as they arrive.
    Keep-alive comments are skipped."""
    for chunk in response.response:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        if text.startswith(":"):
            continue
        assert text.endswith("\n\n"), text
        fields: dict[str, list[str]] = {}
        for line in text.strip("\n").split("\n"):
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
        assert fields["event"] == ["status"], text
        yield json.loads("\n".join(fields["data"]))  # the data lines, joined


def progress_of(body: Json) -> float | None:
    return None if body["progress"] is None else body["progress"]["current"]


def assert_not_found(response: TestResponse, unknown: TestResponse) -> None:
    """``response`` is the JSON 404 of an id that never existed."""
    assert response.status_code == 404
    assert response.is_json
    assert response.headers["Cache-Control"] == "no-store"
    assert response.data == unknown.data


# -- wiring and config ------------------------------------------------------


def test_api_is_off_by_default(make_app: t.Callable[..., Flask], held: Task[[], str]) -> None:
    app = make_app()
    assert "bgtasks_api" not in app.blueprints
    task_id = submit(app, held)
    assert app.test_client().get(f"/tasks/{task_id}").status_code == 404
    assert not any(rule.rule.startswith("/tasks") for rule in app.url_map.iter_rules())


def test_api_at_its_prefix(make_api_app: t.Callable[..., Flask], held: Task[[], str]) -> None:
    app = make_api_app(BGTASKS_API_PREFIX="/api/jobs")
    client = app.test_client()
    task_id = submit(app, held)
    assert client.get(f"/tasks/{task_id}").status_code == 404
    response = client.get(f"/api/jobs/{task_id}")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["links"] == {
        "self": f"/api/jobs/{task_id}",
        "cancel": f"/api/jobs/{task_id}/cancel",
        "events": f"/api/jobs/{task_id}/events",
    }


def test_api_without_authorize_is_refused(bg: BGTasks) -> None:
    app = Flask("no_authorize")
    app.config["BGTASKS_API"] = True
    with pytest.raises(ConfigError, match=r"BGTASKS_API.*@bg\.authorize"):
        bg.init_app(app)
    assert "bgtasks_api" not in app.blueprints


def test_api_without_authorize_leaves_app_unregistered(bg: BGTasks) -> None:
    app = Flask("no_authorize")
    app.config["BGTASKS_API"] = True
    with pytest.raises(ConfigError):
        bg.init_app(app)
    bg.authorize(lambda record: True)
    bg.init_app(app)
    assert "bgtasks_api" in app.blueprints


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        ("tasks", ConfigError),
        ("/tasks/", ConfigError),
        ("/", ConfigError),
        ("", ConfigError),
        ("/tasks/<user>", ConfigError),
        (None, ConfigTypeError),
        (b"/tasks", ConfigTypeError),
        (7, ConfigTypeError),
    ],
)
def test_bad_prefix(
    make_api_app: t.Callable[..., Flask], prefix: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="BGTASKS_API_PREFIX") as info:
        make_api_app(BGTASKS_API_PREFIX=prefix)
    assert type(info.value) is error


@pytest.mark.parametrize("value", [1, "yes", None])
def test_api_flag_must_be_bool(
    make_app: t.Callable[..., Flask], denied: set[str], value: object
) -> None:
    with pytest.raises(ConfigTypeError, match="BGTASKS_API must be True or False"):
        make_app(BGTASKS_API=value)


# -- status -----------------------------------------------------------------


@both_stores
def test_status_of_running_task(
    app: Flask, client: FlaskClient, bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    task_id = submit(app, held)
    gate.wait_entered()
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert set(body) == STATUS_KEYS
    assert body["id"] == task_id
    assert body["name"] == held.name
    assert body["status"] == "running"
    assert body["progress"] is None
    assert body["attempt"] == 1
    assert body["cancel_requested"] is False
    assert body["finished_at"] is None
    submitted = datetime.fromisoformat(body["submitted_at"])
    started = datetime.fromisoformat(body["started_at"])
    assert submitted.utcoffset() == started.utcoffset() == timedelta(0)  # UTC
    assert submitted <= started
    assert body["links"] == {
        "self": f"/tasks/{task_id}",
        "cancel": f"/tasks/{task_id}/cancel",
        "events": f"/tasks/{task_id}/events",
    }
    gate.open()
    assert bg.join(10)


@both_stores
def test_status_of_queued_and_finished_task(
    make_api_app: t.Callable[..., Flask], held: Task[[], str], gate: Gate, bg: BGTasks
) -> None:
    app = make_api_app(BGTASKS_MAX_WORKERS=1)
    client = app.test_client()
    first = submit(app, held)
    gate.wait_entered()
    second = submit(app, held)
    queued = client.get(f"/tasks/{second}")
    assert queued.headers["Retry-After"] == "1"
    body = queued.get_json()
    assert (body["status"], body["attempt"], body["started_at"]) == ("queued", 0, None)

    gate.open()
    assert bg.join(10)
    for task_id in first, second:
        response = client.get(f"/tasks/{task_id}")
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert "Retry-After" not in response.headers
        body = response.get_json()
        assert set(body) == STATUS_KEYS  # the value is JSON, but not exposed
        assert body["status"] == "succeeded"
        times = [
            datetime.fromisoformat(body[key])
            for key in ("submitted_at", "started_at", "finished_at")
        ]
        assert all(time.tzinfo is not None for time in times)
        assert times == sorted(times)


@both_stores
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({"rows": [1, 2], "title": "ok"}, {"rows": [1, 2], "title": "ok"}),
        (None, None),
    ],
)
def test_exposed_result(
    app: Flask, client: FlaskClient, bg: BGTasks, value: object, shown: object
) -> None:
    @bg.task(expose_result=True)
    def report() -> object:
        return value

    task_id = submit(app, report)
    assert bg.join(10)
    body = get_status(client, task_id)
    assert body["result"] == shown


@both_stores
def test_exposed_result_that_is_not_json_is_left_out(
    app: Flask, client: FlaskClient, bg: BGTasks
) -> None:
    class Secret:
        def __repr__(self) -> str:
            return "<Secret sk-12345>"

    @bg.task(expose_result=True)
    def report() -> Secret:
        return Secret()

    task_id = submit(app, report)
    assert bg.join(10)
    response = client.get(f"/tasks/{task_id}")
    assert response.get_json()["status"] == "succeeded"
    assert "result" not in response.get_json()
    assert "The return value is " in response.get_json()["result_unavailable"]
    assert b"sk-12345" not in response.data


@dataclasses.dataclass
class Row:
    title: str
    at: datetime


WHEN = datetime(2025, 6, 2, 9, 14, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (WHEN, "Mon, 02 Jun 2025 09:14:03 GMT"),
        (uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
        (decimal.Decimal("1.10"), "1.10"),
        (Row("Q1", WHEN), {"at": "Mon, 02 Jun 2025 09:14:03 GMT", "title": "Q1"}),
        (
            [WHEN, {"id": uuid.UUID(int=1)}],
            ["Mon, 02 Jun 2025 09:14:03 GMT", {"id": "00000000-0000-0000-0000-000000000001"}],
        ),
    ],
    ids=["datetime", "uuid", "decimal", "dataclass", "nested"],
)
def test_exposed_result_as_jsonify_writes_it(
    app: Flask, client: FlaskClient, bg: BGTasks, value: object, shown: object
) -> None:
    """A value that Flask's jsonify can write, but that is not JSON, is shown
    as jsonify shows it, in the status and in its event."""

    @bg.task(expose_result=True)
    def report() -> object:
        return value

    task_id = submit(app, report)
    assert bg.join(10)
    body = get_status(client, task_id)
    with app.app_context():
        assert body["result"] == json.loads(flask.json.dumps(value)) == shown
    assert "result_unavailable" not in body
    [event] = read_events(client.get(f"/tasks/{task_id}/events"))
    assert event == body


class IsoProvider(DefaultJSONProvider):
    """Writes datetimes in ISO 8601, sets as sorted lists, and indents by
    ``indent``."""

    indent: int | None = None

    @staticmethod
    def default(o: t.Any) -> t.Any:
        if isinstance(o, datetime):
            return o.isoformat()
        if isinstance(o, set):
            return sorted(o)
        return DefaultJSONProvider.default(o)

    def dumps(self, obj: t.Any, **kwargs: t.Any) -> str:
        kwargs.setdefault("indent", self.indent)
        return super().dumps(obj, **kwargs)


@pytest.mark.parametrize("indent", [None, 2])
def test_exposed_result_through_the_apps_own_json_provider(
    app: Flask, client: FlaskClient, bg: BGTasks, indent: int | None
) -> None:
    provider = IsoProvider(app)
    provider.indent = indent  # indented, each line is a data line of its event
    app.json = provider

    @bg.task(expose_result=True)
    def report() -> object:
        return {"at": WHEN, "tags": {"b", "a"}}

    task_id = submit(app, report)
    assert bg.join(10)
    shown = {"at": "2025-06-02T09:14:03+00:00", "tags": ["a", "b"]}
    assert get_status(client, task_id)["result"] == shown
    events = client.get(f"/tasks/{task_id}/events")
    if indent is not None:
        assert b'\ndata:   "id": ' in events.data
    [event] = read_events(events)
    assert event["result"] == shown


@pytest.mark.parametrize("value", [{1, 2}, float("nan"), object()], ids=["set", "nan", "object"])
def test_exposed_result_the_provider_cant_write(
    app: Flask, client: FlaskClient, bg: BGTasks, value: object
) -> None:
    @bg.task(expose_result=True)
    def report() -> object:
        return value

    task_id = submit(app, report)
    assert bg.join(10)
    response = client.get(f"/tasks/{task_id}")
    body = response.get_json()  # strict JSON: a NaN would not parse in a browser
    assert b"NaN" not in response.data
    assert body["status"] == "succeeded"
    assert "result" not in body
    assert body["result_unavailable"] == (
        "The return value is neither JSON nor a value that the app's JSON provider can serialize."
    )


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_exposed_result_that_a_shared_store_kept_as_repr(
    make_api_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    """The SQLite store keeps only the repr of a value that is not JSON: no
    process can show it, and the answer says why."""
    app = make_api_app(BGTASKS_DURABLE=False)

    @bg.task(expose_result=True)
    def report() -> datetime:
        return WHEN

    task_id = submit(app, report)
    assert bg.join(10)
    body = get_status(app.test_client(), task_id)
    assert body["status"] == "succeeded"
    assert "result" not in body
    assert body["result_unavailable"].startswith(
        "The return value is not JSON, so the task store kept only its repr."
    )


def test_background_view_result_through_the_apps_json_provider(
    app: Flask, client: FlaskClient, bg: BGTasks
) -> None:
    app.json = IsoProvider(app)

    @app.post("/stamp")
    @bg.background_view
    def stamp() -> dict[str, t.Any]:
        return {"at": WHEN, "id": uuid.UUID(int=7), "total": decimal.Decimal("2.50")}

    started = client.post("/stamp").get_json()
    assert bg.join(10)
    result = client.get(started["result_url"])
    assert result.status_code == 200
    assert result.get_json() == {
        "at": "2025-06-02T09:14:03+00:00",
        "id": "00000000-0000-0000-0000-000000000007",
        "total": "2.50",
    }


class SecretError(Exception):
    pass


@pytest.fixture
def failing(bg: BGTasks) -> t.Callable[..., Task[[], None]]:
    """Make a task that fails with a message that must not leak."""

    def make(**options: t.Any) -> Task[[], None]:
        @bg.task(**options)
        def fails() -> None:
            raise SecretError("password=hunter2")

        return fails

    return make


@both_stores
def test_error_shows_only_its_type(
    app: Flask,
    client: FlaskClient,
    bg: BGTasks,
    failing: t.Callable[..., Task[[], None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_id = submit(app, failing())
    assert bg.join(10)
    response = client.get(f"/tasks/{task_id}")
    body = response.get_json()
    assert body["status"] == "failed"
    assert body["error"] == {"type": f"{__name__}.SecretError"}
    assert "result" not in body
    for secret in (b"hunter2", b"Traceback", Path(__file__).name.encode(), b"line "):
        assert secret not in response.data
    # The log has it all.
    assert any("hunter2" in record.exc_text for record in caplog.records if record.exc_text)


@both_stores
def test_exposed_error(
    app: Flask, client: FlaskClient, bg: BGTasks, failing: t.Callable[..., Task[[], None]]
) -> None:
    task_id = submit(app, failing(expose_error=True))
    assert bg.join(10)
    error = get_status(client, task_id)["error"]
    assert error["type"] == f"{__name__}.SecretError"
    assert error["message"] == "password=hunter2"
    assert error["traceback"].startswith("Traceback")
    assert 'raise SecretError("password=hunter2")' in error["traceback"]


def test_ids_are_random(app: Flask, client: FlaskClient, bg: BGTasks) -> None:
    @bg.task
    def nothing() -> None:
        pass

    ids = [submit(app, nothing) for _ in range(100)]
    assert len(set(ids)) == 100
    # Two random ids share 4 leading characters once in 64**4 = 16 million.
    for before, after in itertools.pairwise(ids):
        assert before[:4] != after[:4], (before, after)
    assert bg.join(10)
    assert get_status(client, ids[-1])["id"] == ids[-1]


# -- cancel -----------------------------------------------------------------


def ask_cancel(client: FlaskClient, task_id: str, method: str, **headers: str) -> TestResponse:
    path = f"/tasks/{task_id}/cancel" if method == "POST" else f"/tasks/{task_id}"
    return client.open(path, method=method, headers={**HEADERS, **headers})


@both_stores
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_cancel_queued_task(
    make_api_app: t.Callable[..., Flask], bg: BGTasks, gate: Gate, method: str
) -> None:
    app = make_api_app(BGTASKS_MAX_WORKERS=1)
    client = app.test_client()
    ran = []

    @bg.task
    def busy() -> None:
        gate()

    @bg.task
    def queued() -> None:
        ran.append(True)

    submit(app, busy)
    gate.wait_entered()
    task_id = submit(app, queued)
    response = ask_cancel(client, task_id, method)
    assert response.status_code == 202
    assert response.headers["Cache-Control"] == "no-store"
    assert "Retry-After" not in response.headers
    body = response.get_json()
    assert set(body) == STATUS_KEYS
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    assert body["started_at"] is None
    assert "error" not in body  # it never ran, so nothing failed
    gate.open()
    assert bg.join(10)
    assert ran == []
    assert get_status(client, task_id)["status"] == "cancelled"


@both_stores
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_cancel_running_task(
    app: Flask,
    client: FlaskClient,
    bg: BGTasks,
    held: Task[[], str],
    gate: Gate,
    method: str,
) -> None:
    task_id = submit(app, held)
    gate.wait_entered()
    response = ask_cancel(client, task_id, method)
    assert response.status_code == 202
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert (body["status"], body["cancel_requested"]) == ("running", True)
    # Still running until the task looks, which it does once let go.
    assert get_status(client, task_id)["status"] == "running"
    gate.open()
    assert bg.join(10)
    body = get_status(client, task_id)
    assert (body["status"], body["cancel_requested"]) == ("cancelled", True)
    assert body["error"] == {"type": "flask_bgtasks.TaskCancelled"}


@both_stores
def test_cancel_finished_task_changes_nothing(
    app: Flask, client: FlaskClient, bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    gate.open()
    task_id = submit(app, held)
    assert bg.join(10)
    response = ask_cancel(client, task_id, "POST")
    assert response.status_code == 202
    assert response.get_json()["status"] == "succeeded"
    assert response.get_json()["cancel_requested"] is False
    assert get_status(client, task_id)["status"] == "succeeded"


@both_stores
@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Requested-With": ""}, id="no-requested-with"),
        pytest.param({"Sec-Fetch-Site": "cross-site"}, id="cross-site"),
        pytest.param({"Sec-Fetch-Site": "same-site"}, id="same-site"),
        pytest.param({"Origin": "http://evil.example"}, id="foreign-origin"),
        pytest.param({"Origin": "http://localhost.evil.example"}, id="lookalike-origin"),
        pytest.param({"Origin": "null"}, id="null-origin"),
    ],
)
def test_cancel_refused_from_other_sites(
    app: Flask,
    client: FlaskClient,
    bg: BGTasks,
    held: Task[[], str],
    gate: Gate,
    method: str,
    headers: dict[str, str],
) -> None:
    task_id = submit(app, held)
    gate.wait_entered()
    response = ask_cancel(client, task_id, method, **headers)
    assert response.status_code == 403
    assert response.headers["Cache-Control"] == "no-store"
    error = response.get_json()["error"]
    assert error["code"] == 403
    if not headers.get("X-Requested-With", "x"):
        assert "X-Requested-With" in error["message"]
    assert get_status(client, task_id)["cancel_requested"] is False
    gate.open()
    assert bg.join(10)
    assert get_status(client, task_id)["status"] == "succeeded"


def test_cancel_without_any_header_is_refused(
    app: Flask, client: FlaskClient, bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    # As a plain HTML form of another site would send it.
    task_id = submit(app, held)
    response = client.post(f"/tasks/{task_id}/cancel", data={"x": "1"})
    assert response.status_code == 403
    assert response.is_json
    gate.open()
    assert bg.join(10)
    assert get_status(client, task_id)["status"] == "succeeded"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Sec-Fetch-Site": "same-origin"}, id="same-origin"),
        pytest.param({"Sec-Fetch-Site": "none"}, id="typed-by-user"),
        pytest.param({"Origin": "http://localhost"}, id="own-origin"),
        pytest.param({}, id="no-browser-headers"),
    ],
)
def test_cancel_from_own_site(
    app: Flask,
    client: FlaskClient,
    bg: BGTasks,
    held: Task[[], str],
    gate: Gate,
    headers: dict[str, str],
) -> None:
    task_id = submit(app, held)
    gate.wait_entered()
    assert ask_cancel(client, task_id, "POST", **headers).status_code == 202
    gate.open()
    assert bg.join(10)
    assert get_status(client, task_id)["status"] == "cancelled"


@both_stores
def test_get_never_changes_state(
    make_api_app: t.Callable[..., Flask], bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    app = make_api_app(BGTASKS_MAX_WORKERS=1)
    client = app.test_client()
    running = submit(app, held)
    gate.wait_entered()
    queued = submit(app, held)
    for task_id in running, queued:
        for _ in range(2):
            client.get(f"/tasks/{task_id}", headers=HEADERS)
            client.head(f"/tasks/{task_id}", headers=HEADERS)
            assert client.get(f"/tasks/{task_id}/cancel", headers=HEADERS).status_code == 405
    assert get_status(client, running)["cancel_requested"] is False
    assert get_status(client, queued)["status"] == "queued"
    gate.open()
    assert bg.join(10)
    assert [get_status(client, task_id)["status"] for task_id in (running, queued)] == [
        "succeeded",
        "succeeded",
    ]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("PUT", ""),
        ("PATCH", ""),
        ("POST", ""),
        ("GET", "/cancel"),
        ("PUT", "/cancel"),
        ("DELETE", "/cancel"),
        ("POST", "/events"),
        ("POST", "/result"),
    ],
)
def test_wrong_method(
    app: Flask,
    client: FlaskClient,
    bg: BGTasks,
    held: Task[[], str],
    gate: Gate,
    method: str,
    suffix: str,
) -> None:
    gate.open()
    task_id = submit(app, held)
    for some_id in task_id, UNKNOWN:
        response = client.open(f"/tasks/{some_id}{suffix}", method=method, headers=HEADERS)
        assert response.status_code == 405
    assert bg.join(10)
    assert get_status(client, task_id)["status"] == "succeeded"


# -- authorization and unknown ids --------------------------------------------


@both_stores
def test_authorize_sees_record_and_request(
    make_app: t.Callable[..., Flask], bg: BGTasks, store: str, gate: Gate
) -> None:
    calls: list[tuple[TaskRecord, str, str | None]] = []

    @bg.authorize
    def may_see(record: TaskRecord) -> bool:
        calls.append((record, request.path, request.headers.get("X-Client")))
        return bool(record.kwargs and record.kwargs.get("user") == session.get("user"))

    app = make_app(BGTASKS_API=True, BGTASKS_STORE=store, SECRET_KEY="test")

    @bg.task
    def export(user: str) -> None:
        gate()

    @app.post("/exports")
    def start() -> Json:
        return {"id": export.submit(user=session["user"]).id}

    alice, bob = app.test_client(), app.test_client()
    with alice.session_transaction() as sess:
        sess["user"] = "alice"
    with bob.session_transaction() as sess:
        sess["user"] = "bob"
    task_id = alice.post("/exports").get_json()["id"]

    assert alice.get(f"/tasks/{task_id}", headers={"X-Client": "a"}).status_code == 200
    record, path, header = calls[-1]
    assert isinstance(record, TaskRecord)
    assert (record.id, record.name, record.kwargs) == (task_id, export.name, {"user": "alice"})
    assert (path, header) == (f"/tasks/{task_id}", "a")

    unknown = bob.get(f"/tasks/{UNKNOWN}")
    assert_not_found(bob.get(f"/tasks/{task_id}"), unknown)
    assert_not_found(bob.post(f"/tasks/{task_id}/cancel", headers=HEADERS), unknown)
    assert_not_found(bob.delete(f"/tasks/{task_id}", headers=HEADERS), unknown)
    assert_not_found(bob.get(f"/tasks/{task_id}/events"), unknown)
    assert alice.get(f"/tasks/{task_id}").get_json()["cancel_requested"] is False
    gate.open()
    assert bg.join(10)
    assert alice.get(f"/tasks/{task_id}").get_json()["status"] == "succeeded"


@both_stores
@pytest.mark.parametrize("suffix", ["", "/events", "/result"])
def test_refused_task_answers_as_unknown_id(
    app: Flask,
    client: FlaskClient,
    bg: BGTasks,
    held: Task[[], str],
    gate: Gate,
    denied: set[str],
    suffix: str,
) -> None:
    task_id = submit(app, held)
    denied.add(task_id)
    refused = client.get(f"/tasks/{task_id}{suffix}")
    unknown = client.get(f"/tasks/{UNKNOWN}{suffix}")
    assert refused.status_code == unknown.status_code == 404
    assert refused.data == unknown.data
    assert refused.headers == unknown.headers
    assert unknown.get_json() == {"error": {"code": 404, "message": "No task with this id."}}
    gate.open()
    assert bg.join(10)


@both_stores
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_refused_task_is_not_cancelled(
    app: Flask,
    client: FlaskClient,
    bg: BGTasks,
    held: Task[[], str],
    gate: Gate,
    denied: set[str],
    method: str,
) -> None:
    task_id = submit(app, held)
    gate.wait_entered()
    denied.add(task_id)
    refused = ask_cancel(client, task_id, method)
    unknown = ask_cancel(client, UNKNOWN, method)
    assert refused.status_code == unknown.status_code == 404
    assert (refused.data, refused.headers) == (unknown.data, unknown.headers)
    denied.clear()
    assert get_status(client, task_id)["cancel_requested"] is False
    gate.open()
    assert bg.join(10)
    assert get_status(client, task_id)["status"] == "succeeded"


def test_refused_task_has_the_headers_of_unknown_id_when_authorize_reads_session(
    make_app: t.Callable[..., Flask], bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    @bg.authorize
    def may_see(record: TaskRecord) -> bool:
        return session.get("user") == "admin"

    app = make_app(BGTASKS_API=True, SECRET_KEY="test")
    client = app.test_client()
    gate.open()
    task_id = submit(app, held)
    assert bg.join(10)
    refused = client.get(f"/tasks/{task_id}")
    unknown = client.get(f"/tasks/{UNKNOWN}")
    assert refused.data == unknown.data
    assert refused.headers == unknown.headers


#: Ids that no task can have, each a single path segment.
MALFORMED = {
    "unknown": UNKNOWN,
    "too-short": "abc",
    "nul": "%00",
    "nul-in-id": "A" * 11 + "%00" + "A" * 10,
    "unicode": "%C3%A9" * 22,
    "unicode-raw": "é" * 22,
    "spaces": "%20" * 22,
    "dots": "." * 22,
    "sql": "x%27%20OR%20%271%27=%271",
    "huge": "A" * 10_000,
    "just-too-long": "A" * 65,
}


@both_stores
@pytest.mark.parametrize("task_id", list(MALFORMED.values()), ids=list(MALFORMED))
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("POST", "/cancel"), ("DELETE", "")],
)
def test_unknown_or_malformed_id(
    app: Flask, client: FlaskClient, task_id: str, method: str, suffix: str
) -> None:
    unknown = client.get(f"/tasks/{UNKNOWN}")
    response = client.open(f"/tasks/{task_id}{suffix}", method=method, headers=HEADERS)
    assert_not_found(response, unknown)


@pytest.mark.parametrize("task_id", ["../x", "a/b", "%2e%2e%2fx", "x/"])
def test_id_with_slash_answers_json_404(app: Flask, client: FlaskClient, task_id: str) -> None:
    unknown = client.get(f"/tasks/{UNKNOWN}")
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 404  # never a 500; this part holds
    assert_not_found(response, unknown)


@both_stores
def test_expired_task_answers_as_unknown_id(
    make_api_app: t.Callable[..., Flask], bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    app = make_api_app(BGTASKS_RESULT_TTL=0)
    client = app.test_client()
    task_id = submit(app, held)
    assert get_status(client, task_id)["status"] in ("queued", "running")
    gate.open()
    assert bg.join(10)
    unknown = client.get(f"/tasks/{UNKNOWN}")
    for suffix in "", "/events", "/result":
        assert_not_found(client.get(f"/tasks/{task_id}{suffix}"), unknown)
    assert_not_found(ask_cancel(client, task_id, "POST"), unknown)


# -- Server-Sent Events ---------------------------------------------------------


@both_stores
@pytest.mark.timeout(20)
def test_events_follow_progress_to_the_end(
    app: Flask, client: FlaskClient, bg: BGTasks, gate: Gate
) -> None:
    # Step n reports progress n, then waits until the test has seen it.
    seen_step = [threading.Event() for _ in range(4)]

    @bg.task
    def report() -> str:
        gate()
        for step in 1, 2, 3:
            current_task.set_progress(step, 3, f"page {step}")
            assert seen_step[step].wait(10)
        return "ok"

    task_id = submit(app, report)
    gate.wait_entered()
    stream = client.get(f"/tasks/{task_id}/events", buffered=False)
    try:
        assert stream.status_code == 200
        assert stream.mimetype == "text/event-stream"
        assert stream.headers["Cache-Control"] == "no-store"
        seen = []
        for body in read_events(stream):
            assert body["id"] == task_id
            seen.append((body["status"], progress_of(body)))
            if body["progress"] is None:
                gate.open()
            else:
                assert body["progress"]["message"] == f"page {body['progress']['current']}"
                seen_step[body["progress"]["current"]].set()
        # The stream ended by itself, and with it the request it kept.
        assert not flask.has_request_context()
    finally:
        stream.close()
        gate.open()
        for event in seen_step:
            event.set()
    assert seen == [
        ("running", None),
        ("running", 1),
        ("running", 2),
        ("running", 3),
        ("succeeded", 3),
    ]
    assert bg.join(10)


@both_stores
@pytest.mark.timeout(20)
def test_events_show_cancel(
    app: Flask, client: FlaskClient, bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    task_id = submit(app, held)
    gate.wait_entered()
    stream = client.get(f"/tasks/{task_id}/events", buffered=False)
    try:
        seen = []
        for body in read_events(stream):
            seen.append((body["status"], body["cancel_requested"]))
            if len(seen) == 1:
                assert ask_cancel(client, task_id, "POST").status_code == 202
            elif len(seen) == 2:
                gate.open()
    finally:
        stream.close()
        gate.open()
    assert seen == [("running", False), ("running", True), ("cancelled", True)]
    assert bg.join(10)


@both_stores
def test_events_of_finished_task(
    app: Flask, client: FlaskClient, bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    gate.open()
    task_id = submit(app, held)
    assert bg.join(10)
    stream = client.get(f"/tasks/{task_id}/events", buffered=False)
    try:
        bodies = list(read_events(stream))
    finally:
        stream.close()
    assert [body["status"] for body in bodies] == ["succeeded"]
    assert bodies[0] == get_status(client, task_id)


@pytest.mark.timeout(20)
def test_events_end_when_the_client_leaves(
    app: Flask, client: FlaskClient, bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    task_id = submit(app, held)
    gate.wait_entered()
    stream = client.get(f"/tasks/{task_id}/events", buffered=False)
    try:
        assert next(read_events(stream))["status"] == "running"
        assert flask.has_request_context()  # kept by the open stream
    finally:
        stream.close()
    # The generator was closed, and let the request go.
    assert not flask.has_request_context()
    with pytest.raises(StopIteration):
        next(iter(stream.response))
    gate.open()
    assert bg.join(10)


@pytest.mark.timeout(20)
def test_events_end_when_the_record_expires(
    make_api_app: t.Callable[..., Flask],
    bg: BGTasks,
    held: Task[[], str],
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A keep-alive on every read without news, so that a stream that does
    # not end shows it at once rather than after 15 s of silence.
    monkeypatch.setattr(_http, "EVENTS_KEEPALIVE", 0.0)
    app = make_api_app(BGTASKS_RESULT_TTL=0)
    client = app.test_client()
    task_id = submit(app, held)
    gate.wait_entered()
    stream = client.get(f"/tasks/{task_id}/events", buffered=False)
    try:
        chunks = iter(stream.response)
        assert b'"status": "running"' in next(chunks)
        gate.open()
        assert bg.join(10)  # finished, and expired at once
        rest = []
        for chunk in chunks:
            rest.append(chunk)
            if len(rest) == 3:
                break
    finally:
        stream.close()
    assert b": keep-alive\n\n" not in rest


# -- background views ---------------------------------------------------------


@both_stores
def test_background_view(app: Flask, client: FlaskClient, bg: BGTasks, gate: Gate) -> None:
    @app.post("/reports/<int:year>")
    @bg.background_view
    def make_report(year: int) -> tuple[flask.Response, int, dict[str, str]]:
        gate()
        return jsonify(year=year, rows=3), 201, {"X-Report": "q1"}

    started = client.post("/reports/2024")
    # 202 while the view is still held at the gate: it answered at once.
    assert started.status_code == 202
    assert started.headers["Cache-Control"] == "no-store"
    body = started.get_json()
    task_id = body["id"]
    assert body == {
        "id": task_id,
        "status_url": f"/tasks/{task_id}",
        "result_url": f"/tasks/{task_id}/result",
    }
    assert started.headers["Location"] == body["status_url"]

    gate.wait_entered()
    pending = client.get(body["result_url"])
    assert pending.status_code == 202
    assert pending.headers["Retry-After"] == "1"
    assert pending.headers["Cache-Control"] == "no-store"
    assert pending.get_json()["status"] == "running"
    assert pending.get_json()["links"]["result"] == body["result_url"]

    gate.open()
    assert bg.join(10)
    status = get_status(client, task_id)
    assert status["status"] == "succeeded"
    assert status["links"]["result"] == body["result_url"]
    assert "result" not in status
    done = client.get(body["result_url"])
    assert done.status_code == 201
    assert done.headers["X-Report"] == "q1"
    assert done.mimetype == "application/json"
    assert done.get_json() == {"year": 2024, "rows": 3}
    # Answered again, the same.
    # One user's response: no shared cache may keep it.
    assert done.headers["Cache-Control"] == "private, no-store"
    # Answered again, the same.
    assert client.get(body["result_url"]).data == done.data


def test_background_view_keeps_its_cache_control(
    app: Flask, client: FlaskClient, bg: BGTasks
) -> None:
    @app.post("/public")
    @bg.background_view
    def public() -> tuple[str, dict[str, str]]:
        return "same for all", {"Cache-Control": "public, max-age=60"}

    started = client.post("/public")
    assert bg.join(10)
    result = client.get(started.get_json()["result_url"])
    assert result.headers.getlist("Cache-Control") == ["public, max-age=60"]
    assert result.data == b"same for all"


def test_background_view_record_has_url_variables(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    asked: list[TaskRecord] = []

    @bg.authorize
    def may_see(record: TaskRecord) -> bool:
        asked.append(record)
        return True

    app = make_app(BGTASKS_API=True)

    @app.post("/exports/<int:year>")
    @bg.background_view
    def export_orders(year: int) -> str:
        return f"orders of {year}"

    client = app.test_client()
    started = client.post("/exports/2024?format=csv").get_json()
    assert bg.join(10)
    assert client.get(started["result_url"]).data == b"orders of 2024"
    assert {record.id for record in asked} == {started["id"]}
    assert asked[-1].name == f"{__name__}.{export_orders.__qualname__}"
    assert asked[-1].kwargs == {"year": 2024}


@pytest.mark.parametrize("body", ["json", "form"])
def test_background_view_sees_the_request(
    app: Flask, client: FlaskClient, bg: BGTasks, body: str
) -> None:
    @app.route("/orders/<int:order>/<name>", methods=["POST", "PUT"])
    @bg.background_view
    def order(order: int, name: str) -> Json:
        assert flask.has_request_context()
        return {
            "order": order,
            "name": name,
            "method": request.method,
            "path": request.path,
            "args": request.args.to_dict(flat=False),
            "json": request.get_json(silent=True),
            "form": request.form.to_dict(flat=False),
            "header": request.headers.get("X-Trace"),
            "url": flask.url_for("order", order=order, name=name, _external=True),
        }

    payload: dict[str, t.Any] = (
        {"json": {"items": [1, 2]}} if body == "json" else {"data": {"note": ["a", "b"]}}
    )
    started = client.put(
        "/orders/7/b%C3%BCcher?sort=asc&tag=x&tag=y",
        headers={"X-Trace": "t-1"},
        **payload,
    )
    assert started.status_code == 202
    assert bg.join(10)
    seen = client.get(started.get_json()["result_url"]).get_json()
    assert seen == {
        "order": 7,
        "name": "bücher",
        "method": "PUT",
        "path": "/orders/7/bücher",
        "args": {"sort": ["asc"], "tag": ["x", "y"]},
        "json": {"items": [1, 2]} if body == "json" else None,
        "form": {} if body == "json" else {"note": ["a", "b"]},
        "header": "t-1",
        "url": "http://localhost/orders/7/b%C3%BCcher",
    }


@both_stores
def test_background_view_that_raises(
    app: Flask, client: FlaskClient, bg: BGTasks, caplog: pytest.LogCaptureFixture
) -> None:
    @app.post("/explode")
    @bg.background_view
    def explode() -> str:
        raise RuntimeError("db password=hunter2 at /srv/app/secret.py")

    started = client.post("/explode")
    assert started.status_code == 202
    assert bg.join(10)
    result = client.get(started.get_json()["result_url"])
    assert result.status_code == 500
    assert result.get_json() == {
        "error": {"code": 500, "message": "The request failed on the server."}
    }
    for secret in b"hunter2", b"secret.py", b"Traceback", b"RuntimeError":
        assert secret not in result.data
    status = get_status(client, started.get_json()["id"])
    assert (status["status"], status["error"]) == ("failed", {"type": "RuntimeError"})
    [logged] = [
        record for record in caplog.records if record.name == "flask_bgtasks" and record.exc_info
    ]
    assert logged.levelname == "ERROR"
    assert logged.exc_info is not None
    assert isinstance(logged.exc_info[1], RuntimeError)
    assert "hunter2" in str(logged.exc_info[1])
    assert logged.exc_text is not None and "Traceback" in logged.exc_text


def test_background_view_that_sends_a_file(app: Flask, client: FlaskClient, bg: BGTasks) -> None:
    @app.post("/export")
    @bg.background_view
    def export() -> flask.Response:
        report = io.BytesIO(b"%PDF-1.4 report")
        return flask.send_file(report, mimetype="application/pdf", download_name="report.pdf")

    started = client.post("/export")
    assert bg.join(10)
    result = client.get(started.get_json()["result_url"])
    assert result.status_code == 200
    assert result.mimetype == "application/pdf"
    assert result.data == b"%PDF-1.4 report"


@pytest.mark.parametrize("code", [404, 403, 409])
def test_background_view_that_aborts(
    app: Flask, client: FlaskClient, bg: BGTasks, code: int
) -> None:
    @app.post("/missing")
    @bg.background_view
    def missing() -> str:
        abort(code)

    started = client.post("/missing")
    assert started.status_code == 202
    assert bg.join(10)
    assert client.get(started.get_json()["result_url"]).status_code == code
    assert get_status(client, started.get_json()["id"])["status"] == "succeeded"


def test_background_view_abort_uses_the_apps_error_handler(
    app: Flask, client: FlaskClient, bg: BGTasks
) -> None:
    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[Json, int]:
        return {"problem": "no such order"}, 404

    @app.post("/orders/<int:order>")
    @bg.background_view
    def order(order: int) -> str:
        abort(404)

    started = client.post("/orders/3").get_json()
    assert bg.join(10)
    result = client.get(started["result_url"])
    assert result.status_code == 404
    assert result.get_json() == {"problem": "no such order"}
    # The API's own 404 stays the API's.
    assert client.get(f"/tasks/{UNKNOWN}").get_json()["error"]["code"] == 404


def test_background_view_cancelled_while_queued(
    make_api_app: t.Callable[..., Flask], bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    app = make_api_app(BGTASKS_MAX_WORKERS=1)
    client = app.test_client()
    ran = []

    @app.post("/slow")
    @bg.background_view
    def slow() -> str:
        ran.append(True)
        return "done"

    submit(app, held)
    gate.wait_entered()
    started = client.post("/slow").get_json()
    assert ask_cancel(client, started["id"], "POST").get_json()["status"] == "cancelled"
    gate.open()
    assert bg.join(10)
    result = client.get(started["result_url"])
    assert result.status_code == 409
    assert result.get_json()["error"]["code"] == 409
    assert ran == []


def test_background_view_needs_the_api(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    app = make_app()  # TESTING: the error reaches the test
    ran = []

    @app.post("/reports")
    @bg.background_view
    def report() -> str:
        ran.append(True)
        return "done"

    with pytest.raises(UsageError, match="BGTASKS_API = True"):
        app.test_client().post("/reports")
    assert bg.join(10)
    assert ran == []


def test_result_of_a_plain_task_is_404(
    app: Flask, client: FlaskClient, bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    gate.open()
    task_id = submit(app, held)
    with app.app_context():
        other_id = bg.submit(int).id
    assert bg.join(10)
    unknown = client.get(f"/tasks/{UNKNOWN}/result")
    assert_not_found(client.get(f"/tasks/{task_id}/result"), unknown)
    assert_not_found(client.get(f"/tasks/{other_id}/result"), unknown)
    assert "result" not in get_status(client, task_id)["links"]


# -- SQLite: another app on the same file, as another process ------------------


@pytest.fixture
def two_apps(make_api_app: t.Callable[..., Flask]) -> tuple[Flask, Flask]:
    """An app that runs the tasks, on one worker, and a second app on the
    same store that only answers the API, as another process would."""
    return make_api_app("worker", BGTASKS_MAX_WORKERS=1), make_api_app("other")


def start_in_request(app: Flask, *tasks: Task[[], t.Any]) -> list[str]:
    """Submit the tasks in a request to ``app``, which commits its writes
    before its response leaves; return their ids."""

    def start() -> Json:
        return {"ids": [task.submit().id for task in tasks]}

    app.add_url_rule("/start", view_func=start, methods=["POST"])
    response = app.test_client().post("/start")
    assert response.status_code == 200
    return t.cast(list[str], response.get_json()["ids"])


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_other_app_cancels_a_queued_task(
    two_apps: tuple[Flask, Flask], bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    worker, other = two_apps
    ran = []

    @bg.task
    def queued() -> None:
        ran.append(True)

    ids = start_in_request(worker, held, queued)
    running_id, queued_id = ids
    gate.wait_entered()
    bg.store(worker).flush()  # the start is written behind
    client = other.test_client()
    assert get_status(client, running_id)["status"] == "running"
    assert get_status(client, queued_id)["status"] == "queued"
    response = ask_cancel(client, queued_id, "POST")
    assert response.status_code == 202
    assert response.get_json()["status"] == "cancelled"
    gate.open()
    assert bg.join(10)
    assert ran == []
    for app in worker, other:
        statuses = [get_status(app.test_client(), task_id)["status"] for task_id in ids]
        assert statuses == ["succeeded", "cancelled"]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_other_app_cancels_a_running_task(
    two_apps: tuple[Flask, Flask], bg: BGTasks, held: Task[[], str], gate: Gate
) -> None:
    worker, other = two_apps
    [task_id] = start_in_request(worker, held)
    gate.wait_entered()
    bg.store(worker).flush()  # the start is written behind
    client = other.test_client()
    response = ask_cancel(client, task_id, "DELETE")
    assert response.status_code == 202
    body = response.get_json()
    assert (body["status"], body["cancel_requested"]) == ("running", True)
    gate.open()  # the task sees the request in the store, and stops
    assert bg.join(10)
    body = get_status(client, task_id)
    assert body["status"] == "cancelled"
    assert body["error"] == {"type": "flask_bgtasks.TaskCancelled"}
    assert get_status(worker.test_client(), task_id)["status"] == "cancelled"


@both_stores
def test_background_view_user_lets_only_that_user_see_the_result(
    make_app: t.Callable[..., Flask], bg: BGTasks, store: str
) -> None:
    @bg.authorize
    def same_user(record: TaskRecord) -> bool:
        user = flask.session.get("user")
        return user is not None and user == (record.kwargs or {}).get("user")

    app = make_app(BGTASKS_API=True, BGTASKS_STORE=store, SECRET_KEY="test")

    @app.post("/exports/<kind>")
    @bg.background_view(user=lambda: flask.session.get("user"))
    def export(kind: str) -> str:
        return f"{kind} export for {flask.session.get('user')}"

    @app.post("/login/<user>")
    def login(user: str) -> str:
        flask.session["user"] = user
        return ""

    alice, bob = app.test_client(), app.test_client()
    alice.post("/login/alice")
    bob.post("/login/bob")
    started = alice.post("/exports/csv").get_json()
    assert bg.join(5)
    mine = alice.get(started["result_url"])
    assert (mine.status_code, mine.data) == (200, b"csv export for alice")
    theirs, unknown = bob.get(started["result_url"]), bob.get(f"/tasks/{UNKNOWN}/result")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.data == unknown.data
    assert bob.get(started["status_url"]).status_code == 404


def test_background_view_user_and_a_url_variable_named_user(
    make_api_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_api_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.post("/by/<user>")
    @bg.background_view(user=lambda: "someone")
    def by(user: str) -> str:
        return user

    with pytest.raises(UsageError, match="URL variable named 'user'"):
        app.test_client().post("/by/x")


def test_background_view_owner_is_the_deprecated_name_of_user(
    make_api_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_api_app()

    with pytest.warns(DeprecationWarning, match="use user="):

        @app.post("/old")
        @bg.background_view(owner=lambda: "someone")
        def old() -> str:
            return "done"

    started = app.test_client().post("/old").get_json()
    assert bg.join(5)
    with app.app_context():
        record = bg.store().record(started["id"])
    assert record is not None and record.kwargs == {"owner": "someone"}
    with pytest.raises(TypeError, match="user= or owner=, not both"):
        bg.background_view(user=lambda: 1, owner=lambda: 2)


# -- the documentation's example ----------------------------------------------

HTTP_PAGE = Path(__file__).parent.parent / "docs" / "http.rst"


def first_python_block(page: Path) -> str:
    """The first ``.. code-block:: python`` of a reST page, as written."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = lines.index(".. code-block:: python") + 1
    block = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n") + "\n"


def test_http_page_first_example_authorizes_both_kinds_of_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first example of docs/http.rst, run as written: its callback lets
    the user who started a task, and only that user, see it: a task and a
    background view alike."""
    source = first_python_block(HTTP_PAGE)
    assert "@bg.background_view(user=" in source
    page = types.ModuleType("http_page_example")
    page.__file__ = str(HTTP_PAGE)
    monkeypatch.setitem(sys.modules, page.__name__, page)
    exec(compile(source, str(HTTP_PAGE), "exec"), page.__dict__)
    app: Flask = page.app
    bg: BGTasks = page.bg
    try:
        alice, bob, visitor = app.test_client(), app.test_client(), app.test_client()
        for client, user_id in (alice, 1), (bob, 2):
            with client.session_transaction() as session:
                session["user_id"] = user_id

        export = alice.post("/exports/2024")
        assert export.status_code == 202
        started = export.get_json()
        assert export.headers["Location"] == started["status_url"]
        report = alice.post("/reports")
        assert report.status_code == 202
        report_url = report.get_json()["status_url"]
        assert bg.join(10)

        status = alice.get(started["status_url"])
        assert (status.status_code, status.get_json()["status"]) == (200, "succeeded")
        result = alice.get(started["result_url"])
        assert (result.status_code, result.get_json()) == (
            200,
            {"year": 2024, "url": "/exports/2024.csv"},
        )
        status = alice.get(report_url)
        assert (status.status_code, status.get_json()["result"]) == (200, {"url": "/reports/1.pdf"})
        for other in bob, visitor:
            for url in started["status_url"], started["result_url"], report_url:
                assert other.get(url).status_code == 404, url
    finally:
        bg.shutdown()
