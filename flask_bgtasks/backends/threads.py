"""The default backend: one bounded :class:`WorkerPool` per named pool."""

from __future__ import annotations

import time
import typing as t

from .._children import ChildWorker, default_start_method
from .._errors import UsageError
from .._pool import Worker, WorkerPool
from . import Backend, Run

if t.TYPE_CHECKING:
    from .._config import PoolConfig
    from .._message import TaskMessage


class ThreadBackend(Backend):
    """Run tasks on bounded thread pools in this process.

    Threads start on the first submit to each pool, never earlier, so a
    pre-forking server or a CLI command that submits nothing starts none.
    """

    def __init__(self, pools: t.Mapping[str, PoolConfig], name: str, run: Run) -> None:
        super().__init__(pools, name, run)
        self.pools = {
            pool: WorkerPool(
                f"{name}-{pool}",
                config.max_workers,
                config.queue_size,
                run,
                None if config.kind == "thread" else self._children(pool, config),
            )
            for pool, config in pools.items()
        }

    def _children(self, pool: str, config: PoolConfig) -> t.Callable[[], Worker]:
        """How each worker thread of a process pool gets its child."""
        app_import = config.app_import
        if app_import is None:  # pragma: no cover - the config check refuses it
            raise UsageError(f"The pool {pool!r} runs tasks in child processes: set BGTASKS_APP.")
        start_method = config.start_method or default_start_method()

        def make() -> Worker:
            # Read now, on the first task: the runtime sets it after this
            # backend is made.
            claim = self.claim
            if claim is None:
                raise UsageError(f"The pool {pool!r} has no runtime to relay its tasks.")
            return ChildWorker(
                pool, app_import, claim, start_method, config.timeout_grace, config.recycle_after
            )

        return make

    def submit(self, message: TaskMessage) -> None:
        try:
            worker_pool = self.pools[message.pool]
        except KeyError:
            raise self.unknown_pool(message.pool) from None
        worker_pool.submit(message)

    def workers(self) -> dict[str, tuple[int | None, int | None]]:
        return {name: (pool.workers, pool.max_workers) for name, pool in self.pools.items()}

    def check_process(self) -> None:
        for pool in self.pools.values():
            pool.check_process()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for pool in self.pools.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not pool.join(left):
                return False
        return True

    def close(self, cancel_pending: bool = False) -> list[TaskMessage]:
        return [message for pool in self.pools.values() for message in pool.close(cancel_pending)]

    def wait(self, deadline: float | None = None) -> bool:
        return all([pool.wait(deadline) for pool in self.pools.values()])

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.stop()
