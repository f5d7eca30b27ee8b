"""A task in this process: :class:`Execution`, its state while it is queued
and runs, and the one place where it ends.

Its :class:`~flask_bgtasks.TaskResult` only reads this state; the run
function (:mod:`._run`) and the watchdog drive it; it reports each change to
an :class:`~._observer.Observer`: in this process the app's store events,
which tell the store; in a child process, the pipe to its parent. Knows
nothing of Flask.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

from ._errors import TaskCancelled, TaskTimeout
from ._message import TaskSnapshot
from ._record import TaskStatus, error_info
from ._result import TaskResult

if t.TYPE_CHECKING:
    from ._context import Captured
    from ._message import TaskMessage
    from ._observer import Observer

logger = logging.getLogger("flask_bgtasks")


class Execution:
    """The state of one task in this process, from submit to its end.

    :param message: What to run.
    :param call: The function, found by the message's name.
    :param captured: What the task copied from the submitting request.
    :param observer: Told about every change; ``None`` for a task that
        never runs.
    :param app: The app it runs in, which it keeps alive.
    """

    __slots__ = (
        "message",
        "call",
        "captured",
        "observer",
        "app",
        "handle",
        "status",
        "attempt",
        "progress",
        "errors",
        "started_at",
        "finished_at",
        "cancel_error",
        "released",
        "force_stop",
        "_cancel_flag",
        "_lock",
        "_claimed",
        "_ended",
        "_kept",
        "_waiting",
        "_wake",
    )

    def __init__(
        self,
        message: TaskMessage,
        call: t.Callable[..., t.Any],
        captured: Captured | None,
        observer: Observer | None,
        app: object = None,
    ) -> None:
        self.message = message
        self.call = call
        self.captured = captured
        self.observer = observer
        #: The app it runs in, held: an app with unfinished tasks lives
        #: until they end, even if nothing else refers to it (a server that
        #: returned, at exit).
        self.app = app
        #: Where it is; final before its handle settles.
        self.status = TaskStatus.QUEUED
        #: Attempts started, counting those of earlier processes.
        self.attempt = message.attempt
        self.progress: dict[str, t.Any] | None = None
        self.errors = message.errors
        self.started_at: float | None = None
        self.finished_at: float | None = None
        #: What ended a cancelled task, as its handle raises it.
        self.cancel_error: TaskCancelled | None = None
        #: Set on a durable task that shutdown stopped or never started,
        #: which its store keeps to run again in the next process.
        self.released = False
        #: Ends the running task for real, where whoever runs it can (a
        #: child process can be killed, a thread can't); else ``None``.
        self.force_stop: t.Callable[[], None] | None = None
        self._cancel_flag = False
        # One lock per task: it decides who takes it off the queue, who
        # ends it, and whether its end is counted for a kept handle.
        self._lock = threading.Lock()
        self._claimed = False
        self._ended = False
        self._kept = False
        # Between two attempts: queued again, until the next one starts.
        self._waiting = False
        self._wake: threading.Event | None = None
        #: The user's view of it.
        self.handle: TaskResult[t.Any] = TaskResult(self)

    @property
    def ended(self) -> bool:
        """Whether the task has ended (its handle may still be settling)."""
        return self._ended

    @property
    def claimed(self) -> bool:
        """Whether someone took it off the queue, to run or to cancel it."""
        return self._claimed

    @property
    def kept(self) -> bool:
        return self._kept

    def claim(self) -> bool:
        """Take the task to run or to cancel it; ``True`` for exactly one
        caller: a worker, a task that waits for it, or ``cancel()``."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def keep(self) -> bool:
        """Mark the task as looked up by id; ``True`` if it has ended already."""
        with self._lock:
            self._kept = True
            return self._ended

    # -- its run ------------------------------------------------------------

    def start_attempt(self) -> bool:
        """Count a new attempt; ``False`` if the task has ended meanwhile
        (its timeout, a cancel during a retry wait) or the store refused it,
        and then the task has ended as cancelled."""
        with self._lock:
            if self._ended:
                return False
            # Running from here: cancel() no longer finds it waiting.
            self._waiting = False
            self.status = TaskStatus.RUNNING
        self.attempt += 1
        first = self.started_at is None
        if first:
            self.started_at = time.time()
        if self.observer is not None and not self.observer.may_start(self):
            self.attempt -= 1
            if first:
                self.started_at = None
            # Another process cancelled the task while it was queued, or
            # took it over; its record says so already.
            if self.end(TaskStatus.CANCELLED, error=self.cancelled_error()) and self.observer:
                self.observer.cancelled_while_queued(self)
            return False
        return True

    def add_error(self, exc: BaseException) -> None:
        """Keep a failed attempt's error."""
        self.errors += (error_info(exc, self.attempt),)

    def wait_for_retry(self) -> None:
        """The attempt failed and another follows: the task is queued
        again. Made wakeable first, so a cancel() from now on wakes it."""
        self._wake = threading.Event()
        with self._lock:
            self._waiting = True
        self.status = TaskStatus.QUEUED
        if self.observer is not None:
            self.observer.changed(self)

    def back_off(self, delay: float) -> None:
        """Wait ``delay`` seconds before the next attempt, or less if the
        task is cancelled, times out or is interrupted."""
        wake = self._wake
        until = time.monotonic() + delay
        # cancel() here sets the event; one from another process only shows
        # in the store, so look there every second meanwhile.
        while wake is not None and not self.cancel_requested:
            left = until - time.monotonic()
            if left <= 0 or wake.wait(min(left, 1.0)):
                return

    def adopt(self, snapshot: TaskSnapshot, *, tell: bool = True) -> None:
        """Take what the copy of this task that runs elsewhere (in a child
        process) reported: its progress and errors, and a retry wait. With
        ``tell``, tell the observer."""
        self.progress = snapshot.progress
        self.errors = snapshot.errors
        if not tell:
            return
        if snapshot.status is TaskStatus.QUEUED and self.status is TaskStatus.RUNNING:
            self.wait_for_retry()
        elif self.observer is not None:
            self.observer.changed(self)

    def set_progress(self, current: float, total: float | None, message: str | None) -> None:
        self.progress = {"current": current, "total": total, "message": message}
        if self.observer is not None:
            self.observer.changed(self)

    # -- its end ------------------------------------------------------------

    def end(
        self,
        status: TaskStatus,
        value: object = None,
        error: BaseException | None = None,
        *,
        add_error: bool = False,
    ) -> bool:
        """End the task: the one place where a task ends. ``False`` if it
        had ended already.

        The observer is told first, so that a waiter that wakes finds the
        outcome in the store too; then the handle settles, which wakes
        ``result()``, ``wait()`` and ``as_completed()`` and runs the
        done-callbacks.
        """
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            kept = self._kept
        self._publish(status, value, error, kept, add_error)
        return True

    def _publish(
        self,
        status: TaskStatus,
        value: object,
        error: BaseException | None,
        kept: bool,
        add_error: bool,
    ) -> None:
        # The end, once decided.
        if add_error and error is not None:
            self.add_error(error)
        self.finished_at = time.time()
        self.status = status
        if isinstance(error, TaskCancelled):
            self.cancel_error = error
        if self.observer is not None:
            self.observer.ended(self, value, error, kept)
        if status is TaskStatus.SUCCEEDED:
            self.handle.set_result(value)
        elif status is TaskStatus.FAILED:
            self.handle.set_exception(error)
        else:
            self.handle.set_cancelled()

    def cancel_queued(self, *, release: bool = False) -> bool:
        """Cancel the task if it has not started; ``True`` if this call did.

        :param release: Cancelled by a shutdown: a durable task is then
            released, to run in the next process, rather than cancelled.
        """
        if not self.claim():
            return False
        self.released = release and self.message.durable
        error = TaskCancelled(f"Task {self.message.name!r} was cancelled before it started.")
        self.end(TaskStatus.CANCELLED, error=error)
        if self.observer is not None:
            self.observer.cancelled_while_queued(self)
        return True

    def cancel_waiting(self) -> bool:
        """Cancel the task if it waits for its next attempt; ``True`` if
        this call did. Its worker wakes and starts nothing more."""
        with self._lock:
            if not self._waiting or self._ended:
                return False
            self._waiting = False
            self._ended = True
            kept = self._kept
        self._cancel_flag = True
        self._publish(TaskStatus.CANCELLED, None, self.cancelled_error(), kept, True)
        if self._wake is not None:
            self._wake.set()
        if self.observer is not None:
            self.observer.cancelled_while_queued(self)
        return True

    def request_cancel(self) -> None:
        """Ask the running task to stop, at its next ``check_cancelled()``."""
        self._cancel_flag = True
        if self._wake is not None:
            self._wake.set()
        if self.observer is not None:
            self.observer.changed(self)

    @property
    def cancel_requested(self) -> bool:
        """Whether the task was asked to stop, here or through the store."""
        if not self._cancel_flag and self.observer is not None:
            if self.observer.cancel_requested(self):
                self._cancel_flag = True
        return self._cancel_flag

    def time_out(self) -> bool:
        """End the task at its timeout (the watchdog calls this)."""
        return self._stop(
            TaskTimeout(
                f"Task {self.message.name!r} (id {self.handle.id}) did not finish"
                f" within its timeout of {self.message.options.timeout:g} s. It was"
                " asked to stop; a thread stays busy until the function returns,"
                " a child process is killed if it does not stop soon."
            )
        )

    def interrupt(self) -> bool:
        """End the running task at the shutdown deadline. A durable one is
        released to the next process, unless someone asked it to stop."""
        self.released = self.message.durable and not self.cancel_requested
        then = (
            "it is durable, so the next process will run it again"
            if self.released
            else "the process exits without waiting for it"
        )
        return self._stop(
            TaskCancelled(
                f"Task {self.message.name!r} (id {self.handle.id}) was still running"
                f" at the shutdown deadline and was interrupted. It was asked to"
                f" stop; {then}."
            )
        )

    def _stop(self, exc: TaskCancelled | TaskTimeout) -> bool:
        # Ask the task to stop, and end it now rather than when the function
        # returns, which may be never. Python cannot stop a thread, so the
        # worker stays busy until then, but the outcome is final and the
        # waiters are released.
        self._cancel_flag = True
        if self._wake is not None:
            self._wake.set()
        status = TaskStatus.CANCELLED if isinstance(exc, TaskCancelled) else TaskStatus.FAILED
        # A released task did not fail: it runs again.
        if not self.end(status, error=exc, add_error=not self.released):
            return False
        if status is TaskStatus.CANCELLED:
            logger.warning("%s", exc)
        else:
            logger.error("%s", exc)
        return True

    def cancelled_error(self) -> TaskCancelled:
        """The error that ends a task which stopped after a cancel request."""
        return TaskCancelled(f"Task {self.message.name!r} (id {self.handle.id}) was cancelled.")

    # -- what others see ----------------------------------------------------

    def snapshot(self) -> TaskSnapshot:
        """The task now, for the store."""
        return TaskSnapshot(
            self.message,
            self.status,
            self.attempt,
            self.progress,
            self.errors,
            self._cancel_flag,
            self.started_at,
            self.finished_at,
            self.released,
        )
