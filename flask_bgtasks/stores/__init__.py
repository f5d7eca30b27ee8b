"""Where task records live, chosen by ``BGTASKS_STORE``.

Three stores ship: :class:`~flask_bgtasks.stores.memory.MemoryStore` (the
default: this process's memory, fastest),
:class:`~flask_bgtasks.stores.sqlite.SQLiteStore` (a SQLite file shared by
every process of one machine that opens it, which also makes durable tasks
possible) and :class:`~flask_bgtasks.stores.redis.RedisStore` (Redis, shared
by every machine). A store never touches Flask.

A store is told about each step of a task's life with a snapshot, and
answers lookups by id with records.
"""

from __future__ import annotations

import abc
import os
import re
import typing as t

from .._errors import ConfigError, ConfigTypeError
from .._imports import import_path
from .._stats import Counts, count_records

if t.TYPE_CHECKING:
    from flask import Flask

    from .._config import Config
    from .._message import TaskSnapshot
    from .._record import TaskRecord, TaskStatus
    from .._result import TaskResult

#: The default of ``BGTASKS_MAX_PAYLOAD_BYTES``: 1 MiB.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

#: Called by a shared store with the record of a durable task that it took
#: over from a process that died. Returns ``False`` if the task can't be
#: queued here now; the store then leaves it for later or for another process.
Recover = t.Callable[["TaskRecord"], bool]
#: Returns the names of the durable tasks this process can run.
TaskNames = t.Callable[[], t.Collection[str]]


class TaskStore(abc.ABC):
    """The interface of a task store.

    The runtime tells a store about each step of a task's life with an
    immutable :class:`~flask_bgtasks.TaskSnapshot` (:meth:`add`,
    :meth:`started`, :meth:`changed`, :meth:`finished`), in the thread where
    the step happens; a store that needs no bookkeeping for a step inherits
    the empty method. A store answers lookups with
    :class:`~flask_bgtasks.TaskRecord` values.

    .. versionchanged:: 0.1
        The hooks receive snapshots, not live results.
    """

    #: ``True`` if other processes see the records. Every task is then
    #: recorded when it is submitted, and told about every change.
    shared: t.ClassVar[bool] = False
    #: ``True`` if processes on other machines see the records too (Redis),
    #: which an engine backend such as RQ needs: its workers run elsewhere.
    distributed: t.ClassVar[bool] = False

    def activate(self, recover: Recover, task_names: TaskNames) -> None:
        """This process is using the store to run tasks: start whatever
        background upkeep the store needs. Called once per process, on the
        first submit or request.

        :param recover: Queues a durable task taken over from a dead process.
        :param task_names: The durable tasks this process can take over.
        """

    def add(self, snapshot: TaskSnapshot) -> None:
        """A task was submitted. A shared store records it now.

        :raises PayloadTooLarge: If the store can't keep the arguments;
            then it wrote nothing, and the task is not queued.
        """

    def discard(self, task_id: str) -> None:
        """Undo :meth:`add`: the task was refused (its queue was full)."""

    def started(self, snapshot: TaskSnapshot) -> bool:
        """A worker is about to start an attempt of the task.

        :return: ``False`` if the task must not run: it was cancelled, or
            taken over, by another process.
        """
        return True

    def changed(self, snapshot: TaskSnapshot) -> None:
        """The task's progress, cancel request or errors changed, or it
        waits for a retry."""

    def check_value(self, snapshot: TaskSnapshot, value: object) -> BaseException | None:
        """The task returned ``value``: the error to fail it with if this
        store can't keep the value, or ``None`` if it can. Called in the
        task's thread before its end, so :meth:`finished` follows in the
        same thread. The memory store keeps any value.

        The SQLite store refuses a value that is not JSON from a durable
        task (:class:`~flask_bgtasks.InvalidTaskError`), and a value over
        ``BGTASKS_MAX_PAYLOAD_BYTES`` (``PayloadTooLarge``).
        """
        return None

    def finished(self, snapshot: TaskSnapshot, value: object = None) -> None:
        """The task ended (``value`` is what a succeeded task returned), or
        it was released at shutdown (``snapshot.released``) to run again in
        another process. Called before its waiters wake."""

    def cancel_requested(self, task_id: str) -> bool:
        """Whether another process asked the running task to stop."""
        return False

    def abandon(self, task_id: str, process: str) -> None:
        """The process named ``process`` (``host:pid``) is gone: if it held
        the task unfinished, end its lease now, so that the upkeep deals
        with it at once, as with any task of a dead process. The default
        does nothing: the lease ends by itself."""

    def keep(self, task_id: str, handle: TaskResult[t.Any]) -> None:
        """The id of a task of this process was handed out. A store that
        keeps live handles (the memory store) keeps this one, so that it is
        found by id; it ends with :meth:`finished`."""

    def handle(self, task_id: str) -> TaskResult[t.Any] | None:
        """A live handle the store keeps, or ``None``."""
        return None

    @abc.abstractmethod
    def record(self, task_id: str) -> TaskRecord | None:
        """The task's record now, or ``None`` if unknown or expired."""

    @abc.abstractmethod
    def records(self, status: TaskStatus | None = None, limit: int = 50) -> list[TaskRecord]:
        """The most recently submitted records, newest first."""

    @abc.abstractmethod
    def cancel(self, task_id: str) -> bool:
        """Cancel a task by id, like :meth:`~flask_bgtasks.TaskResult.cancel`.

        :return: ``True`` if the task is cancelled now (it was still queued,
            or had been cancelled before); ``False`` if it is running and
            was asked to stop, has finished otherwise, or is unknown.
        """

    def counts(self, since: float) -> tuple[Counts, int]:
        """How many tasks it holds, by pool and status, and how many
        finished after ``since`` (a Unix time). The default counts
        :meth:`records`; the stores that ship count in the database."""
        return count_records(self.records(None, limit=1_000_000), since)

    @abc.abstractmethod
    def purge(self, older_than: float) -> int:
        """Delete the records of tasks that finished more than
        ``older_than`` seconds ago; return how many."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many records the store holds now."""

    def flush(self) -> None:
        """Wait until what this process wrote is visible to other processes."""

    def close(self) -> None:
        """Stop the upkeep and release the store's resources. Idempotent."""


def parse_url(value: object) -> tuple[str, str | None]:
    """Check a ``BGTASKS_STORE`` value: ``("memory", None)``,
    ``("sqlite", path)`` with the path as given (maybe relative),
    ``("redis", url)``, or ``("import", "module:name")`` for a store of
    your own.

    :raises ConfigTypeError: If it is not a string.
    :raises ConfigError: If it names no known store.
    """
    accepted = (
        "'memory', or 'sqlite:///tasks.db' (a path relative to the app's"
        " instance folder), or 'sqlite:////absolute/path/tasks.db', or"
        " 'redis://[user:password@]host:port/db' (or 'rediss://' for TLS), or the"
        " import path of a function that makes a store, 'module:function'"
    )
    if not isinstance(value, str):
        raise ConfigTypeError(
            f"BGTASKS_STORE must be {accepted}; got {value!r} ({type(value).__name__})."
        )
    if value in ("memory", "memory://"):
        return "memory", None
    if value.startswith(("redis://", "rediss://")) and len(value.partition("://")[2]) > 0:
        return "redis", value
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return "sqlite", value[len("sqlite:///") :]
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value) and not value.startswith("sqlite:"):
        return "import", value
    if value.startswith(("redis", "rediss")):  # never shown with its password
        from .._redis import shown_url

        value = shown_url(value)
    raise ConfigError(f"BGTASKS_STORE must be {accepted}; got {value!r}.")


def open_store(app: Flask, config: Config, *, engine: bool = False) -> TaskStore:
    """The store that ``BGTASKS_STORE`` names, for ``app``.

    :param engine: Tasks are queued in an engine (RQ) and run by its
        workers, not by this process; the store must be one they see.
    :raises ConfigError: For an engine and a store that its workers can't
        see, before anything is opened.
    """
    kind, path = config.store
    if engine and kind in ("memory", "sqlite"):
        raise _not_distributed(config, kind)
    store = _open(app, config, kind, path, engine)
    if engine and not store.distributed:
        raise _not_distributed(config, kind)
    return store


def _not_distributed(config: Config, kind: str) -> ConfigError:
    return ConfigError(
        f"BGTASKS_BACKEND is {config.backend!r}, whose workers may run on"
        f" other machines, but BGTASKS_STORE is {kind!r}, which they can't see:"
        " no worker could record a task, and no web process could find one."
        " Set BGTASKS_STORE = 'redis://host:6379/0', the Redis the workers use."
    )


def _open(app: Flask, config: Config, kind: str, path: str | None, engine: bool) -> TaskStore:
    if kind == "memory" or path is None:
        from .memory import MemoryStore

        return MemoryStore(config.result_ttl, config.max_results)
    if kind == "import":
        return from_import_path(path, app)
    if kind == "redis":
        from .redis import RedisStore

        return RedisStore(
            path,
            config.result_ttl,
            config.max_results,
            config.store_lease,
            max_payload_bytes=config.max_payload_bytes,
            engine=engine,
        )
    from .sqlite import SQLiteStore

    # os.path.join keeps an absolute path as it is.
    return SQLiteStore(
        os.path.join(app.instance_path, path),
        config.result_ttl,
        config.max_results,
        config.store_lease,
        max_payload_bytes=config.max_payload_bytes,
    )


def from_import_path(path: str, app: Flask) -> TaskStore:
    """Call the function at ``module:name`` with the app; it returns the
    app's store.

    :raises ConfigError: If it can't be imported, or returns something else.
    """
    try:
        factory = import_path(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"BGTASKS_STORE is {path!r}, which can't be imported: {exc}. Give"
            " 'module:function', where the function takes the app and returns"
            " a TaskStore."
        ) from exc
    store = factory(app)
    if not isinstance(store, TaskStore):
        raise ConfigTypeError(
            f"BGTASKS_STORE names {path!r}, which returned {type(store).__name__};"
            " it must return an instance of a flask_bgtasks.stores.TaskStore subclass."
        )
    return store
