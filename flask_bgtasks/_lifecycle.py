"""The end of a process: the shutdown summary, the drain at exit, and an
opt-in SIGTERM handler for servers that have no graceful SIGTERM of their own.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import signal
import threading
import typing as t
import weakref

from ._errors import UsageError

if t.TYPE_CHECKING:
    from types import FrameType

    from ._extension import BGTasks


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

_instances: weakref.WeakSet[BGTasks] = weakref.WeakSet()


def drain_at_exit(extension: BGTasks) -> None:
    """Have ``extension`` drain its pools when the interpreter exits."""
    _instances.add(extension)


# atexit handlers run after the non-daemon threads were joined and before
# daemon threads, like the workers, are stopped. Registering costs nothing
# and does nothing for an extension that was never registered on an app.
@atexit.register
def _drain_all() -> None:
    for extension in list(_instances):
        extension._drain_at_exit()


def install_sigterm_handler() -> None:
    """Make SIGTERM end the process like ``sys.exit(0)``, so that the
    extension drains its tasks at exit, within ``BGTASKS_SHUTDOWN_TIMEOUT``.

    For servers that have no graceful SIGTERM of their own, such as Waitress;
    Gunicorn and uWSGI have their own, so don't use it there. A Python
    handler installed before is called first. Call it from the main thread,
    for example in your app factory.

    .. code-block:: python

        from flask_bgtasks import install_sigterm_handler

        def create_app():
            app = Flask(__name__)
            bg.init_app(app)
            install_sigterm_handler()
            return app

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
    logger.warning(
        "SIGTERM received again; already exiting, within BGTASKS_SHUTDOWN_TIMEOUT."
    )
