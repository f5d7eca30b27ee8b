"""A task's fields as a shared store keeps them: arguments, return value
and progress as JSON text, within ``BGTASKS_MAX_PAYLOAD_BYTES`` (see
:mod:`._payload`), and the :class:`~flask_bgtasks.TaskRecord` made from them.

The SQLite store keeps the fields as columns of a row, the Redis store as the
fields of a hash. Knows nothing of connections, threads, or Flask.
"""

from __future__ import annotations

import json
import sqlite3
import typing as t

from .._record import TaskRecord, TaskStatus, as_datetime, short_repr, to_json
from ._payload import arguments_too_large, not_json, value_too_large

if t.TYPE_CHECKING:
    from .._message import TaskMessage, TaskSnapshot

#: The arguments field of a task without any.
NO_ARGUMENTS = '{"args":[],"kwargs":{}}'
#: The outcome field of a task that returned ``None``.
NO_VALUE = '{"value":null}'


def arguments_json(message: TaskMessage, limit: int | None) -> str:
    """The arguments field of a task.

    :raises PayloadTooLarge: If their JSON is over ``limit`` bytes.
    """
    args, kwargs = message.args, message.kwargs
    arguments = to_json({"args": args, "kwargs": kwargs}) if args or kwargs else NO_ARGUMENTS
    if arguments is None:
        # Not JSON: only a repr is kept, cut short, so no limit applies.
        return json.dumps({"repr": short_repr((args, kwargs))})
    if limit is not None and len(arguments) > limit:
        raise arguments_too_large(message.name, args, kwargs, len(arguments), limit)
    return arguments


def outcome_json(
    snapshot: TaskSnapshot, value: object, limit: int | None, *, json_only: bool = False
) -> str | BaseException:
    """The outcome field of a task that returned ``value``, not ``None``; or
    the error that fails the task instead, if the value can't be kept. A
    value that is not JSON is kept as its ``repr``, unless the task is
    durable or ``json_only`` (its value crossed from a worker as JSON)."""
    outcome = to_json({"value": value})
    if outcome is None:
        if snapshot.message.durable or json_only:
            return not_json(snapshot, value)
        # Not JSON: only a repr is kept, cut short, so no limit applies.
        return json.dumps({"repr": short_repr(value)})
    if limit is not None and len(outcome) > limit:
        return value_too_large(snapshot, value, len(outcome), limit)
    return outcome


def final_outcome_json(value: object) -> str | None:
    """The outcome field of a task that succeeded, with no limit applied."""
    if value is None:
        return NO_VALUE
    return to_json({"value": value}) or to_json({"repr": short_repr(value)})


def progress_json(snapshot: TaskSnapshot) -> str | None:
    """The progress field of a task."""
    progress = snapshot.progress
    return None if progress is None else to_json(progress)


def make_record(row: sqlite3.Row | t.Mapping[str, t.Any]) -> TaskRecord:
    """A record from a task's fields, as a SQLite row or a Redis hash holds
    them once decoded (JSON held as text)."""
    arguments = json.loads(row["arguments"])
    outcome = json.loads(row["outcome"]) if row["outcome"] else {}
    return TaskRecord(
        id=row["id"],
        name=row["name"],
        pool=row["pool"],
        status=TaskStatus(row["status"]),
        durable=bool(row["durable"]),
        args=arguments.get("args"),
        kwargs=arguments.get("kwargs"),
        args_repr=arguments.get("repr"),
        progress=json.loads(row["progress"]) if row["progress"] else None,
        result=outcome.get("value"),
        result_repr=outcome.get("repr"),
        errors=json.loads(row["errors"]),
        attempt=row["attempt"],
        cancel_requested=bool(row["cancel_requested"]),
        process=row["owner"],
        submitted_at=as_datetime(row["submitted_at"]),  # type: ignore[arg-type]
        started_at=as_datetime(row["started_at"]),
        finished_at=as_datetime(row["finished_at"]),
        retry_of=row["retry_of"],
    )


def time_field(value: float | None) -> str:
    """A time as a Redis hash keeps it: ``repr`` of the float, or ``""``."""
    return "" if value is None else repr(value)


def record_from_hash(fields: t.Mapping[str, str]) -> TaskRecord:
    """A record from a task's Redis hash, whose values are all strings and
    ``""`` for none."""
    row: dict[str, t.Any] = {key: value or None for key, value in fields.items()}
    for key in ("durable", "attempt", "cancel_requested"):
        row[key] = int(fields[key])
    row["submitted_at"] = float(fields["submitted_at"])
    for key in ("started_at", "finished_at"):
        row[key] = float(fields[key]) if fields[key] else None
    row["errors"] = fields["errors"] or "[]"
    row.setdefault("retry_of", None)
    return make_record(row)
