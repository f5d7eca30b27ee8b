from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from datetime import datetime
from pathlib import Path

import click
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_bgtasks import BGTasks, TaskCancelled, TaskResult, TaskStatus, current_task
from flask_bgtasks._cli import _parse_age, cli
from flask_bgtasks._cli_format import ELLIPSIS, GONE_NOTE, width_of

from .conftest import Gate

UNKNOWN = "No task with id nope in this store (unknown, or its record expired)."


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "tasks.db")


@pytest.fixture
def app(make_app: t.Callable[..., Flask], store_url: str) -> Flask:
    # One worker, so that a task held at the gate keeps the next one queued.
    return make_app(BGTASKS_STORE=store_url, BGTASKS_MAX_WORKERS=1)


@pytest.fixture(params=["same app", "other app"])
def cancel_runner(
    request: pytest.FixtureRequest,
    runner: FlaskCliRunner,
    make_app: t.Callable[..., Flask],
    store_url: str,
) -> FlaskCliRunner:
    """The CLI of the app that runs the tasks, which cancels through their
    live results, or of another app on the same file, which cancels through
    the store as a command in another process does."""
    if request.param == "same app":
        return runner
    return make_app("other_app", BGTASKS_STORE=store_url).test_cli_runner()


def run(runner: FlaskCliRunner, *args: str, columns: int = 200) -> click.testing.Result:
    """``flask bgtasks ARGS`` in a terminal ``columns`` wide."""
    return runner.invoke(args=["bgtasks", *args], env={"COLUMNS": str(columns)})


def rows(output: str) -> dict[str, list[str]]:
    """The rows of a ``list`` table by task id, split on runs of 2+ spaces."""
    lines = output.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "ID",
        "NAME",
        "STATUS",
        "PROGRESS",
        "ATTEMPT",
        "SUBMITTED",
        "FINISHED",
    ]
    cells = [re.split(r"\s{2,}", line) for line in lines[1:]]
    return {row[0]: row for row in cells if len(row) == 7}


class Statuses:
    """One task of each status; the running one holds the only worker."""

    def __init__(self, app: Flask, bg: BGTasks, gate: Gate) -> None:
        @bg.task
        def render(pages: int, title: str = "") -> dict[str, str]:
            current_task.set_progress(3, pages, "Rendering")
            return {"url": f"/{title}.pdf"}

        @bg.task
        def resize() -> None:
            current_task.set_progress(40, 100)

        @bg.task
        def fail() -> None:
            raise ValueError("boom")

        @bg.task
        def hold() -> None:
            gate()

        with app.app_context():
            self.succeeded = render.submit(10, title="report")
            assert bg.join(5)
            self.resized = resize.submit()
            assert bg.join(5)
            self.failed = fail.submit()
            assert bg.join(5)
            self.running = hold.submit()
            gate.wait_entered()
            self.cancelled = bg.submit(int)
            assert self.cancelled.cancel()
            self.queued = bg.submit(int)
        self.gate = gate

    def finish(self) -> None:
        self.gate.open()
        self.running.result(5)
        assert self.queued.result(5) == 0


@pytest.fixture
def statuses(app: Flask, bg: BGTasks, gate: Gate) -> Statuses:
    return Statuses(app, bg, gate)


def test_list_shows_every_status_newest_first(runner: FlaskCliRunner, statuses: Statuses) -> None:
    result = run(runner, "list")
    statuses.finish()
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    s = statuses
    assert list(table) == [
        r.id for r in (s.queued, s.cancelled, s.running, s.failed, s.resized, s.succeeded)
    ]
    assert table[s.succeeded.id][1:5] == [s.succeeded.name, "succeeded", "3/10 Rendering", "1"]
    assert table[s.resized.id][2:4] == ["succeeded", "40%"]
    assert table[s.failed.id][2:4] == ["failed", "-"]
    assert table[s.running.id][2:] == ["running", "-", "1", table[s.running.id][5], "-"]
    assert table[s.cancelled.id][2] == "cancelled"
    assert table[s.queued.id][2:5] == ["queued", "-", "0"]
    local = s.succeeded.submitted_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert table[s.succeeded.id][5] == local
    assert "Showing the" not in result.output


def test_list_filters_by_status_and_limits(runner: FlaskCliRunner, statuses: Statuses) -> None:
    failed = run(runner, "list", "--status", "failed")
    succeeded = run(runner, "list", "--status", "succeeded")
    limited = run(runner, "list", "--limit", "2")
    statuses.finish()
    assert list(rows(failed.output)) == [statuses.failed.id]
    assert list(rows(succeeded.output)) == [statuses.resized.id, statuses.succeeded.id]
    assert list(rows(limited.output)) == [statuses.queued.id, statuses.cancelled.id]
    assert "Showing the 2 most recent tasks; use --limit to see more." in limited.output


LONG = "Reading the file\nthat has a very long name.csv"
#: Wide characters, which take two columns each.
JAPANESE = "\u5831\u544a\u66f8\u3092\u4f5c\u6210\u3057\u3066\u3044\u307e\u3059" * 2


@pytest.mark.parametrize(
    ("message", "columns"),
    [(LONG, 80), (LONG, 200), (JAPANESE, 80), (JAPANESE, 200)],
    ids=["80", "200", "wide characters at 80", "wide characters at 200"],
)
def test_list_keeps_long_progress_on_one_line(
    app: Flask, bg: BGTasks, runner: FlaskCliRunner, message: str, columns: int
) -> None:
    @bg.task(name="myapp.talk")
    def talk() -> None:
        current_task.set_progress(1, 2, message)

    with app.app_context():
        task = talk.submit()
    task.result(5)
    result = run(runner, "list", columns=columns)
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert max(width_of(line) for line in lines) <= columns
    progress = " ".join(f"1/2 {message}".split())
    shown = next(cell for cell in re.split(r"\s{2,}", lines[1]) if cell.startswith("1/2"))
    if columns == 200:
        assert shown == progress
    else:  # cut where its room ends
        assert shown.endswith(ELLIPSIS) and progress.startswith(shown[:-1])


def test_list_without_tasks(runner: FlaskCliRunner) -> None:
    result = run(runner, "list")
    assert result.exit_code == 0
    assert result.output == "No tasks.\n"


def test_list_memory_store_says_what_it_sees(make_app: t.Callable[..., Flask]) -> None:
    result = run(make_app().test_cli_runner(), "list")
    assert result.exit_code == 0
    assert result.output.startswith("No tasks.\nThe memory store only holds the tasks")
    assert "BGTASKS_STORE" in result.output


@pytest.mark.parametrize("args", [["--status", "done"], ["--limit", "0"]])
def test_list_bad_options(runner: FlaskCliRunner, args: list[str]) -> None:
    result = run(runner, "list", *args)
    assert result.exit_code == 2
    assert "Invalid value for '--" + args[0][2:] in result.output


def test_show_succeeded(app: Flask, bg: BGTasks, runner: FlaskCliRunner) -> None:
    @bg.task
    def render(pages: int, title: str = "") -> dict[str, str]:
        current_task.set_progress(3, pages, "Rendering")
        return {"url": f"/{title}.pdf"}

    with app.app_context():
        task = render.submit(10, title="report")
    assert task.result(5) == {"url": "/report.pdf"}
    result = run(runner, "show", task.id)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:11] == [
        f"id:               {task.id}",
        f"name:             {task.name}",
        "pool:             default",
        "status:           succeeded",
        "durable:          no",
        "args:             [10]",
        'kwargs:           {"title": "report"}',
        "progress:         3/10 Rendering",
        'result:           {"url": "/report.pdf"}',
        "attempt:          1",
        "cancel requested: no",
    ]
    assert lines[11].startswith("process:          ") and lines[11] != "process:          -"
    assert task.started_at is not None and task.finished_at is not None
    times = [
        at.astimezone().isoformat(" ", "milliseconds")
        for at in (task.submitted_at, task.started_at, task.finished_at)
    ]
    assert lines[12:] == [
        f"submitted:        {times[0]}",
        f"started:          {times[1]}",
        f"finished:         {times[2]}",
        "errors:           none",
    ]


def test_show_failed_has_errors_and_traceback(
    app: Flask, bg: BGTasks, runner: FlaskCliRunner
) -> None:
    @bg.task
    def fail() -> None:
        raise ValueError("boom")

    with app.app_context():
        task = fail.submit()
    assert isinstance(task.exception(5), ValueError)
    result = run(runner, "show", task.id)
    assert result.exit_code == 0, result.output
    assert "status:           failed\n" in result.output
    assert "result:           -\n" in result.output
    assert "errors:           1\n" in result.output
    error_line = next(line for line in result.output.splitlines() if "attempt 1 at" in line)
    assert error_line.endswith(": ValueError: boom")
    traceback = result.output.split("traceback of attempt 1:\n", 1)[1]
    assert traceback.startswith("  Traceback (most recent call last):\n")
    assert '    raise ValueError("boom")\n' in traceback
    assert traceback.endswith("  ValueError: boom\n")


def test_show_values_that_are_not_json(app: Flask, bg: BGTasks, runner: FlaskCliRunner) -> None:
    @bg.task
    def to_set(value: object) -> set[int]:
        return {1}

    with app.app_context():
        task = to_set.submit(object)
    assert task.result(5) == {1}
    result = run(runner, "show", task.id)
    assert "arguments:        ((<class 'object'>,), {}) (repr, not JSON)\n" in result.output
    assert "result:           {1} (repr, not JSON)\n" in result.output


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_unknown_id(runner: FlaskCliRunner, command: str) -> None:
    result = run(runner, command, "nope")
    assert result.exit_code == 1
    assert result.output == f"Error: {UNKNOWN}\n"


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_id_starting_with_a_dash_is_no_option(runner: FlaskCliRunner, command: str) -> None:
    result = run(runner, command, "-0abc")
    assert result.exit_code == 1
    assert result.output == f"Error: {UNKNOWN.replace('nope', '-0abc')}\n"


def test_unknown_id_memory_store_says_why(make_app: t.Callable[..., Flask]) -> None:
    result = run(make_app().test_cli_runner(), "show", "nope")
    assert result.exit_code == 1
    assert f"Error: {UNKNOWN} The memory store only holds the tasks" in result.output


def test_cancel_queued(
    app: Flask, bg: BGTasks, gate: Gate, runner: FlaskCliRunner, cancel_runner: FlaskCliRunner
) -> None:
    ran = threading.Event()

    @bg.task
    def hold() -> None:
        gate()

    with app.app_context():
        blocker = hold.submit()
        gate.wait_entered()
        queued = bg.submit(ran.set)
        bg.store().flush()  # as a request does before its response leaves
    result = run(cancel_runner, "cancel", queued.id)
    gate.open()
    blocker.result(5)
    assert result.exit_code == 0, result.output
    assert result.output == "Cancelled (it was queued).\n"
    with pytest.raises(TaskCancelled):
        queued.result(5)
    assert bg.join(5)
    assert not ran.is_set()
    assert "status:           cancelled\n" in run(runner, "show", queued.id).output


def test_cancel_running(
    app: Flask, bg: BGTasks, runner: FlaskCliRunner, cancel_runner: FlaskCliRunner
) -> None:
    entered = threading.Event()
    step = threading.Event()

    @bg.task
    def loop() -> str:
        for _ in range(3):  # bounded, so a cancel that is lost fails the test
            current_task.check_cancelled()
            entered.set()
            assert step.wait(5)
        return "not cancelled"

    with app.app_context():
        task = loop.submit()
    assert entered.wait(5)
    bg.store(app).flush()  # the start is written behind
    result = run(cancel_runner, "cancel", task.id)
    step.set()  # the next round of work; it then checks again
    with pytest.raises(TaskCancelled):
        task.result(5)
    assert result.exit_code == 0, result.output
    assert result.output == (
        "Asked the running task to stop; it stops at its next check_cancelled().\n"
    )
    assert task.status is TaskStatus.CANCELLED
    shown = run(runner, "show", task.id).output
    assert "status:           cancelled\n" in shown
    assert "cancel requested: yes\n" in shown


@pytest.mark.parametrize("fail", [False, True])
def test_cancel_finished(app: Flask, bg: BGTasks, runner: FlaskCliRunner, fail: bool) -> None:
    with app.app_context():
        task: TaskResult[t.Any] = bg.submit(int, "x" if fail else "5")
    task.exception(5)
    result = run(runner, "cancel", task.id)
    assert result.exit_code == 0, result.output
    status = "failed" if fail else "succeeded"
    assert result.output == f"Task {task.id} already finished ({status}); nothing to cancel.\n"
    assert task.status == status


def test_purge_deletes_only_old_finished_records(
    app: Flask, bg: BGTasks, runner: FlaskCliRunner, statuses: Statuses
) -> None:
    young = run(runner, "purge", "--older-than", "1d")
    old = run(runner, "purge", "--older-than", "0")
    left = rows(run(runner, "list").output)
    statuses.finish()
    assert young.exit_code == 0, young.output
    assert young.output == "Deleted 0 finished task records.\n"
    assert old.exit_code == 0, old.output
    assert old.output == "Deleted 4 finished task records.\n"
    assert list(left) == [statuses.queued.id, statuses.running.id]
    assert run(runner, "purge", "--older-than", "0s").output == "Deleted 2 finished task records.\n"


def test_purge_says_record_for_one(app: Flask, bg: BGTasks, runner: FlaskCliRunner) -> None:
    with app.app_context():
        bg.submit(int).result(5)
    assert run(runner, "purge", "--older-than", "0").output == "Deleted 1 finished task record.\n"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("45", 45),
        ("2.5", 2.5),
        ("30s", 30),
        ("15m", 900),
        ("12h", 43200),
        ("7d", 604800),
        (" 7D ", 604800),
    ],
)
def test_age_forms(value: str, seconds: float) -> None:
    ctx = click.Context(cli)
    assert _parse_age(ctx, click.Option(["--older-than"]), value) == seconds


@pytest.mark.parametrize("value", ["2x", "-5", "d", "1 day", ""])
def test_purge_bad_age(runner: FlaskCliRunner, value: str) -> None:
    result = run(runner, "purge", "--older-than", value)
    assert result.exit_code == 2
    assert f"Invalid value for '--older-than': {value!r} is not an age." in result.output
    assert "such as 30s, 15m, 12h or 7d." in result.output


def test_purge_needs_an_age(runner: FlaskCliRunner) -> None:
    result = run(runner, "purge")
    assert result.exit_code == 2
    assert "Missing option '--older-than'" in result.output


# -- the terminal's width ----------------------------------------------------


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


@pytest.mark.parametrize("columns", [50, 80, 100, 132, 200])
def test_list_fits_the_terminal(runner: FlaskCliRunner, statuses: Statuses, columns: int) -> None:
    result = run(runner, "list", columns=columns)
    statuses.finish()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 7
    assert max(width_of(line) for line in lines) <= columns
    for task in (statuses.queued, statuses.running, statuses.succeeded):
        assert cells(next(line for line in lines if task.id in line))[0] == task.id


def test_list_at_80_columns(runner: FlaskCliRunner, statuses: Statuses) -> None:
    result = run(runner, "list", columns=80)
    statuses.finish()
    lines = result.output.splitlines()
    # Full ids; the names cut at their start, which keeps the function's
    # name; today's times as hh:mm:ss; no ATTEMPT and FINISHED.
    assert cells(lines[0]) == ["ID", "NAME", "STATUS", "PROGRESS", "SUBMITTED"]
    table = {row[0]: row for row in map(cells, lines[1:])}
    s = statuses
    name, status, progress, submitted = table[s.succeeded.id][1:]
    assert name.startswith(ELLIPSIS) and name.endswith(".render")
    assert s.succeeded.name.endswith(name[1:])
    assert status == "succeeded"
    assert progress.endswith(ELLIPSIS) and "3/10 Rendering".startswith(progress[:-1])
    assert submitted == s.succeeded.submitted_at.astimezone().strftime("%H:%M:%S")
    assert [row[2] for row in table.values()] == [
        "queued",
        "cancelled",
        "running",
        "failed",
        "succeeded",
        "succeeded",
    ]


def test_list_at_200_columns(runner: FlaskCliRunner, statuses: Statuses) -> None:
    result = run(runner, "list", columns=200)
    statuses.finish()
    table = rows(result.output)  # every column
    s = statuses
    assert table[s.succeeded.id][1] == s.succeeded.name  # not cut
    assert s.succeeded.finished_at is not None
    finished = s.succeeded.finished_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert table[s.succeeded.id][6] == finished
    assert max(map(len, result.output.splitlines())) > 80


def test_list_without_tasks_fits_80_columns(make_app: t.Callable[..., Flask]) -> None:
    result = run(make_app().test_cli_runner(), "list", columns=80)
    assert result.exit_code == 0
    assert max(map(len, result.output.splitlines())) <= 80


# -- --json ------------------------------------------------------------------


def test_list_json(runner: FlaskCliRunner, statuses: Statuses) -> None:
    every = run(runner, "list", "--json", columns=80)
    failed = run(runner, "list", "--json", "--status", "failed")
    limited = run(runner, "list", "--json", "--limit", "2")
    statuses.finish()
    assert every.exit_code == 0, every.output
    records = json.loads(every.output)  # one document, and nothing else
    s = statuses
    order = (s.queued, s.cancelled, s.running, s.failed, s.resized, s.succeeded)
    assert [record["id"] for record in records] == [task.id for task in order]
    assert [record["status"] for record in records] == [
        "queued",
        "cancelled",
        "running",
        "failed",
        "succeeded",
        "succeeded",
    ]
    succeeded = records[-1]
    assert succeeded["args"] == [10] and succeeded["kwargs"] == {"title": "report"}
    assert succeeded["result"] == {"url": "/report.pdf"}
    assert succeeded["progress"] == {"current": 3, "total": 10, "message": "Rendering"}
    assert datetime.fromisoformat(succeeded["submitted_at"]) == s.succeeded.submitted_at
    assert datetime.fromisoformat(succeeded["finished_at"]) == s.succeeded.finished_at
    assert records[0]["started_at"] is None and records[0]["process_gone"] is False
    error = records[3]["errors"][0]
    assert (error["type"], error["message"]) == ("ValueError", "boom")
    assert datetime.fromisoformat(error["at"]).tzinfo is not None
    assert [record["id"] for record in json.loads(failed.output)] == [s.failed.id]
    assert len(json.loads(limited.output)) == 2
    assert "Showing" not in limited.output


def test_list_json_without_tasks(runner: FlaskCliRunner) -> None:
    result = run(runner, "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == []


def test_show_json(app: Flask, bg: BGTasks, runner: FlaskCliRunner) -> None:
    @bg.task
    def render(pages: int, title: str = "") -> dict[str, str]:
        return {"url": f"/{title}.pdf"}

    with app.app_context():
        task = render.submit(10, title="report")
    task.result(5)
    result = run(runner, "show", "--json", task.id)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["id"] == task.id and record["name"] == task.name
    assert record["status"] == "succeeded" and record["result"] == {"url": "/report.pdf"}
    assert record["retry_of"] is None and record["errors"] == []
    assert datetime.fromisoformat(record["started_at"]) == task.started_at
    # The app's JSON provider writes it, with the app's settings.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    assert run(runner, "show", task.id, "--json").output.startswith(f'{{"id": "{task.id}",')


def test_show_json_unknown_id(runner: FlaskCliRunner) -> None:
    result = run(runner, "show", "--json", "nope")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: {UNKNOWN}\n"


# -- stats -------------------------------------------------------------------


def test_stats(runner: FlaskCliRunner, statuses: Statuses) -> None:
    text = run(runner, "stats", columns=80)
    data = run(runner, "stats", "--json")
    statuses.finish()
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert max(map(len, lines)) <= 80
    assert lines[0] == "Store: sqlite (shared)   Backend: threads"
    by_status = {row[0]: row[1] for row in map(cells, lines[2:9])}
    assert by_status == {
        "STATUS": "TASKS",
        "queued": "1",
        "running": "1",
        "succeeded": "2",
        "failed": "1",
        "cancelled": "1",
        "total": "6",
    }
    assert "Finished in the last minute: 4" in lines
    pools = lines.index("Finished in the last minute: 4") + 2
    assert cells(lines[pools]) == ["POOL", "QUEUED", "RUNNING", "WORKERS"]
    assert cells(lines[pools + 1]) == ["default", "1", "1", "1/1"]
    assert "WORKERS counts this command's own process only" in text.output

    assert data.exit_code == 0, data.output
    stats = json.loads(data.output)
    assert stats["by_status"] == {
        "queued": 1,
        "running": 1,
        "succeeded": 2,
        "failed": 1,
        "cancelled": 1,
    }
    assert stats["pools"]["default"] == {
        "name": "default",
        "queued": 1,
        "running": 1,
        "workers": 1,
        "max_workers": 1,
    }
    assert stats["finished_last_minute"] == 4
    assert (stats["store"], stats["shared"], stats["backend"]) == ("sqlite", True, "threads")


def test_stats_memory_store_says_what_it_counts(make_app: t.Callable[..., Flask]) -> None:
    result = run(make_app().test_cli_runner(), "stats", columns=80)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Store: memory (this process only)   Backend: threads\n")
    assert "The memory store only holds the tasks" in result.output
    assert max(map(len, result.output.splitlines())) <= 80


# -- retry -------------------------------------------------------------------


def test_retry_prints_the_new_id(app: Flask, bg: BGTasks, runner: FlaskCliRunner) -> None:
    calls: list[int] = []

    @bg.task
    def flaky(number: int) -> int:
        calls.append(number)
        if len(calls) == 1:
            raise ValueError("not yet")
        return number * 2

    with app.app_context():
        first = flaky.submit(21)
    assert isinstance(first.exception(5), ValueError)
    result = run(runner, "retry", first.id)
    assert result.exit_code == 0, result.output
    new_id = result.stdout.strip()
    assert result.stdout == f"{new_id}\n"  # nothing else, for scripts
    assert new_id != first.id
    assert f"runs again as {new_id}." in result.stderr
    assert "It succeeded." in result.stderr  # it ran in this process
    with app.app_context():
        again = bg.get(new_id)
    assert again is not None
    assert again.result(5) == 42
    assert again.record().retry_of == first.id
    assert calls == [21, 21]
    assert f"retry of:         {first.id}\n" in run(runner, "show", new_id).output


def test_retry_unfinished_task(app: Flask, bg: BGTasks, gate: Gate, runner: FlaskCliRunner) -> None:
    @bg.task
    def hold() -> None:
        gate()

    with app.app_context():
        task = hold.submit()
    gate.wait_entered()
    result = run(runner, "retry", task.id)
    gate.open()
    task.result(5)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: Task {task.name!r} (id {task.id}) is still running: only a task"
        " that has ended runs again. Cancel it first, or wait for it.\n"
    )


# -- a task whose process is gone --------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    return process.pid


def test_task_whose_process_is_gone(
    app: Flask, bg: BGTasks, runner: FlaskCliRunner, store_url: str
) -> None:
    bg.store(app).records()  # the file and its table exist
    here = socket.gethostname()
    dead = dead_pid()
    owners = {
        "running-dead": ("running", f"{here}:{dead}"),
        "queued--dead": ("queued", f"{here}:{dead}"),
        "running-here": ("running", f"{here}:{os.getpid()}"),
        "running-away": ("running", f"elsewhere.example:{dead}"),
        "succeeded---": ("succeeded", f"{here}:{dead}"),
    }
    now = time.time()
    with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as db, db:
        for number, (task_id, (status, owner)) in enumerate(owners.items()):
            db.execute(
                "INSERT INTO bgtasks_task (id, name, pool, durable, arguments, status,"
                " owner, lease_until, submitted_at, started_at, finished_at, attempt)"
                " VALUES (?, 'myapp.build_report', 'default', 0, ?, ?, ?, ?, ?, ?, ?, 1)",
                (
                    task_id,
                    '{"args":[],"kwargs":{}}',
                    status,
                    owner,
                    now + 3600,  # no upkeep takes it over meanwhile
                    now + number,
                    now,
                    now if status == "succeeded" else None,
                ),
            )

    wide = {row[0]: row[2] for row in map(cells, run(runner, "list").output.splitlines()[1:])}
    assert wide == {
        "succeeded---": "succeeded",
        "running-away": "running",  # another machine's: can't tell
        "running-here": "running",
        "queued--dead": "queued (process gone)",
        "running-dead": "running (process gone)",
    }
    narrow = run(runner, "list", columns=80).output.splitlines()
    assert max(map(len, narrow)) <= 80
    statuses = {row[0]: row[2] for row in map(cells, narrow[1:6])}
    assert statuses["queued--dead"] == statuses["running-dead"] == "orphaned"
    assert statuses["running-away"] == "running"
    assert narrow[6:] == ["orphaned: queued or running, but its process on this machine is gone."]

    shown = run(runner, "show", "running-dead", columns=80).output
    assert "status:           running (process gone)\n" in shown
    assert f"process:          {here}:{dead} (gone)\n" in shown
    note = shown.split("errors:           none\n")[1]
    assert " ".join(note.split()) == GONE_NOTE
    assert max(map(len, note.splitlines())) <= 80
    assert "status:           running\n" in run(runner, "show", "running-away").output
    gone = {
        record["id"]: record["process_gone"]
        for record in json.loads(run(runner, "list", "--json").output)
    }
    assert gone == {
        "succeeded---": False,
        "running-away": False,
        "running-here": False,
        "queued--dead": True,
        "running-dead": True,
    }
    assert json.loads(run(runner, "show", "--json", "queued--dead").output)["process_gone"]


def test_stats_and_retry_with_rq(
    make_app: t.Callable[..., Flask], bg: BGTasks, redis_url: str
) -> None:
    """With an engine, retry only queues the new task, for the workers (none
    here), and stats counts the engine's workers."""
    app = make_app(BGTASKS_STORE=redis_url, BGTASKS_BACKEND="rq")
    runner = app.test_cli_runner()

    @bg.task
    def noop() -> None:
        pass

    with app.app_context():
        first = noop.submit()
        assert first.cancel()
    retried = run(runner, "retry", first.id)
    assert retried.exit_code == 0, retried.output
    new_id = retried.stdout.strip()
    assert retried.stdout == f"{new_id}\n"
    assert retried.stderr == f"Task {first.name!r} (id {first.id}) runs again as {new_id}.\n"
    with app.app_context():
        record = bg.store().record(new_id)
    assert record is not None
    assert (record.status, record.retry_of) == (TaskStatus.QUEUED, first.id)

    stats = json.loads(run(runner, "stats", "--json").output)
    assert stats["by_status"]["queued"] == stats["by_status"]["cancelled"] == 1
    assert stats["pools"]["default"]["queued"] == 1
    assert (stats["backend"], stats["store"], stats["shared"]) == ("rq", "redis", True)
    text = run(runner, "stats", columns=80).output
    assert cells(text.splitlines()[-1]) == ["default", "1", "0", "0"]  # no worker runs
    assert "WORKERS counts" not in text
