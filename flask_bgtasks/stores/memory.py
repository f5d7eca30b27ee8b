"""The default store: this process's memory."""

from __future__ import annotations

import threading
import time
import typing as t
from collections import OrderedDict

from .._process import ProcessLocal
from . import TaskStore

if t.TYPE_CHECKING:
    from .._message import TaskSnapshot
    from .._record import TaskRecord, TaskStatus
    from .._result import TaskResult


class MemoryStore(TaskStore, ProcessLocal):
    """Keep the handles of this process's tasks in memory.

    A task is kept once its id was handed out: a task whose id nobody read
    can't be looked up, so it costs nothing here. Queued and running tasks
    are always kept. Finished ones are kept for ``ttl`` seconds after they
    finish, and at most ``max_results`` of them: past that the oldest is
    dropped first. So memory stays bounded however many tasks run.

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
        self._handles: dict[str, TaskResult[t.Any]] = {}
        # id -> monotonic finish time, oldest first.
        self._finished: OrderedDict[str, float] = OrderedDict()
        # The kept tasks that have not finished.
        self._unfinished: set[str] = set()

    def keep(self, task_id: str, handle: TaskResult[t.Any]) -> None:
        self.check_process()
        with self._lock:
            self._handles[task_id] = handle
            self._unfinished.add(task_id)

    def finished(self, snapshot: TaskSnapshot, value: object = None) -> None:
        task_id = snapshot.message.id
        with self._lock:
            # Once only: a second call could count a record evicted meanwhile.
            if task_id in self._unfinished:
                self._unfinished.discard(task_id)
                self._finished[task_id] = time.monotonic()
                self._evict()

    def handle(self, task_id: str) -> TaskResult[t.Any] | None:
        self.check_process()
        with self._lock:
            self._evict()
            return self._handles.get(task_id)

    def record(self, task_id: str) -> TaskRecord | None:
        handle = self.handle(task_id)
        return None if handle is None else handle.record()

    def records(self, status: TaskStatus | None = None, limit: int = 50) -> list[TaskRecord]:
        self.check_process()
        with self._lock:
            self._evict()
            handles = list(self._handles.values())
        records = [handle.record() for handle in handles]
        records = [record for record in records if status is None or record.status == status]
        records.sort(key=lambda record: record.submitted_at, reverse=True)
        return records[:limit]

    def cancel(self, task_id: str) -> bool:
        handle = self.handle(task_id)
        return handle is not None and handle.cancel()

    def purge(self, older_than: float) -> int:
        self.check_process()
        before = time.monotonic() - older_than
        with self._lock:
            old = [task_id for task_id, at in self._finished.items() if at <= before]
            for task_id in old:
                del self._finished[task_id]
                self._handles.pop(task_id, None)
        return len(old)

    def __len__(self) -> int:
        self.check_process()
        with self._lock:
            self._evict()
            return len(self._handles)

    def _evict(self) -> None:
        finished = self._finished
        while len(finished) > self.max_results:
            self._handles.pop(finished.popitem(last=False)[0], None)
        if self.ttl is not None:
            expired_before = time.monotonic() - self.ttl
            while finished and next(iter(finished.values())) <= expired_before:
                self._handles.pop(finished.popitem(last=False)[0], None)
