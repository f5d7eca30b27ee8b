"""Where task records live, so that ``bg.get(id)`` finds them.

Only the in-memory store exists today. A store is told about a result when its
id is first made, and must keep queued and running tasks; how long it keeps
finished ones is its own policy.
"""

from __future__ import annotations

import abc
import threading
import time
import typing as t
from collections import OrderedDict
from concurrent.futures import Future

from ._process import ProcessLocal

if t.TYPE_CHECKING:
    from ._result import TaskResult


class TaskStore(abc.ABC):
    """The interface of a task store."""

    @abc.abstractmethod
    def add(self, task_id: str, result: TaskResult[t.Any]) -> None:
        """Record a task under its id."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskResult[t.Any] | None:
        """The task with this id, or ``None`` if unknown or expired."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many records the store holds now."""


class MemoryStore(TaskStore, ProcessLocal):
    """Keep results in this process's memory.

    Queued and running tasks are always kept. Finished ones are kept for
    ``ttl`` seconds after they finish, and at most ``max_results`` of them:
    past that the oldest is dropped first. So memory stays bounded however
    many tasks run.
    """

    def __init__(self, ttl: float | None, max_results: int) -> None:
        self.ttl = ttl
        self.max_results = max_results
        ProcessLocal.__init__(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, TaskResult[t.Any]] = {}
        # id -> monotonic finish time, oldest first.
        self._finished: OrderedDict[str, float] = OrderedDict()

    def add(self, task_id: str, result: TaskResult[t.Any]) -> None:
        self._check_process()
        with self._lock:
            self._records[task_id] = result
        # Future's own method: this bookkeeping needs no app context, and it
        # runs at once if the task is already done.
        Future.add_done_callback(result, lambda _: self._on_finished(task_id))

    def _on_finished(self, task_id: str) -> None:
        with self._lock:
            self._finished[task_id] = time.monotonic()
            self._evict()

    def get(self, task_id: str) -> TaskResult[t.Any] | None:
        self._check_process()
        with self._lock:
            self._evict()
            return self._records.get(task_id)

    def __len__(self) -> int:
        return len(self._records)

    def _evict(self) -> None:
        finished = self._finished
        while len(finished) > self.max_results:
            self._records.pop(finished.popitem(last=False)[0], None)
        if self.ttl is not None:
            expired_before = time.monotonic() - self.ttl
            while finished and next(iter(finished.values())) <= expired_before:
                self._records.pop(finished.popitem(last=False)[0], None)
