from __future__ import annotations

import collections
import contextvars
import threading
import typing as t

import pytest
from flask import Flask, current_app, g, request, url_for

from flask_bgtasks import BGTasks, TaskResult, UsageError, current_task

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


def task_id_or_none() -> str | None:
    """The running task's id; None in the test's own app contexts."""
    try:
        return current_task.id
    except UsageError:
        return None


def test_task_gets_its_own_fresh_app_context(app: Flask, bg: BGTasks) -> None:
    @bg.task
    def inspect() -> tuple[bool, bool, str, list[str]]:
        g.mine = True
        return (
            current_app._get_current_object() is app,  # type: ignore[attr-defined]
            "secret" in g,
            current_app.name,
            sorted(vars(g)),
        )

    with app.app_context():
        g.secret = "per-request resource"
        is_app, sees_secret, name, g_names = inspect.submit().result(5)
        assert g.secret == "per-request resource"
        assert "mine" not in g
    assert is_app and not sees_secret
    assert name == "test_app"
    assert g_names == ["mine"]


def test_teardown_runs_exactly_once_per_task(app: Flask, bg: BGTasks) -> None:
    torn_down: list[str] = []
    lock = threading.Lock()

    @app.teardown_appcontext
    def teardown(exc: BaseException | None) -> None:
        task_id = task_id_or_none()
        if task_id is not None:
            with lock:
                torn_down.append(task_id)

    with app.app_context():
        ids = [bg.submit(int).id for _ in range(50)]
    assert bg.join(5)
    assert collections.Counter(torn_down) == collections.Counter(ids)


def test_teardown_sees_the_task_exception(app: Flask, bg: BGTasks) -> None:
    seen: list[BaseException | None] = []

    @app.teardown_appcontext
    def teardown(exc: BaseException | None) -> None:
        if task_id_or_none() is not None:
            seen.append(exc)

    def fail() -> None:
        raise ValueError("boom")

    with app.app_context():
        result = bg.submit(fail)
    assert bg.join(5)
    assert seen == [result.exception(0)]


def test_fresh_contextvars_context(app: Flask, bg: BGTasks) -> None:
    def read_and_set() -> str | None:
        value = request_id.get(None)
        request_id.set("set by task")
        return value

    with app.app_context():
        request_id.set("from the submitter")
        assert bg.submit(read_and_set).result(5) is None
        assert bg.submit(read_and_set).result(5) is None  # nothing left by the first
        assert request_id.get() == "from the submitter"


def test_url_for_with_server_name(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    app = make_app(SERVER_NAME="example.test", PREFERRED_URL_SCHEME="https")

    @app.get("/reports/<int:n>")
    def report(n: int) -> str:
        return str(n)

    @bg.task
    def link(n: int) -> str:
        return url_for("report", n=n, _external=True)

    with app.app_context():
        assert link.submit(3).result(5) == "https://example.test/reports/3"


def test_copy_g_is_opt_in(app: Flask, bg: BGTasks) -> None:
    @bg.task(copy_g=["user_id", "missing"])
    def who() -> tuple[t.Any, bool, bool]:
        return g.user_id, "missing" in g, "db" in g

    with app.app_context():
        g.user_id = 7
        g.db = object()
        assert who.submit().result(5) == (7, False, False)


def test_copy_request_gives_a_read_only_snapshot(app: Flask, bg: BGTasks) -> None:
    @app.route("/orders/<int:order>", methods=["POST"])
    def order(order: int) -> dict[str, t.Any]:
        # The view reads the form before submitting: the body is consumed.
        assert request.form["note"] == "rush"
        result = snapshot.submit()
        return {"task": result.result(5), "view_request": id(request._get_current_object())}  # type: ignore[attr-defined]

    @app.post("/json")
    def json_view() -> dict[str, t.Any]:
        return {"task": snapshot.submit().result(5)}

    @bg.task(copy_request=True)
    def snapshot() -> dict[str, t.Any]:
        return {
            "method": request.method,
            "path": request.path,
            "args": request.args.to_dict(flat=False),
            "header": request.headers.get("X-Trace"),
            "form": request.form.to_dict(),
            "json": request.get_json(silent=True),
            "url": url_for("order", order=5, _external=True),
            "request": id(request._get_current_object()),  # type: ignore[attr-defined]
            "live_request_in_environ": "werkzeug.request" in request.environ
            and request.environ["werkzeug.request"] is not request._get_current_object(),  # type: ignore[attr-defined]
        }

    client = app.test_client()
    response = client.post(
        "/orders/5?page=2&tag=a&tag=b",
        data={"note": "rush"},
        headers={"X-Trace": "abc"},
        base_url="http://shop.test",
    )
    data = response.json
    assert data is not None
    task = data["task"]
    assert task["method"] == "POST"
    assert task["path"] == "/orders/5"
    assert task["args"] == {"page": ["2"], "tag": ["a", "b"]}
    assert task["header"] == "abc"
    assert task["form"] == {"note": "rush"}
    assert task["url"] == "http://shop.test/orders/5"
    assert task["request"] != data["view_request"]  # never the live request
    assert task["live_request_in_environ"] is False

    task = client.post("/json", json={"a": [1, 2]}).json["task"]  # type: ignore[index]
    assert task["json"] == {"a": [1, 2]}


def test_copy_request_outside_a_request(app: Flask, bg: BGTasks) -> None:
    task = bg.task(copy_request=True)(int)
    with app.app_context(), pytest.raises(UsageError, match="submitted outside a request"):
        task.submit()


def test_thousand_tasks_from_concurrent_requests(
    make_app: t.Callable[..., Flask], bg: BGTasks
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=4, BGTASKS_QUEUE_SIZE=None)
    results: list[TaskResult[tuple[str, str, int]]] = []
    errors: list[BaseException] = []

    @bg.task(copy_request=True, copy_g=["n"])
    def echo() -> tuple[str, str, int]:
        return current_app.name, request.args["n"], g.n

    @app.post("/submit")
    def submit() -> tuple[str, int]:
        g.n = int(request.args["n"])
        result = echo.submit()
        results.append(result)
        return result.id, 202

    def client_thread(start: int) -> None:
        client = app.test_client()
        try:
            for n in range(start, start + 125):
                assert client.post(f"/submit?n={n}").status_code == 202
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client_thread, args=(i * 125,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert bg.join(30)
    assert len(results) == 1000
    values = sorted(result.result(0) for result in results)
    assert values == sorted(("test_app", str(n), n) for n in range(1000))


def test_flask_sqlalchemy_session_is_removed_after_each_task(
    make_app: t.Callable[..., Flask], bg: BGTasks, tmp_path: t.Any
) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    app = make_app(
        BGTASKS_MAX_WORKERS=3,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'tasks.db'}",
        SQLALCHEMY_ENGINE_OPTIONS={"poolclass": sqlalchemy.pool.QueuePool},
    )
    db = flask_sqlalchemy.SQLAlchemy(app)
    sessions: list[object] = []

    @bg.task
    def write(n: int) -> int:
        db.session.execute(sqlalchemy.text("INSERT INTO items (n) VALUES (:n)"), {"n": n})
        db.session.commit()
        sessions.append(db.session())
        # Left open on purpose: the task's teardown must clean up.
        return int(db.session.execute(sqlalchemy.text("SELECT count(*) FROM items")).scalar_one())

    with app.app_context():
        db.session.execute(sqlalchemy.text("CREATE TABLE items (n INTEGER)"))
        db.session.commit()
        db.session.remove()
        results = [write.submit(n) for n in range(30)]
        assert bg.join(10)
        assert sorted(result.result(0) for result in results)[-1] == 30
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert len({id(session) for session in sessions}) == 30  # a session per task
        db.engine.dispose()
