"""The task dashboard (``BGTASKS_DASHBOARD``): its config, its
authorization, its JSON, and the page itself in headless Chromium.

Tasks hold at a gate or at an :class:`threading.Event` per progress step,
so that what the page shows is fixed when the test looks at it; the browser
waits for the page (``expect``) instead of the test sleeping. The browser
test of live progress takes the docs' screenshot; ``UPDATE_SCREENSHOTS=1``
replaces it.
"""

from __future__ import annotations

import os
import threading
import typing as t
from pathlib import Path

import flask
import pytest
from flask import Flask, request
from werkzeug.serving import WSGIRequestHandler, make_server

from flask_bgtasks import BGTasks, ConfigError, ConfigTypeError, current_task
from tests.browser import browser_page, screenshot
from tests.servers import wait_for

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.conftest import Gate

SCREENSHOT = Path(__file__).parents[1] / "docs" / "_static" / "dashboard.png"
STEPS = 4
XHR = {"X-Requested-With": "test"}


class Dash(t.NamedTuple):
    app: Flask
    bg: BGTasks
    steps: list[threading.Event]


@pytest.fixture
def dash(bg: BGTasks, gate: Gate) -> t.Iterator[Dash]:
    """An app with the dashboard, for the user whose cookie says "admin".
    Tasks whose ``secret`` argument is true are hidden by ``@bg.authorize``.
    The default pool has one worker; "reports" has one too."""
    steps = [threading.Event() for _ in range(STEPS)]

    @bg.authorize_dashboard
    def is_admin() -> bool:
        return request.cookies.get("user") == "admin"

    @bg.authorize
    def may_see(record: t.Any) -> bool:
        return (record.kwargs or {}).get("secret") is not True

    @bg.task(name="mail.send_digest")
    def held(secret: bool = False) -> str:
        gate()
        return "sent"

    @bg.task(name="reports.build_pdf", pool="reports")
    def report(pages: int) -> str:
        for step in range(STEPS):
            current_task.set_progress(step, STEPS, f"Rendering page {step + 1} of {STEPS}")
            assert steps[step].wait(10), "The test never let the report go on."
        current_task.set_progress(STEPS, STEPS, "Done")
        return f"{pages} pages"

    @bg.task(name="billing.charge_card")
    def broken(invoice: int) -> None:
        raise ValueError(f"card declined for invoice {invoice}")

    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        BGTASKS_MAX_WORKERS=1,
        BGTASKS_POOLS={"reports": {"max_workers": 1}},
        BGTASKS_DASHBOARD=True,
    )
    bg.init_app(app)
    app.extensions["tasks"] = {"held": held, "report": report, "broken": broken}
    try:
        yield Dash(app, bg, steps)
    finally:
        gate.open()  # before bg's teardown waits for the tasks
        for step in steps:
            step.set()
        bg.shutdown()


@pytest.fixture
def admin(dash: Dash) -> flask.testing.FlaskClient:
    client = dash.app.test_client()
    client.set_cookie("user", "admin")
    return client


def submit(dash: Dash, name: str, *args: t.Any, **kwargs: t.Any) -> str:
    with dash.app.app_context():
        task_id: str = dash.app.extensions["tasks"][name].submit(*args, **kwargs).id
    return task_id


def status(dash: Dash, task_id: str) -> str:
    with dash.app.app_context():
        record = dash.bg.store().record(task_id)
    assert record is not None
    return record.status.value


def progress(dash: Dash, task_id: str) -> dict[str, t.Any] | None:
    record = dash.bg.store(dash.app).record(task_id)
    assert record is not None
    return record.progress


def wait_status(dash: Dash, task_id: str, wanted: str) -> None:
    wait_for(lambda: status(dash, task_id) == wanted, 10, f"task {task_id} to be {wanted}")


# -- config and authorization ------------------------------------------------


def test_dashboard_needs_its_authorization_callback(bg: BGTasks) -> None:
    app = Flask(__name__)
    app.config.update(BGTASKS_DASHBOARD=True)
    with pytest.raises(ConfigError, match=r"@bg\.authorize_dashboard"):
        bg.init_app(app)


def test_dashboard_is_off_by_default(app: Flask) -> None:
    assert app.config["BGTASKS_DASHBOARD"] is False
    assert app.config["BGTASKS_DASHBOARD_PREFIX"] == "/bgtasks"
    assert "bgtasks_dashboard" not in app.blueprints
    assert app.test_client().get("/bgtasks/").status_code == 404


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("BGTASKS_DASHBOARD", "yes", ConfigTypeError),
        ("BGTASKS_DASHBOARD_PREFIX", "admin/tasks", ConfigError),
        ("BGTASKS_DASHBOARD_PREFIX", "/admin/", ConfigError),
        ("BGTASKS_DASHBOARD_PREFIX", 3, ConfigTypeError),
    ],
)
def test_bad_dashboard_settings(bg: BGTasks, key: str, value: object, error: type) -> None:
    bg.authorize_dashboard(lambda: True)
    app = Flask(__name__)
    app.config.update({"BGTASKS_DASHBOARD": True, key: value})
    with pytest.raises(error, match=key):
        bg.init_app(app)


def test_prefix(bg: BGTasks) -> None:
    bg.authorize_dashboard(lambda: True)
    app = Flask(__name__)
    app.config.update(BGTASKS_DASHBOARD=True, BGTASKS_DASHBOARD_PREFIX="/admin/jobs")
    bg.init_app(app)
    client = app.test_client()
    assert client.get("/admin/jobs/").status_code == 200
    with client.get("/admin/jobs/static/dashboard.js") as asset:
        assert asset.status_code == 200
        assert asset.mimetype == "text/javascript"
    assert client.get("/bgtasks/").status_code == 404


def test_refused_user_gets_404_everywhere(dash: Dash) -> None:
    task_id = submit(dash, "broken", 1)
    client = dash.app.test_client()  # no cookie: not an admin
    for url in (
        "/bgtasks/",
        "/bgtasks/tasks.json",
        "/bgtasks/static/dashboard.js",
        "/bgtasks/static/dashboard.css",
        "/bgtasks/static/nothing.txt",
    ):
        assert client.get(url).status_code == 404, url
    for action in ("cancel", "retry"):
        response = client.post(f"/bgtasks/tasks/{task_id}/{action}", headers=XHR)
        assert response.status_code == 404


# -- the page and its JSON ---------------------------------------------------


def test_page_lists_tasks_newest_first(dash: Dash, admin: flask.testing.FlaskClient) -> None:
    first = submit(dash, "broken", 1)
    wait_status(dash, first, "failed")
    second = submit(dash, "held")
    response = admin.get("/bgtasks/")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    assert page.index(second) < page.index(first)
    assert "billing.charge_card" in page and "mail.send_digest" in page
    assert '<meta http-equiv="refresh" content="2">' in page
    assert "cdn" not in page.lower() and "https://" not in page


def test_json_endpoint(dash: Dash, admin: flask.testing.FlaskClient) -> None:
    task_id = submit(dash, "report", 3)
    wait_for(
        lambda: admin.get("/bgtasks/tasks.json").json["tasks"][0]["percent"] == 0,  # type: ignore[index]
        10,
        "the report's first progress",
    )
    dash.steps[0].set()
    wait_for(
        lambda: admin.get("/bgtasks/tasks.json").json["tasks"][0]["percent"] == 25,  # type: ignore[index]
        10,
        "the report's second step",
    )
    data = admin.get("/bgtasks/tasks.json").json
    assert data is not None
    (row,) = data["tasks"]
    assert row["id"] == task_id
    assert row["status"] == "running"
    assert row["pool"] == "reports"
    assert row["progress"] == {"current": 1, "total": 4, "message": "Rendering page 2 of 4"}
    assert row["can_cancel"] and not row["can_retry"]
    assert row["duration"] >= 0
    assert data["stats"]["pools"]["reports"]["running"] == 1
    assert data["stats"]["pools"]["reports"]["max_workers"] == 1
    assert data["more"] is False


def test_filters_and_search(dash: Dash, admin: flask.testing.FlaskClient, gate: Gate) -> None:
    failed = submit(dash, "broken", 7)
    wait_status(dash, failed, "failed")
    running = submit(dash, "held")
    gate.wait_entered()
    queued = submit(dash, "held")
    report = submit(dash, "report", 2)
    wait_status(dash, report, "running")  # its pool's thread starts it; it holds at step 0

    def ids(query: str) -> list[str]:
        data = admin.get("/bgtasks/tasks.json" + query).json
        assert data is not None
        return [row["id"] for row in data["tasks"]]

    assert ids("") == [report, queued, running, failed]
    assert ids("?status=failed") == [failed]
    assert ids("?status=queued") == [queued]
    assert ids("?name=digest") == [queued, running]
    assert ids("?pool=reports") == [report]
    assert ids("?pool=default&status=running") == [running]
    assert ids(f"?id={running}") == [running]
    assert ids("?id=AAAAAAAAAAAAAAAAAAAAAA") == []
    assert ids("?id=../../etc") == []
    assert ids("?status=nonsense") == [report, queued, running, failed]
    page = admin.get("/bgtasks/?status=failed").get_data(as_text=True)
    assert failed in page and running not in page
    assert '<option value="failed" selected>' in page


def test_cancel(dash: Dash, admin: flask.testing.FlaskClient, gate: Gate) -> None:
    submit(dash, "held")
    gate.wait_entered()
    queued = submit(dash, "held")
    url = f"/bgtasks/tasks/{queued}/cancel"
    # A form of another site can't send the header.
    refused = admin.post(url)
    assert refused.status_code == 403
    assert "X-Requested-With" in refused.json["error"]["message"]  # type: ignore[index]
    assert status(dash, queued) == "queued"
    response = admin.post(url, headers=XHR)
    assert response.status_code == 200
    assert response.json["task"]["status"] == "cancelled"  # type: ignore[index]
    assert status(dash, queued) == "cancelled"


def test_retry(dash: Dash, admin: flask.testing.FlaskClient) -> None:
    failed = submit(dash, "broken", 42)
    wait_status(dash, failed, "failed")
    response = admin.post(f"/bgtasks/tasks/{failed}/retry", headers=XHR)
    assert response.status_code == 201
    body = response.json
    assert body is not None
    new = body["id"]
    assert new != failed
    assert body["task"]["retry_of"] == failed
    wait_status(dash, new, "failed")
    with dash.app.app_context():
        record = dash.bg.store().record(new)
    assert record is not None and record.args == [42] and record.retry_of == failed
    # The new row links to the old task.
    page = admin.get("/bgtasks/").get_data(as_text=True)
    assert f'href="/bgtasks/?id={failed}"' in page


def test_retry_refuses_an_unfinished_task(
    dash: Dash, admin: flask.testing.FlaskClient, gate: Gate
) -> None:
    running = submit(dash, "held")
    gate.wait_entered()
    response = admin.post(f"/bgtasks/tasks/{running}/retry", headers=XHR)
    assert response.status_code == 409
    assert admin.post(f"/bgtasks/tasks/{running}/retry").status_code == 403


def test_tasks_the_authorization_callback_refuses_are_hidden(
    dash: Dash, admin: flask.testing.FlaskClient
) -> None:
    hidden = submit(dash, "held", secret=True)
    shown = submit(dash, "held")
    data = admin.get("/bgtasks/tasks.json").json
    assert data is not None
    assert [row["id"] for row in data["tasks"]] == [shown]
    assert admin.get(f"/bgtasks/tasks.json?id={hidden}").json["tasks"] == []  # type: ignore[index]
    assert hidden not in admin.get("/bgtasks/").get_data(as_text=True)
    for action in ("cancel", "retry"):
        response = admin.post(f"/bgtasks/tasks/{hidden}/{action}", headers=XHR)
        assert response.status_code == 404
    assert status(dash, hidden) in ("queued", "running")


def test_every_task_is_shown_without_a_task_callback(bg: BGTasks) -> None:
    bg.authorize_dashboard(lambda: True)
    app = Flask(__name__)
    app.config.update(BGTASKS_DASHBOARD=True, BGTASKS_EAGER=True)
    bg.init_app(app)

    @bg.task
    def add(a: int, b: int) -> int:
        return a + b

    with app.app_context():
        task_id = add.submit(1, 2).id
    data = app.test_client().get("/bgtasks/tasks.json").json
    assert data is not None
    assert [row["id"] for row in data["tasks"]] == [task_id]
    assert data["tasks"][0]["status"] == "succeeded"
    assert data["tasks"][0]["percent"] == 100


@pytest.mark.parametrize("kind", ["sqlite", "redis+rq"])
def test_shared_stores_and_an_engine(
    bg: BGTasks, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With SQLite and threads the tasks run here; with Redis and RQ they
    wait in RQ's queue, since no worker runs: the dashboard lists, cancels
    and runs them again alike."""
    bg.authorize_dashboard(lambda: True)
    app = Flask(__name__)
    app.config.update(BGTASKS_DASHBOARD=True)
    if kind == "sqlite":
        app.config.update(BGTASKS_STORE=f"sqlite:///{tmp_path / 'tasks.db'}")
    else:
        redis_url = request.getfixturevalue("redis_url")
        app.config.update(BGTASKS_STORE=redis_url, BGTASKS_BACKEND="rq")

    @bg.task(name="jobs.fail")
    def fail(number: int) -> None:
        raise ValueError(number)

    bg.init_app(app)
    client = app.test_client()
    with app.app_context():
        task_id = fail.submit(5).id
    if kind == "sqlite":
        store = bg.store(app)
        wait_for(
            lambda: getattr(store.record(task_id), "status", None) == "failed", 10, "a failure"
        )
    else:
        data = client.get("/bgtasks/tasks.json").json
        assert data is not None
        assert [row["status"] for row in data["tasks"]] == ["queued"]
        assert data["stats"]["pools"]["default"]["queued"] == 1
        response = client.post(f"/bgtasks/tasks/{task_id}/cancel", headers=XHR)
        assert response.json["task"]["status"] == "cancelled"  # type: ignore[index]
    response = client.post(f"/bgtasks/tasks/{task_id}/retry", headers=XHR)
    assert response.status_code == 201
    new = response.json["id"]  # type: ignore[index]
    data = client.get("/bgtasks/tasks.json").json
    assert data is not None
    assert [row["id"] for row in data["tasks"]] == [new, task_id]
    assert data["tasks"][0]["retry_of"] == task_id
    page = client.get(f"/bgtasks/?id={new}").get_data(as_text=True)
    assert f'href="/bgtasks/?id={task_id}"' in page
    bg.shutdown(timeout=10)


# -- in the browser ----------------------------------------------------------


class QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture
def server(dash: Dash) -> t.Iterator[str]:
    """The app under Werkzeug's threaded server, in a thread."""
    srv = make_server("127.0.0.1", 0, dash.app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(
        target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name="dashboard-server"
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.port}"
    finally:
        srv.shutdown()
        thread.join(10)
        srv.server_close()
    assert not thread.is_alive()


@pytest.fixture
def page(server: str) -> t.Iterator[Page]:
    """A browser page with the admin's cookie, closed before the server stops."""
    with browser_page(viewport=(1280, 430)) as page:
        page.context.add_cookies([{"name": "user", "value": "admin", "url": server}])
        yield page


def open_dashboard(page: Page, url: str) -> list[object]:
    errors: list[object] = []
    page.on("pageerror", lambda error: errors.append(error))
    response = page.goto(url)
    assert response is not None and response.status == 200
    return errors


def polled_since(page: Page, count: int) -> None:
    """Wait until the page's script has read the JSON after ``count``."""
    page.wait_for_function(f"() => window.bgtasksPolls > {count}")


def test_browser_list_and_live_progress(
    dash: Dash, server: str, page: Page, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    failed = submit(dash, "broken", 1024)
    wait_status(dash, failed, "failed")
    with dash.app.app_context():
        again = dash.bg.retry(failed).id
    wait_status(dash, again, "failed")
    report = submit(dash, "report", 12)
    wait_for(lambda: progress(dash, report) is not None, 10, "the report's first progress")
    errors = open_dashboard(page, server + "/bgtasks/")
    page.evaluate("window.sameDocument = true")
    row = page.locator(f'#tasks tr[data-id="{report}"]')
    bar = row.locator("progress")
    expect(row.locator(".status")).to_have_text("running")
    expect(row.locator(".name")).to_have_text("reports.build_pdf")
    expect(page.locator(f'#tasks tr[data-id="{failed}"] .status')).to_have_text("failed")
    expect(page.locator(f'#tasks tr[data-id="{again}"] .retry-of')).to_have_text(failed)
    expect(bar).to_have_js_property("value", 0)
    # Each step the task takes shows without a reload.
    for step in range(1, STEPS):
        dash.steps[step - 1].set()
        expect(bar).to_have_js_property("value", 100 * step // STEPS)
        expect(row.locator(".message")).to_have_text(f"Rendering page {step + 1} of {STEPS}")
        if step == 2:
            expect(page.locator('#pools tr[data-pool="reports"] .running')).to_have_text("1")
            shot = screenshot(page, tmp_path / "dashboard.png", full_page=False)
    dash.steps[STEPS - 1].set()
    expect(row.locator(".status")).to_have_text("succeeded")
    expect(bar).to_have_js_property("value", 100)
    expect(row.locator(".actions button")).to_have_count(0)
    assert page.evaluate("window.sameDocument") is True
    assert errors == []
    assert shot.read_bytes().startswith(b"\x89PNG")
    # The picture in the docs comes from here; replaced only when asked, so
    # that a test run leaves the checkout as it was.
    if os.environ.get("UPDATE_SCREENSHOTS") or not SCREENSHOT.exists():
        SCREENSHOT.write_bytes(shot.read_bytes())


def test_browser_filter(dash: Dash, server: str, page: Page) -> None:
    from playwright.sync_api import expect

    failed = submit(dash, "broken", 1)
    wait_status(dash, failed, "failed")
    other = submit(dash, "report", 1)
    errors = open_dashboard(page, server + "/bgtasks/")
    expect(page.locator("#tasks tbody tr")).to_have_count(2)
    page.select_option("select[name=status]", "failed")
    page.click("#filters button[type=submit]")
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    expect(page.locator(f'#tasks tr[data-id="{failed}"]')).to_have_count(1)
    # The script's polls keep the filter.
    count = page.evaluate("window.bgtasksPolls")
    polled_since(page, count)
    expect(page.locator(f'#tasks tr[data-id="{other}"]')).to_have_count(0)
    page.fill("input[name=id]", other)
    page.select_option("select[name=status]", "")
    page.click("#filters button[type=submit]")
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    expect(page.locator(f'#tasks tr[data-id="{other}"]')).to_have_count(1)
    assert errors == []


def test_browser_cancel_and_retry(dash: Dash, server: str, page: Page, gate: Gate) -> None:
    from playwright.sync_api import expect

    running = submit(dash, "held")
    gate.wait_entered()
    queued = submit(dash, "held")
    errors = open_dashboard(page, server + "/bgtasks/")
    row = page.locator(f'#tasks tr[data-id="{queued}"]')
    expect(row.locator(".status")).to_have_text("queued")
    expect(page.locator('#pools tr[data-pool="default"] .queued')).to_have_text("1")
    row.locator("button[data-action=cancel]").click()
    expect(page.locator("#notice")).to_contain_text("cancelled")
    expect(row.locator(".status")).to_have_text("cancelled")
    assert status(dash, queued) == "cancelled"

    row.locator("button[data-action=retry]").click()
    link = page.locator("#notice a")
    expect(link).to_have_count(1)
    new = link.inner_text()
    assert new != queued
    new_row = page.locator(f'#tasks tr[data-id="{new}"]')
    expect(new_row.locator(".retry-of a")).to_have_text(queued)
    expect(new_row.locator(".status")).to_have_text("queued")
    assert status(dash, running) == "running"
    gate.open()
    expect(new_row.locator(".status")).to_have_text("succeeded")
    # The link finds the new task.
    link.click()
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    expect(page.locator("input[name=id]")).to_have_value(new)
    assert errors == []


def test_browser_without_javascript(dash: Dash, server: str, page: Page, gate: Gate) -> None:
    from playwright.sync_api import expect

    running = submit(dash, "held")
    gate.wait_entered()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Emulation.setScriptExecutionDisabled", {"value": True})
    response = page.goto(server + "/bgtasks/")
    assert response is not None and response.status == 200
    row = page.locator(f'#tasks tr[data-id="{running}"]')
    expect(row.locator(".status")).to_have_text("running")
    # The page reloads itself: the refresh is live without JavaScript.
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(1)
    expect(row.locator(".actions button")).to_be_hidden()
    gate.open()
    expect(row.locator(".status")).to_have_text("succeeded", timeout=15_000)
    cdp.detach()


def test_browser_with_javascript_has_no_refresh(dash: Dash, server: str, page: Page) -> None:
    from playwright.sync_api import expect

    open_dashboard(page, server + "/bgtasks/")
    # With scripts on, <noscript> is text: no refresh, the script polls.
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)
    polled_since(page, 0)


def test_browser_refused_user_gets_404(dash: Dash, server: str, page: Page) -> None:
    page.context.clear_cookies()
    for path in ("/bgtasks/", "/bgtasks/tasks.json", "/bgtasks/static/dashboard.js"):
        response = page.goto(server + path)
        assert response is not None and response.status == 404, path
