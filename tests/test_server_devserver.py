"""Flask-BGTasks under the Flask development server, for real: the
reloader's two processes, a reload during a task, and ``processes=2``.

With the reloader, ``flask run`` starts a watcher process that loads the app
(to report import errors early) and then only restarts a child, which
serves. On a source change the child calls ``sys.exit(3)`` in its main
thread, so the drain at exit runs there before the watcher starts a new one.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

from tests.server_apps.taskapp import read_log
from tests.servers import BIN, Server, thread_count, wait_for

APPS = Path(__file__).parent / "server_apps"

INTERRUPTED = re.compile(
    r"\(id (\S+)\) was still running at the shutdown deadline and was interrupted"
)


def flask_run(cwd: Path, log: Path, **env: str) -> Server:
    return Server(
        [
            *(str(BIN / "flask"), "--app", "taskapp:create_app", "run", "--debug"),
            *("--host", "127.0.0.1", "--port", "{port}"),
        ],
        cwd=cwd,
        env={"TASK_LOG": str(log), **env},
    )


def serving_pid(server: Server) -> int | None:
    try:
        status, body, _ = server.request("/pid", timeout=1)
    except OSError:  # between two children
        return None
    return int(body["pid"]) if status == 200 else None


def test_reloader_watcher_never_starts_a_pool(tmp_path: Path) -> None:
    """The watcher loads the app but submits nothing, so it starts no
    thread; the tasks run in the child that serves."""
    log = tmp_path / "tasks.log"
    with flask_run(APPS, log, FLASK_BGTASKS_MAX_WORKERS="2") as server:
        server.wait_ready("/pid")
        watcher = server.process.pid
        child = serving_pid(server)
        assert child is not None and child != watcher
        ids = server.submit_tasks(seconds=0.5, count=4)[0]
        watcher_threads = []

        def all_done() -> bool:
            watcher_threads.append(thread_count(watcher))
            return sorted(i for e, i, _ in read_log(log) if e == "done") == sorted(ids)

        wait_for(all_done, 15, "the tasks to finish")

    assert len(watcher_threads) > 5  # sampled all along the second the tasks ran
    assert set(watcher_threads) == {1}
    assert {pid for _, _, pid in read_log(log)} == {child}


def test_task_submitted_at_load_runs_once_in_the_serving_process(tmp_path: Path) -> None:
    """The watcher loads the app too, so a task submitted as the app loads
    is submitted there as well: it runs nothing and starts no thread there,
    and the task runs once, in the child that serves."""
    from tests.server_apps.forkapp import read_load_log

    log = tmp_path / "load.log"
    command = [
        *(str(BIN / "flask"), "--app", "forkapp:create_app", "run", "--debug"),
        *("--host", "127.0.0.1", "--port", "{port}"),
    ]
    with Server(command, APPS, {"LOAD_LOG": str(log)}) as server:
        server.wait_ready("/run")
        watcher = server.process.pid
        status, body, _ = server.request("/run")
        assert status == 200 and body["ran_in"] == body["pid"] != watcher
        child = body["pid"]
        wait_for(lambda: read_load_log(log), 10, "the task submitted at load to run")
        # The watcher submitted before it started the child, which has
        # served since: a pool thread of the watcher would be there by now.
        assert thread_count(watcher) == 1
    assert read_load_log(log) == [(child, "true")]


def test_source_change_restarts_after_the_deadline(tmp_path: Path) -> None:
    """A reload during a 30 s task waits for the shutdown deadline, not
    for the task: the task is interrupted and a new child serves soon after."""
    shutil.copyfile(APPS / "taskapp.py", tmp_path / "taskapp.py")
    source = tmp_path / "taskapp.py"
    log = tmp_path / "tasks.log"
    deadline = 2
    with flask_run(tmp_path, log, FLASK_BGTASKS_SHUTDOWN_TIMEOUT=str(deadline)) as server:
        server.wait_ready("/pid")
        old_child = serving_pid(server)
        [task_id] = server.submit_tasks(seconds=30)[0]
        wait_for(lambda: read_log(log), 10, "the task to start")

        before = source.stat().st_mtime_ns
        with source.open("a") as f:
            f.write("# changed by the test\n")
        if source.stat().st_mtime_ns <= before:  # a file system with coarse times
            os.utime(source, ns=(before + 10**9, before + 10**9))
        start = time.monotonic()
        wait_for(
            lambda: serving_pid(server) not in (None, old_child),
            deadline + 8,
            f"a new child to serve:\n{server.output}",
        )
        elapsed = time.monotonic() - start
        assert server.process.poll() is None  # the same watcher

    assert deadline <= elapsed < deadline + 8
    assert INTERRUPTED.findall(server.output) == [task_id]
    assert "done" not in {event for event, _, _ in read_log(log)}
    assert {pid for _, _, pid in read_log(log)} == {old_child}


RUNNER = """\
import sys

sys.path.insert(0, {apps!r})

from taskapp import create_app

create_app().run(host="127.0.0.1", port=int(sys.argv[1]), processes=2, threaded=False)
"""


def test_forking_dev_server_refuses_tasks(tmp_path: Path) -> None:
    """``app.run(processes=2)`` forks a process per request, which exits
    after it: a task submitted there could never run, so submitting fails
    with an error that says why, instead of answering with an id."""
    script = tmp_path / "run.py"
    script.write_text(RUNNER.format(apps=str(APPS)))
    log = tmp_path / "tasks.log"
    with Server(
        [sys.executable, str(script), "{port}"], cwd=tmp_path, env={"TASK_LOG": str(log)}
    ) as server:
        server.wait_ready("/pid")
        assert serving_pid(server) not in (None, server.process.pid)  # a fork answered
        status, body, _ = server.request("/tasks?seconds=0", "POST")
        assert status == 500
        assert not isinstance(body, dict)
        server.wait_output(
            "UsageError: Background tasks cannot run under the development server"
            " with processes > 1"
        )

    assert read_log(log) == []
