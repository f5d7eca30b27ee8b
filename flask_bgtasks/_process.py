"""State that belongs to one process and starts empty in a forked child.

Every :class:`ProcessLocal` is kept in a registry, and one set of
:func:`os.register_at_fork` handlers walks it, the way CPython's
``logging`` reinitialises its handlers' locks:

1.  Before the fork, in the forking thread, each object's
    :meth:`~ProcessLocal._before_fork` runs: it stops its idle threads and
    waits until no thread of its own is inside C code that holds global
    locks (SQLite), because a child copies such a lock in whatever state it
    is and would wait for it forever.
2.  After the fork, in the parent, each object's
    :meth:`~ProcessLocal._after_fork_in_parent` runs: it lets its threads go
    on. Stopped threads start again on next use, lazily, so a Gunicorn master
    that forked keeps none of them.
3.  After the fork, in the child, every object rebuilds its state at once
    with :meth:`~ProcessLocal._init_state`: no records, locks, queues or
    threads of the parent survive.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

logger = logging.getLogger("flask_bgtasks")

# Held only while an object rebuilds its state after a fork, so the chance that
# a fork copies it in the locked state is negligible.
_reset_lock = threading.Lock()

# Every live ProcessLocal. Weak: the registry must not keep an app's pools and
# stores alive.
_registry: weakref.WeakSet[ProcessLocal] = weakref.WeakSet()
_registry_lock = threading.Lock()


class ProcessLocal:
    """Base class for objects whose locks, threads and records must not cross
    a ``fork()``.

    Gunicorn's ``--preload``, uWSGI and ``multiprocessing`` fork a process in
    which the extension may already hold threads, queues and locks. None of
    the threads exist in the child and any lock may have been copied while
    held, so the child must start with fresh state.

    The contract for a subclass:

    -   :meth:`_init_state` creates every lock, queue, record and thread
        handle. It runs in the constructor and, in a forked child, again
        right after the fork, before any other code of the child.
    -   :meth:`_before_fork` runs in the thread that forks, before the fork.
        It stops this object's idle threads and returns once none of its
        threads is inside a C library that holds global locks. It may wait
        for its own threads, but never for the thread that forks
        (:func:`threading.current_thread`), and never while it holds a lock
        that another object's thread may need: the hooks of all objects run
        one after another, in no fixed order.
    -   :meth:`_after_fork_in_parent` undoes what :meth:`_before_fork` paused;
        it need not restart the stopped threads, which start again on next
        use.
    -   Public methods call :meth:`check_process` first. It catches the forks
        done from C that skip the :func:`os.register_at_fork` handlers.

    Both hooks do nothing by default. An error in one is logged, and the
    other objects' hooks still run.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._init_state()
        with _registry_lock:
            _registry.add(self)

    def _init_state(self) -> None:
        """Create the per-process state. Called again in a forked child."""
        raise NotImplementedError

    def _before_fork(self) -> None:
        """This process is about to fork: stop idle threads, and keep the
        others out of code whose locks a child must not copy."""

    def _after_fork_in_parent(self) -> None:
        """The fork is done, in the parent: undo :meth:`_before_fork`."""

    def check_process(self) -> None:
        """Rebuild the state if this object was inherited through a fork.
        Its own public methods call it; so does whoever owns it, when it
        first sees a new process."""
        if self._pid != os.getpid():
            with _reset_lock:
                if self._pid != os.getpid():
                    self._reset()

    def _reset(self) -> None:
        self._init_state()
        self._pid = os.getpid()

    def _after_fork_in_child(self) -> None:
        # An object made just now, by another at-fork hook, is fresh.
        if self._pid != os.getpid():
            self._reset()


class ForkGate:
    """Keeps threads out of a C library while the process forks.

    Every call into the library runs ``with gate:``; a
    :meth:`ProcessLocal._before_fork` calls :meth:`close`, which waits until
    the threads inside have left and holds back the others until
    :meth:`open`. Cheap when no fork is under way: a lock taken twice.
    Calls must not nest, and nothing inside may wait for a thread that is
    outside.
    """

    __slots__ = ("_changed", "_closers", "_inside", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._inside = 0
        # A count: two threads may fork at the same time.
        self._closers = 0

    def __enter__(self) -> None:
        with self._lock:
            while self._closers:
                self._changed.wait()
            self._inside += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._closers and not self._inside:
                self._changed.notify_all()

    def close(self) -> None:
        """Wait until no thread is inside, and let none in until :meth:`open`."""
        with self._lock:
            self._closers += 1
            self._changed.wait_for(lambda: not self._inside)

    def open(self) -> None:
        """Undo one :meth:`close`."""
        with self._lock:
            self._closers -= 1
            if not self._closers:
                self._changed.notify_all()


def _instances() -> list[ProcessLocal]:
    with _registry_lock:
        return list(_registry)


def _call_hooks(hook: str, failed: str) -> None:
    # One object's error must not keep the others from their hook.
    for instance in _instances():
        try:
            getattr(instance, hook)()
        except Exception:
            logger.exception(failed, instance)


def _before_fork() -> None:
    _call_hooks("_before_fork", "Preparing %r for a fork failed.")


def _after_fork_in_parent() -> None:
    _call_hooks("_after_fork_in_parent", "Resuming %r after a fork failed.")


def _after_fork_in_child() -> None:
    global _registry_lock, _reset_lock
    # Another thread of the parent may have held them at the fork; that
    # thread does not exist here, so they would never be released.
    _registry_lock = threading.Lock()
    _reset_lock = threading.Lock()
    _call_hooks("_after_fork_in_child", "Resetting %r in a forked child failed.")


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
