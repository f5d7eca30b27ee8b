"""A real headless browser against a real server: the smoke test of the
browser setup (``tests/browser.py``).

A Werkzeug server in a thread serves a page whose JavaScript fills a
``<progress>`` bar, by polling a JSON view and by server-sent events; the
browser's own waiting (``expect(...).to_have_text``) waits for the last
value, and the page's script records each value it showed.
"""

from __future__ import annotations

import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask, Response, jsonify
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.browser import browser_page, screenshot

if t.TYPE_CHECKING:
    from playwright.sync_api import Error, Page

TOTAL = 5

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Progress</title>
<progress id="bar" max="TOTAL" value="0"></progress>
<span id="text">waiting</span>
<script>
const bar = document.getElementById("bar");
const text = document.getElementById("text");
window.seen = [];
function show(value) {
  window.seen.push(value);
  bar.value = value;
  text.textContent = value + " / " + bar.max;
}
SCRIPT
</script>
"""

POLL = """
async function poll() {
  const response = await fetch("/value");
  const value = (await response.json()).value;
  show(value);
  if (value < bar.max) setTimeout(poll, 10);  // the page's polling interval
}
poll();
"""

EVENTS = """
const source = new EventSource("/events");
source.onmessage = (event) => show(Number(event.data));
source.addEventListener("done", () => source.close());  // or it reconnects
"""


def create_app() -> Flask:
    app = Flask(__name__)
    lock = threading.Lock()
    app.extensions["polls"] = polls = [0]

    def page(script: str) -> str:
        return PAGE.replace("TOTAL", str(TOTAL)).replace("SCRIPT", script)

    @app.get("/poll")
    def poll_page() -> str:
        return page(POLL)

    @app.get("/value")
    def value() -> Response:
        with lock:  # one step per request, whichever thread serves it
            polls[0] += 1
            return jsonify(value=min(polls[0], TOTAL))

    @app.get("/events-page")
    def events_page() -> str:
        return page(EVENTS)

    @app.get("/events")
    def events() -> Response:
        def stream() -> t.Iterator[str]:
            for value in range(1, TOTAL + 1):
                yield f"data: {value}\n\n"
            yield "event: done\ndata: end\n\n"

        return Response(stream(), mimetype="text/event-stream")

    return app


class QuietRequestHandler(WSGIRequestHandler):
    """Log no access lines (Werkzeug would add a handler to its logger)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class LiveServer(t.NamedTuple):
    url: str
    app: Flask


@pytest.fixture
def live_server() -> t.Iterator[LiveServer]:
    """The app served by Werkzeug's threaded server on 127.0.0.1 and a free
    port, stopped after the test with all its threads joined."""
    app = create_app()
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="live-server"
    )
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.port}", app)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()  # joins the request threads too
    assert not thread.is_alive(), "The server thread did not stop."


@pytest.fixture
def page(live_server: LiveServer) -> t.Iterator[Page]:
    """A browser page, closed before the server stops (so that no keep-alive
    connection holds a request thread open)."""
    with browser_page() as page:
        yield page


def load(page: Page, url: str) -> list[Error]:
    """Open ``url``; return the list that collects the page's JavaScript errors."""
    errors: list[Error] = []
    # Playwright needs a Python function here: a bound builtin like
    # errors.append raises AttributeError.
    page.on("pageerror", lambda error: errors.append(error))
    response = page.goto(url)
    assert response is not None and response.ok, response
    return errors


def assert_filled(page: Page) -> None:
    from playwright.sync_api import expect  # installed: the page fixture checked

    expect(page.locator("#text")).to_have_text(f"{TOTAL} / {TOTAL}", timeout=10_000)
    expect(page.locator("#bar")).to_have_js_property("value", TOTAL)
    assert page.evaluate("window.seen") == list(range(1, TOTAL + 1))


def test_polling_fills_the_progress_bar(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    errors = load(page, live_server.url + "/poll")
    assert_filled(page)
    assert live_server.app.extensions["polls"] == [TOTAL]  # one request per step, none after
    png = screenshot(page, tmp_path / "shots" / "progress.png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert errors == []


def test_server_sent_events_fill_the_progress_bar(page: Page, live_server: LiveServer) -> None:
    errors = load(page, live_server.url + "/events-page")
    assert_filled(page)
    assert errors == []
