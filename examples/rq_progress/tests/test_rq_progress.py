"""The progress page on RQ, as the README runs it: a redis-server, the app
under ``flask run``, and two ``flask bgtasks worker`` commands, each a
process of its own in a folder of its own, as on two machines.

Over HTTP, two reports started together run at the same time, one on each
worker, which the records' ``process`` (``host:pid``) shows. In headless
Chromium, the page starts a report and follows it with Server-Sent Events
while a worker renders it: the bar moves and fills, the result appears; a
second report is cancelled from the page.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import typing as t
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from tests.browser import browser_page
from tests.redis_server import RedisServer
from tests.servers import BIN, Server, wait_for

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

APP = str(Path(__file__).parents[1] / "rq_progress_app")
FLASK = str(BIN / "flask")
# A report takes PAGES * STEP_SECONDS = 3 s of a worker's time, whatever
# the load: long enough to be seen moving, and to be cancelled.
PAGES = 10
STEP_SECONDS = 0.3
FINAL = ("succeeded", "failed", "cancelled")
BAR_MOVED = "() => { const v = document.getElementById('bar').value; return v > 0 && v < 100; }"


class Site:
    """The running example: its Redis, its web server, its two workers."""

    def __init__(self, redis_url: str, web: Server, workers: list[Server]) -> None:
        self.redis_url = redis_url
        self.web = web
        self.workers = workers

    @property
    def worker_pids(self) -> set[int]:
        # 'flask bgtasks worker' without --processes works in its own process.
        return {worker.process.pid for worker in self.workers}

    def workers_wait(self) -> bool:
        """Whether both workers have registered with RQ and wait for the
        reports' queue (RQ's own view of them, in Redis)."""
        import redis
        import rq

        for worker in self.workers:
            if worker.process.poll() is not None:
                raise AssertionError(f"A worker exited early:\n{worker.output}")
        connection = redis.Redis.from_url(self.redis_url)
        try:
            queue = rq.Queue("bgtasks.reports", connection=connection)
            idle = {w.pid for w in rq.Worker.all(queue=queue) if w.get_state() == "idle"}
        finally:
            connection.close()
        return idle == self.worker_pids

    def process_of(self, task_id: str) -> str:
        """The ``process`` of a task's record, as ``flask bgtasks show`` says."""
        shown = subprocess.run(
            [FLASK, "--app", APP, "bgtasks", "show", task_id],
            env={**os.environ, "REDIS_URL": self.redis_url},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        match = re.search(r"^process:\s+(\S+)$", shown, re.MULTILINE)
        assert match is not None, shown
        return match[1]


class Client:
    """A client without a browser that keeps the page's session cookie,
    whose user id is what the app's authorization callback checks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

    def call(self, path: str, method: str = "GET") -> t.Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=b"" if method == "POST" else None,
            headers={"X-Requested-With": "test"},
        )
        with self.opener.open(request, timeout=10) as response:
            if response.headers.get_content_type() == "application/json":
                return json.load(response)
            return response.read()


@pytest.fixture
def site(tmp_path: Path) -> t.Iterator[Site]:
    """Redis, the app and two workers, each started in its own folder, as
    the README says; all stopped after the test."""
    folders = {name: tmp_path / name for name in ("redis", "web", "worker-1", "worker-2")}
    for folder in folders.values():
        folder.mkdir()
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer(folders["redis"]))
        env = {
            "REDIS_URL": redis_server.url,
            "FLASK_PAGES": str(PAGES),
            "FLASK_STEP_SECONDS": str(STEP_SECONDS),
        }
        web = stack.enter_context(
            Server([FLASK, "--app", APP, "run", "--port", "{port}"], cwd=folders["web"], env=env)
        )
        workers = [
            stack.enter_context(
                Server([FLASK, "--app", APP, "bgtasks", "worker"], cwd=folders[name], env=env)
            )
            for name in ("worker-1", "worker-2")
        ]
        site = Site(redis_server.url, web, workers)
        web.wait_ready("/")
        try:
            wait_for(site.workers_wait, 30, "both workers to wait for reports")
            yield site
        finally:
            for server in (web, *workers):  # pytest shows it if the test failed
                print(f"--- {' '.join(server.args[3:])}:\n{server.output}")


def wait_final(client: Client, status_url: str) -> dict[str, t.Any]:
    final: dict[str, t.Any] = {}

    def finished() -> bool:
        final.update(client.call(status_url))
        return final["status"] in FINAL

    wait_for(finished, 30, f"the report at {status_url} to finish")
    return final


def follow_in_browser(page: Page, url: str) -> None:
    from playwright.sync_api import expect

    errors: list[object] = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url)
    expect(page.locator("#status")).to_have_text("idle")

    page.click("#start")
    # Under way on a worker: the bar has moved, and is not full yet.
    page.wait_for_function(BAR_MOVED)
    expect(page.locator("#message")).to_contain_text(re.compile(rf"Rendering page \d+ of {PAGES}"))
    expect(page.locator("#result")).to_have_text(
        f"Done: Quarterly report, {PAGES} pages", timeout=20_000
    )
    expect(page.locator("#status")).to_have_text("succeeded")
    expect(page.locator("#bar")).to_have_js_property("value", 100)

    # The cancel goes from the web process to the worker through Redis.
    page.click("#start")
    expect(page.locator("#cancel")).to_be_enabled(timeout=10_000)
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=10_000)
    assert page.locator("#bar").evaluate("bar => bar.value") < 100
    assert errors == []


@pytest.mark.timeout(120)
def test_reports_run_on_two_workers(site: Site) -> None:
    client = Client(site.web.url)
    client.call("/")  # the page gives this client its user id
    # Both workers wait on the queue (the fixture saw them idle): the first
    # report goes to one; the second, sent before that one's 3 s are over,
    # to the other, the only one still waiting.
    started = [client.call("/reports", "POST") for _ in range(2)]
    reports = [wait_final(client, report["status_url"]) for report in started]
    assert [report["status"] for report in reports] == ["succeeded", "succeeded"]

    # The result says which process rendered it; so does the record.
    pids = {report["result"]["pid"] for report in reports}
    assert pids == site.worker_pids
    host = socket.gethostname()
    assert {site.process_of(report["id"]) for report in reports} == {
        f"{host}:{pid}" for pid in pids
    }
    # And they ran at the same time.
    first, second = (
        (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]))
        for r in reports
    )
    assert first[0] < second[1] and second[0] < first[1]

    with browser_page() as page:
        follow_in_browser(page, site.web.url + "/")
