"""The RQ backend and the Redis store end to end: Gunicorn takes tasks over
HTTP, ``flask bgtasks worker`` processes run them, and the processes share
nothing but the Redis URL.

Each process is a "machine" of its own: its own working directory and
instance folder under ``tmp_path``, the app found on ``PYTHONPATH``
(``server_apps/rqapp.py``). The one folder they share, ``world``, is the
test's instrument, not the app's state: the jobs log what they did there
and leave their side effect as a marker file named after the task id and
the attempt, and wait for a gate file that the test creates (see
``rqapp.py``). Tasks are looked up over the HTTP API, so any web worker may
answer.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("rq")

from flask_bgtasks._cli_worker import STARTUP_SECONDS
from tests.redis_server import RedisServer
from tests.server_apps.traces import Events, events_by_task, markers, starts
from tests.server_lookups import CLIENTS, Answer, look_up, look_up_all, post, wait_until_done
from tests.servers import BIN, Server, gone, no_control_socket, wait_for

APPS = Path(__file__).parent / "server_apps"
#: The longest any test waits for its tasks to end.
DEADLINE = 60
#: The longest a worker may take to exit once asked to and its task ended.
EXIT_DEADLINE = 20
#: What an RQ worker logs once it waits for jobs.
LISTENING = "Listening on bgtasks.default"
#: What it logs when SIGTERM asks it to stop after its running job.
WARM_SHUTDOWN = "warm shut down requested"
#: Words of the library's log line when it takes a task over.
TAKEN_OVER = "left unfinished"
HOST = socket.gethostname()


class Cluster:
    """Web servers and workers on one Redis, each in folders of its own, all
    stopped when the cluster is left.

    :param tmp_path: Where each process gets its folders.
    :param redis_url: The one thing they share.
    """

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.redis_url = redis_url
        self.world = tmp_path / "world"
        (self.world / "effects").mkdir(parents=True)
        self._root = tmp_path
        self._count = 0
        self._stack = contextlib.ExitStack()

    def _machine(self, kind: str) -> tuple[Path, dict[str, str]]:
        self._count += 1
        home = self._root / f"{kind}{self._count}"
        (home / "instance").mkdir(parents=True)
        env = {
            "REDIS_URL": self.redis_url,
            "STORE_LEASE": "1",
            "INSTANCE_DIR": str(home / "instance"),
            "TASK_DIR": str(self.world),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
        }
        return home, env

    def web(self, workers: int) -> Server:
        """Gunicorn with ``workers`` sync workers, answering."""
        home, env = self._machine("web")
        command = [str(BIN / "gunicorn"), "-b", "127.0.0.1:{port}", *no_control_socket()]
        command += ["-w", str(workers), "rqapp:create_app()"]
        server = self._stack.enter_context(Server(command, home, env))
        server.wait_ready("/pid")
        return server

    def worker(self, *options: str, listening: int = 1) -> Server:
        """``flask bgtasks worker``, once ``listening`` workers wait for jobs."""
        home, env = self._machine("worker")
        command = [str(BIN / "flask"), "--app", "rqapp:create_app", "bgtasks", "worker", *options]
        server = self._stack.enter_context(Server(command, home, env))
        wait_for(
            lambda: (
                server.output.count(LISTENING) >= listening or server.process.poll() is not None
            ),
            30,
            f"the worker to listen:\n{server.output}",
        )
        assert server.process.poll() is None or "--burst" in options, server.output
        return server

    def open_gate(self) -> None:
        (self.world / "gate").touch()

    def events(self) -> dict[str, Events]:
        """(event, pid, attempt) of each task, in the order they happened."""
        return events_by_task(self.world)

    def markers(self) -> list[str]:
        return markers(self.world)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> t.Iterator[Cluster]:
    with Cluster(tmp_path, redis_url) as cluster:
        yield cluster


def process_of(server: Server, task_id: str) -> str:
    """``record.process`` of the task: the worker that runs or ran it."""
    status, body, _ = server.request(f"/process/{task_id}")
    assert status == 200, body
    return str(body["process"])


def exit_code(worker: Server) -> int:
    """Wait for a worker that was asked to stop, and whose task can end, to
    exit; return its exit code."""
    # Well under the 60 s that RQ 3.0's own command thread could hold the
    # exit (redis-py 8.2 waits for it), so that this comes back as a failure.
    return worker.wait_exit(EXIT_DEADLINE)


def group_empty(pgid: int) -> bool:
    """Whether no process is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def process_age(pid: int) -> float:
    """Seconds since the process started, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    started = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - started


def started_by(cluster: Cluster, count: int) -> dict[str, int]:
    """Wait until ``count`` tasks started; return the pid that started each."""
    found: dict[str, int] = {}

    def enough() -> bool:
        found.clear()
        for task_id, events in cluster.events().items():
            for pid, _ in starts(events):
                found[task_id] = pid
        return len(found) >= count

    wait_for(enough, 30, f"{count} tasks to start")
    return dict(found)


@pytest.mark.timeout(120)
def test_any_web_worker_reads_what_any_worker_ran(cluster: Cluster) -> None:
    """200 tasks submitted over HTTP to 2 sync web workers, run by 2 worker
    processes: every lookup, by whichever web worker answers, finds the
    record as it is, and every task ends ``succeeded`` with its progress
    and its value."""
    web = cluster.web(workers=2)
    workers = [cluster.worker(), cluster.worker()]
    worker_names = {f"{HOST}:{worker.process.pid}" for worker in workers}
    # The first 2 batches meet at a rendezvous, so each web worker takes
    # one; the first 2 tasks wait for each other, so each worker runs one.
    batches = [
        f"/squares?start={start}&count=10"
        + ("&meet=2" if start == 0 else "")
        + ("&rendezvous=submit&processes=2" if start < 20 else "")
        for start in range(0, 200, 10)
    ]
    with ThreadPoolExecutor(CLIENTS) as clients:
        submitted = list(clients.map(lambda path: post(web, path), batches))
    tasks = {
        task_id: n
        for start, (ids, _) in zip(range(0, 200, 10), submitted)
        for n, task_id in zip(range(start, start + 10), ids, strict=True)
    }
    assert len(tasks) == 200
    servers = web.children()
    assert {pid for _, pid in submitted[:2]} == servers, submitted

    answers: list[Answer] = []
    final = wait_until_done(web, tasks, answers, deadline=DEADLINE)
    with ThreadPoolExecutor(CLIENTS) as clients:
        # Once more, every finished record from any web worker; then 2
        # lookups that meet, so each web worker answers one.
        answers += look_up_all(web, clients, sorted(tasks))
        met = list(
            clients.map(
                lambda task_id: look_up(web, task_id, "?rendezvous=look&processes=2"),
                sorted(tasks)[:2],
            )
        )
        processes = dict(zip(tasks, clients.map(lambda i: process_of(web, i), tasks)))
    assert {answer["served_by"] for answer in met} == servers, met
    answers += met
    assert {answer["served_by"] for answer in answers} == servers
    assert web.children() == servers  # no web worker died

    for answer in answers:  # nothing lost, nothing from elsewhere
        assert answer["status"] in ("queued", "running", "succeeded"), answer
        assert answer["name"] == "rqapp.square", answer
    for task_id, n in tasks.items():
        answer = final[task_id]
        assert (answer["status"], answer["attempt"]) == ("succeeded", 1), answer
        assert answer["progress"] == {"current": 3, "total": 3, "message": None}, answer
        ran_in = answer["result"]["pid"]
        assert answer["result"] == {"n": n, "square": n * n, "pid": ran_in}, answer
        assert processes[task_id] == f"{HOST}:{ran_in}", (answer, processes[task_id])
    assert set(processes.values()) == worker_names, collections.Counter(processes.values())
    for server in [web, *workers]:
        assert "Traceback" not in server.output, server.output


@pytest.mark.timeout(120)
def test_durable_tasks_of_a_killed_worker_run_on_the_other(cluster: Cluster) -> None:
    """kill -9 of a worker running a durable task while others are queued:
    once its lease ended, the task is taken over and runs again (attempt
    2) on the worker that is left, which also runs the queued ones; each
    task ends ``succeeded`` and makes its side effect once."""
    web = cluster.web(workers=2)
    victim, rescuer = cluster.worker(), cluster.worker()
    ids, _ = post(web, "/jobs?count=6")
    # Each worker runs one job, held by the gate; four wait in the queue.
    running = started_by(cluster, 2)
    assert set(running.values()) == {victim.process.pid, rescuer.process.pid}, running
    with ThreadPoolExecutor(CLIENTS) as clients:
        before = {a["id"]: a for a in look_up_all(web, clients, ids)}
    assert sorted(a["status"] for a in before.values()) == ["queued"] * 4 + ["running"] * 2
    assert {i for i, a in before.items() if a["status"] == "running"} == running.keys()
    (killed,) = [i for i, pid in running.items() if pid == victim.process.pid]

    os.kill(victim.process.pid, signal.SIGKILL)
    assert victim.wait_exit(10) == -signal.SIGKILL
    # A live process (the rescuer or a web worker) takes the task over
    # once its lease ended, and queues it again.
    wait_for(
        lambda: look_up(web, killed)["status"] == "queued",
        20,
        f"task {killed} to be taken over:\n{rescuer.output}{web.output}",
    )
    cluster.open_gate()
    final = wait_until_done(web, ids, deadline=DEADLINE)
    with ThreadPoolExecutor(CLIENTS) as clients:
        processes = dict(zip(ids, clients.map(lambda i: process_of(web, i), ids)))

    def take_over_logged() -> bool:
        return any(
            f"(id {killed})" in line and TAKEN_OVER in line and "(attempt 2)" in line
            for line in (rescuer.output + web.output).splitlines()
        )

    # The output of a process is read a moment after it is written.
    wait_for(take_over_logged, 10, f"its take-over in the log:\n{rescuer.output}{web.output}")
    output = rescuer.output + web.output

    events = cluster.events()
    rescuer_pid = rescuer.process.pid
    for n, task_id in enumerate(ids):
        answer = final[task_id]
        attempt = 2 if task_id == killed else 1
        assert (answer["status"], answer["result"], answer["attempt"]) == (
            "succeeded",
            n + 1000,
            attempt,
        ), answer
        assert processes[task_id] == f"{HOST}:{rescuer_pid}", processes
        expected = (
            [(victim.process.pid, 1), (rescuer_pid, 2)] if attempt == 2 else [(rescuer_pid, 1)]
        )
        assert starts(events[task_id]) == expected, events[task_id]
        effects = [(e, pid, a) for e, pid, a in events[task_id] if e.startswith("effect")]
        assert effects == [("effect", rescuer_pid, attempt)], events[task_id]
    assert cluster.markers() == sorted(f"{i}.{final[i]['attempt']}" for i in ids)
    assert "Traceback" not in output, output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("appendonly", [False, True], ids=["memory", "appendonly"])
def test_redis_restarts_under_running_servers(tmp_path: Path, appendonly: bool) -> None:
    """Redis stops, and comes back on the same port, under a running
    Gunicorn and worker: meanwhile a submit answers 503 and writes nothing;
    then, with neither restarted, new tasks are submitted and run. Records
    survive only a Redis that keeps them (``appendonly``)."""
    import redis

    (tmp_path / "redis-data").mkdir()
    with (
        RedisServer(tmp_path / "redis-data", appendonly=appendonly) as server,
        Cluster(tmp_path, server.url) as cluster,
    ):
        web = cluster.web(workers=2)
        worker = cluster.worker()
        before, _ = post(web, "/squares?start=0&count=5")
        wait_until_done(web, before, deadline=DEADLINE)

        server.stop()
        # Each web worker, while Redis is away: 503 to a submit, and to a lookup.
        down = "&rendezvous=down&processes=2"
        with ThreadPoolExecutor(2) as clients:
            refused = list(
                clients.map(
                    lambda start: web.request(f"/squares?start={start}&count=1{down}", "POST"),
                    [100, 101],
                )
            )
        assert {int(headers["X-Served-By"]) for _, _, headers in refused} == web.children()
        for status, body, headers in refused:
            assert status == 503 and "Retry-After" in headers, (status, body)
        assert web.request(f"/tasks/{before[0]}")[0] == 503
        # RQ's loop notices, and retries with a growing pause.
        worker.wait_output("could not connect to Redis instance")

        server.start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            # Nothing of the refused submits: no record, nothing queued.
            kept = client.zrange("bgtasks:index", 0, -1)
            assert sorted(kept) == (sorted(before) if appendonly else []), kept
            assert client.llen("rq:queue:bgtasks.default") == 0
        finally:
            client.close()
        up = "&rendezvous=up&processes=2"
        with ThreadPoolExecutor(2) as clients:
            submitted = list(
                clients.map(lambda start: post(web, f"/squares?start={start}&count=5{up}"), [0, 5])
            )
        assert {pid for _, pid in submitted} == web.children()
        after = [task_id for ids, _ in submitted for task_id in ids]
        final = wait_until_done(web, after, deadline=DEADLINE)
        assert {a["status"] for a in final.values()} == {"succeeded"}, final
        assert {process_of(web, task_id) for task_id in after} == {f"{HOST}:{worker.process.pid}"}
        old = web.request(f"/tasks/{before[0]}")
        if appendonly:
            assert old[0] == 200 and old[1]["status"] == "succeeded", old
        else:
            assert old[0] == 404, old  # lost with Redis's memory, as documented
        assert worker.process.poll() is None and "Traceback" not in worker.output, worker.output


@pytest.mark.timeout(90)
def test_worker_finishes_its_task_on_sigterm(cluster: Cluster) -> None:
    """SIGTERM to a worker running a task: it finishes the task, takes no
    other, exits with 0 and leaves no process; the queued task waits for
    the next worker (here one with ``--burst``, which exits once the queue
    is empty)."""
    web = cluster.web(workers=1)
    worker = cluster.worker()
    ids, _ = post(web, "/jobs?count=2")
    assert started_by(cluster, 1) == {ids[0]: worker.process.pid}

    worker.signal(signal.SIGTERM)
    worker.wait_output(WARM_SHUTDOWN)
    assert worker.process.poll() is None  # held by its running task
    cluster.open_gate()
    assert exit_code(worker) == 0, worker.output
    wait_for(lambda: group_empty(worker.process.pid), 10, "the worker's processes to end")
    first, second = (look_up(web, task_id) for task_id in ids)
    assert (first["status"], first["result"]) == ("succeeded", 1000), first
    assert second["status"] == "queued" and ids[1] not in cluster.events(), second

    burst = cluster.worker("--burst")
    assert exit_code(burst) == 0, burst.output
    second = look_up(web, ids[1])
    assert (second["status"], second["result"], second["attempt"]) == ("succeeded", 1001, 1)
    assert process_of(web, ids[1]) == f"{HOST}:{burst.process.pid}"
    assert "Traceback" not in worker.output + burst.output


def finish_held_jobs(
    cluster: Cluster, web: Server, command: Server, ids: list[str], running: dict[str, int]
) -> None:
    """After SIGTERM to a worker command whose workers each hold one of the
    jobs ``ids`` of ``/jobs?count=2`` at the gate: open it. The command
    exits with 0 once both jobs ended, leaving no process, and each job
    succeeded where it started."""
    workers = set(running.values())
    cluster.open_gate()
    assert exit_code(command) == 0, command.output
    wait_for(lambda: all(map(gone, workers)), 10, f"the workers {workers} to end")
    assert group_empty(command.process.pid)
    for n, task_id in enumerate(ids):
        answer = look_up(web, task_id)
        assert (answer["status"], answer["result"]) == ("succeeded", n + 1000), answer
        assert process_of(web, task_id) == f"{HOST}:{running[task_id]}"
    assert "Traceback" not in command.output, command.output


@pytest.mark.timeout(90)
def test_worker_command_with_two_processes_stops_both(cluster: Cluster) -> None:
    """``--processes 2`` forks two workers from one command; SIGTERM to the
    command reaches both, each finishes its running task, and the command
    exits with 0 once both did, leaving no process."""
    web = cluster.web(workers=1)
    command = cluster.worker("--processes", "2", listening=2)
    workers = command.children()
    assert len(workers) == 2, workers
    ids, _ = post(web, "/jobs?count=2")
    running = started_by(cluster, 2)  # held by the gate, one per worker
    assert set(running.values()) == workers, (running, workers)

    command.signal(signal.SIGTERM)
    wait_for(
        lambda: command.output.count(WARM_SHUTDOWN) == 2,
        10,
        f"both workers to be asked to stop:\n{command.output}",
    )
    assert command.process.poll() is None and command.children() == workers
    finish_held_jobs(cluster, web, command, ids, running)


@pytest.mark.timeout(90)
def test_worker_command_replaces_a_worker_process_that_was_killed(cluster: Cluster) -> None:
    """kill -9 of one of the --processes workers: the command starts
    another in its place, which runs tasks; SIGTERM still stops them all."""
    web = cluster.web(workers=1)
    command = cluster.worker("--processes", "2", listening=2)
    victim, survivor = sorted(command.children())
    # One that dies in its first second is not replaced: it could not start.
    wait_for(lambda: process_age(victim) > STARTUP_SECONDS + 0.5, 10, f"{victim} to run a while")
    os.kill(victim, signal.SIGKILL)
    command.wait_output(f"Worker process {victim} was killed by SIGKILL; starting another.")
    wait_for(
        lambda: command.output.count(LISTENING) == 3,
        30,
        f"the new worker to listen:\n{command.output}",
    )
    workers = command.children()
    assert survivor in workers and victim not in workers and len(workers) == 2, workers

    ids, _ = post(web, "/jobs?count=2")
    running = started_by(cluster, 2)  # held by the gate, one per worker
    assert set(running.values()) == workers, (running, workers)
    command.signal(signal.SIGTERM)
    finish_held_jobs(cluster, web, command, ids, running)
