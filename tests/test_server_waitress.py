"""Flask-BGTasks under a real Waitress (``waitress-serve``): what SIGTERM and
SIGINT do to the tasks that are queued and running.

Waitress installs no signal handler. SIGINT raises ``KeyboardInterrupt``,
and the SIGTERM helper raises ``SystemExit``, in the main thread, which sits
in Waitress's loop; Waitress catches both there, stops its own threads and
returns, and ``waitress-serve`` exits 0. The drain at exit runs after that.
With one ``--listen`` address Waitress leaves its socket open: a client that
connects during the drain gets no answer until the process exits.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.server_apps.taskapp import read_log
from tests.servers import BIN, Server, wait_for

pytest.importorskip("waitress")

APPS = Path(__file__).parent / "server_apps"

QUEUED_CANCELLED = re.compile(
    r"\(id (\S+)\) was still queued at the shutdown deadline and was cancelled"
)
INTERRUPTED = re.compile(
    r"\(id (\S+)\) was still running at the shutdown deadline and was interrupted"
)
#: The start of the warning that SIGTERM would lose the tasks.
NO_HANDLER = "Waitress has no graceful SIGTERM, and this process has no handler for it"
SUMMARY = re.compile(
    r"Background tasks at exit: (\d+) finished, (\d+) cancelled while queued,"
    r" (\d+) interrupted at the deadline\."
)


def waitress(log: Path, **env: str) -> Server:
    return Server(
        [
            str(BIN / "waitress-serve"),
            "--listen",
            "127.0.0.1:{port}",
            "--call",
            "taskapp:create_app",
        ],
        cwd=APPS,
        env={"TASK_LOG": str(log), **env},
    )


def ids_with(log: Path, event: str) -> list[str]:
    return [task_id for name, task_id, _ in read_log(log) if name == event]


def no_answer(server: Server) -> bool:
    try:
        server.request("/pid", timeout=0.5)
    except OSError:
        return True
    return False


def test_sigterm_with_helper_runs_queued_and_running_tasks(tmp_path: Path) -> None:
    """SystemExit from the helper gets through Waitress: the process exits
    0, after every task, queued ones included, ran to the end, and without
    waiting for the deadline."""
    log = tmp_path / "tasks.log"
    deadline = 8
    with waitress(
        log,
        SIGTERM_HELPER="1",
        FLASK_BGTASKS_MAX_WORKERS="2",
        FLASK_BGTASKS_SHUTDOWN_TIMEOUT=str(deadline),
    ) as server:
        server.wait_ready("/pid")
        # 3 s of work on two workers: tasks are still queued at the signal
        # even if this process is slow to send it.
        ids = server.submit_tasks(seconds=1.0, count=6)[0]
        wait_for(lambda: len(ids_with(log, "started")) >= 2, 10, "two tasks to start")
        started_at_signal = ids_with(log, "started")
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait_exit(deadline + 5)
        elapsed = time.monotonic() - start

    assert code == 0
    assert len(started_at_signal) < len(ids), "No task was still queued at SIGTERM."
    assert sorted(ids_with(log, "done")) == sorted(ids)
    assert {pid for _, _, pid in read_log(log)} == {server.process.pid}
    assert elapsed < deadline
    assert "Background tasks at exit" not in server.output
    assert NO_HANDLER not in server.output


def test_sigterm_with_helper_interrupts_a_hanging_task_at_the_deadline(tmp_path: Path) -> None:
    """A task that never returns holds the exit only until the deadline;
    the others still finish. Waitress has left its loop by then."""
    log = tmp_path / "tasks.log"
    deadline = 3
    with waitress(
        log,
        SIGTERM_HELPER="1",
        FLASK_BGTASKS_MAX_WORKERS="2",
        FLASK_BGTASKS_SHUTDOWN_TIMEOUT=str(deadline),
    ) as server:
        server.wait_ready("/pid")
        [hanging] = server.submit_tasks(seconds=-1)[0]
        others = server.submit_tasks(seconds=0.3, count=3)[0]
        wait_for(lambda: len(ids_with(log, "started")) >= 2, 10, "two tasks to start")
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        # Waitress returned from its loop: the rest is the drain at exit.
        wait_for(lambda: no_answer(server), deadline / 2, "Waitress to stop answering")
        assert server.process.poll() is None, "The process exited before the deadline."
        code = server.wait_exit(deadline + 5)
        elapsed = time.monotonic() - start

    assert code == 0
    assert deadline <= elapsed < deadline + 3
    assert sorted(ids_with(log, "done")) == sorted(others)
    assert INTERRUPTED.findall(server.output) == [hanging]
    summary = SUMMARY.search(server.output)
    assert summary is not None, server.output
    assert summary.group(2, 3) == ("0", "1")


def test_sigterm_without_helper_kills_at_once(tmp_path: Path) -> None:
    """Python's default SIGTERM ends the process without running atexit
    handlers, and Waitress installs none: the tasks are lost. This is why
    install_sigterm_handler() exists, and the first request warns, once,
    that it is missing."""
    log = tmp_path / "tasks.log"
    with waitress(log, FLASK_BGTASKS_MAX_WORKERS="2") as server:
        server.wait_ready("/pid")
        server.submit_tasks(seconds=5, count=3)[0]
        for _ in range(3):
            assert server.request("/pid")[0] == 200
        wait_for(lambda: len(ids_with(log, "started")) >= 2, 10, "two tasks to start")
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait_exit(5)
        elapsed = time.monotonic() - start

    assert code == -signal.SIGTERM
    assert elapsed < 2
    assert ids_with(log, "done") == []
    assert "Background tasks at exit" not in server.output
    assert server.output.count(NO_HANDLER) == 1, server.output
    assert "Call flask_bgtasks.install_sigterm_handler() in the app factory" in server.output


def test_sigint_cancels_the_queue_at_the_deadline(tmp_path: Path) -> None:
    """Ctrl-C with 1000 queued tasks (100 s of work on two workers) exits
    at the deadline, not after running them all. Every task is accounted
    for: done, cancelled while queued (and logged), or interrupted (and
    logged)."""
    log = tmp_path / "tasks.log"
    deadline = 2
    with waitress(
        log,
        FLASK_BGTASKS_MAX_WORKERS="2",
        FLASK_BGTASKS_QUEUE_SIZE="2000",
        FLASK_BGTASKS_SHUTDOWN_TIMEOUT=str(deadline),
    ) as server:
        server.wait_ready("/pid")
        ids = server.submit_tasks(seconds=0.2, count=1000)[0]
        wait_for(lambda: len(ids_with(log, "started")) >= 2, 10, "two tasks to start")
        start = time.monotonic()
        server.signal(signal.SIGINT)
        code = server.wait_exit(deadline + 5)
        elapsed = time.monotonic() - start

    assert code == 0
    assert deadline <= elapsed < deadline + 3
    summary = SUMMARY.search(server.output)
    assert summary is not None, server.output
    cancelled = set(QUEUED_CANCELLED.findall(server.output))
    interrupted = set(INTERRUPTED.findall(server.output))
    done = set(ids_with(log, "done"))
    assert (len(cancelled), len(interrupted)) == (int(summary[2]), int(summary[3]))
    assert len(cancelled) > 900
    assert done | cancelled | interrupted == set(ids)
    # A task interrupted in its last moment may still finish its work (a
    # thread can't be stopped), but a cancelled one never started.
    started = set(ids_with(log, "started"))
    assert not cancelled & (started | done | interrupted)
    assert started <= done | interrupted
