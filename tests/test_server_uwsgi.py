"""Flask-BGTasks under a real uWSGI (the pyuwsgi wheel).

A configuration in which tasks could hang or be lost is refused when the app
loads; a good one runs tasks in its workers and drains them on SIGTERM and
SIGINT within ``BGTASKS_SHUTDOWN_TIMEOUT``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import typing as t
from pathlib import Path

import pytest

from tests.server_apps.taskapp import read_log
from tests.servers import BIN, Server, free_port, wait_for

UWSGI = BIN / "uwsgi"
if not UWSGI.exists():
    pytest.skip("uWSGI is not installed (pip install pyuwsgi).", allow_module_level=True)

APP_DIR = Path(__file__).parent / "server_apps"
SHUTDOWN_TIMEOUT = 2.0
#: How late after the deadline uWSGI may exit: its master looks at its dying
#: workers once a second.
SLACK = 3.0
#: The master hook that makes SIGTERM let requests finish before the
#: workers stop, so that no worker is ended without its exit handlers.
SIGTERM_HOOK = ["--hook-master-start", "unix_signal:15 gracefully_kill_them_all"]
#: The configuration to recommend: each worker loads the app, SIGTERM stops
#: uWSGI 2.0 instead of reloading it, and stops it gracefully.
WORKING = [
    "--master",
    "--processes",
    "2",
    "--lazy-apps",
    "--enable-threads",
    "--die-on-term",
    *SIGTERM_HOOK,
]
#: The warning of a configuration in which SIGTERM loses tasks.
LOSES_TASKS = "background tasks are lost without a log line"
#: The message names these options.
REMEDIES = ("--lazy-apps", "--py-call-uwsgi-fork-hooks")

#: An app whose uWSGI master runs a CPU-bound task while it forks the
#: workers: the case that leaves the workers hung without fork hooks.
MASTER_TASK_APP = """
import time

from taskapp import bg, create_app

app = create_app()


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


with app.app_context():
    bg.submit(spin, 2.0)
"""


#: A request that holds its worker, and tasks that can only finish after
#: it: both wait for the file named by RELEASE, which the test creates once
#: uWSGI has begun to stop.
BUSY_REQUEST_APP = """
import os
import threading
from pathlib import Path

from taskapp import bg, create_app, record

app = create_app()


def released():
    pause = threading.Event()
    while not Path(os.environ["RELEASE"]).exists():
        pause.wait(0.05)


@bg.task
def after_release():
    record("started")
    released()
    record("done")


@app.post("/busy")
def busy():
    ids = [after_release.submit().id for _ in range(2)]
    released()
    return {"ids": ids, "pid": os.getpid()}
"""


def start(tmp_path: Path, *options: str, cwd: Path = APP_DIR, module: str = "wsgi:app") -> Server:
    """Start uWSGI serving ``module`` with a task log in ``tmp_path``."""
    env = {
        "TASK_LOG": str(tmp_path / "tasks.log"),
        "RELEASE": str(tmp_path / "release"),
        "FLASK_BGTASKS_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        "FLASK_BGTASKS_MAX_WORKERS": "2",
    }
    args = [
        str(UWSGI),
        "--http-socket",
        "127.0.0.1:{port}",
        "--chdir",
        str(cwd),
        "--module",
        module,
    ]
    return Server([*args, *options], cwd=cwd, env=env)


def workers(stats_port: int) -> list[dict[str, t.Any]]:
    """The workers as uWSGI's stats server describes them."""
    with socket.create_connection(("127.0.0.1", stats_port), timeout=5) as conn:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return list(json.loads(data)["workers"])


def all_idle(stats_port: int) -> bool:
    """Every worker has loaded the app and is between requests.

    uWSGI skips the exit handlers of a worker that it stops in the middle
    of a request, so the drain is only promised for idle workers.
    """
    try:
        return all(w["apps"] and w["status"] == "idle" for w in workers(stats_port))
    except OSError:
        return False


def refused(server: Server, *names: str) -> None:
    assert "UsageError: Flask-BGTasks cannot run tasks reliably here" in server.output
    for name in names:
        assert name in server.output


def test_default_prefork_is_refused_at_startup(tmp_path: Path) -> None:
    """The app loads in the master, so init_app refuses; with --need-app
    uWSGI exits at once."""
    with start(tmp_path, "--master", "--processes", "2", "--need-app") as server:
        assert server.wait_exit(10) != 0
        refused(server, *REMEDIES)


def test_default_prefork_without_need_app_answers_500(tmp_path: Path) -> None:
    """Without --need-app uWSGI goes on without the app: each request gets
    a 500 at once, and the reason is in the log. No worker hangs."""
    with start(tmp_path, "--master", "--processes", "2") as server:
        server.wait_ready("/pid")
        status, _, _ = server.request("/pid", timeout=5)
        assert status == 500
    refused(server, *REMEDIES)  # once stopped, when all it wrote has been read


@pytest.mark.parametrize("option", ["--skip-atexit", "--skip-atexit-teardown"])
def test_skipping_exit_handlers_is_refused(tmp_path: Path, option: str) -> None:
    """Without the exit handlers the drain never runs: tasks would vanish."""
    with start(tmp_path, *WORKING, "--need-app", option) as server:
        assert server.wait_exit(10) != 0
        refused(server, option)


def test_tasks_run_in_the_workers(tmp_path: Path) -> None:
    stats = free_port()
    with start(tmp_path, *WORKING, "--need-app", "--stats", f"127.0.0.1:{stats}") as server:
        server.wait_ready("/pid")
        submitted = {}
        for _ in range(4):
            status, body, _ = server.request("/tasks?seconds=0&count=2", "POST")
            assert status == 200
            submitted.update(dict.fromkeys(body["ids"], body["pid"]))
        log = tmp_path / "tasks.log"
        wait_for(lambda: len([e for e in read_log(log) if e[0] == "done"]) == 8, 10, "8 tasks done")
        worker_pids = {w["pid"] for w in workers(stats)}
    ran_in = {task_id: pid for event, task_id, pid in read_log(log) if event == "done"}
    assert ran_in == submitted  # each in the worker that accepted it
    assert set(ran_in.values()) <= worker_pids
    assert server.process.pid not in worker_pids
    assert LOSES_TASKS not in server.output


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--die-on-term"], []),
        ([], ["--die-on-term"]),  # SIGTERM reloads uWSGI 2.0
        (SIGTERM_HOOK, None),  # the hook alone stops gracefully
    ],
    ids=["die-on-term", "neither", "hook"],
)
def test_warns_once_when_sigterm_would_lose_tasks(
    tmp_path: Path, options: list[str], names: list[str] | None
) -> None:
    """Without the master hook, SIGTERM ends a worker that is handling a
    request without its exit handlers. Both workers load the app; the
    warning, which names the hook, comes once."""
    stats = free_port()
    base = ["--master", "--processes", "2", "--lazy-apps", "--need-app"]
    with start(tmp_path, *base, *options, "--stats", f"127.0.0.1:{stats}") as server:
        server.wait_ready("/pid")
        wait_for(lambda: all_idle(stats), 10, "both workers to load the app")
    if names is None:
        assert LOSES_TASKS not in server.output
        return
    assert server.output.count(LOSES_TASKS) == 1, server.output
    assert 'Add --hook-master-start "unix_signal:15 gracefully_kill_them_all"' in server.output
    for name in names:
        assert name in server.output


def test_sigterm_hook_drains_a_worker_in_the_middle_of_a_request(tmp_path: Path) -> None:
    """With the hook, SIGTERM lets the request finish, and the worker then
    drains its tasks. (With --die-on-term alone, uWSGI ends the worker at
    once and the tasks are lost: the warning above.)"""
    (tmp_path / "busyapp.py").write_text(BUSY_REQUEST_APP)
    stats = free_port()
    options = [*WORKING, "--need-app", "--pythonpath", str(APP_DIR)]
    options += ["--stats", f"127.0.0.1:{stats}"]
    log = tmp_path / "tasks.log"
    with start(tmp_path, *options, cwd=tmp_path, module="busyapp:app") as server:
        server.wait_ready("/pid")
        # A worker still loading the app when the graceful stop comes keeps
        # uWSGI from exiting until worker-reload-mercy.
        wait_for(lambda: all_idle(stats), 10, "both workers to load the app")
        responses: list[t.Any] = []

        def busy() -> None:
            try:
                responses.append(server.request("/busy", "POST", 60)[:2])
            except OSError as exc:  # the worker was ended in the request
                responses.append(exc)

        request = threading.Thread(target=busy)
        request.start()
        try:
            wait_for(lambda: len(read_log(log)) == 2, 10, "both tasks to start")
            server.signal(signal.SIGTERM)
            server.wait_output("Gracefully killing worker", 10)
        finally:
            (tmp_path / "release").touch()
            request.join(60)
        assert server.wait_exit(SHUTDOWN_TIMEOUT + SLACK + 5) == 0
    [(status, body)] = responses
    assert status == 200
    assert sorted(i for e, i, _ in read_log(log) if e == "done") == sorted(body["ids"])


def test_fork_hooks_keep_workers_alive_after_a_task_in_the_master(tmp_path: Path) -> None:
    """With --py-call-uwsgi-fork-hooks the app may load in the master, even
    one that runs a task while the workers are forked; the workers start
    with empty pools of their own."""
    (tmp_path / "masterapp.py").write_text(MASTER_TASK_APP)
    options = ["--master", "--processes", "2", "--py-call-uwsgi-fork-hooks", "--need-app"]
    options += ["--pythonpath", str(APP_DIR)]
    with start(tmp_path, *options, cwd=tmp_path, module="masterapp:app") as server:
        server.wait_ready("/pid", timeout=15)
        _, body, _ = server.request("/tasks?seconds=0&count=2", "POST")
        log = tmp_path / "tasks.log"
        wait_for(lambda: len([e for e in read_log(log) if e[0] == "done"]) == 2, 10, "2 tasks done")
    assert {pid for _, _, pid in read_log(log)} == {body["pid"]}
    assert body["pid"] != server.process.pid


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_within_the_deadline(tmp_path: Path, signum: signal.Signals) -> None:
    """Running and queued tasks finish, a hanging one is ended at the
    deadline with a log line, and uWSGI exits soon after."""
    stats = free_port()
    log = tmp_path / "tasks.log"
    with start(tmp_path, *WORKING, "--need-app", "--stats", f"127.0.0.1:{stats}") as server:
        server.wait_ready("/pid")
        # Two run, two wait in the queue (BGTASKS_MAX_WORKERS=2).
        _, body, _ = server.request("/tasks?seconds=0.5&count=4", "POST")
        finishing = body["ids"]
        _, body, _ = server.request("/tasks?seconds=-1", "POST")
        (hanging,) = body["ids"]

        def hanging_started() -> bool:
            return ("started", hanging) in {(e, i) for e, i, _ in read_log(log)}

        wait_for(hanging_started, 10, "the hanging task to start")
        wait_for(lambda: all_idle(stats), 10, "idle workers")
        sent = time.monotonic()
        server.signal(signum)
        assert server.wait_exit(SHUTDOWN_TIMEOUT + SLACK + 5) == 0
        elapsed = time.monotonic() - sent
        with pytest.raises(ProcessLookupError):  # no worker is left behind
            os.killpg(server.process.pid, 0)

    assert SHUTDOWN_TIMEOUT <= elapsed < SHUTDOWN_TIMEOUT + SLACK
    events = {(event, task_id) for event, task_id, _ in read_log(log)}
    assert {("done", task_id) for task_id in finishing} <= events
    assert ("done", hanging) not in events
    lines = server.output.splitlines()
    assert any(hanging in line and "shutdown deadline" in line for line in lines)
    assert any("Background tasks at exit:" in line and "1 interrupted" in line for line in lines)
