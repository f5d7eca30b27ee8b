"""How background work ends, in one place: the shutdown procedure that
:meth:`BGTasks.shutdown` and the drain at exit share, its summary, the quick
stop, and an opt-in SIGTERM handler for servers that have no graceful
SIGTERM of their own.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import typing as t
import warnings
import weakref

from ._context import app_context
from ._errors import UsageError
from ._record import TaskStatus

if t.TYPE_CHECKING:
    from types import FrameType

    from ._execution import Execution
    from ._runtime import Runtime

#: One step of a shutdown for one app: its runtime, whether to cancel what
#: is queued, and the time.monotonic() deadline (``None``: wait for ever).
Plan = t.Sequence[tuple["Runtime", bool, "float | None"]]
#: The on_shutdown hooks: called once per app, in its app context, after
#: its tasks have drained.
Hooks = t.Sequence[t.Callable[[], object]]


@dataclasses.dataclass(frozen=True)
class ShutdownSummary:
    """What :meth:`BGTasks.shutdown` did with the tasks it found unfinished.

    .. versionadded:: 0.1
    """

    #: How many of them finished (succeeded or failed) during the shutdown.
    finished: int = 0
    #: Ids of queued tasks that were cancelled and never ran.
    cancelled: list[str] = dataclasses.field(default_factory=list)
    #: Ids of tasks still running at the deadline, ended as cancelled.
    interrupted: list[str] = dataclasses.field(default_factory=list)
    #: Ids of durable tasks that were queued, or still running at the
    #: deadline, and were left in the store for the next process to run.
    released: list[str] = dataclasses.field(default_factory=list)
    #: Ids of tasks still queued or running when it returned; only with
    #: ``wait=False``.
    unfinished: list[str] = dataclasses.field(default_factory=list)


logger = logging.getLogger("flask_bgtasks")

# The drains of the extension instances, held weakly: a forgotten
# instance has nothing to drain.
_drains: list[weakref.WeakMethod[t.Callable[[], None]]] = []


def drain_at_exit(method: t.Callable[[], None]) -> None:
    """Call the bound ``method`` when the interpreter exits, if its object
    is still alive then."""
    _drains[:] = [ref for ref in _drains if ref() is not None]
    _drains.append(weakref.WeakMethod(method))


# The process whose exit drained already: _drain_all is registered twice.
_drained_pid: int | None = None


def _drain_all() -> None:
    global _drained_pid
    if _drained_pid == os.getpid():
        return
    _drained_pid = os.getpid()
    # A Ctrl-C anywhere in the drain is a quick stop, never a KeyboardInterrupt.
    with quick_stop_signals():
        for ref in list(_drains):
            method = ref()
            if method is not None:
                method()


def _run_at_exit(fn: t.Callable[[], None]) -> None:
    """Run ``fn`` when the interpreter exits, before every :mod:`atexit`
    handler, whenever that was registered, so that none of them can submit
    a task once the drain has begun: they get :class:`ShutdownError`.

    CPython calls the hooks of the private ``threading._register_atexit``
    first, before it joins the non-daemon threads and before the atexit
    handlers; :mod:`concurrent.futures` uses it for the same reason, and no
    public hook runs that early. A test in ``tests/test_exit.py`` fails if
    it stops working. ``fn`` is registered with :mod:`atexit` too, for
    embedders that run the atexit handlers alone; the drain runs once.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(fn)
    atexit.register(fn)


# Registering costs nothing and does nothing for an extension that was never
# registered on an app.
_run_at_exit(_drain_all)


# -- the quick stop -------------------------------------------------------

_quick = threading.Event()
# True while the drain at exit waits for the tasks in the main thread, where
# a quick-stop signal may then end the wait.
_waiting = False
# The name of the signal that asked for the quick stop, until it is logged.
_received = ""


class _QuickStop(Exception):
    """Raised by the quick-stop signal handler into the drain's wait."""


def quick_stop() -> None:
    """Stop quickly: the drain at exit cancels the queued tasks (a durable
    task is left in the store for the next process) and ends the running
    ones at once, instead of waiting up to ``BGTASKS_SHUTDOWN_TIMEOUT``. Each
    unfinished task is logged with its id. Safe to call from a signal
    handler and from any thread, before or during the drain.

    Gunicorn calls its ``worker_int`` hook on a quick shutdown (SIGINT,
    SIGQUIT); hand it on in ``gunicorn.conf.py``:

    .. code-block:: python

        from flask_bgtasks import quick_stop

        def worker_int(worker):
            quick_stop()

    During the drain at exit, SIGINT (a second Ctrl-C) and SIGQUIT do this
    by themselves.

    .. versionadded:: 0.1
    """
    _quick.set()


@contextlib.contextmanager
def quick_stop_signals() -> t.Iterator[None]:
    """For the drain at exit: SIGINT and SIGQUIT mean :func:`quick_stop`.
    Only in the main thread, where the interpreter runs its exit handlers
    (and signal handlers can be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGINT", "SIGQUIT")
    signums = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, _on_quick_signal) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: set from C, which Python can't put back. A KeyboardInterrupt
            # now could only cut an exit handler short and print a traceback:
            # instead, Ctrl-C ends the process at once.
            if handler is None or handler is signal.default_int_handler:
                handler = signal.SIG_DFL
            signal.signal(signum, handler)


def _on_quick_signal(signum: int, frame: FrameType | None) -> None:
    # It logs nothing: the main thread may be in the middle of a log call,
    # which a second write to the same stream would break.
    global _received, _waiting
    if not _quick.is_set():
        _received = signal.Signals(signum).name
    _quick.set()
    if _waiting:
        _waiting = False  # once: another signal must not cut this one short
        raise _QuickStop


def _log_received() -> None:
    global _received
    if _received:
        message = "%s received while draining: cancelling the queued background tasks and ending"
        logger.warning(message + " the running ones now.", _received)
        _received = ""


def wait_unless_stopped(wait: t.Callable[[float | None], bool], deadline: float | None) -> bool:
    """``wait(deadline)``, which returns whether the tasks are done; but
    ``False`` as soon as a quick stop is asked for."""
    global _waiting
    try:
        try:
            _waiting = True
            # Checked after _waiting is set: a signal from here on ends the wait.
            return wait(time.monotonic() if _quick.is_set() else deadline)
        finally:
            _waiting = False
    except _QuickStop:  # also when it came in the inner finally
        return False
    finally:
        _log_received()


def install_sigterm_handler() -> None:
    """Make SIGTERM end the process like ``sys.exit(0)``, so that the
    extension drains its tasks at exit, within ``BGTASKS_SHUTDOWN_TIMEOUT``.

    For servers that have no graceful SIGTERM of their own, such as Waitress;
    Gunicorn and uWSGI have their own, so don't use it there. A Python
    handler installed before is called first. Call it from the main thread,
    for example in your app factory.

    .. code-block:: python

        bg.init_app(app)
        install_sigterm_handler()

    :raises UsageError: If called outside the main thread.

    .. versionadded:: 0.1
    """
    if threading.current_thread() is not threading.main_thread():
        raise UsageError(
            "install_sigterm_handler() must be called from the main thread;"
            " call it in the app factory or at import time."
        )
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: FrameType | None) -> None:
        # A second SIGTERM would raise SystemExit inside the drain and lose
        # the tasks; the drain's deadline bounds the exit already.
        signal.signal(signal.SIGTERM, _already_exiting)
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handle)


def _already_exiting(signum: int, frame: FrameType | None) -> None:
    logger.warning("SIGTERM received again; already exiting, within BGTASKS_SHUTDOWN_TIMEOUT.")


# -- the procedure ----------------------------------------------------------

#: Stands for "not given" among shutdown()'s arguments.
UNSET: t.Any = object()


def keyword_arguments(
    args: tuple[t.Any, ...], wait: bool, timeout: float | None, cancel_pending: bool
) -> tuple[bool, float | None, bool]:
    """shutdown()'s arguments, with the deprecated positional ones
    (``shutdown(True, 5)``) mapped onto the keywords, and the defaults."""
    given: dict[str, t.Any] = {"wait": wait, "timeout": timeout, "cancel_pending": cancel_pending}
    if args:
        if len(args) > 3:
            raise TypeError(f"shutdown() takes at most 3 arguments, got {len(args)}.")
        warnings.warn(
            "Passing shutdown()'s arguments by position is deprecated; name"
            " them: shutdown(wait=..., timeout=..., cancel_pending=...).",
            DeprecationWarning,
            stacklevel=3,
        )
        for name, value in zip(given, args):
            if given[name] is not UNSET:
                raise TypeError(f"shutdown() got multiple values for argument {name!r}.")
            given[name] = value
    return (
        True if given["wait"] is UNSET else bool(given["wait"]),
        None if given["timeout"] is UNSET else given["timeout"],
        False if given["cancel_pending"] is UNSET else bool(given["cancel_pending"]),
    )


def shutdown(plan: Plan, wait: bool, hooks: Hooks, *, at_exit: bool = False) -> ShutdownSummary:
    """Take every app of ``plan`` through the shutdown, each step for every
    app before the next step, so that all apps stop accepting work at once
    and share the time until the deadline."""
    for runtime, _, _ in plan:
        runtime.closing = True
    unfinished = [execution for runtime, _, _ in plan for execution in runtime.unfinished()]
    cancelled = [
        execution
        for runtime, cancel, _ in plan
        for execution in runtime.cancel_dropped(runtime.backend.close(cancel))
    ]
    if not wait:
        return ShutdownSummary(
            cancelled=_ids(cancelled, released=False),
            released=_ids(cancelled, released=True),
            unfinished=[execution.handle.id for execution in unfinished if not execution.ended],
        )
    interrupted: list[Execution] = []
    for runtime, _, deadline in plan:
        # At exit, a quick stop (a second Ctrl-C, say) ends the wait.
        backend = runtime.backend
        done = wait_unless_stopped(backend.wait, deadline) if at_exit else backend.wait(deadline)
        if not done:
            backend.stop()
            late_cancelled, late_interrupted = runtime.interrupt()
            cancelled += late_cancelled
            interrupted += late_interrupted
    for runtime, _, _ in plan:
        _run_hooks(runtime, hooks)
        # Last, so that the tasks' outcomes are written and the upkeep
        # renewed their leases until they ended.
        runtime.store.close()
    finished = (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    return ShutdownSummary(
        finished=sum(1 for execution in unfinished if execution.handle.status in finished),
        cancelled=_ids(cancelled, released=False),
        interrupted=_ids(interrupted, released=False),
        released=_ids(cancelled + interrupted, released=True),
    )


def drain(runtimes: t.Sequence[Runtime], hooks: Hooks) -> None:
    """The drain at exit of one extension: close every app, then drain the
    apps this process ran tasks for, within their BGTASKS_SHUTDOWN_TIMEOUT,
    or at once after a quick stop; log how it ended."""
    start = time.monotonic()
    pid = os.getpid()
    # Nothing submits from here on, in any app, also from an exit handler
    # or a thread that is still running: an app that never ran a task in
    # this process (the master of a pre-forking server) is closed too.
    for runtime in runtimes:
        if runtime.active_pid != pid:
            runtime.backend.close()
    quick = _quick.is_set()  # quick_stop() was called, or a signal came
    plan = [
        (
            runtime,
            quick or runtime.config.shutdown_queued == "cancel",
            start + (0 if quick else runtime.config.shutdown_timeout),
        )
        for runtime in runtimes
        if runtime.active_pid == pid
    ]
    pending = [execution.handle.id for runtime, _, _ in plan for execution in runtime.unfinished()]
    ids = ", ".join(pending)
    _log_received()
    # Named up front, so that a kill before the deadline (a server's own
    # timeout, say) still leaves a trace of what was lost.
    if pending and quick:
        logger.warning("Stopping quickly: ending %s now: %s", _tasks(pending), ids)
    elif pending:
        longest = max(deadline for _, _, deadline in plan) - start
        logger.warning("Draining %s at exit, for at most %g s: %s", _tasks(pending), longest, ids)
    summary = shutdown(plan, wait=True, hooks=hooks, at_exit=True)
    elapsed, released = time.monotonic() - start, summary.released
    left = ""
    if released:
        left = f"; {_tasks(released, 'durable task')} left in the store for the next process: "
        left += ", ".join(released)
    if summary.cancelled or summary.interrupted:
        # Its first sentence is the one earlier versions logged alone.
        counts = (summary.finished, len(summary.cancelled), len(summary.interrupted))
        logger.warning(
            "Background tasks at exit: %d finished, %d cancelled while queued, %d interrupted"
            " at the deadline. The drain ended after %.1f s%s.",
            *counts,
            elapsed,
            left,
        )
    elif pending or released:
        message = "The drain at exit ended after %.1f s: %d of %s finished%s."
        logger.warning(message, elapsed, summary.finished, _tasks(pending), left)


def _tasks(ids: t.Sized, noun: str = "background task") -> str:
    return f"{len(ids)} {noun}{'' if len(ids) == 1 else 's'}"  # 1 task, 2 tasks


def _run_hooks(runtime: Runtime, hooks: Hooks) -> None:
    if runtime.hooks_ran or not hooks:
        return
    runtime.hooks_ran = True
    with app_context(runtime.app):
        for hook in hooks:
            try:
                hook()
            except Exception:
                logger.exception("The on_shutdown hook %r raised an exception.", hook)


def _ids(executions: t.Iterable[Execution], *, released: bool) -> list[str]:
    # Through the handle: a task named in a summary can be looked up.
    return [execution.handle.id for execution in executions if execution.released is released]
