from __future__ import annotations

import re
import threading
import typing as t
from pathlib import Path

import click
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_bgtasks import BGTasks, TaskCancelled, TaskResult, TaskStatus, current_task
from flask_bgtasks._cli import _parse_age, cli

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


def run(runner: FlaskCliRunner, *args: str) -> click.testing.Result:
    return runner.invoke(args=["bgtasks", *args])


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


def test_list_keeps_long_progress_on_one_short_line(
    app: Flask, bg: BGTasks, runner: FlaskCliRunner
) -> None:
    @bg.task
    def talk() -> None:
        current_task.set_progress(1, 2, "Reading the file\nthat has a very long name.csv")

    with app.app_context():
        task = talk.submit()
    task.result(5)
    result = run(runner, "list")
    assert rows(result.output)[task.id][3] == "1/2 Reading the file that h..."
    assert len(result.output.splitlines()) == 2


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


@pytest.mark.parametrize("command", ["show", "cancel"])
def test_unknown_id(runner: FlaskCliRunner, command: str) -> None:
    result = run(runner, command, "nope")
    assert result.exit_code == 1
    assert result.output == f"Error: {UNKNOWN}\n"


@pytest.mark.parametrize("command", ["show", "cancel"])
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
