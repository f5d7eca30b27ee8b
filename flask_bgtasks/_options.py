"""A task's options, declared once: :class:`TaskOptions`.

``@bg.task(...)`` takes them as keywords, :class:`~flask_bgtasks.Task`
keeps them, every message carries them, and the API docs are generated from
this class. Knows nothing of Flask.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ._config import DEFAULT_POOL
from ._errors import InvalidTaskError
from ._retry import RetryPolicy

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """How a task runs: the keywords of :meth:`BGTasks.task
    <flask_bgtasks.BGTasks.task>`, checked once when the task is declared.

    .. code-block:: python

        @bg.task(pool="reports", timeout=60, retries=3)
        def build_report(user_id: int) -> str: ...

        build_report.options.timeout  # 60

    :raises InvalidTaskError: If an option has the wrong type or range; the
        message names the task and the option.

    .. versionadded:: 0.1
    """

    #: The name in logs, signals and records; ``module.qualname`` of the
    #: function by default. A durable task is found again by this name in a
    #: new process, so it must be unique and stable.
    name: str
    #: The pool it runs on: ``"default"`` (the default), or a name from
    #: :data:`BGTASKS_POOLS`. Checked when the task is submitted, since each
    #: app has its own pools: an unknown pool makes ``submit`` raise
    #: :class:`~flask_bgtasks.UsageError`.
    pool: str = DEFAULT_POOL
    #: Run it in a read-only copy of the submitting request, so that
    #: ``request.args`` and external ``url_for`` work; see :doc:`/context`.
    #: Default ``False``. A durable task can't copy the request.
    copy_request: bool = False
    #: Names of ``g`` attributes to copy into the task's ``g``, such as
    #: ``["user_id"]``; see :doc:`/context`. Default: none. A durable task
    #: can't copy ``g``.
    copy_g: tuple[str, ...] = ()
    #: Seconds the task may run, counted from when it first starts, its
    #: retries and the waits between them included. Then it is asked to stop
    #: and fails with :class:`~flask_bgtasks.TaskTimeout`; the worker thread
    #: stays busy until the function returns. See :ref:`task-timeouts` for
    #: what that can and cannot do. ``None`` (the default) for no limit.
    timeout: float | None = None
    #: Keep the task in the store until it has finished, so that it runs
    #: again if its process dies; needs a shared store such as SQLite. See
    #: :ref:`durable-tasks`. ``None`` (the default) follows
    #: :data:`BGTASKS_DURABLE`.
    durable: bool | None = None
    #: Run it again up to this many times after it raised one of
    #: :attr:`retry_on`; see :ref:`retries`. Default ``0``, no retries.
    retries: int = 0
    #: Seconds before the first retry (default ``1``), doubled for each next
    #: one up to 10 minutes, with jitter.
    retry_backoff: float = 1.0
    #: The exception type, or a tuple of them, worth a retry (default
    #: :class:`Exception`); any other exception fails the task at once.
    retry_on: ExceptionTypes = Exception
    #: Let the :doc:`HTTP API </http>` show the return value in the task's
    #: status, if it is JSON; by default (``False``) it shows only the status.
    expose_result: bool = False
    #: Let the HTTP API show a failed task's error message and traceback; by
    #: default (``False``) it shows only the exception's type.
    expose_error: bool = False

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise InvalidTaskError(f"A task's name must be a non-empty string, got {name!r}.")
        if not isinstance(self.pool, str) or not self.pool:
            raise InvalidTaskError(f"Task {name!r}: 'pool' must be a pool name, got {self.pool!r}.")
        for option in ("copy_request", "expose_result", "expose_error"):
            value = getattr(self, option)
            if not isinstance(value, bool):
                raise InvalidTaskError(
                    f"Task {name!r}: {option!r} must be True or False, got {value!r}."
                )
        given: object = self.copy_g
        copy_g = given
        if not isinstance(copy_g, str) and isinstance(copy_g, t.Iterable):
            # Once, before it is checked: a generator can be read only once.
            copy_g = tuple(copy_g)
        if not isinstance(copy_g, tuple) or not all(isinstance(key, str) for key in copy_g):
            raise InvalidTaskError(
                f"Task {name!r}: 'copy_g' must be a list of attribute names of"
                f" 'g', such as ['user_id'], got {given!r}."
            )
        # A frozen dataclass sets its normalised fields the way its own
        # __init__ does.
        object.__setattr__(self, "copy_g", copy_g)
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise InvalidTaskError(
                f"Task {name!r}: 'timeout' must be a number of seconds above 0,"
                f" or None, got {timeout!r}."
            )
        if self.durable is not None and not isinstance(self.durable, bool):
            raise InvalidTaskError(
                f"Task {name!r}: 'durable' must be True, False or None (follow"
                f" BGTASKS_DURABLE), got {self.durable!r}."
            )
        retries = self.retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidTaskError(
                f"Task {name!r}: 'retries' must be a whole number of at least 0, got {retries!r}."
            )
        backoff = self.retry_backoff
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
            raise InvalidTaskError(
                f"Task {name!r}: 'retry_backoff' must be a number of seconds of at"
                f" least 0, got {backoff!r}."
            )
        retry_on = self.retry_on
        types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not types or not all(
            isinstance(cls, type) and issubclass(cls, BaseException) for cls in types
        ):
            raise InvalidTaskError(
                f"Task {name!r}: 'retry_on' must be an exception class or a tuple"
                f" of them, such as (ConnectionError, TimeoutError), got {retry_on!r}."
            )

    @classmethod
    def for_function(cls, fn: t.Callable[..., t.Any], **options: t.Any) -> TaskOptions:
        """The options of a task that runs ``fn``, named after it unless
        ``name`` is given.

        :raises TypeError: If an option is not one of the fields above.
        """
        if options.get("name") is None:
            # Callable objects have no __qualname__ of their own: use their class's.
            named = fn if hasattr(fn, "__qualname__") else type(fn)
            options["name"] = f"{named.__module__}.{named.__qualname__}"
        return cls(**options)

    @property
    def retry(self) -> RetryPolicy | None:
        """When and how soon a failed attempt runs again; ``None`` without
        :attr:`retries`."""
        if not self.retries:
            return None
        retry_on = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
        return RetryPolicy(self.retries, float(self.retry_backoff), retry_on)

    @property
    def captures(self) -> bool:
        """Whether the task copies anything from the submitting context."""
        return self.copy_request or bool(self.copy_g)


class TaskOptionArgs(t.TypedDict, total=False):
    """The keywords of :meth:`BGTasks.task <flask_bgtasks.BGTasks.task>`:
    the fields of :class:`TaskOptions`, for type checkers only. A test checks
    that the two list the same names and types."""

    name: str | None
    pool: str
    copy_request: bool
    copy_g: t.Iterable[str]
    timeout: float | None
    durable: bool | None
    retries: int
    retry_backoff: float
    retry_on: ExceptionTypes
    expose_result: bool
    expose_error: bool
