"""What a shared store keeps of one task, within ``BGTASKS_MAX_PAYLOAD_BYTES``,
and the errors that say why it can't keep something.

Shared stores keep arguments, values and errors as JSON text; the limit
applies to that text. Knows nothing of Flask.
"""

from __future__ import annotations

import json
import typing as t

from .._errors import InvalidTaskError, PayloadTooLarge
from .._record import short_repr, to_json

if t.TYPE_CHECKING:
    from .._message import TaskSnapshot


def errors_json(snapshot: TaskSnapshot, limit: int | None) -> str:
    """The task's errors as JSON, at most ``limit`` bytes of it if it can."""
    errors = list(snapshot.errors)
    if not errors:
        return "[]"
    text = to_json(errors) or "[]"  # error_info() makes JSON values
    if limit is None or len(text) <= limit:
        return text
    # Over the limit: drop the text of the largest errors first, keeping
    # each one's type, attempt and time. The log has them in full.
    sizes = [len(to_json(error) or "") for error in errors]
    total = len(text)
    for index in sorted(range(len(errors)), key=sizes.__getitem__, reverse=True):
        if total <= limit:
            break
        short = {
            **errors[index],
            "message": (
                f"The error's message and traceback were too large for the task"
                f" store ({sizes[index]} bytes as JSON, over BGTASKS_MAX_PAYLOAD_BYTES,"
                f" {limit} bytes), so it dropped them. The process that ran the task"
                " logged them in full."
            ),
            "traceback": "",
        }
        errors[index] = short
        total += len(to_json(short) or "") - sizes[index]
    return to_json(errors) or "[]"


def _size_of(value: object) -> int:
    return len(to_json(value) or json.dumps(short_repr(value)))


def arguments_too_large(
    name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], size: int, limit: int
) -> PayloadTooLarge:
    named = [(f"positional argument {index}", value) for index, value in enumerate(args)]
    named += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    which, largest = max(((which, _size_of(value)) for which, value in named), key=lambda n: n[1])
    return PayloadTooLarge(
        f"The arguments of task {name!r} are too large for the task store:"
        f" {size} bytes as JSON, over BGTASKS_MAX_PAYLOAD_BYTES ({limit} bytes);"
        f" the largest is {which}, {largest} bytes. The task was not stored or"
        " queued. Pass an id or a file path instead and load the data inside"
        " the task, or raise BGTASKS_MAX_PAYLOAD_BYTES (None turns the limit off)."
    )


def value_too_large(
    snapshot: TaskSnapshot, value: object, size: int, limit: int
) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Task {snapshot.message.name!r} (id {snapshot.message.id}) returned a"
        f" {type(value).__name__}"
        f" too large for the task store: {size} bytes as JSON, over"
        f" BGTASKS_MAX_PAYLOAD_BYTES ({limit} bytes). The value was dropped and"
        " the task failed. Return something small, such as an id or the path of"
        " a file where the task saved the data, or raise BGTASKS_MAX_PAYLOAD_BYTES"
        " (None turns the limit off)."
    )


def not_json(snapshot: TaskSnapshot, value: object) -> InvalidTaskError:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        reason = f" ({exc})"
    else:  # pragma: no cover - to_json() and json.dumps() agree
        reason = ""
    kind = "Durable task" if snapshot.message.durable else "Task"
    return InvalidTaskError(
        f"{kind} {snapshot.message.name!r} returned {type(value).__name__}"
        f" {short_repr(value, 80)}, which is not JSON{reason}. Its value is"
        " stored as JSON (that of a durable task, or of any task run by a worker"
        " of another process): return a str, number, bool, None, or a list or"
        " dict of them."
    )
