"""Warn when Waitress serves the app and SIGTERM would lose its tasks.

Waitress installs no SIGTERM handler, so with Python's default one the
process ends at once on ``docker stop``, systemd's or Kubernetes' stop:
no drain, no exit handler, no log line. :func:`install_sigterm_handler`
exists for that, and this says so once, on the first request, while the
server is known: an app factory runs before anyone can tell which server
will call it, and a test suite that merely imports Waitress serves nothing
through it.
"""

from __future__ import annotations

import logging
import signal
import threading

from ._context import served_by_waitress

logger = logging.getLogger("flask_bgtasks")

_lock = threading.Lock()
# Set by the first request this process serves: one server per process.
_checked = False


def check_waitress() -> None:
    """A ``before_request`` hook: on the first request of the process, warn
    if it came through Waitress and SIGTERM has no Python handler."""
    global _checked
    if _checked:  # the cost on every later request
        return
    with _lock:  # Waitress serves the first requests on several threads
        if _checked:
            return
        _checked = True
    # A Python handler, the helper's or one of the app's own, means someone
    # took charge of SIGTERM; the default (or SIG_IGN) loses the tasks.
    if served_by_waitress() and not callable(signal.getsignal(signal.SIGTERM)):
        logger.warning(
            "Waitress has no graceful SIGTERM, and this process has no handler"
            " for it: SIGTERM (docker stop, systemd, Kubernetes) ends the"
            " process at once, and its queued and running background tasks are"
            " lost without a log line. Call"
            " flask_bgtasks.install_sigterm_handler() in the app factory, so"
            " that SIGTERM drains the tasks within BGTASKS_SHUTDOWN_TIMEOUT."
        )
