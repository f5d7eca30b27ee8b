"""The RQ backend: the same task code runs on real ``flask bgtasks worker``
processes, with the Redis store deciding; eager mode applies the same JSON
round trip; what can't work is refused at ``init_app`` or ``submit``."""

from __future__ import annotations

import importlib
import re
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_bgtasks import (
    BGTasks,
    ConfigError,
    InvalidTaskError,
    TaskFailed,
    TaskRecord,
    TaskStatus,
)
from tests.servers import BIN, Server, wait_for

APPS = Path(__file__).parent / "server_apps"


@pytest.fixture
def engine(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[t.Any]:
    """The ``engineapp`` module, its app built in this process to submit."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("TASK_DIR", str(tmp_path))
    monkeypatch.setenv("WEB_ONLY", "1")
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("engineapp", None)
    module = importlib.import_module("engineapp")
    module.app = module.create_app()
    try:
        yield module
    finally:
        module.bg.shutdown()
        sys.modules.pop("engineapp", None)


def worker(
    redis_url: str, tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> Server:
    """A ``flask bgtasks worker`` process, in a folder of its own."""
    folder = tmp_path / f"worker-{len(list(tmp_path.glob('worker-*')))}"
    folder.mkdir()
    settings = {
        "REDIS_URL": redis_url,
        "TASK_DIR": str(tmp_path),
        "PYTHONPATH": str(APPS),
        "WEB_ONLY": "0",
        **(env or {}),
    }
    command = [str(BIN / "flask"), "--app", "engineapp:create_app", "bgtasks", "worker", *options]
    return Server(command, cwd=folder, env=settings)


def run_burst(redis_url: str, tmp_path: Path, *options: str) -> Server:
    """Run ``flask bgtasks worker --burst`` until it served every job of its
    queues and exited with 0; return its (ended) process."""
    with worker(redis_url, tmp_path, "--burst", *options) as process:
        assert process.wait_exit(45) == 0
    return process


def record(engine: t.Any, task_id: str) -> TaskRecord:
    with engine.app.app_context():
        found = engine.bg.store().record(task_id)
    assert found is not None, f"no record of {task_id}"
    return t.cast(TaskRecord, found)


def wait_status(engine: t.Any, task_id: str, status: TaskStatus, timeout: float = 30) -> None:
    wait_for(lambda: record(engine, task_id).status is status, timeout, f"{task_id} {status}")


@pytest.mark.timeout(60)
def test_the_same_task_code_runs_on_a_worker(engine: t.Any, redis_url: str, tmp_path: Path) -> None:
    with engine.app.app_context():
        added = engine.add.submit(2, 3)
        flaky = engine.flaky.submit("x")
        assert added.status is TaskStatus.QUEUED
        with pytest.raises(TypeError, match="result"):
            added.add_done_callback(print)
    process = run_burst(redis_url, tmp_path)
    with engine.app.app_context():
        assert added.result(5) == 5
        assert flaky.result(5) == 2
    done = record(engine, added.id)
    assert done.progress == {"current": 1, "total": 1, "message": "added"}
    assert done.process is not None and done.process.endswith(f":{process.process.pid}")
    retried = record(engine, flaky.id)
    assert (retried.attempt, len(retried.errors)) == (2, 1)
    assert retried.errors[0]["type"] == "ConnectionError"
    assert f"Job OK ({added.id})" in process.output  # RQ's line for each job
    # bg.retry: the same task again, on a worker, linked to the first.
    with engine.app.app_context():
        again = engine.bg.retry(added.id)
    quiet = run_burst(redis_url, tmp_path, "--quiet")
    with engine.app.app_context():
        assert again.result(5) == 5
    assert record(engine, again.id).retry_of == added.id
    assert again.id not in quiet.output and "INFO" not in quiet.output


@pytest.mark.timeout(60)
def test_pools_are_queues_and_a_worker_serves_the_ones_it_is_given(
    engine: t.Any, redis_url: str, tmp_path: Path
) -> None:
    from rq.job import Job

    with engine.app.app_context():
        report = engine.report.submit(7)
        added = engine.add.submit(1, 2)
        stuck = engine.stuck.submit("never-opened")
    # RQ's hard limit: the timeout plus the grace for a task with one,
    # BGTASKS_ENGINE_TIMEOUT for one without, never RQ's 180 s.
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert Job.fetch(stuck.id, connection=client).timeout == 2
        assert Job.fetch(added.id, connection=client).timeout == 3600
    finally:
        client.close()
    run_burst(redis_url, tmp_path, "--pool", "reports")
    assert record(engine, report.id).status is TaskStatus.SUCCEEDED
    assert record(engine, added.id).status is TaskStatus.QUEUED
    # RQ's own command, with the worker class we provide, serves the rest.
    command = [
        str(BIN / "rq"),
        "worker",
        "--burst",
        "-w",
        "flask_bgtasks.backends.rq.Worker",
        "--url",
        redis_url,
        "bgtasks.default",
    ]
    folder = tmp_path / "rq-command"
    folder.mkdir()
    env = {"BGTASKS_APP": "engineapp:create_app", "PYTHONPATH": str(APPS), "WEB_ONLY": "0"}
    with Server(
        command, cwd=folder, env={"REDIS_URL": redis_url, "TASK_DIR": str(tmp_path), **env}
    ) as rq_worker:
        assert rq_worker.wait_exit(45) == 0
    assert record(engine, added.id).status is TaskStatus.SUCCEEDED
    assert record(engine, stuck.id).status is TaskStatus.FAILED


@pytest.mark.timeout(60)
def test_a_task_cancelled_while_queued_never_runs(
    engine: t.Any, redis_url: str, tmp_path: Path
) -> None:
    with engine.app.app_context():
        waiting = engine.until_gate.submit("never-opened")
        after = engine.add.submit(1, 1)
        assert waiting.cancel() is True
        assert engine.bg.cancel(waiting.id) is True  # and again: still cancelled
    # The store decided; the job also left RQ's queue, as a courtesy.
    import redis
    from rq import Queue

    connection = redis.Redis.from_url(redis_url)
    try:
        assert Queue("bgtasks.default", connection=connection).job_ids == [after.id]
    finally:
        connection.close()
    run_burst(redis_url, tmp_path)
    cancelled = record(engine, waiting.id)
    assert (cancelled.status, cancelled.attempt, cancelled.started_at) == (
        TaskStatus.CANCELLED,
        0,
        None,
    )
    assert record(engine, after.id).status is TaskStatus.SUCCEEDED


@pytest.mark.timeout(60)
def test_a_running_task_is_asked_to_stop(engine: t.Any, redis_url: str, tmp_path: Path) -> None:
    with worker(redis_url, tmp_path) as process:
        with engine.app.app_context():
            running = engine.until_gate.submit("never-opened")
        wait_status(engine, running.id, TaskStatus.RUNNING)
        with engine.app.app_context():
            stats = engine.bg.stats()
            default = stats.pools["default"]
            assert (default.running, default.workers, default.max_workers) == (1, 1, None)
            assert stats.pools["reports"].workers == 1  # the worker serves every pool
            assert running.cancel() is False  # asked, as for a running future
        wait_status(engine, running.id, TaskStatus.CANCELLED)
        assert record(engine, running.id).cancel_requested
        process.signal(signal.SIGTERM)
        assert process.wait_exit(30) == 0
    # The worker ran the app's on_shutdown hooks as it exited.
    assert (tmp_path / f"shutdown-{process.process.pid}").read_text() == "engineapp"


@pytest.mark.timeout(60)
def test_a_cold_shutdown_releases_a_durable_task_to_another_worker(
    engine: t.Any, redis_url: str, tmp_path: Path
) -> None:
    with worker(redis_url, tmp_path) as first:
        with engine.app.app_context():
            lasting = engine.lasting.submit("lasting-gate")
        wait_for(lambda: record(engine, lasting.id).progress is not None, 30, "the task to run")
        first.signal(signal.SIGTERM)
        first.wait_output("warm shut down requested")
        # RQ ignores a second signal within a second of the first.
        since = time.monotonic()
        wait_for(lambda: time.monotonic() - since > 1.2, 5, "RQ's second to pass")
        first.signal(signal.SIGTERM)
        first.wait_exit(30)
        assert "cold shut down" in first.output
    released = record(engine, lasting.id)
    assert (released.status, released.errors) == (TaskStatus.QUEUED, [])
    (tmp_path / "lasting-gate").touch()
    with worker(redis_url, tmp_path) as second:
        wait_status(engine, lasting.id, TaskStatus.SUCCEEDED)
        assert record(engine, lasting.id).attempt == 2
        second.signal(signal.SIGTERM)
        assert second.wait_exit(30) == 0


@pytest.mark.timeout(60)
def test_a_forked_task_is_killed_by_a_forced_cancel(
    engine: t.Any, redis_url: str, tmp_path: Path
) -> None:
    with worker(redis_url, tmp_path, "--fork") as process:
        with engine.app.app_context():
            deaf = engine.deaf.submit("never-opened")
            # Running, and ignoring requests to stop.
            wait_for(lambda: record(engine, deaf.id).progress is not None, 30, "the task to run")
            assert deaf.cancel(force=True) is False
        wait_status(engine, deaf.id, TaskStatus.CANCELLED, timeout=20)
        with engine.app.app_context():
            after = engine.add.submit(2, 2)
            assert after.result(30) == 4
        process.signal(signal.SIGTERM)
        assert process.wait_exit(30) == 0


@pytest.mark.timeout(60)
def test_the_hard_limit_frees_a_worker_from_a_task_that_ignores_its_timeout(
    engine: t.Any, redis_url: str, tmp_path: Path
) -> None:
    with engine.app.app_context():
        stuck = engine.stuck.submit("never-opened")
        after = engine.add.submit(3, 4)
    # One worker: the second task runs only once RQ's hard limit (the
    # timeout, 1 s, plus the grace) ended the first.
    run_burst(redis_url, tmp_path)
    timed_out = record(engine, stuck.id)
    assert timed_out.status is TaskStatus.FAILED
    assert timed_out.errors[-1]["type"] == "flask_bgtasks.TaskTimeout"
    assert record(engine, after.id).status is TaskStatus.SUCCEEDED


@pytest.mark.timeout(60)
def test_what_a_worker_can_not_run_fails_saying_why(
    engine: t.Any, redis_url: str, tmp_path: Path
) -> None:
    with engine.app.app_context():
        not_json = engine.returns_set.submit()
        undeclared = engine.web_only.submit()
    run_burst(redis_url, tmp_path)
    with engine.app.app_context(), pytest.raises(TaskFailed, match="which is not JSON"):
        not_json.result(5)
    error = record(engine, undeclared.id).error
    assert error is not None and "not declared in the app this worker loaded" in error["message"]


@pytest.mark.timeout(60)
def test_a_worker_runs_no_job_but_ours(engine: t.Any, redis_url: str, tmp_path: Path) -> None:
    import redis
    from rq import Queue
    from rq.registry import FailedJobRegistry
    from rq.serializers import JSONSerializer

    victim = tmp_path / "victim"
    victim.write_text("still here")
    connection = redis.Redis.from_url(redis_url)
    try:
        queue = Queue("bgtasks.default", connection=connection, serializer=JSONSerializer)
        job = queue.enqueue("os.remove", str(victim))
        process = run_burst(redis_url, tmp_path)
        assert victim.read_text() == "still here"
        assert job.id in FailedJobRegistry(queue=queue).get_job_ids()
        assert "refused job" in process.output
    finally:
        connection.close()


def test_a_submit_with_an_argument_that_is_not_json_queues_nothing(engine: t.Any) -> None:
    with engine.app.app_context():
        with pytest.raises(InvalidTaskError, match=r"Argument 0 of task .* is set"):
            engine.add.submit({1}, 2)
        with pytest.raises(InvalidTaskError, match="copies the request"):
            _copying(engine).submit()
        with pytest.raises(InvalidTaskError, match="finds it by its name"):
            engine.bg.submit(print, "not declared")
        assert len(engine.bg.store()) == 0


def _copying(engine: t.Any) -> t.Any:
    @engine.bg.task(copy_g=["user"], name="copies_g")
    def copies_g() -> None:
        pass

    return copies_g


def test_the_worker_command_refuses_an_app_without_an_engine(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app()
    result = app.test_cli_runner().invoke(args=["bgtasks", "worker"])
    assert result.exit_code == 1
    assert "needs no worker" in result.output


def test_the_worker_command_refuses_an_unknown_pool(engine: t.Any) -> None:
    result = engine.app.test_cli_runner().invoke(args=["bgtasks", "worker", "--pool", "nope"])
    assert result.exit_code == 2
    assert "no pool named 'nope'" in result.output


SUPERVISE = """
import logging, sys
from flask_bgtasks._cli_worker import _supervise
logging.basicConfig(format="%(message)s")
sys.exit(_supervise(lambda: sys.exit(3), 2))
"""


@pytest.mark.timeout(30)
def test_worker_processes_that_die_as_they_start_are_not_started_again() -> None:
    """The supervisor of --processes replaces a worker that dies, except one
    that dies in its first second: that one could not start, and a loop of
    new ones would not either (the replacement is tested in
    test_server_rq)."""
    process = subprocess.run(
        [sys.executable, "-c", SUPERVISE], capture_output=True, text=True, timeout=20
    )
    assert process.returncode == 3, process.stderr
    lines = process.stderr.splitlines()
    assert len(lines) == 2, process.stderr
    for line in lines:
        assert re.fullmatch(
            r"Worker process \d+ exited with 3 as it started; not starting another\.", line
        ), line


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_an_engine_needs_a_store_every_machine_sees(
    make_app: t.Callable[..., Flask], store: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/tasks.db" if store == "sqlite" else store
    with pytest.raises(ConfigError, match="which they can't see") as caught:
        make_app(BGTASKS_BACKEND="rq", BGTASKS_STORE=url)
    assert "redis://" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # refused before the file was made


def test_a_process_pool_means_nothing_to_an_engine(
    make_app: t.Callable[..., Flask], redis_url: str
) -> None:
    with pytest.raises(ConfigError, match="only the thread backend uses"):
        make_app(
            BGTASKS_BACKEND="rq",
            BGTASKS_STORE=redis_url,
            BGTASKS_POOLS={"cpu": {"kind": "process"}},
            BGTASKS_APP="app:app",
        )


def test_eager_mode_applies_the_json_round_trip(bg: BGTasks) -> None:
    app = Flask("eager")
    app.config.update(BGTASKS_BACKEND="rq", BGTASKS_EAGER=True)

    @bg.task
    def echo(value: object) -> object:
        return value

    @bg.task
    def returns_set() -> object:
        return {1}

    bg.init_app(app)
    with app.app_context():
        # As a worker gets it: a tuple arrives as a list.
        assert echo.submit((1, 2)).result() == [1, 2]
        assert echo.submit({"a": (1,)}).result() == {"a": [1]}
        with pytest.raises(InvalidTaskError, match="not JSON"):
            echo.submit(object())
        with pytest.raises(InvalidTaskError, match="brings a task's value back"):
            returns_set.submit().result()
