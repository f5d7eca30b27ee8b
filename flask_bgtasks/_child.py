"""A child process of a process pool: :func:`main` builds the app once, then
runs the messages its parent sends, each through the one run function.

Everything a task reports (its start, progress, errors, end) goes back over
the child's pipe as a snapshot, and what it asks (may it start, was it
asked to stop, can the store keep this value) is answered by the parent,
which holds the task's handle and talks to the store. The child writes to
no store itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
import typing as t

from ._errors import InvalidTaskError
from ._execution import Execution
from ._imports import load_app
from ._run import run

if t.TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from flask import Flask


def main(conn: Connection, app_import: str) -> None:
    """The child's life: build the app, say ready, run messages until told
    to stop or until the parent is gone."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the parent drains, and ends
    # the children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        app = load_app(app_import)
    except BaseException as exc:
        conn.send(("broken", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    observer = ChildObserver(conn, app)
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the parent is gone
        if request[0] != "run":
            return
        _, message, call = request
        observer.approved = True  # the parent approved the first attempt
        try:
            call = call or _declared(app, message.name)
        except InvalidTaskError as exc:
            observer.tell("failed", exc)
            observer.tell("idle")
            continue
        execution = Execution(message, call, None, observer)
        execution.claim()
        run(execution, app)
        observer.tell("idle")


def _declared(app: Flask, name: str) -> t.Callable[..., t.Any]:
    task = app.extensions["bgtasks"].tasks.get(name)
    if task is None:
        raise InvalidTaskError(
            f"Task {name!r} is not declared in the app that BGTASKS_APP builds in"
            " the child process. Declare it with @bg.task in a module that the"
            " app imports."
        )
    return task.fn  # type: ignore[no-any-return]


def _die_with_parent() -> None:
    # On Linux, the kernel kills this child when the process that started
    # it dies, even while a task holds it busy: no orphan outlives its
    # parent. (A forkserver child's parent is the fork server, which exits
    # with the process that started it.)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ChildObserver:
    """The :class:`~._execution.Observer` of the tasks in a child: it asks
    and tells the parent over the pipe. The task's thread and its watchdog
    may both talk, so one lock keeps each question with its answer."""

    def __init__(self, conn: Connection, app: Flask) -> None:
        self._conn = conn
        self._app = app
        self._lock = threading.Lock()
        #: The parent approved the task's first attempt when it sent it.
        self.approved = False

    def ask(self, *question: object) -> t.Any:
        data = pickle.dumps(question)
        with self._lock:
            self._conn.send_bytes(data)
            return pickle.loads(self._conn.recv_bytes())

    def tell(self, *news: object) -> None:
        data = pickle.dumps(news)
        with self._lock:
            self._conn.send_bytes(data)

    def may_start(self, execution: Execution) -> bool:
        if self.approved:
            self.approved = False
            return True
        return bool(self.ask("start"))

    def changed(self, execution: Execution) -> None:
        # The parent has the message: only what changed crosses.
        self.tell("changed", tuple(execution.snapshot())[1:])

    def check_value(self, execution: Execution, value: object) -> BaseException | None:
        try:
            pickle.dumps(value)
        except Exception as exc:
            return InvalidTaskError(
                f"Task {execution.message.name!r} returned {type(value).__name__},"
                f" which can't be pickled ({exc}), so it can't leave the child process"
                " it ran in. Return plain values: str, numbers, lists and dicts of them."
            )
        # The parent asks the store when the value arrives.
        return None

    def ended(
        self, execution: Execution, value: object, error: BaseException | None, kept: bool
    ) -> None:
        fields = tuple(execution.snapshot())[1:]
        try:
            self.tell("ended", fields, value, error)
        except Exception:  # an exception that can't be pickled: its text crosses
            stand_in = RuntimeError(f"{type(error).__name__}: {error}")
            self.tell("ended", fields, None, stand_in)

    def cancel_requested(self, execution: Execution) -> bool:
        return bool(self.ask("cancel_requested"))

    def cancelled_while_queued(self, execution: Execution) -> None:
        """The parent cancelled it, and sends the signal there."""

    def keep(self, execution: Execution) -> None:
        """Nothing is looked up by id in a child."""

    def run_here(self, execution: Execution) -> None:
        """A child runs only what its parent sends."""

    def callback_context(self) -> t.ContextManager[object]:
        return self._app.app_context()
