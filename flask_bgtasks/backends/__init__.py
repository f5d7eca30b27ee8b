"""How tasks are executed: a backend receives task messages and runs each
with the run function it was given.

Three backends ship: :class:`~flask_bgtasks.backends.threads.ThreadBackend`
(the default: bounded thread pools, and process pools),
:class:`~flask_bgtasks.backends.rq.RQBackend` (``"rq"``: RQ workers on any
machine) and :class:`~flask_bgtasks.backends.eager.EagerBackend`
(``BGTASKS_EAGER``: run each task inside ``submit``, for tests). A backend never touches Flask, nor
the handles of the tasks: it moves :class:`~flask_bgtasks.TaskMessage`
values to wherever ``run`` is called, and says when its workers are idle or
gone. See :doc:`/architecture` for how to write one.
"""

from __future__ import annotations

import abc
import typing as t

from .._errors import ConfigError, ConfigTypeError, ShutdownError, UsageError
from .._imports import import_path

if t.TYPE_CHECKING:
    from .._config import Config, PoolConfig
    from .._execution import Execution
    from .._message import TaskMessage, TaskSnapshot
    from ..stores import TaskStore

#: Runs one message in the calling thread, from its first attempt to its end.
Run = t.Callable[["TaskMessage"], None]
#: Takes a message's task off the queue in this process, for a backend that
#: runs it elsewhere and applies what it reports: the task's Execution, or
#: ``None`` if it was cancelled meanwhile.
Claim = t.Callable[["TaskMessage"], "Execution | None"]


class WorkerSide(t.Protocol):
    """What an engine's worker calls in the app's runtime."""

    def enter_process(self) -> bool:
        """This process starts to work: the store's upkeep starts, which
        takes over the durable tasks of dead workers."""

    def perform(self, data: str | bytes) -> None:
        """Run, in this thread, a message the worker received as JSON."""

    def interrupt(self) -> object:
        """The worker stops now, without waiting for its running task: end
        it, releasing a durable one to run again elsewhere."""

    def abandoned(self, data: str | bytes, pid: int) -> None:
        """The process ``pid`` that ran this message is gone: if it left the
        task unfinished, its record is dealt with now."""


class Backend(abc.ABC):
    """The interface between an app's runtime and what runs its tasks.

    :param pools: The validated pool settings, by pool name.
    :param name: A label for this app's backend, used in thread names.
    :param run: Called with each message, in the thread that runs it.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
        It receives messages and a ``run`` function, not live results.
    """

    #: ``True`` for an engine whose workers run the tasks in other processes,
    #: maybe on other machines (RQ): the runtime then keeps nothing of a
    #: task here, and :meth:`send` records it in a store that every machine
    #: sees and sends its message as JSON.
    remote: t.ClassVar[bool] = False

    #: Set by the runtime before the first submit, for a backend that runs
    #: tasks outside this process (a process pool) and relays what they
    #: report: takes a message's task off the queue here.
    claim: Claim | None = None
    #: Set by the runtime, for an engine backend whose workers this process
    #: may run (``flask bgtasks worker``).
    worker_side: WorkerSide | None = None

    def __init__(self, pools: t.Mapping[str, PoolConfig], name: str, run: Run) -> None:
        self.pool_names = frozenset(pools)
        self.name = name
        self.run = run

    @classmethod
    def from_config(cls, config: Config, name: str, run: Run) -> Backend:
        """Make the backend for an app's validated settings. A backend that
        needs more than its pools (an engine's URL) reads it here."""
        return cls(config.pools, name, run)

    @abc.abstractmethod
    def submit(self, message: TaskMessage) -> None:
        """Accept a message into its pool, ``message.pool``, or raise
        without side effects.

        :raises QueueFull: If the pool has no room.
        :raises ShutdownError: After :meth:`close`.
        :raises UsageError: If there is no pool with that name.
        """

    @abc.abstractmethod
    def join(self, timeout: float | None = None) -> bool:
        """Wait until no message is queued or running; ``False`` at the
        timeout."""

    def send(self, store: TaskStore, snapshot: TaskSnapshot) -> None:
        """A :attr:`remote` backend's submit: record the new task in
        ``store`` and queue its message, both or neither.

        :raises StoreUnavailable: If the store or the engine can't be
            reached; then neither happened.
        """
        raise NotImplementedError(f"{type(self).__name__} is remote, so it must define send().")

    # Shutdown comes in three steps, so that every app's backend can be
    # taken through each step together, under one deadline.

    @abc.abstractmethod
    def close(self, cancel_pending: bool = False) -> list[TaskMessage]:
        """Accept no more messages; with ``cancel_pending``, take the queued
        ones off the queue and return them, to be cancelled. Safe to call
        more than once."""

    @abc.abstractmethod
    def wait(self, deadline: float | None = None) -> bool:
        """After :meth:`close`, wait until the accepted messages have run
        and the workers are gone, until the :func:`time.monotonic`
        ``deadline``; ``True`` if they are."""

    @abc.abstractmethod
    def stop(self) -> None:
        """At the deadline: start none of the messages still queued. The
        runtime then cancels them, and ends the running ones."""

    def work(
        self, pools: t.Collection[str], *, burst: bool, fork: bool, quiet: bool = False
    ) -> None:
        """Run this process as a worker of the engine for ``pools``, until
        stopped (or, with ``burst``, until their queues are empty): what
        ``flask bgtasks worker`` calls. ``quiet``: the engine logs warnings
        and errors only.

        :raises UsageError: For a backend that runs tasks in the app's own
            processes, which has no workers of its own.
        """
        raise UsageError(
            f"'flask bgtasks worker' runs the workers of an engine backend, such as"
            f" BGTASKS_BACKEND = 'rq'; {self.name!r} runs its tasks in its own"
            " processes (BGTASKS_BACKEND = 'threads'), so it needs no worker."
        )

    def workers(self) -> dict[str, tuple[int | None, int | None]]:
        """Per pool: how many workers serve it now, and the most there may
        be, each ``None`` if unknown (the default)."""
        return dict.fromkeys(self.pool_names, (None, None))

    def stop_task(self, task_id: str, queued: bool) -> None:
        """After the store recorded a cancel (it decides): take a ``queued``
        task out of the engine's queue, or end a running one by force where
        its worker can (one that forks a process per task). Best effort;
        the default does nothing."""

    def check_process(self) -> None:
        """This process submits for the first time (a forked child, say):
        drop whatever queues, locks and threads a fork copied. The default
        does nothing."""

    def unknown_pool(self, pool: str) -> UsageError:
        """The error for a task that names a pool this app does not have."""
        known = ", ".join(sorted(self.pool_names))
        return UsageError(
            f"There is no task pool named {pool!r} in {self.name!r}; the pools"
            f" are: {known}. Add it to BGTASKS_POOLS or fix the task's 'pool'."
        )


class NothingHeldHere(Backend):
    """A backend that holds no queue and no worker in this process: eager
    mode runs each message inside ``submit``, an engine sends it to its
    workers. Shutdown only stops it from accepting messages.

    .. versionadded:: 0.1
    """

    _closed = False

    def check_open(self) -> None:
        """:raises ShutdownError: After :meth:`close`."""
        if self._closed:
            raise ShutdownError(
                f"{self.name!r} is shut down and accepts no new tasks."
                " Submit before shutdown(), or create a new app."
            )

    def join(self, timeout: float | None = None) -> bool:
        return True

    def close(self, cancel_pending: bool = False) -> list[TaskMessage]:
        self._closed = True
        return []

    def wait(self, deadline: float | None = None) -> bool:
        return True

    def stop(self) -> None:
        pass


def backend_class(spec: str) -> type[Backend]:
    """The backend ``BGTASKS_BACKEND`` names: ``"threads"``, or the import
    path ``module:Class`` of a :class:`Backend` subclass.

    :raises ConfigError: If it can't be imported.
    :raises ConfigTypeError: If it is not a :class:`Backend` subclass.
    """
    if spec == "threads":
        from .threads import ThreadBackend

        return ThreadBackend
    if spec == "rq":
        from .rq import RQBackend

        return RQBackend
    try:
        found = import_path(spec)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"BGTASKS_BACKEND is {spec!r}, which can't be imported: {exc}. Give"
            " 'threads', 'rq', or 'module:Class' where the class subclasses"
            " flask_bgtasks.backends.Backend."
        ) from exc
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise ConfigTypeError(
            f"BGTASKS_BACKEND names {spec!r}, which is {found!r}; it must be a"
            " subclass of flask_bgtasks.backends.Backend."
        )
    return found
