"""The default store: this process's memory."""

from __future__ import annotations

import threading
import time
import typing as t
from collections import OrderedDict
from concurrent.futures import Future

from .._process import ProcessLocal
from .._record import TaskRecord, record_of
from . import TaskStore

if t.TYPE_CHECKING:
    from .._result import TaskResult, TaskStatus


class MemoryStore(TaskStore, ProcessLocal):
    """Keep results in this process's memory, as live objects.

    A task is recorded the first time its id is read: a task whose id nobody
    read can't be looked up, so it costs nothing here. Queued and running
    tasks are always kept. Finished ones are kept for ``ttl`` seconds after
    they finish, and at most ``max_results`` of them: past that the oldest
    is dropped first. So memory stays bounded however many tasks run.
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

    def register(self, task_id: str, result: TaskResult[t.Any]) -> None:
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

    live = get

    def record(self, task_id: str) -> TaskRecord | None:
        result = self.get(task_id)
        return None if result is None else record_of(result)

    def records(self, status: TaskStatus | None = None, limit: int = 50) -> list[TaskRecord]:
        self._check_process()
        with self._lock:
            self._evict()
            results = list(self._records.values())
        records = [record_of(result) for result in results]
        records = [record for record in records if status is None or record.status == status]
        records.sort(key=lambda record: record.submitted_at, reverse=True)
        return records[:limit]

    def cancel(self, task_id: str) -> bool:
        result = self.get(task_id)
        return result is not None and result.cancel()

    def purge(self, older_than: float) -> int:
        self._check_process()
        before = time.monotonic() - older_than
        with self._lock:
            old = [task_id for task_id, at in self._finished.items() if at <= before]
            for task_id in old:
                del self._finished[task_id]
                self._records.pop(task_id, None)
        return len(old)

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
