"""The default backend: one bounded :class:`WorkerPool` per named pool."""

from __future__ import annotations

import time
import typing as t

from .._pool import WorkerPool
from . import Backend

if t.TYPE_CHECKING:
    from .._config import PoolConfig
    from .._result import TaskResult


class ThreadBackend(Backend):
    """Run tasks on bounded thread pools in this process.

    Threads start on the first submit to each pool, never earlier, so a
    pre-forking server or a CLI command that submits nothing starts none.
    """

    def __init__(self, pools: t.Mapping[str, PoolConfig], name: str) -> None:
        super().__init__(pools, name)
        self.pools = {
            pool: WorkerPool(f"{name}-{pool}", config.max_workers, config.queue_size)
            for pool, config in pools.items()
        }

    def submit(self, result: TaskResult[t.Any], pool: str) -> None:
        try:
            worker_pool = self.pools[pool]
        except KeyError:
            raise self.unknown_pool(pool) from None
        worker_pool.submit(result)

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for pool in self.pools.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not pool.join(left):
                return False
        return True

    def unfinished(self) -> list[TaskResult[t.Any]]:
        return [result for pool in self.pools.values() for result in pool.unfinished()]

    def close(self, cancel_pending: bool = False) -> list[TaskResult[t.Any]]:
        return [result for pool in self.pools.values() for result in pool.close(cancel_pending)]

    def wait(self, deadline: float | None = None) -> bool:
        return all([pool.wait(deadline) for pool in self.pools.values()])

    def interrupt(self) -> tuple[list[TaskResult[t.Any]], list[TaskResult[t.Any]]]:
        cancelled: list[TaskResult[t.Any]] = []
        interrupted: list[TaskResult[t.Any]] = []
        for pool in self.pools.values():
            pool_cancelled, pool_interrupted = pool.interrupt()
            cancelled += pool_cancelled
            interrupted += pool_interrupted
        return cancelled, interrupted
