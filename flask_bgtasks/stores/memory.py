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

    The limits hold whenever someone can look: a task's end is counted
    before anyone waiting for it wakes, and lookups and ``len()`` drop
    what expired first. Values are kept as the live objects the tasks
    returned, so ``BGTASKS_MAX_PAYLOAD_BYTES`` does not apply here.
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
        # The recorded tasks that have not finished, to find a task's id
        # when it finishes.
        self._unfinished: dict[Future[t.Any], str] = {}

    def register(self, task_id: str, result: TaskResult[t.Any]) -> None:
        self._check_process()
        with self._lock:
            self._records[task_id] = result
            self._unfinished[result] = task_id
        # Future's own method: this bookkeeping needs no app context, and it
        # runs at once if the task is already done. It counts the end of a
        # task that finished() missed: one whose id was first read as it
        # ended, or that has no owner to call finished().
        Future.add_done_callback(result, self._on_finished)

    def finished(self, result: TaskResult[t.Any], value: object = None) -> None:
        # Called before those waiting for the task wake: when they look,
        # the limits already count it.
        if result in self._unfinished:  # a quick miss for tasks never recorded
            self._on_finished(result)

    def _on_finished(self, result: Future[t.Any]) -> None:
        with self._lock:
            task_id = self._unfinished.pop(result, None)
            # Once only: a second call could count a record evicted meanwhile.
            if task_id is not None:
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
        self._check_process()
        with self._lock:
            self._evict()
            return len(self._records)

    def _evict(self) -> None:
        finished = self._finished
        while len(finished) > self.max_results:
            self._records.pop(finished.popitem(last=False)[0], None)
        if self.ttl is not None:
            expired_before = time.monotonic() - self.ttl
            while finished and next(iter(finished.values())) <= expired_before:
                self._records.pop(finished.popitem(last=False)[0], None)
