"""What travels: :class:`TaskMessage`, the unit of work a backend receives,
and :class:`TaskSnapshot`, what a store is told when a task changes.

Both are immutable plain data. Knows nothing of Flask.
"""

from __future__ import annotations

import base64
import collections
import functools
import json
import os
import pickle
import typing as t

from ._errors import InvalidTaskError
from ._record import TaskRecord, TaskStatus, as_datetime, short_repr, to_json

if t.TYPE_CHECKING:
    from ._options import TaskOptions

#: The keyword arguments of a message without any, shared: a message is
#: never changed, and calling the task copies them anyway.
NO_KWARGS: dict[str, t.Any] = {}


class TaskMessage(t.NamedTuple):
    """One task to run: which function, with what, and how.

    Made by ``submit`` (or by a store that hands back a durable task of a
    process that died) and given to a backend, which runs it with the one
    run function wherever it runs tasks. Plain data, like Dramatiq's
    message: a backend outside this process sends :meth:`to_json`.

    .. versionadded:: 0.1
    """

    #: A URL-safe id with 144 random bits, unique to this task.
    id: str
    #: The task's name: how a worker finds the function.
    name: str
    #: The pool, or engine queue, it runs on.
    pool: str
    #: The positional arguments.
    args: tuple[t.Any, ...]
    #: The keyword arguments.
    kwargs: dict[str, t.Any]
    #: How it runs: timeout, retries and the rest.
    options: TaskOptions
    #: Whether it survives the death of its process (``durable`` resolved
    #: against ``BGTASKS_DURABLE``).
    durable: bool
    #: When it was submitted, a Unix time.
    submitted_at: float
    #: How many attempts were started before this message was made: more
    #: than 0 for a durable task that runs again after its process died.
    attempt: int = 0
    #: The errors of those attempts, oldest first.
    errors: tuple[dict[str, t.Any], ...] = ()
    #: The id of the task this one runs again (:meth:`BGTasks.retry
    #: <flask_bgtasks.BGTasks.retry>`), or ``None``.
    retry_of: str | None = None

    def to_json(self) -> str:
        """The message as JSON, for a backend that sends it elsewhere. The
        options travel as the task's name: the worker has the same task
        declared, with the same options.

        :raises InvalidTaskError: If an argument is not JSON; see
            :func:`check_json`.
        """
        data = {
            "id": self.id,
            "name": self.name,
            "pool": self.pool,
            "args": self.args,
            "kwargs": self.kwargs,
            "durable": self.durable,
            "submitted_at": self.submitted_at,
            "attempt": self.attempt,
            "errors": self.errors,
            "retry_of": self.retry_of,
        }
        encoded = to_json(data)
        if encoded is None:
            check_json(self)  # raises, naming the argument
            raise AssertionError("A message whose arguments are JSON is not JSON.")
        return encoded

    @classmethod
    def from_json(cls, text: str | bytes, options: t.Callable[[str], TaskOptions]) -> TaskMessage:
        """The message that :meth:`to_json` wrote, with the options that
        ``options`` gives for its task's name (a worker's own declaration).

        :raises InvalidTaskError: If ``text`` is not such a message.
        """
        try:
            data = json.loads(text)
            name = data["name"]
            return cls(
                str(data["id"]),
                str(name),
                str(data["pool"]),
                tuple(data["args"]),
                dict(data["kwargs"]) or NO_KWARGS,
                options(name),
                bool(data["durable"]),
                float(data["submitted_at"]),
                int(data["attempt"]),
                tuple(data["errors"]),
                data.get("retry_of"),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidTaskError(
                f"A worker received something that is not a Flask-BGTasks task message"
                f" ({type(exc).__name__}: {exc}): {short_repr(text, 200)}. Only"
                " submit() should write to the task queues."
            ) from None


class TaskSnapshot(t.NamedTuple):
    """A task at one moment, as its store is told about a change.

    .. versionadded:: 0.1
    """

    #: What runs.
    message: TaskMessage
    #: Where it is in its life.
    status: TaskStatus
    #: How many attempts have started, counting those of earlier processes.
    attempt: int
    #: ``current``, ``total`` and ``message``, or ``None`` before any.
    progress: dict[str, t.Any] | None
    #: One dict per failed attempt, oldest first.
    errors: tuple[dict[str, t.Any], ...]
    #: Whether it was asked to stop, as far as this process knows.
    cancel_requested: bool
    #: When an attempt first started, a Unix time.
    started_at: float | None
    #: When it ended, a Unix time.
    finished_at: float | None
    #: Set on a durable task that shutdown stopped or never started: it is
    #: not over, and the store keeps it to run again in the next process.
    released: bool = False

    def record(self, process: str | None, value: object = None) -> TaskRecord:
        """The task as a :class:`~flask_bgtasks.TaskRecord`, with ``value``
        as what a succeeded task returned; values that are not JSON are
        kept as their ``repr``."""
        message = self.message
        args, kwargs = message.args, message.kwargs
        arguments: t.Any = {"args": list(args), "kwargs": kwargs}
        if to_json(arguments) is None:
            arguments = {"args": None, "kwargs": None, "repr": short_repr((args, kwargs))}
        value_repr = None
        if to_json(value) is None:
            value, value_repr = None, short_repr(value)
        return TaskRecord(
            id=message.id,
            name=message.name,
            pool=message.pool,
            status=self.status,
            durable=message.durable,
            args=arguments["args"],
            kwargs=arguments["kwargs"],
            args_repr=arguments.get("repr"),
            progress=None if self.progress is None else dict(self.progress),
            result=value,
            result_repr=value_repr,
            errors=list(self.errors),
            attempt=self.attempt,
            cancel_requested=self.cancel_requested,
            process=process,
            submitted_at=as_datetime(message.submitted_at),  # type: ignore[arg-type]
            started_at=as_datetime(self.started_at),
            finished_at=as_datetime(self.finished_at),
            retry_of=message.retry_of,
        )


def check_json(message: TaskMessage, *, engine: str | None = None) -> None:
    """Refuse a message whose arguments JSON can't hold, naming the first
    such argument.

    :param engine: The ``BGTASKS_BACKEND`` that sends the message to its
        workers as JSON; else the task is durable, stored as JSON.
    :raises InvalidTaskError: With the argument, its type, and what to pass
        instead.
    """
    if to_json([message.args, message.kwargs]) is not None:
        return
    if engine is None:
        what = "durable task"
        why = "A durable task is stored with its arguments as JSON"
    else:
        what = "task"
        why = (
            f"BGTASKS_BACKEND = {engine!r} sends a task to its workers with its"
            " arguments as JSON, never pickle"
        )
    named = [(f"Argument {position}", value) for position, value in enumerate(message.args)]
    named += [(f"Argument {key!r}", value) for key, value in message.kwargs.items()]
    for which, value in named:
        if to_json(value) is None:
            raise InvalidTaskError(
                f"{which} of {what} {message.name!r} is {type(value).__name__}"
                f" {short_repr(value, 80)}, which is not JSON. {why}: pass str, int,"
                " float, bool, None, or lists and dicts of them (an id rather than"
                " an object). Nothing was queued."
            )


def json_round_trip(
    message: TaskMessage, fn: t.Callable[..., t.Any], engine: str
) -> tuple[TaskMessage, t.Callable[..., t.Any]]:
    """For eager mode with an engine backend: the message as a worker would
    read it, and a function whose value goes through JSON as it would
    from a worker, so that a test sees what would fail there.

    :raises InvalidTaskError: If an argument is not JSON.
    """
    check_json(message, engine=engine)
    message = TaskMessage.from_json(message.to_json(), lambda name: message.options)

    @functools.wraps(fn)
    def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
        value = fn(*args, **kwargs)
        encoded = to_json(value)
        if encoded is None:
            raise InvalidTaskError(
                f"Task {message.name!r} returned {type(value).__name__}"
                f" {short_repr(value, 80)}, which is not JSON. BGTASKS_BACKEND ="
                f" {engine!r} brings a task's value back from its worker as JSON:"
                " return a str, number, bool, None, or a list or dict of them."
            )
        return json.loads(encoded)

    return message, call


def check_pickle(message: TaskMessage, call: t.Callable[..., t.Any] | None) -> None:
    """Refuse a message for a child process that pickle can't carry,
    naming the function or the first argument at fault.

    :raises InvalidTaskError: With what to pass instead.
    """
    try:
        pickle.dumps((message, call))
        return
    except Exception as exc:
        problem = exc
    named = [(f"Argument {position}", value) for position, value in enumerate(message.args)]
    named += [(f"Argument {key!r}", value) for key, value in message.kwargs.items()]
    for which, value in named:
        try:
            pickle.dumps(value)
        except Exception as exc:
            raise InvalidTaskError(
                f"{which} of task {message.name!r} is {type(value).__name__}"
                f" {short_repr(value, 80)}, which can't be pickled ({exc}), and the"
                f" task runs in a child process (pool {message.pool!r}). Pass plain"
                " values: an id rather than an object."
            ) from None
    raise InvalidTaskError(
        f"Task {message.name!r} can't be sent to a child process (pool"
        f" {message.pool!r}): {problem}. A task on a process pool must be a function"
        " declared at module level, with options that pickle."
    ) from None


# Ids are made 128 at a time: one call to the system's random source and one
# base64 encoding for all, a fraction of what each id costs alone. 18 bytes
# encode to 24 characters without padding.
_ID_BYTES = 18
_ID_CHARS = 24
_BATCH = 128
_ids: collections.deque[str] = collections.deque()


def new_id() -> str:
    """A new task id: 144 random bits, URL-safe, never starting with ``-``
    (which command lines take for an option)."""
    try:
        return _ids.popleft()  # atomic: two threads never get the same id
    except IndexError:
        text = base64.urlsafe_b64encode(os.urandom(_ID_BYTES * _BATCH)).decode()
        batch = [text[i : i + _ID_CHARS] for i in range(0, len(text), _ID_CHARS)]
        _ids.extend(task_id for task_id in batch[1:] if task_id[0] != "-")
        return batch[0] if batch[0][0] != "-" else new_id()


# A child process must not hand out the ids its parent has left.
os.register_at_fork(after_in_child=_ids.clear)
