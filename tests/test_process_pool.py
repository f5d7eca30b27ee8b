"""Process pools: the same tasks in child processes, with the app in each
child, progress and cancel across the boundary, real timeouts and crash
isolation. Real child processes everywhere (forkserver on Linux)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    ConfigError,
    InvalidTaskError,
    TaskCancelled,
    TaskCrashed,
    TaskStatus,
    TaskTimeout,
)
from tests.server_apps import procapp
from tests.servers import wait_for


@pytest.fixture
def make_procapp(monkeypatch: pytest.MonkeyPatch) -> t.Iterator[t.Callable[..., Flask]]:
    """Make the process-pool app; keyword arguments go to its config, in this
    process and in every child."""

    def make(**config: t.Any) -> Flask:
        monkeypatch.setenv(procapp.SETTINGS, json.dumps(config))
        return procapp.create_app()

    yield make
    procapp.bg.shutdown(wait=True, timeout=10)


@pytest.fixture
def app(make_procapp: t.Callable[..., Flask]) -> Flask:
    return make_procapp()


def test_a_task_runs_in_a_child_with_the_app(app: Flask) -> None:
    with app.app_context():
        first, second = procapp.where.submit(1), procapp.where.submit(2)
        one, two = first.result(30), second.result(30)
    assert (one["n"], two["n"]) == (1, 2)
    assert one["pid"] != os.getpid() and one["app"] == "procapp"
    assert one["id"] == first.id  # current_task in the child is the same task
    assert first.status is TaskStatus.SUCCEEDED and first.attempt == 1


def test_progress_and_cancel_cross_the_boundary(app: Flask, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    with app.app_context():
        result = procapp.report.submit(gate)
        wait_for(lambda: result.progress is not None, 30, "the child's progress")
        assert result.progress == {"current": 1, "total": 3, "message": "first page"}
        assert result.status is TaskStatus.RUNNING
        assert result.cancel() is False  # running: asked, cooperatively
        with pytest.raises(TaskCancelled):
            result.result(30)
    assert result.status is TaskStatus.CANCELLED


def test_a_task_that_ignores_its_timeout_is_killed_and_the_pool_recovers(
    app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = str(tmp_path / "gate")

    def killed(task_id: str) -> bool:
        return any(
            task_id in record.getMessage() and "was killed" in record.getMessage()
            for record in list(caplog.records)
        )

    with app.app_context():
        other = procapp.pid_and_wait.submit(gate)
        stuck = procapp.spin.submit()
        with pytest.raises(TaskTimeout):
            stuck.result(30)
        # Ended at its timeout; its child is killed after the grace.
        wait_for(lambda: killed(stuck.id), 30, "the kill of the stuck child")
        Path(gate).touch()
        assert isinstance(other.result(30), int)  # the other task was not disturbed
        after = [procapp.where.submit(n) for n in range(4)]
        assert [r.result(30)["n"] for r in after] == [0, 1, 2, 3]


def test_a_child_that_exits_fails_only_its_task(app: Flask) -> None:
    with app.app_context():
        crashed = procapp.exit_with.submit(3)
        with pytest.raises(TaskCrashed, match="exit code 3"):
            crashed.result(30)
        assert crashed.status is TaskStatus.FAILED
        assert crashed.errors[-1]["type"] == "flask_bgtasks.TaskCrashed"
        assert procapp.where.submit(5).result(30)["n"] == 5


def test_a_child_killed_by_a_signal_names_it(app: Flask, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    with app.app_context():
        first = procapp.where.submit(0).result(30)
        held = procapp.pid_and_wait.submit(gate)
        wait_for(lambda: held.status is TaskStatus.RUNNING, 30, "the task to start")
        pids = {child.pid for child in multiprocessing.active_children()}
        assert first["pid"] in pids or pids
        for pid in pids:  # whichever child holds it: kill -9 every one
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(TaskCrashed, match="signal SIGKILL"):
            held.result(30)
        assert procapp.where.submit(6).result(30)["n"] == 6


def test_cancel_with_force_kills_the_child(app: Flask, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    with app.app_context():
        held = procapp.pid_and_wait.submit(gate)
        wait_for(lambda: held.status is TaskStatus.RUNNING, 30, "the task to start")
        assert held.cancel(force=True) is False
        with pytest.raises(TaskCancelled, match="cancelled by force"):
            held.result(30)
        assert procapp.where.submit(7).result(30)["n"] == 7


def test_retries_run_in_the_child(app: Flask) -> None:
    with app.app_context():
        result = procapp.flaky.submit()
        assert result.result(30) == 2
    assert result.attempt == 2
    assert [error["type"] for error in result.errors] == ["ConnectionError"]


def test_a_flask_sqlalchemy_query_works_in_a_child(app: Flask) -> None:
    with app.app_context():
        assert procapp.query.submit().result(30) == 42


def test_an_argument_that_does_not_pickle_is_refused_at_submit(app: Flask) -> None:
    with app.app_context():
        with pytest.raises(InvalidTaskError, match=r"Argument 0 of task .*can't be pickled"):
            procapp.where.submit(lambda: 1)  # type: ignore[arg-type]
        assert procapp.bg.join(5)


def test_a_durable_task_whose_child_dies_runs_again(
    make_procapp: t.Callable[..., Flask], tmp_path: Path
) -> None:
    db = tmp_path / "tasks.db"
    app = make_procapp(BGTASKS_STORE=f"sqlite:///{db}")
    with app.app_context():
        result = procapp.durable_crash.submit(str(tmp_path / "marker"))
        assert result.result(30) == 2
        assert procapp.bg.join(10)
    assert result.attempt == 2
    assert result.errors[0]["type"] == "flask_bgtasks.TaskCrashed"
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT status, attempt FROM bgtasks_task").fetchone()
    assert row == ("succeeded", 2)


def test_shutdown_leaves_no_child(app: Flask) -> None:
    with app.app_context():
        assert procapp.where.submit(1).result(30)["n"] == 1
    assert multiprocessing.active_children()
    procapp.bg.shutdown(wait=True, timeout=10)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ({"cpu": {"kind": "green"}}, r"\['kind'\] must be one of 'thread', 'process'"),
        ({"cpu": {"start_method": "spawn"}}, "only a pool of child processes takes"),
        ({"cpu": {"kind": "process", "start_method": "teleport"}}, r"\['start_method'\] must be"),
        ({"cpu": {"kind": "process", "recycle_after": 0}}, r"\['recycle_after'\]"),
    ],
)
def test_process_pool_options_are_checked(
    make_procapp: t.Callable[..., Flask], pools: dict[str, t.Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_procapp(BGTASKS_POOLS=pools)


def test_a_process_pool_needs_to_know_how_to_build_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask_bgtasks import BGTasks

    monkeypatch.delenv("FLASK_APP", raising=False)
    app = Flask("nowhere")
    app.config["BGTASKS_POOLS"] = {"cpu": {"kind": "process"}}
    with pytest.raises(ConfigError, match="neither BGTASKS_APP nor FLASK_APP"):
        BGTasks(app)


@procapp.bg.task(pool="cpu")
def not_in_the_childs_app() -> None:
    """Declared here, in a module the child's app never imports."""


@procapp.bg.task(pool="cpu", copy_g=["user_id"])
def copies_g() -> None:
    """A process task can't copy g: nothing of the request goes to a child."""


@procapp.bg.task
def waits_for_a_process_task(n: int) -> int:
    pid: int = procapp.where.submit(n).result(30)["pid"]
    return pid


def test_a_task_the_child_cannot_find_fails_with_a_clear_error(app: Flask) -> None:
    with app.app_context():
        result = not_in_the_childs_app.submit()
        with pytest.raises(InvalidTaskError, match="is not declared in the app"):
            result.result(30)
        assert procapp.where.submit(1).result(30)["n"] == 1  # the child is fine


def test_copying_the_request_to_a_process_task_is_refused(app: Flask) -> None:
    with app.app_context(), pytest.raises(InvalidTaskError, match="runs in a child process"):
        copies_g.submit()


def test_a_thread_task_waiting_for_a_queued_process_task_does_not_run_it(
    app: Flask, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with app.app_context():
        held = [procapp.pid_and_wait.submit(str(gate)) for _ in range(2)]
        wait_for(lambda: all(h.status is TaskStatus.RUNNING for h in held), 30, "busy children")
        waiter = waits_for_a_process_task.submit(8)
        gate.touch()
        assert waiter.result(30) != os.getpid()  # it ran in a child, not in the waiting thread
        assert all(isinstance(h.result(30), int) for h in held)


def test_a_child_is_recycled_after_its_tasks(make_procapp: t.Callable[..., Flask]) -> None:
    app = make_procapp(
        BGTASKS_POOLS={"cpu": {"kind": "process", "max_workers": 1, "recycle_after": 2}}
    )
    with app.app_context():
        pids = [procapp.where.submit(n).result(30)["pid"] for n in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_the_queue_of_a_process_pool_is_bounded(
    make_procapp: t.Callable[..., Flask], tmp_path: Path
) -> None:
    from flask_bgtasks import QueueFull

    gate = tmp_path / "gate"
    app = make_procapp(
        BGTASKS_POOLS={"cpu": {"kind": "process", "max_workers": 1, "queue_size": 1}}
    )
    with app.app_context():
        running = procapp.pid_and_wait.submit(str(gate))
        queued = procapp.pid_and_wait.submit(str(gate))
        with pytest.raises(QueueFull, match="'test_app-cpu'|is full"):
            procapp.pid_and_wait.submit(str(gate))
        gate.touch()
        assert running.result(30) == queued.result(30)  # one child ran both
