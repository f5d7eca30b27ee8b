"""How the ``flask bgtasks`` commands show things: tables that fit the
terminal, progress and times, a task whose process is gone, and records as
JSON values.

A table fits the terminal (``shutil.get_terminal_size()``, which honours
``COLUMNS``) by steps, each taken only if the table is still too wide: cut
the long text columns to a comfortable width, use the compact form of the
other cells, drop the least useful columns, and cut the text columns to
their minimum. Ids are never cut, so that they can be copied. Knows nothing
of stores, apps, or Click.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import textwrap
import typing as t
import unicodedata
from datetime import datetime

from ._record import TaskStatus, as_datetime

if t.TYPE_CHECKING:
    from ._record import TaskRecord

#: What stands for the part of a cell that was cut.
ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"
#: Between two columns.
GAP = "  "

#: What ``show`` says of a task whose process is gone.
GONE_NOTE = (
    "Its process on this machine has exited. Once its lease ends"
    " (BGTASKS_STORE_LEASE), a process of the app that uses this store runs"
    " it again if it is durable, or marks it failed (TaskLost)."
)


def terminal_width() -> int:
    """The width of the terminal in columns: ``COLUMNS`` if set, else the
    terminal's, else 80 (output to a pipe or a file)."""
    return shutil.get_terminal_size().columns


def wrap(text: str, width: int) -> list[str]:
    """A paragraph as lines of at most ``width`` columns (a word longer than
    that is split)."""
    return textwrap.wrap(text, max(width, 20))


# -- text that a terminal shows -------------------------------------------


def one_line(text: str) -> str:
    """``text`` on one line: runs of white space and control characters
    (which could move a terminal's cursor) become one space."""
    return " ".join("".join(char if char.isprintable() else " " for char in text).split())


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width_of(text: str) -> int:
    """How many columns a terminal gives ``text``: two for a wide (East
    Asian) character, none for a combining one."""
    return sum(_char_width(char) for char in text)


def cut(text: str, width: int, *, keep_end: bool = False) -> str:
    """``text`` in at most ``width`` columns, with an ellipsis for the part
    cut off: its end, or its start if ``keep_end``."""
    if width_of(text) <= width:
        return text
    room = width - 1
    kept: list[str] = []
    for char in reversed(text) if keep_end else text:
        room -= _char_width(char)
        if room < 0:
            break
        kept.append(char)
    if keep_end:
        return ELLIPSIS + "".join(reversed(kept))
    return "".join(kept) + ELLIPSIS


# -- tables ---------------------------------------------------------------


@dataclasses.dataclass
class Column:
    """One column of a table."""

    header: str
    cells: list[str]
    #: Shorter cells, for a narrow terminal.
    compact: list[str] | None = None
    #: How a cell that is too long is cut: ``"end"`` keeps its start,
    #: ``"start"`` keeps its end; ``None``: never cut.
    cut: t.Literal["start", "end"] | None = None
    #: The width a cut column shrinks to before the other columns get
    #: compact or dropped, and the width it shrinks to at the last.
    comfortable: int = 0
    minimum: int = 0
    #: Right-aligned, as numbers are.
    right: bool = False

    def shown(self, compact: bool) -> list[str]:
        return self.compact if compact and self.compact is not None else self.cells

    def natural(self, compact: bool) -> int:
        return max(width_of(cell) for cell in [self.header, *self.shown(compact)])


@dataclasses.dataclass(frozen=True)
class _Plan:
    compact: bool
    dropped: tuple[str, ...]
    floor: t.Literal["comfortable", "minimum"]


def _plans(early: t.Sequence[str], late: t.Sequence[str]) -> list[_Plan]:
    plans = [_Plan(False, (), "comfortable")]
    plans += [_Plan(True, tuple(early[:n]), "comfortable") for n in range(len(early) + 1)]
    plans += [_Plan(True, (*early, *late[:n]), "minimum") for n in range(len(late) + 1)]
    return plans


def _share(room: int, floors: list[int], naturals: list[int]) -> list[int]:
    """Give ``room`` columns to the cut columns: each its floor, then what
    is left to each in turn, up to its natural width; so the first is cut
    further only when the others are at their floor."""
    widths = list(floors)
    room -= sum(floors)
    for i, natural in enumerate(naturals):
        give = max(0, min(room, natural - widths[i]))
        widths[i] += give
        room -= give
    return widths


@dataclasses.dataclass(frozen=True)
class Table:
    """A table laid out for a width."""

    lines: list[str]
    #: Whether the compact cells are shown.
    compact: bool
    #: The headers of the columns shown.
    headers: list[str]


def table(
    columns: list[Column],
    width: int,
    *,
    early: t.Sequence[str] = (),
    late: t.Sequence[str] = (),
) -> Table:
    """Lay ``columns`` out in ``width`` terminal columns, by the first of
    these that fits: every column in full, the text columns cut if need be,
    to no less than their comfortable width; the compact cells, then also
    without the columns named in ``early``, one more at a time; the text
    columns cut to no less than their minimum, then also without the
    columns named in ``late``, one more at a time. If none fits, the last
    (its lines are then too long). The text columns get what room is left,
    in their order.
    """
    for plan in _plans(early, late):
        kept = [column for column in columns if column.header not in plan.dropped]
        fixed = sum(column.natural(plan.compact) for column in kept if column.cut is None)
        room = width - fixed - len(GAP) * (len(kept) - 1)
        cutting = [column for column in kept if column.cut is not None]
        naturals = [column.natural(plan.compact) for column in cutting]
        floors = [
            min(
                natural,
                max(
                    width_of(column.header),
                    column.comfortable if plan.floor == "comfortable" else column.minimum,
                ),
            )
            for column, natural in zip(cutting, naturals)
        ]
        if room >= sum(floors):
            break
    widths = dict(zip((c.header for c in cutting), _share(room, floors, naturals)))
    shown: list[tuple[Column, int, list[str]]] = []
    for column in kept:
        cells = column.shown(plan.compact)
        if column.cut is not None:
            size = widths[column.header]
            cells = [cut(cell, size, keep_end=column.cut == "start") for cell in cells]
        else:
            size = column.natural(plan.compact)
        shown.append((column, size, [column.header, *cells]))
    lines = []
    for row in range(len(kept[0].cells) + 1):
        parts = []
        for column, size, cells in shown:
            pad = " " * (size - width_of(cells[row]))
            parts.append(pad + cells[row] if column.right and row else cells[row] + pad)
        lines.append(GAP.join(parts).rstrip())
    return Table(lines, plan.compact, [column.header for column in kept])


# -- values ---------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:g}"


def progress_text(progress: dict[str, t.Any] | None) -> str:
    """``3/10 Rendering``, ``40%`` (a total and no message), ``3`` (no
    total), or ``-`` (no progress reported)."""
    if progress is None:
        return "-"
    current, total, message = progress["current"], progress["total"], progress["message"]
    if total is None:
        text = _number(current)
    elif message is None and total > 0:
        return f"{current / total:.0%}"
    else:
        text = f"{_number(current)}/{_number(total)}"
    return text if message is None else f"{text} {message}"


def time_text(value: datetime | None, *, short: bool = False) -> str:
    """A time in the local time zone, to the millisecond or, if ``short``,
    the second; ``-`` for none."""
    if value is None:
        return "-"
    local = value.astimezone()
    if short:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.isoformat(sep=" ", timespec="milliseconds")


def compact_time(value: datetime | None, now: datetime) -> str:
    """A time in the local time zone, as ``ps`` shows one: ``23:28:15``
    today, ``11-26 23:28`` before; ``-`` for none."""
    if value is None:
        return "-"
    local = value.astimezone()
    if local.date() == now.astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%m-%d %H:%M")


def iso(value: datetime | None) -> str | None:
    """A time as ISO 8601 (UTC, as records hold it), for JSON."""
    return None if value is None else value.isoformat()


# -- a task whose process is gone ------------------------------------------


def process_gone(record: TaskRecord) -> bool:
    """Whether ``record`` says queued or running, but the process that
    holds it (``host:pid``) ran on this machine and has exited. The process
    of another machine can't be checked: ``False``. A pid that a new process
    took meanwhile looks alive."""
    if record.status not in (TaskStatus.QUEUED, TaskStatus.RUNNING) or not record.process:
        return False
    host, _, pid = record.process.rpartition(":")
    # Not on Windows, where os.kill() ends the process.
    if os.name != "posix" or host != socket.gethostname() or not pid.isdigit():
        return False
    number = int(pid)
    if number <= 0 or number == os.getpid():
        return False
    try:
        os.kill(number, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, as another user's
        return False
    return False


def status_text(record: TaskRecord, gone: bool) -> str:
    """``running``, or ``running (process gone)``."""
    return f"{record.status.value} (process gone)" if gone else record.status.value


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def record_lines(record: TaskRecord) -> list[str]:
    """What ``flask bgtasks show`` prints: one line per field of the
    record, one per error, and the traceback of the last error."""
    gone = process_gone(record)
    fields: list[tuple[str, str]] = [
        ("id", record.id),
        ("name", record.name),
        ("pool", record.pool),
        ("status", status_text(record, gone)),
        ("durable", "yes" if record.durable else "no"),
    ]
    if record.args is not None or record.kwargs is not None:
        fields.append(("args", _json(record.args)))
        fields.append(("kwargs", _json(record.kwargs)))
    elif record.args_repr is not None:
        fields.append(("arguments", f"{record.args_repr} (repr, not JSON)"))
    else:
        fields.append(("arguments", "(not kept by this store)"))
    fields.append(("progress", progress_text(record.progress)))
    if record.status is not TaskStatus.SUCCEEDED:
        fields.append(("result", "-"))
    elif record.result_repr is not None:
        fields.append(("result", f"{record.result_repr} (repr, not JSON)"))
    else:
        fields.append(("result", _json(record.result)))
    fields.append(("attempt", str(record.attempt)))
    if record.retry_of is not None:
        fields.append(("retry of", record.retry_of))
    process = record.process or "-"
    fields += [
        ("cancel requested", "yes" if record.cancel_requested else "no"),
        ("process", f"{process} (gone)" if gone else process),
        ("submitted", time_text(record.submitted_at)),
        ("started", time_text(record.started_at)),
        ("finished", time_text(record.finished_at)),
        ("errors", str(len(record.errors)) if record.errors else "none"),
    ]
    width = max(len(label) for label, _ in fields) + 2
    lines = []
    for label, value in fields:
        lines.append(f"{label + ':':<{width}}{value}")
    for error in record.errors:
        at = time_text(as_datetime(error["at"]))
        lines.append(f"  attempt {error['attempt']} at {at}: {error['type']}: {error['message']}")
    if record.errors and record.errors[-1]["traceback"]:
        lines.append(f"traceback of attempt {record.errors[-1]['attempt']}:")
        for line in record.errors[-1]["traceback"].rstrip("\n").splitlines():
            lines.append(f"  {line}")
    return lines


def record_json(record: TaskRecord) -> dict[str, t.Any]:
    """Every field of a record as a JSON value: times as ISO 8601 strings,
    also those of the errors; and ``process_gone`` (:func:`process_gone`)."""
    data = {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}
    data["status"] = record.status.value
    for name in ("submitted_at", "started_at", "finished_at"):
        data[name] = iso(data[name])
    data["errors"] = [{**error, "at": iso(as_datetime(error["at"]))} for error in record.errors]
    data["process_gone"] = process_gone(record)
    return data
