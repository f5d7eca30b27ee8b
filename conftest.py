"""Checks that apply to every test in the repository, examples included."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import typing as t

import flask
import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts a background command ('pytest &'
    # in a script) with SIGINT ignored, which Python then leaves alone and
    # every server a test starts inherits: the tests that press Ctrl-C would
    # wait for an exit that never comes. Python's own handler instead, which
    # the servers see as the default.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _no_leaks() -> t.Iterator[None]:
    """Fail a test that leaves a thread running, a child process alive, or
    an app context pushed."""
    before = set(threading.enumerate())
    children_before = set(multiprocessing.active_children())
    yield
    children = [
        child for child in multiprocessing.active_children() if child not in children_before
    ]
    for child in children:  # Children that are exiting get a moment to finish.
        child.join(5)
    assert not [child for child in children if child.is_alive()], (
        f"The test left child processes running: {[child.name for child in children]}"
    )
    assert not flask.has_app_context(), "The test left an app context pushed."
    leaked = [thread for thread in threading.enumerate() if thread not in before]
    for thread in leaked:  # Threads that are exiting get a moment to finish.
        thread.join(5)
    alive = [thread.name for thread in leaked if thread.is_alive()]
    assert not alive, f"The test left threads running: {alive}"
