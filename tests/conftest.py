from __future__ import annotations

import threading
import typing as t

import flask
import pytest
from flask import Flask

from flask_bgtasks import BGTasks


@pytest.fixture
def bg() -> t.Iterator[BGTasks]:
    bg = BGTasks()
    yield bg
    bg.shutdown()


@pytest.fixture
def make_app(bg: BGTasks) -> t.Iterator[t.Callable[..., Flask]]:
    """Make an app registered with ``bg``; keyword arguments go to its config."""
    apps = []  # alive until bg's teardown shuts their pools down

    def make_app(name: str = "test_app", **config: t.Any) -> Flask:
        app = Flask(name)
        app.config.update(TESTING=True, BGTASKS_MAX_WORKERS=2)
        app.config.update(config)
        bg.init_app(app)
        apps.append(app)
        return app

    yield make_app
    bg.shutdown()


@pytest.fixture
def app(make_app: t.Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> flask.testing.FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> flask.testing.FlaskCliRunner:
    return app.test_cli_runner()


class Gate:
    """Hold tasks at a point until the test lets them go.

    ``wait_entered(n)`` returns once ``n`` tasks are waiting at the gate.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._cond = threading.Condition()
        self.entered = 0

    def __call__(self) -> None:
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        assert self._open.wait(10), "The test never opened the gate."

    def wait_entered(self, count: int = 1) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered >= count, 10)

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def gate() -> t.Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open()  # never leave a task blocked, even when the test failed


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Any]:
    """One ``redis-server`` for the session, on a free port; stopped at the end."""
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: t.Any) -> str:
    """The URL of the session's Redis, emptied for this test."""
    from tests.redis_server import flush

    flush(redis_server.url)
    return str(redis_server.url)
