"""The parent's side of a process pool: :class:`ChildWorker`, one per worker
thread, each with one child process and one pipe to it.

``concurrent.futures.ProcessPoolExecutor`` breaks as a whole when one child
dies, and can't end one task; so each worker thread here owns its child:
it starts it on the first task, sends it one message at a time, answers
what the task asks, applies what it reports to the task's
:class:`~._execution.Execution`, and kills the child for real when the task
outlives its timeout by ``BGTASKS_TIMEOUT_GRACE``, when it is cancelled
with ``force=True``, or at the shutdown deadline. A child that dies fails
only its own task (a durable task runs again, in a new child), and the next
task gets a new child.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import sys
import threading
import time
import typing as t

from . import _child
from ._errors import TaskCancelled, TaskCrashed, TaskTimeout, UsageError
from ._message import TaskSnapshot
from ._record import TaskStatus

if t.TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from ._execution import Execution
    from ._message import TaskMessage

logger = logging.getLogger("flask_bgtasks")

#: Takes a message's task off the queue in this process: its Execution, or
#: ``None`` if it was cancelled meanwhile.
Claim = t.Callable[["TaskMessage"], "Execution | None"]

#: Seconds a new child may take to build the app.
START_TIMEOUT = 60.0


def default_start_method() -> str:
    """``forkserver`` on Linux, ``spawn`` elsewhere: never a plain ``fork``
    of a process that has threads, which can deadlock the child."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


class ChildWorker:
    """Runs the messages of one worker thread in one child process.

    :param pool: The pool's name, for the child's name and errors.
    :param app_import: How the child builds the app (``BGTASKS_APP``).
    :param claim: Takes a message's task off the queue here.
    :param start_method: ``forkserver``, ``spawn`` or ``fork``.
    :param grace: Seconds past a task's timeout before its child is killed.
    :param recycle_after: Tasks a child runs before a new one replaces it.
    """

    def __init__(
        self,
        pool: str,
        app_import: str,
        claim: Claim,
        start_method: str,
        grace: float,
        recycle_after: int | None,
    ) -> None:
        self.pool = pool
        self.app_import = app_import
        self.claim = claim
        self.grace = grace
        self.recycle_after = recycle_after
        # Typed loosely: typeshed gives the base context no Process.
        self._context: t.Any = multiprocessing.get_context(start_method)
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ran = 0
        # Why the child was killed on purpose: "timeout", "cancel" or
        # "deadline"; None if it died by itself.
        self._killed: str | None = None
        self._lock = threading.Lock()
        self._sent: dict[t.Callable[..., t.Any], bool] = {}

    # -- the Worker protocol --------------------------------------------------

    def run(self, message: TaskMessage) -> None:
        execution = self.claim(message)
        if execution is None:
            return
        unsent = 0
        while True:
            try:
                self._ensure_child()
            except UsageError as exc:
                execution.end(TaskStatus.FAILED, error=exc, add_error=True)
                return
            execution.force_stop = self.kill_for_cancel
            try:
                again = self._relay(message, execution)
            finally:
                execution.force_stop = None
            if again == "unsent" and unsent < 3:
                # The child died while it waited for work (the OOM killer,
                # say): the task never reached it, so a new child runs it.
                unsent += 1
                continue
            if again != "crashed":
                return
            # A durable task runs again, as after any crash, in a new child.
            message = message._replace(attempt=execution.attempt, errors=execution.errors)

    def stop(self) -> None:
        self._kill("deadline")

    def close(self) -> None:
        with self._lock:
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if conn is not None:
            try:
                conn.send(("stop",))
            except OSError:
                pass
            conn.close()
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()

    def kill_for_cancel(self) -> None:
        """``cancel(force=True)``: kill the child, which runs the task."""
        self._kill("cancel")

    # -- the child --------------------------------------------------------------

    def _ensure_child(self) -> None:
        if self._process is not None and self.recycle_after and self._ran >= self.recycle_after:
            self.close()
        if self._process is not None and not self._process.is_alive():
            self._forget_child()  # died while it waited for work
        if self._process is not None:
            return
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_child.main,
            args=(theirs, self.app_import),
            name=f"bgtasks-{self.pool}-child",
            daemon=True,
        )
        process.start()
        theirs.close()
        if not ours.poll(START_TIMEOUT):
            process.kill()
            process.join()
            raise UsageError(
                f"A child process of the pool {self.pool!r} did not build the app from"
                f" {self.app_import!r} within {START_TIMEOUT:g} s."
            )
        try:
            reply = ours.recv()
        except EOFError:
            reply = ("broken", f"it exited with code {process.join(5) or process.exitcode}")
        if reply[0] != "ready":
            process.join(5)
            raise UsageError(
                f"A child process of the pool {self.pool!r} could not build the app"
                f" from BGTASKS_APP = {self.app_import!r}: {reply[1]}. Set BGTASKS_APP"
                " to what 'flask --app' takes, such as 'myapp:create_app()'."
            )
        with self._lock:
            self._process, self._conn, self._ran, self._killed = process, ours, 0, None

    def _kill(self, reason: str) -> None:
        with self._lock:
            process = self._process
            if process is None:
                return
            self._killed = reason
        process.kill()

    def _forget_child(self) -> int | None:
        with self._lock:
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        process.join()
        return process.exitcode

    # -- one task ---------------------------------------------------------------

    def _relay(self, message: TaskMessage, execution: Execution) -> str | None:
        """Send the message, then answer and apply what the child says until
        it is idle again. Returns ``"unsent"`` if the child was gone before
        it got the task, ``"crashed"`` if it died and the task must run
        again; else ``None``."""
        conn = self._conn
        assert conn is not None
        try:
            request = pickle.dumps(("run", message, self._sendable(execution.call)))
        except Exception as exc:  # an argument that stopped pickling since submit
            execution.end(TaskStatus.FAILED, error=_unpicklable(message, exc), add_error=True)
            return None
        # Its first attempt is approved here, with the store, before it is
        # sent: one exchange less per task. The child asks before a retry.
        if not execution.start_attempt():
            return None
        try:
            conn.send_bytes(request)
        except OSError:
            self._forget_child()
            return "unsent"
        self._ran += 1
        timeout = message.options.timeout
        started = execution.started_at
        kill_at = None if timeout is None or started is None else started + timeout + self.grace
        while True:
            # A child that dies closes its end of the pipe, which wakes this.
            if kill_at is not None and not conn.poll(max(0.0, kill_at - time.time())):
                self._kill("timeout")
                continue
            try:
                news = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return self._lost(execution)
            if news[0] == "idle":
                return None
            try:
                self._apply(conn, execution, news)
            except OSError:  # it died before it read the answer to its question
                return self._lost(execution)

    def _apply(self, conn: Connection, execution: Execution, news: tuple[t.Any, ...]) -> None:
        kind = news[0]
        if kind == "start":
            conn.send_bytes(pickle.dumps(execution.start_attempt()))
        elif kind == "changed":
            execution.adopt(TaskSnapshot(execution.message, *news[1]))
        elif kind == "cancel_requested":
            conn.send_bytes(pickle.dumps(execution.cancel_requested))
        elif kind == "failed":  # the child could not even find the task
            execution.end(TaskStatus.FAILED, error=news[1], add_error=True)
        elif kind == "ended":
            _, fields, value, error = news
            snapshot = TaskSnapshot(execution.message, *fields)
            execution.adopt(snapshot, tell=False)
            status = snapshot.status
            observer = execution.observer
            if status is TaskStatus.SUCCEEDED and observer is not None:
                # The store refuses what it can't keep (too large, say).
                problem = observer.check_value(execution, value)
                if problem is not None:
                    status, value, error = TaskStatus.FAILED, None, problem
                    logger.error("%s", problem)
            execution.end(status, value, error, add_error=status is not snapshot.status)

    def _sendable(self, call: t.Callable[..., t.Any]) -> t.Callable[..., t.Any] | None:
        # A function that @bg.task declared is found by the task's name in
        # the child's app (its module attribute is the Task, so pickle can't
        # find the function); any other is sent by reference.
        sendable = self._sent.get(call)
        if sendable is None:
            try:
                pickle.dumps(call)
                sendable = True
            except Exception:
                sendable = False
            self._sent[call] = sendable
        return call if sendable else None

    def _lost(self, execution: Execution) -> str | None:
        """The child is gone while it had the task: say why, and end the
        task, unless it is durable and runs again: then ``"crashed"``."""
        reason = self._killed
        code = self._forget_child()
        name = execution.message.name
        ident = execution.handle.id
        if reason == "deadline":
            return None  # the shutdown ends the task itself
        if reason == "timeout":
            error: BaseException = TaskTimeout(
                f"Task {name!r} (id {ident}) did not finish within its timeout of"
                f" {execution.message.options.timeout:g} s, nor {self.grace:g} s later:"
                " its child process was killed."
            )
        elif reason == "cancel":
            error = TaskCancelled(
                f"Task {name!r} (id {ident}) was cancelled by force: its child process was killed."
            )
        else:
            error = TaskCrashed(
                f"The child process that ran task {name!r} (id {ident}) died"
                f" {_how(code)}. Only this task failed; the pool started a new child."
            )
            reason = "crash"
        logger.error("%s", error)
        if (
            reason == "crash"
            and execution.message.durable
            and not execution.ended
            and not execution.cancel_requested
        ):
            execution.add_error(error)
            return "crashed"
        status = TaskStatus.CANCELLED if reason == "cancel" else TaskStatus.FAILED
        execution.end(status, error=error, add_error=True)
        return None


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"of signal {signal.Signals(-code).name}"
        except ValueError:
            return f"of signal {-code}"
    return f"with exit code {code}"


def _unpicklable(message: TaskMessage, exc: BaseException) -> UsageError:
    return UsageError(
        f"Task {message.name!r} can't be sent to a child process: {exc}. A task on"
        " a process pool must be a function declared at module level."
    )
