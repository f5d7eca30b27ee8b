"""Checks that apply to every test in the repository, examples included."""

from __future__ import annotations

import threading
import typing as t

import flask
import pytest


@pytest.fixture(autouse=True)
def _no_leaks() -> t.Iterator[None]:
    """Fail a test that leaves a thread running or an app context pushed."""
    before = set(threading.enumerate())
    yield
    assert not flask.has_app_context(), "The test left an app context pushed."
    leaked = [thread for thread in threading.enumerate() if thread not in before]
    for thread in leaked:  # Threads that are exiting get a moment to finish.
        thread.join(5)
    alive = [thread.name for thread in leaked if thread.is_alive()]
    assert not alive, f"The test left threads running: {alive}"
