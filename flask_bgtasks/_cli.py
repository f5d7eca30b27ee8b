"""The ``flask bgtasks`` commands: look at and manage task records."""

from __future__ import annotations

import re
import typing as t
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import AppGroup

from ._cli_format import (
    GONE_NOTE,
    Column,
    compact_time,
    one_line,
    process_gone,
    progress_text,
    record_json,
    record_lines,
    status_text,
    table,
    terminal_width,
    time_text,
    wrap,
)
from ._cli_worker import worker_command
from ._context import get_app
from ._engine import runtime_of
from ._errors import TaskCancelled, UsageError
from ._record import TaskStatus

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

#: The widths, in terminal columns, to which ``list`` cuts names and
#: progress: before it makes the other columns compact or drops them, and
#: at the last, on a narrow terminal.
_NAME_WIDTHS = (40, 12)
_PROGRESS_WIDTHS = (20, 8)

#: Why a command sees no task of the app's servers.
_MEMORY_ONLY = (
    "The memory store only holds the tasks of this command's own process;"
    " set BGTASKS_STORE to a SQLite file or Redis to see the tasks of the"
    " app's servers."
)

_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
)


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


def _bg() -> BGTasks:
    bg: BGTasks = current_app.extensions["bgtasks"]
    return bg


def _store() -> TaskStore:
    return _bg().store()


def _record(store: TaskStore, task_id: str) -> TaskRecord:
    """The record of ``task_id``, or exit with code 1 and say why."""
    record = store.record(task_id)
    if record is None:
        message = f"No task with id {task_id} in this store (unknown, or its record expired)."
        if not store.shared:
            message += " " + _MEMORY_ONLY
        raise click.ClickException(message)
    return record


def _echo_json(value: object) -> None:
    """One JSON document on stdout, by the app's JSON provider, so that it
    writes the app's own types as the app's responses do."""
    click.echo(current_app.json.dumps(value))


def _echo_wrapped(text: str, width: int) -> None:
    for line in wrap(text, width):
        click.echo(line)


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
@_json_option
def list_command(status: str | None, limit: int, as_json: bool) -> None:
    """List the most recently submitted tasks, newest first.

    The table fits the terminal (COLUMNS): a narrow one gets short times,
    fewer columns and names cut short, never ids. With --json, a JSON array
    of the records.
    """
    store = _store()
    records = store.records(None if status is None else TaskStatus(status), limit)
    if as_json:
        _echo_json([record_json(record) for record in records])
        return
    width = terminal_width()
    if not records:
        click.echo("No tasks.")
        if not store.shared:
            _echo_wrapped(_MEMORY_ONLY, width)
        return
    gone = [process_gone(record) for record in records]
    now = datetime.now(UTC)
    columns = [
        Column("ID", [record.id for record in records]),
        Column(
            "NAME",
            [one_line(record.name) for record in records],
            cut="start",  # the function's name is at the end
            comfortable=_NAME_WIDTHS[0],
            minimum=_NAME_WIDTHS[1],
        ),
        Column(
            "STATUS",
            [status_text(record, dead) for record, dead in zip(records, gone)],
            compact=[
                "orphaned" if dead else record.status.value for record, dead in zip(records, gone)
            ],
        ),
        Column(
            "PROGRESS",
            [one_line(progress_text(record.progress)) for record in records],
            cut="end",
            comfortable=_PROGRESS_WIDTHS[0],
            minimum=_PROGRESS_WIDTHS[1],
        ),
        Column("ATTEMPT", [str(record.attempt) for record in records], right=True),
    ]
    for header, field in (("SUBMITTED", "submitted_at"), ("FINISHED", "finished_at")):
        times = [getattr(record, field) for record in records]
        columns.append(
            Column(
                header,
                [time_text(at, short=True) for at in times],
                compact=[compact_time(at, now) for at in times],
            )
        )
    laid = table(columns, width, early=("FINISHED", "ATTEMPT"), late=("SUBMITTED", "PROGRESS"))
    for line in laid.lines:
        click.echo(line)
    if laid.compact and any(gone) and "STATUS" in laid.headers:
        _echo_wrapped(
            "orphaned: queued or running, but its process on this machine is gone.", width
        )
    if len(records) == limit:
        _echo_wrapped(f"Showing the {limit} most recent tasks; use --limit to see more.", width)


@cli.command("show", context_settings=dict(_ID_SETTINGS))
@click.argument("task_id", metavar="ID")
@_json_option
def show_command(task_id: str, as_json: bool) -> None:
    """Show everything the store knows about a task.

    That is every field of its record, its errors, and the traceback of its
    last error. With --json, the record as a JSON object.

    Exits with code 1 if the store has no task with this id.
    """
    record = _record(_store(), task_id)
    if as_json:
        _echo_json(record_json(record))
        return
    for line in record_lines(record):
        click.echo(line)
    if process_gone(record):
        _echo_wrapped(GONE_NOTE, terminal_width())


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


@cli.command("stats")
@_json_option
def stats_command(as_json: bool) -> None:
    """Count the tasks, by status and by pool.

    That is how many tasks are in each status, how many are queued and
    running in each pool, the pool's workers, and the tasks finished in the
    last minute. With --json, bg.stats() as a JSON object.
    """
    stats = _bg().stats()
    if as_json:
        _echo_json(stats.to_dict())
        return
    width = terminal_width()
    reach = "shared" if stats.shared else "this process only"
    click.echo(f"Store: {stats.store} ({reach})   Backend: {stats.backend}")
    click.echo()
    statuses = list(stats.by_status)
    counts = [str(stats.by_status[status]) for status in statuses]
    by_status = [
        Column("STATUS", [*statuses, "total"]),
        Column("TASKS", [*counts, str(sum(stats.by_status.values()))], right=True),
    ]
    for line in table(by_status, width).lines:
        click.echo(line)
    click.echo()
    click.echo(f"Finished in the last minute: {stats.finished_last_minute}")
    pools = list(stats.pools.values())
    if pools:
        click.echo()
        columns = [
            Column("POOL", [pool.name for pool in pools], cut="end", comfortable=30, minimum=8),
            Column("QUEUED", [str(pool.queued) for pool in pools], right=True),
            Column("RUNNING", [str(pool.running) for pool in pools], right=True),
            Column("WORKERS", [_workers(pool.workers, pool.max_workers) for pool in pools]),
        ]
        for line in table(columns, width).lines:
            click.echo(line)
    notes = []
    if not stats.shared:
        notes.append(_MEMORY_ONLY)
    if not runtime_of(get_app()).remote:
        notes.append(
            f"WORKERS counts this command's own process only: with BGTASKS_BACKEND ="
            f" {stats.backend!r}, each process of the app runs its tasks itself."
        )
    for note in notes:
        click.echo()
        _echo_wrapped(note, width)


def _workers(workers: int | None, most: int | None) -> str:
    """``2/4`` (now and at most), ``2`` (no most), or ``-`` (unknown)."""
    if workers is None:
        return "-"
    return str(workers) if most is None else f"{workers}/{most}"


@cli.command("retry", context_settings=dict(_ID_SETTINGS))
@click.argument("task_id", metavar="ID")
def retry_command(task_id: str) -> None:
    """Run a task that has ended again.

    Submits a new task with the same name and arguments as the task ID
    (failed, cancelled or succeeded); its record's "retry of" is ID. Prints
    the new task's id, and nothing else on stdout.

    With an engine backend (RQ), its workers run the new task. Otherwise it
    runs in this command's process, which waits for it to end.

    Exits with code 1 if the store has no task with this id, or the task
    can't run again (it has not ended, is not declared with @bg.task, or its
    arguments were not JSON).
    """
    _record(_store(), task_id)
    try:
        handle = _bg().retry(task_id)
    except UsageError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(handle.id)
    click.echo(f"Task {handle.name!r} (id {task_id}) runs again as {handle.id}.", err=True)
    runtime = runtime_of(get_app())
    if runtime.remote:
        return
    click.echo(
        f"It runs in this process (BGTASKS_BACKEND = {runtime.config.backend!r});"
        " waiting for it to end.",
        err=True,
    )
    try:
        error = handle.exception()
    except TaskCancelled:
        click.echo("It was cancelled.", err=True)
        return
    if error is None:
        click.echo("It succeeded.", err=True)
    else:
        click.echo(f"It failed: {type(error).__name__}: {error}", err=True)


cli.add_command(worker_command)
