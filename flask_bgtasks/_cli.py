"""The ``flask bgtasks`` commands: look at and manage task records."""

from __future__ import annotations

import json
import re
import typing as t
from datetime import datetime

import click
from flask import current_app
from flask.cli import AppGroup

from ._cli_worker import worker_command
from ._record import TaskStatus, as_datetime

if t.TYPE_CHECKING:
    from ._extension import BGTasks
    from ._record import TaskRecord
    from .stores import TaskStore

#: ``flask bgtasks ...``; ``init_app`` adds it to ``app.cli``.
cli = AppGroup(
    "bgtasks",
    help=(
        "Look at and manage background tasks.\n\nThe commands read the app's"
        " task store. With the default memory store they only see the tasks"
        " of the command's own process, so none from the app's servers: set"
        " BGTASKS_STORE to a SQLite file (one machine) or Redis (several) to"
        " manage those. 'worker' runs the workers of BGTASKS_BACKEND = 'rq'."
    ),
)

#: Task ids are URL-safe base64 and may start with "-": without this, Click
#: would take such an id for an unknown option.
_ID_SETTINGS: dict[str, t.Any] = {"ignore_unknown_options": True}

#: The longest progress shown in a ``list`` row.
_PROGRESS_WIDTH = 30


#: ``30s``, ``15m``, ``12h``, ``7d``, or a plain number of seconds.
_AGE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_age(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """The ``--older-than`` value in seconds. A callback rather than a
    ``ParamType`` subclass, which is generic only in recent Click versions."""
    match = _AGE.fullmatch(value.strip().lower())
    if match is None:
        raise click.BadParameter(
            f"{value!r} is not an age. Give a number of seconds, or a number"
            " followed by s, m, h or d, such as 30s, 15m, 12h or 7d."
        )
    return float(match[1]) * _AGE_UNITS[match[2]]


def _store() -> TaskStore:
    bg: BGTasks = current_app.extensions["bgtasks"]
    return bg.store()


def _record(store: TaskStore, task_id: str) -> TaskRecord:
    """The record of ``task_id``, or exit with code 1 and say why."""
    record = store.record(task_id)
    if record is None:
        message = f"No task with id {task_id} in this store (unknown, or its record expired)."
        if not store.shared:
            message += (
                " The memory store only holds the tasks of this command's own"
                " process; set BGTASKS_STORE to a SQLite file or Redis to see"
                " the tasks of the app's servers."
            )
        raise click.ClickException(message)
    return record


def _number(value: float) -> str:
    return f"{value:g}"


def _progress(progress: dict[str, t.Any] | None) -> str:
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


def _time(value: datetime | None, short: bool = False) -> str:
    """A time in the local time zone; ``-`` for none."""
    if value is None:
        return "-"
    local = value.astimezone()
    if short:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.isoformat(sep=" ", timespec="milliseconds")


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


@cli.command("list")
@click.option(
    "--status",
    type=click.Choice([status.value for status in TaskStatus]),
    help="Only the tasks with this status.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Show at most this many tasks.",
)
def list_command(status: str | None, limit: int) -> None:
    """List the most recently submitted tasks, newest first."""
    store = _store()
    records = store.records(None if status is None else TaskStatus(status), limit)
    if not records:
        click.echo("No tasks.")
        if not store.shared:
            click.echo(
                "The memory store only holds the tasks of this command's own"
                " process; set BGTASKS_STORE to a SQLite file or Redis to see"
                " the tasks of the app's servers."
            )
        return
    rows = [("ID", "NAME", "STATUS", "PROGRESS", "ATTEMPT", "SUBMITTED", "FINISHED")]
    for record in records:
        progress = " ".join(_progress(record.progress).split())  # one line
        if len(progress) > _PROGRESS_WIDTH:
            progress = progress[: _PROGRESS_WIDTH - 3] + "..."
        rows.append(
            (
                record.id,
                record.name,
                record.status.value,
                progress,
                str(record.attempt),
                _time(record.submitted_at, short=True),
                _time(record.finished_at, short=True),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if len(records) == limit:
        click.echo(f"Showing the {limit} most recent tasks; use --limit to see more.")


@cli.command("show", context_settings=dict(_ID_SETTINGS))
@click.argument("task_id", metavar="ID")
def show_command(task_id: str) -> None:
    """Show everything the store knows about a task.

    That is every field of its record, its errors, and the traceback of its
    last error.

    Exits with code 1 if the store has no task with this id.
    """
    record = _record(_store(), task_id)
    fields: list[tuple[str, str]] = [
        ("id", record.id),
        ("name", record.name),
        ("pool", record.pool),
        ("status", record.status.value),
        ("durable", "yes" if record.durable else "no"),
    ]
    if record.args is not None or record.kwargs is not None:
        fields.append(("args", _json(record.args)))
        fields.append(("kwargs", _json(record.kwargs)))
    elif record.args_repr is not None:
        fields.append(("arguments", f"{record.args_repr} (repr, not JSON)"))
    else:
        fields.append(("arguments", "(not kept by this store)"))
    fields.append(("progress", _progress(record.progress)))
    if record.status is not TaskStatus.SUCCEEDED:
        fields.append(("result", "-"))
    elif record.result_repr is not None:
        fields.append(("result", f"{record.result_repr} (repr, not JSON)"))
    else:
        fields.append(("result", _json(record.result)))
    fields += [
        ("attempt", str(record.attempt)),
        ("cancel requested", "yes" if record.cancel_requested else "no"),
        ("process", record.process or "-"),
        ("submitted", _time(record.submitted_at)),
        ("started", _time(record.started_at)),
        ("finished", _time(record.finished_at)),
        ("errors", str(len(record.errors)) if record.errors else "none"),
    ]
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        click.echo(f"{label + ':':<{width}}{value}")
    for error in record.errors:
        at = _time(as_datetime(error["at"]))
        click.echo(f"  attempt {error['attempt']} at {at}: {error['type']}: {error['message']}")
    if record.errors and record.errors[-1]["traceback"]:
        click.echo(f"traceback of attempt {record.errors[-1]['attempt']}:")
        for line in record.errors[-1]["traceback"].rstrip("\n").splitlines():
            click.echo(f"  {line}")


@cli.command("cancel", context_settings=dict(_ID_SETTINGS))
@click.argument("task_id", metavar="ID")
def cancel_command(task_id: str) -> None:
    """Cancel a task. A queued task is cancelled at once and never runs; a
    running task is asked to stop, and stops at its next
    current_task.check_cancelled().

    Exits with code 1 if the store has no task with this id.
    """
    store = _store()
    record = _record(store, task_id)
    if not record.done():
        bg: BGTasks = current_app.extensions["bgtasks"]
        if bg.cancel(task_id):
            click.echo("Cancelled (it was queued).")
            return
        # False: running, or it finished meanwhile. Only a task that was
        # unfinished when asked has its request recorded.
        after = store.record(task_id)
        if after is None or after.cancel_requested:
            click.echo("Asked the running task to stop; it stops at its next check_cancelled().")
            return
        record = after
    click.echo(f"Task {task_id} already finished ({record.status.value}); nothing to cancel.")


@cli.command("purge")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    callback=_parse_age,
    metavar="AGE",
    help="Delete the records of tasks that finished longer ago than this: 30s, 15m, 12h, 7d,"
    " or a number of seconds.",
)
def purge_command(older_than: float) -> None:
    """Delete the records of tasks that finished some time ago. Queued and
    running tasks are never deleted.
    """
    count = _store().purge(older_than)
    noun = "record" if count == 1 else "records"
    click.echo(f"Deleted {count} finished task {noun}.")


cli.add_command(worker_command)
