"""The SQLite task store under real Gunicorn: records shared by every worker
process, and durable tasks that survive the death of their process.

Each test starts Gunicorn on 127.0.0.1 and a free port with the app in
``server_apps/storeapp.py``, all of its workers on one SQLite file in
``tmp_path`` with a lease of 1 s, so that the tasks of a dead process are
taken over about a second after it died. Tasks are looked up over HTTP, so
any worker may answer, and the jobs write what they did to an attempts log
and leave their side effect as a marker file named after the task id (see
``storeapp.py``), which the tests read once the tasks are done.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")

from tests.server_apps.traces import events_by_task, markers, read_attempts, starts
from tests.server_lookups import CLIENTS, Answer, look_up, look_up_all, post, wait_until_done
from tests.servers import BIN, Server, gone, no_control_socket, wait_for

APPS = Path(__file__).parent / "server_apps"
#: The longest any test waits for its tasks to end.
DEADLINE = 30

#: Words of the library's log lines, when it takes a task over or marks it lost.
TAKEN_OVER = "left unfinished"
TAKEN_QUEUED = "left queued"
LOST = "was lost"


def gunicorn(*options: str) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        "-b",
        "127.0.0.1:{port}",
        *no_control_socket(),
        *options,
        "storeapp:create_app()",
    ]


def store_env(folder: Path, max_workers: int) -> dict[str, str]:
    """The environment of a server on the store in ``folder``; servers
    started with the same ``folder`` share the store."""
    (folder / "effects").mkdir(exist_ok=True)
    return {
        "STORE_PATH": str(folder / "tasks.db"),
        "STORE_LEASE": "1",
        "MAX_WORKERS": str(max_workers),
        "TASK_DIR": str(folder),
    }


def logged(output: str, task_id: str, *words: str) -> bool:
    """Whether a line of ``output`` names the task and has all ``words``."""
    return any(
        f"(id {task_id})" in line and all(word in line for word in words)
        for line in output.splitlines()
    )


def effects(events: list[tuple[str, int, int]]) -> list[int]:
    """The pids that made the side effect (first time, for the task id)."""
    return [pid for event, pid, _ in events if event == "effect"]


@pytest.mark.timeout(90)
def test_any_worker_reads_any_task(tmp_path: Path) -> None:
    """200 tasks submitted to 4 sync workers: each lookup, by whichever
    worker answers it, finds the record, and every task ends ``succeeded``
    with its progress and its value, readable from the workers that did not
    run it."""
    env = store_env(tmp_path, max_workers=4)
    with Server(gunicorn("-w", "4"), APPS, env) as server:
        server.wait_ready("/pid")
        # The first 4 batches meet at a rendezvous, so each of the 4 workers
        # takes one; the other 16 go wherever the kernel sends them.
        meet = "&rendezvous=submit&processes=4"
        batches = [
            f"/squares?start={start}&count=10" + (meet if start < 40 else "")
            for start in range(0, 200, 10)
        ]
        with ThreadPoolExecutor(CLIENTS) as clients:
            submitted = list(clients.map(lambda path: post(server, path), batches))
        # id -> (n, pid of the worker that took it)
        tasks = {
            task_id: (n, pid)
            for start, (ids, pid) in zip(range(0, 200, 10), submitted)
            for n, task_id in zip(range(start, start + 10), ids, strict=True)
        }
        assert len(tasks) == 200
        workers = {pid for _, pid in submitted[:4]}
        assert len(workers) == 4, submitted

        answers: list[Answer] = []
        final = wait_until_done(server, tasks, answers, deadline=DEADLINE)
        # Once more, every finished record from any worker; then 4 lookups
        # of one worker's tasks that meet at a rendezvous, so 4 workers
        # answer and 3 of them did not run the task they answer for.
        with ThreadPoolExecutor(CLIENTS) as clients:
            answers += look_up_all(server, clients, sorted(tasks))
            ids, owner = submitted[0]
            met = list(
                clients.map(
                    lambda task_id: look_up(server, task_id, "?rendezvous=look&processes=4"),
                    ids[:4],
                )
            )
        assert server.children() == workers  # no worker died
        output = server.output

    assert {answer["pid"] for answer in met} == workers, met
    assert len([a for a in met if a["pid"] != a["owner_pid"]]) == 3, met
    for task_id, answer in zip(ids[:4], met, strict=True):
        assert (answer["status"], answer["value"], answer["owner_pid"]) == (
            "succeeded",
            tasks[task_id][0] ** 2,
            owner,
        ), answer
    answers += met
    assert {answer["pid"] for answer in answers} == workers

    for answer in answers:
        # Read from the store; non-durable tasks on live workers: none may
        # be taken for lost.
        assert answer["stored_type"] == "TaskResult", answer
        assert answer["status"] in ("queued", "running", "succeeded"), answer
        assert answer["owner_pid"] == tasks[answer["id"]][1], answer
    for task_id, (n, _) in tasks.items():
        answer = final[task_id]
        assert answer["value"] == n * n, answer
        assert answer["progress"] == {"current": 3, "total": 3, "message": None}, answer
        assert answer["attempt"] == 1, answer
    assert "Traceback" not in output and LOST not in output, output


@pytest.mark.timeout(90)
def test_durable_tasks_of_a_killed_worker_run_again_elsewhere(tmp_path: Path) -> None:
    """kill -9 of a worker with durable tasks running and queued: Gunicorn
    replaces it, another process takes its tasks over once their lease
    expired, and each task ends ``succeeded`` with its side effect made once."""
    env = store_env(tmp_path, max_workers=2)
    with Server(gunicorn("-w", "3"), APPS, env) as server:
        server.wait_ready("/pid")
        ids, victim = post(server, "/jobs?kinds=" + ",".join(["durable"] * 5))
        assert victim in server.children()
        two_running_three_queued(server, tmp_path, ids, victim)

        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: gone(victim), 10, f"worker {victim} to die")
        (tmp_path / "gate").touch()  # the next attempts run through
        final = wait_until_done(server, ids, deadline=DEADLINE)
        survivors = server.children()
    # Read once the server is stopped: by then every line it wrote is read.
    output = server.output
    assert f"Worker (pid:{victim}) was sent SIGKILL" in output, output
    events = events_by_task(tmp_path)
    for n, task_id in enumerate(ids):
        rescuer = check_rescued(final[task_id], events[task_id], output, n + 1000, n < 2, victim)
        assert rescuer != victim and rescuer in survivors, (final[task_id], survivors)
    assert markers(tmp_path) == sorted(ids)
    assert "Traceback" not in output, output


def two_running_three_queued(server: Server, tmp_path: Path, ids: list[str], victim: int) -> None:
    """Wait until the first two tasks run, held by the gate, and check that
    the other three are queued behind them, all in ``victim``."""
    wait_for(
        lambda: {i for e, i, _, _ in read_attempts(tmp_path) if e == "started"} == set(ids[:2]),
        10,
        f"the first two tasks to start:\n{server.output}",
    )

    def started_in_the_store() -> bool:
        # The victim writes a start behind, a moment after the task logged
        # it: until it is committed, another worker reads "queued".
        with ThreadPoolExecutor(CLIENTS) as clients:
            return all(a["status"] == "running" for a in look_up_all(server, clients, ids[:2]))

    wait_for(started_in_the_store, 10, f"the first two tasks to be running:\n{server.output}")
    with ThreadPoolExecutor(CLIENTS) as clients:
        before = look_up_all(server, clients, ids)
    assert [a["status"] for a in before] == ["running"] * 2 + ["queued"] * 3, before
    assert {a["owner_pid"] for a in before} == {victim}, before
    assert {a["stored_type"] for a in before} == {"TaskResult"}, before


def check_rescued(
    answer: Answer,
    events: list[tuple[str, int, int]],
    output: str,
    value: int,
    was_running: bool,
    victim: int,
) -> int:
    """Check a durable task that ``victim`` held when it died: it succeeded
    once, in the process that took it over; return that process's pid."""
    task_id = answer["id"]
    taken_over = 2 if was_running else 1  # the attempt that ran to the end
    assert (answer["status"], answer["value"], answer["attempt"]) == (
        "succeeded",
        value,
        taken_over,
    ), answer
    rescuer: int = answer["owner_pid"]
    if was_running:  # attempt 1 died with the victim
        assert starts(events) == [(victim, 1), (rescuer, 2)], events
        assert logged(output, task_id, TAKEN_OVER, "(attempt 2)"), output
    else:  # it was queued: its first attempt ran in the rescuer
        assert starts(events) == [(rescuer, 1)], events
        assert logged(output, task_id, TAKEN_QUEUED, "running it here"), output
    assert effects(events) == [rescuer], events
    return rescuer


@pytest.mark.timeout(90)
def test_durable_tasks_survive_a_killed_server(tmp_path: Path) -> None:
    """kill -9 of the master and all workers with tasks running and queued;
    a new server on the same store runs the durable ones again, and marks
    the task that is not durable as lost."""
    env = store_env(tmp_path, max_workers=2)
    # The plain task and the first durable one run; three durable ones queue.
    kinds = ["plain", "durable", "durable", "durable", "durable"]
    with Server(gunicorn("-w", "2"), APPS, env) as first:
        first.wait_ready("/pid")
        ids, victim = post(first, "/jobs?kinds=" + ",".join(kinds))
        two_running_three_queued(first, tmp_path, ids, victim)
        first_pids = [first.process.pid, *first.children()]
        first.stop()  # SIGKILL to the process group: no drain, no release
    wait_for(lambda: all(map(gone, first_pids)), 10, f"the processes {first_pids} to die")
    assert "Draining" not in first.output, first.output
    (tmp_path / "gate").touch()

    with Server(gunicorn("-w", "2"), APPS, env) as second:
        second.wait_ready("/pid")  # the lookups start the upkeep of the workers
        final = wait_until_done(second, ids, deadline=DEADLINE)
        rescuers = second.children()
        # The upkeep logs the lost task just after it marked it failed.
        wait_for(lambda: logged(second.output, ids[0], LOST), 10, "the lost task's log line")
    # Read once the server is stopped: by then every line it wrote is read.
    output = second.output

    events = events_by_task(tmp_path)
    plain, *durable = ids
    answer = final[plain]
    assert (answer["status"], answer["error_type"]) == ("failed", "TaskLost"), answer
    assert starts(events[plain]) == [(victim, 1)] and not effects(events[plain]), events[plain]
    assert logged(output, plain, LOST), output
    for n, task_id in enumerate(durable, start=1):
        rescuer = check_rescued(final[task_id], events[task_id], output, n + 1000, n == 1, victim)
        assert rescuer in rescuers, (final[task_id], rescuers)
    assert markers(tmp_path) == sorted(durable)
    assert "Traceback" not in output, output
