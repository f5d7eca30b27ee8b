"""A :class:`concurrent.futures.Future` that costs nothing until someone waits.

A plain ``Future`` makes a :class:`threading.Condition` when it is created:
1.3 kB and a microsecond, for every task, though most tasks are never waited
for. :class:`LazyFuture` makes it the first time a waiter needs it, and a
task that ends before anyone waits never has one.

This leans on how CPython's ``Future`` keeps its state: the attributes
``_condition``, ``_state``, ``_result``, ``_exception``, ``_waiters`` and
``_done_callbacks``, which :func:`concurrent.futures.wait` and
:func:`~concurrent.futures.as_completed` use directly. They have been the
same since Python 3.2; ``tests/test_futures.py`` runs CPython's own cases on
this class and fails if they change. This module is the only one that
touches them.
"""

from __future__ import annotations

import logging
import threading
import typing as t
from concurrent.futures import CancelledError, Future, InvalidStateError

R = t.TypeVar("R")

logger = logging.getLogger("flask_bgtasks")

# The states of concurrent.futures._base, by value. A LazyFuture is never
# RUNNING: whoever runs it says so through its own status.
PENDING = "PENDING"
CANCELLED = "CANCELLED"
CANCELLED_AND_NOTIFIED = "CANCELLED_AND_NOTIFIED"
FINISHED = "FINISHED"
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})

# Guards the moment a condition is made against the moment the future
# settles: whichever comes first decides whether anyone must be woken.
_making = threading.Lock()


class LazyFuture(Future[R]):
    """A ``Future`` whose condition, waiter list and callback list are made
    on first use. Whoever runs the work settles it once, with
    :meth:`set_result`, :meth:`set_exception` or :meth:`set_cancelled`."""

    __slots__ = ("_state", "_result", "_exception", "_cond", "_waiter_list", "_callbacks")

    def __init__(self) -> None:
        # Not Future.__init__, which makes the condition now.
        self._state = PENDING
        self._result: R | None = None
        self._exception: BaseException | None = None
        self._cond: threading.Condition | None = None
        self._waiter_list: list[t.Any] | None = None
        self._callbacks: list[t.Callable[[Future[R]], object]] | None = None

    # What concurrent.futures reads and writes directly, made on demand. ----

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _making:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    @property
    def _waiters(self) -> list[t.Any]:  # type: ignore[override]
        # Only ever used under the condition, which serialises this.
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @property
    def _done_callbacks(self) -> list[t.Callable[[Future[R]], object]]:
        callbacks = self._callbacks
        if callbacks is None:
            callbacks = self._callbacks = []
        return callbacks

    # The Future API, without the condition when the answer is known. ------

    def done(self) -> bool:
        # Once a state is final it never changes, so no lock is needed.
        return self._state in _DONE

    def result(self, timeout: float | None = None) -> R:
        if self._state == FINISHED:
            if self._exception is not None:
                raise self._exception
            return self._result  # type: ignore[return-value]
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)

    def add_done_callback(self, fn: t.Callable[[Future[R]], object]) -> None:
        with self._condition:
            if self._state not in _DONE:
                self._done_callbacks.append(fn)
                return
        _call(fn, self)

    def set_result(self, result: R) -> None:
        """Settle as finished with ``result``, and wake the waiters."""
        self._settle(FINISHED, result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        """Settle as failed with ``exception``, and wake the waiters."""
        self._settle(FINISHED, None, exception)

    def set_cancelled(self) -> None:
        """Settle as cancelled: ``CANCELLED_AND_NOTIFIED``, the state that
        ``wait()`` and ``as_completed()`` count as done."""
        self._settle(CANCELLED_AND_NOTIFIED, None, None)

    def _settle(self, state: str, result: R | None, exception: BaseException | None) -> None:
        with _making:
            cond = self._cond
            if cond is None:
                # Nobody has waited or asked for a callback, and whoever
                # does from now on makes the condition after this and finds
                # the final state under it.
                self._check_pending()
                self._result, self._exception, self._state = result, exception, state
                return
        with cond:
            self._check_pending()
            self._result, self._exception, self._state = result, exception, state
            for waiter in self._waiters:
                if state == CANCELLED_AND_NOTIFIED:
                    waiter.add_cancelled(self)
                elif exception is not None:
                    waiter.add_exception(self)
                else:
                    waiter.add_result(self)
            cond.notify_all()
            callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            _call(fn, self)

    def _check_pending(self) -> None:
        if self._state in _DONE:
            raise InvalidStateError(f"{self!r} has settled already.")

    def set_running_or_notify_cancel(self) -> bool:
        # Executors call this; whoever runs a LazyFuture does not.
        raise NotImplementedError(
            "A LazyFuture is settled with set_result/set_exception/set_cancelled."
        )

    def cancel(self) -> bool:  # pragma: no cover - subclasses define what cancel means
        raise NotImplementedError


def _call(fn: t.Callable[[Future[R]], object], future: Future[R]) -> None:
    try:
        fn(future)
    except Exception:
        logger.exception("A done-callback of %r raised an exception.", future)


__all__ = ["CancelledError", "LazyFuture"]
