"""State that belongs to one process and starts empty in a forked child."""

from __future__ import annotations

import os
import threading

# Held only while an object rebuilds its state after a fork, so the chance that
# a fork copies it in the locked state is negligible.
_reset_lock = threading.Lock()


class ProcessLocal:
    """Base class for objects whose locks, threads and records must not cross
    a ``fork()``.

    Gunicorn's ``--preload``, uWSGI and ``multiprocessing`` fork a process in
    which the extension may already hold threads, queues and locks. None of
    the threads exist in the child and any lock may have been copied while
    held, so the child must start with fresh state. Comparing the process id
    catches every kind of fork, including forks done from C that skip
    :func:`os.register_at_fork` handlers.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._init_state()

    def _init_state(self) -> None:
        """Create the per-process state. Called again in a forked child."""
        raise NotImplementedError

    def _check_process(self) -> None:
        """Rebuild the state if this object was inherited through a fork."""
        if self._pid != os.getpid():
            with _reset_lock:
                if self._pid != os.getpid():
                    self._init_state()
                    self._pid = os.getpid()
