"""Per-task timeouts: one watchdog thread ends tasks that run too long.

Knows nothing of Flask. The thread starts with the first task that has a
timeout and exits as soon as no such task is running, so an app that uses no
timeouts never has it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import typing as t

from ._process import ProcessLocal

if t.TYPE_CHECKING:
    from ._execution import Execution


class Watchdog(ProcessLocal):
    """Call :meth:`~._execution.Execution.time_out` on each watched task
    still running at its deadline."""

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # (deadline, tie-breaker, result), earliest first.
        self._heap: list[tuple[float, int, Execution]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        # Between _before_fork() and _after_fork_in_parent().
        self._forking = False

    def _before_fork(self) -> None:
        # The thread stops, busy or not, so that a process that forks keeps
        # no idle thread; it starts again after the fork if tasks are watched.
        with self._lock:
            self._forking = True
            thread = self._thread
            self._changed.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _after_fork_in_parent(self) -> None:
        with self._lock:
            self._forking = False
            if self._heap:
                self._start()

    def _start(self) -> None:
        # Called under _lock.
        if self._thread is None and not self._forking:
            self._thread = threading.Thread(target=self._run, name="bgtasks-timeouts", daemon=True)
            self._thread.start()

    def watch(self, execution: Execution, seconds: float) -> None:
        """End ``execution`` if it is still running ``seconds`` from now."""
        self.check_process()
        with self._lock:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), execution))
            if self._thread is None:
                self._start()
            else:
                self._changed.notify()

    def finished(self) -> None:
        """A watched task's run is over: the thread looks again, and exits
        if it has nothing left to watch."""
        with self._lock:
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._forking:
                    self._thread = None
                    return
                # Finished tasks need no watching: drop them.
                self._heap = [entry for entry in self._heap if not entry[2].ended]
                heapq.heapify(self._heap)
                now = time.monotonic()
                expired = []
                while self._heap and self._heap[0][0] <= now:
                    expired.append(heapq.heappop(self._heap)[2])
                if not expired:
                    if not self._heap:
                        self._thread = None
                        return
                    self._changed.wait(self._heap[0][0] - now)
                    continue
            for execution in expired:
                execution.time_out()


watchdog = Watchdog()
