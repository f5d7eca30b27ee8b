"""The one way a task runs: :func:`run`.

Whatever backend holds a task, a worker thread here (and, in later
versions, a child process or an engine's worker) runs it with this
function. It owns the whole attempt loop: a fresh :mod:`contextvars`
context and app context, ``current_task``, the timeout watchdog, retries and
their backoff, cancel checks, signals, and the outcome, which
:meth:`Execution.end <._execution.Execution.end>` publishes.
"""

from __future__ import annotations

import logging
import typing as t
from concurrent.futures import CancelledError
from contextvars import Context

from . import signals
from ._context import in_task_context, outcome_receivers, refuse_awaitable, send_outcome
from ._current import running_task
from ._record import TaskStatus
from ._timeouts import watchdog

if t.TYPE_CHECKING:
    from flask import Flask

    from ._execution import Execution

logger = logging.getLogger("flask_bgtasks")


def run(execution: Execution, app: Flask) -> None:
    """Run a claimed task in this thread, from its first attempt to its end."""
    timeout = execution.message.options.timeout
    if timeout is not None:
        watchdog.watch(execution, timeout)
    try:
        # A fresh context: nothing set by the submitter or by an earlier task
        # in this thread is visible, and nothing the task sets outlives it.
        Context().run(_attempts, execution, app)
    finally:
        if timeout is not None:
            watchdog.finished()


def _attempts(execution: Execution, app: Flask) -> None:
    running_task.set(execution)
    while execution.start_attempt():
        try:
            delay = in_task_context(app, execution.captured, _attempt, execution)
        except BaseException as exc:
            # Went wrong around the function: a signal receiver, or the
            # context's teardown.
            if execution.ended:
                logger.exception("Error after task %r finished.", execution.handle)
                return
            delay = _failed(execution, exc)
        if delay is None:
            return
        # The retry holds this worker while it waits. cancel(), a timeout
        # or the shutdown deadline wake it early.
        execution.back_off(delay)
        if execution.ended:  # by its timeout or the shutdown deadline
            return
        if execution.cancel_requested:
            execution.end(TaskStatus.CANCELLED, error=execution.cancelled_error(), add_error=True)
            return


def _attempt(execution: Execution, app: Flask) -> tuple[BaseException | None, float | None]:
    """One attempt, inside the task's app context: call the function,
    publish what came of it, send the signals. Returns the exception for the
    context's teardown, and the delay before a retry, if one follows."""
    handle = execution.handle
    if signals.task_started.receivers:
        signals.task_started.send(app, task=handle)
    message = execution.message
    error = None
    delay = None
    try:
        value = execution.call(*message.args, **message.kwargs)
        if value is not None:
            refuse_awaitable(message.name, value)
    except BaseException as exc:
        error = exc
        delay = _failed(execution, exc)
    else:
        _succeeded(execution, value)
    if delay is None and outcome_receivers() and handle.done():
        # What was published, which is not what the function did if a
        # timeout or the shutdown deadline ended the task first.
        send_outcome(app, handle)
    return error, delay


def _succeeded(execution: Execution, value: object) -> None:
    if execution.ended:
        logger.info(
            "Task %r returned after it was ended; the value is discarded.", execution.handle
        )
        return
    # The store refuses what it can't keep (not JSON, or too large): the
    # task fails with that error rather than lose its outcome.
    problem = execution.observer.check_value(execution, value) if execution.observer else None
    if problem is not None:
        _failed(execution, problem)
    elif not execution.end(TaskStatus.SUCCEEDED, value):
        logger.info(
            "Task %r returned after it was ended; the value is discarded.", execution.handle
        )


def _failed(execution: Execution, exc: BaseException) -> float | None:
    """Keep the error; end the task, or return the delay before a retry."""
    if execution.ended:
        logger.info("Task %r raised %r after it was ended; it is discarded.", execution.handle, exc)
        return None
    execution.add_error(exc)
    delay = _retry_delay(execution, exc)
    if delay is not None:
        execution.wait_for_retry()
        return delay
    message = execution.message
    if isinstance(exc, CancelledError):
        status = TaskStatus.CANCELLED
    else:
        status = TaskStatus.FAILED
    # Read before the end, through the handle: the log names the id, so the
    # task can be looked up by it as soon as its waiters wake.
    task_id = execution.handle.id
    if not execution.end(status, error=exc):
        logger.info("Task %r raised %r after it was ended; it is discarded.", execution.handle, exc)
    elif status is TaskStatus.CANCELLED:
        logger.info("Task %r (id %s) was cancelled while running.", message.name, task_id)
    else:
        logger.error(
            "Task %r (id %s) failed.",
            message.name,
            task_id,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    return None


def _retry_delay(execution: Execution, exc: BaseException) -> float | None:
    retry = execution.message.options.retry
    if retry is None or isinstance(exc, CancelledError) or execution.cancel_requested:
        return None
    delay = retry.delay(exc, len(execution.errors))
    if delay is None:
        return None
    message = execution.message
    logger.warning(
        "Task %r (id %s) attempt %d failed; retrying in %.1f s.",
        message.name,
        execution.handle.id,
        execution.attempt,
        delay,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return delay
