from __future__ import annotations

import threading
import typing as t

import pytest
from flask import Flask, current_app, g

from flask_bgtasks import BGTasks, ShutdownError, TaskStatus, UsageError


@pytest.fixture
def eager_app(make_app: t.Callable[..., Flask]) -> Flask:
    return make_app("eager_app", BGTASKS_EAGER=True)


def test_eager_runs_inside_submit_in_a_fresh_app_context(eager_app: Flask, bg: BGTasks) -> None:
    @bg.task
    def where() -> tuple[str, str, bool]:
        return threading.current_thread().name, current_app.name, "outer" in g

    before = threading.active_count()
    with eager_app.test_request_context():
        g.outer = True
        result = where.submit()
        assert result.done()  # finished before submit returned
    assert result.status is TaskStatus.SUCCEEDED
    assert result.result(0) == (threading.current_thread().name, "eager_app", False)
    assert threading.active_count() == before  # no pool thread was started


def test_eager_stores_exceptions_instead_of_raising(eager_app: Flask, bg: BGTasks) -> None:
    def fail() -> None:
        raise ValueError("eager failure")

    with eager_app.app_context():
        result = bg.submit(fail)  # does not raise here
    assert result.status is TaskStatus.FAILED
    with pytest.raises(ValueError, match="eager failure"):
        result.result(0)
    with eager_app.app_context():
        assert bg.get(result.id) is result


def test_eager_checks_pools_and_shutdown(eager_app: Flask, bg: BGTasks) -> None:
    with eager_app.app_context():
        with pytest.raises(UsageError, match="no task pool named 'other'"):
            bg.task(pool="other")(int).submit()
        assert bg.join(0)
        bg.shutdown()
        with pytest.raises(ShutdownError):
            bg.submit(int)
