"""The progress page in headless Chromium: start a report, watch the bar
fill in and the result appear, then start another and cancel it.

Once under Werkzeug's threaded server in this process, where the page
follows the report with Server-Sent Events, and once under Gunicorn with
three worker processes and the SQLite store, where the page polls and each
worker is replaced after two requests, so that the status requests reach
processes other than the one running the report. The first run takes a
screenshot mid-report; ``UPDATE_SCREENSHOTS=1 pytest`` puts it in the docs.
"""

from __future__ import annotations

import os
import re
import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.browser import browser_page, screenshot
from tests.servers import BIN, Server

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

EXAMPLE = Path(__file__).parents[1]
SCREENSHOT = Path(__file__).parents[3] / "docs" / "_static" / "progress.png"
PAGES = 6
STEP_SECONDS = 0.4


class QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture
def dev_server(app: Flask) -> t.Iterator[str]:
    """The example served by Werkzeug's threaded server in a thread."""
    app.config.update(PAGES=PAGES, STEP_SECONDS=STEP_SECONDS)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def run_the_page(page: Page, url: str, shot: Path | None = None) -> None:
    from playwright.sync_api import expect

    errors: list[object] = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url)
    status, result, bar = page.locator("#status"), page.locator("#result"), page.locator("#bar")
    expect(status).to_have_text("idle")

    page.click("#start")
    # The bar moves, and is neither empty nor full: the report is under way.
    # Both read at once, in the page: the next status may be the last one.
    page.wait_for_function(
        "() => { const v = document.getElementById('bar').value;"
        " return v >= 40 && v < 100"
        " && document.getElementById('status').textContent === 'running'; }"
    )
    expect(page.locator("#message")).to_contain_text(re.compile(r"Rendering page \d of 6"))
    if shot is not None:
        screenshot(page, shot, full_page=False)
    expect(result).to_have_text("Done: Quarterly report, 6 pages", timeout=20_000)
    expect(status).to_have_text("succeeded")
    expect(bar).to_have_js_property("value", 100)

    page.click("#start")
    # Cancel at the first status shown, queued or running, rather than
    # chase the 2.4 s that the report runs.
    expect(status).to_have_text(re.compile(r"^(queued|running)$"), timeout=10_000)
    page.click("#cancel")
    expect(result).to_have_text("Cancelled", timeout=10_000)
    expect(status).to_have_text("cancelled")
    assert bar.evaluate("bar => bar.value") < 100
    assert errors == []


def test_progress_page(dev_server: str, tmp_path: Path) -> None:
    shot = tmp_path / "progress.png"
    with browser_page(viewport=(880, 340)) as page:
        run_the_page(page, dev_server + "/", shot)
    assert shot.read_bytes().startswith(b"\x89PNG")
    # The picture of the page mid-report in the docs comes from here. It is
    # replaced when asked, so that a test run leaves the checkout as it was.
    if os.environ.get("UPDATE_SCREENSHOTS") or not SCREENSHOT.exists():
        SCREENSHOT.write_bytes(shot.read_bytes())


def test_progress_page_under_gunicorn(tmp_path: Path) -> None:
    gunicorn = [
        str(BIN / "gunicorn"),
        "--workers",
        "3",
        # Each worker is replaced after two requests: the status requests
        # reach processes that did not start the report.
        "--max-requests",
        "2",
        "--bind",
        "127.0.0.1:{port}",
        "--access-logfile",
        "-",
        "--access-logformat",
        "%(p)s %(m)s %(U)s",
        "--no-control-socket",
        "progress_app:create_app()",
    ]
    env = {
        "FLASK_BGTASKS_STORE": "sqlite:///" + str(tmp_path / "progress.db"),
        "FLASK_PAGES": str(PAGES),
        "FLASK_STEP_SECONDS": str(STEP_SECONDS),
        "PYTHONPATH": str(EXAMPLE),
    }
    with Server(gunicorn, cwd=EXAMPLE, env=env) as server:
        server.wait_ready("/")
        with browser_page() as page:
            run_the_page(page, f"http://127.0.0.1:{server.port}/?poll=1")
    # Read once Gunicorn is stopped, when every line it wrote has been read.
    output = server.output
    # Gunicorn's access log says which worker process answered: "<pid> GET /tasks/...".
    answered = set(re.findall(r"<(\d+)> GET /tasks/", output))
    assert len(answered) >= 3, output
