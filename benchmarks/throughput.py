"""How many no-op tasks per second get from submitted to finished, per store,
next to RQ, and Flask-BGTasks on RQ next to plain RQ.

Six rows run no-op tasks:

* ``memory``: Flask-BGTasks with the memory store (``BGTASKS_STORE="memory"``,
  the default), ``BGTASKS_MAX_WORKERS=4`` and no queue bound. A ``@bg.task``
  is submitted with ``noop.submit()`` from an app context, then
  ``bg.join()`` waits for all of them;
* ``sqlite``: the same with the SQLite store, in a new file in a new
  temporary folder (``BGTASKS_STORE="sqlite:////tmp/.../tasks.db"``). It
  writes a row when a task is submitted, and updates it when the task starts
  and when it finishes;
* ``sqlite-durable``: the same with ``@bg.task(durable=True)``;
* ``rq``: RQ, the anchor. This script starts ``redis-server`` on 127.0.0.1
  and a free port, without persistence, and the measuring process starts one
  ``rq worker`` process with ``--worker-class rq.SimpleWorker``, which runs
  each job in the worker process; the default ``rq.Worker`` forks a process
  per job and is several times slower (compare with ``--rq-worker-class
  rq.Worker``). Jobs are enqueued one by one with ``Queue.enqueue``. The one
  worker takes them in order, so all are finished when the last one's
  result is in, which a blocking read of its result stream tells without
  polling; then the finished-job registry is checked to hold every job;
* ``rq-backend``: Flask-BGTasks on RQ: the app of ``_rq_app.py``, with
  ``BGTASKS_BACKEND="rq"`` and ``BGTASKS_STORE`` the same Redis, and
  otherwise the defaults. The measuring process submits ``noop.submit()``
  from an app context, one task after another, which records each task in
  the Redis store and queues it on RQ; meanwhile one ``flask --app
  "_rq_app:create_app('redis://...')" bgtasks worker`` command, started
  before the clock and warmed up, runs them with its default worker (an
  ``rq.SimpleWorker``: each task in the worker process). As in the ``rq``
  row, submits and runs overlap. The clock stops when the store's set of
  finished records (``bgtasks:finished``, a sorted set) counts every task
  submitted; the measuring process reads its size (``ZCARD``, one cheap
  command) every :data:`RECORDS_POLL_INTERVAL` seconds, a thousandth of a
  run. Then every record is checked to say ``succeeded``;
* ``rq-backend-2``: the same with ``--processes 2``: two worker processes,
  forked by the command, each warmed up until both have run a task.

The rows on Redis run :data:`fewer tasks <Sizes>` (``--redis-tasks``),
since each task costs a hundred times more. They are skipped, with a note,
if ``redis-server`` or ``rq`` is not installed.

After the rounds, one more process counts the round trips to Redis of
Flask-BGTasks on RQ (``--case rq-backend-trips``, :data:`TRIPS_TASKS`
tasks): it submits every task with no worker running, then runs them with
``flask bgtasks worker --burst`` (one process), and reads Redis's
``MONITOR`` all along (:class:`CommandLog`). ``INFO commandstats`` can't
tell these apart: it counts the commands that a Lua script runs among those
that clients send, so the ``HMGET`` and ``HSET`` inside the store's scripts
look like reads of their own or like RQ's commands. ``MONITOR`` shows each
command a client sent, by connection, and those of scripts apart. A
connection is the store's if a command on it names one of the store's keys
(``bgtasks:...``; RQ's are ``rq:...``), and a ``MULTI`` ... ``EXEC`` block,
which redis-py sends as one pipeline, is one round trip. The second table
shows, per task, the round trips and commands of each side: the worker's
(the store's scripts, RQ's own bookkeeping) and the submit's (the record
and RQ's enqueue, which share one transaction on a connection of ours), the
worker's start and exit spread over the tasks.

Every timed run happens in a fresh Python process of its own, started by
this script as ``python benchmarks/throughput.py --case ROW``, which prints
its result as one JSON line. Timed one after another in one process, the
rows disturbed each other: the heap, the garbage, the threads and the
SQLite connections that earlier runs left behind made even the memory store
vary by 35% from one run to the next (10.7 against 14.5 us per task). A
fresh process gives every row the same start: the same modules imported
(the SQLite store, and ``rq``, ``redis``, the Redis store and the RQ backend
if installed, whichever row runs), an empty heap, no other threads, and for
the SQLite rows a new file. A process that fails, or gives no result within
:data:`CASE_TIMEOUT` seconds, makes its row ``n/a`` with the error, and the
run goes on.

In its process each row gets a new app and store (on Redis: an emptied
Redis database and a new worker command), warmed up first: all its workers
have started and run a task, its database is open. The clock runs from the
first submit until the last task has finished. ``redis-server`` is started
once, by this script, for the whole run. Each round starts one process per
row, one process at a time, in an order rotated from round to round; the
table shows the median over the rounds as tasks per second, microseconds
per task, and the cost per task as a multiple of the memory store's. A
worker is asked to stop with SIGTERM once its row is measured, and killed
after :data:`STOP_TIMEOUT` seconds (see :func:`stop_worker`).

The systems do not use the same resources: Flask-BGTasks runs its tasks on
threads of the submitting process, where the GIL lets one thread run Python
at a time, while RQ spreads the work over three processes (the submitting
one, the worker and Redis), which can use two cores at once; Flask-BGTasks
on RQ with two worker processes, over four.

The last lines compare the rows with the goals of the issue: the SQLite
store costs at most 5x the memory store per task; durable tasks run at
least 5,000 tasks per second; Flask-BGTasks on RQ runs at least 90% of
plain RQ's tasks per second with one worker process, and at least 600 with
two; and its store adds at most 3 round trips to Redis per task in the
worker.

With ``--profile sqlite`` (or another Flask-BGTasks row without Redis) the
script prints, instead of the tables, how often and how long the SQLite
store's writer held its connection (the lock that each batch of writes
holds while it runs and commits, ``Writer._db_lock``) and how often that
made a thread wait, in one plain run of that row; then where the time goes
in a second run with every thread under :mod:`cProfile`. Both runs happen
in this process.

Run it from the project root::

    pip install -e '.[benchmarks]'
    apt-get install redis-server      # for the rows on Redis
    python benchmarks/throughput.py
    python benchmarks/throughput.py --rst docs/_throughput_table.rst
    python benchmarks/throughput.py --profile sqlite

The defaults take about four minutes on a 2-core machine, most of it on Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import functools
import gc
import importlib
import importlib.util
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing as t

from _fresh import MeasurementFailed, Samples, Script, measure_rounds, report
from _tables import (
    Row,
    Table,
    add_output_arguments,
    add_rounds_argument,
    add_tasks_argument,
    describe_error,
    format_number,
    format_ratio,
    machine_description,
    positive_int,
    progress,
    ratio,
    render_markdown,
    render_rst,
    render_text,
    rst_escape,
)
from flask import Flask

from flask_bgtasks import BGTasks

if t.TYPE_CHECKING:
    from redis import Redis
    from rq import Queue
    from rq.job import Job

    from flask_bgtasks import TaskResult
    from flask_bgtasks.stores import TaskStore

#: Worker threads of every Flask-BGTasks app.
WORKERS = 4
#: Seconds to wait for a pool's workers, or for Redis or an RQ worker, to start.
START_TIMEOUT = 30.0
#: Seconds a worker may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: Seconds that one timed run may take before it counts as hung.
RUN_TIMEOUT = 300.0
#: Seconds a measuring process may take before its row is given up as n/a:
#: more than :data:`RUN_TIMEOUT`, so that a hung run reports itself first.
CASE_TIMEOUT = 600.0
#: The goals from the issue: the SQLite store's cost per task as a multiple
#: of the memory store's, and the tasks per second of durable tasks.
TARGET_RATIO = 5.0
TARGET_RATIO_ROW = "sqlite"
TARGET_DURABLE_RATE = 5_000.0
TARGET_DURABLE_ROW = "sqlite-durable"
#: The goals of Flask-BGTasks on RQ: its tasks per second with one worker
#: process as a share of plain RQ's; with two worker processes; and the
#: round trips to Redis that its store adds per task in the worker.
TARGET_RQ_SHARE = 0.9
TARGET_RQ_RATE = 600.0
TARGET_TRIPS = 3.0
#: The row every ratio is taken against.
BASELINE = "memory"
#: Imported by every measuring process, whichever row it runs, so that all
#: start with the same modules; those not installed are left out.
PRELOADED = (
    "sqlite3",
    "flask_bgtasks.stores.sqlite",
    "redis",
    "rq",
    "rq.job",
    "rq.results",
    "flask_bgtasks.stores.redis",
    "flask_bgtasks.backends.rq",
)

#: This folder: the RQ worker imports its job from here.
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
RQ_QUEUE = "throughput"
#: Enqueued by name, so that only the worker imports it.
RQ_JOB = "_rq_jobs.noop"
RQ_WORKER_CLASS = "rq.SimpleWorker"
#: Seconds between two looks at how many records are finished, in the rows
#: of Flask-BGTasks on RQ: short next to a run (seconds), and one command
#: per look against some 30 per task.
RECORDS_POLL_INTERVAL = 0.01


# Systems ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class System:
    """A warmed-up system, as the measurement sees it."""

    #: Submit this many no-op tasks; return once every one has finished.
    run: t.Callable[[int], None]
    #: The Flask-BGTasks task store, for ``--profile``; ``None`` for RQ.
    store: TaskStore | None = None


SystemFactory = t.Callable[[], t.ContextManager[System]]


@contextlib.contextmanager
def flask_bgtasks(store: str, durable: bool = False) -> t.Iterator[System]:
    """A new app with a new store: ``"memory"``, or ``"sqlite"`` for a new
    file in a new temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bgtasks-throughput-") as folder:
        app = Flask(__name__)
        app.config.update(
            BGTASKS_MAX_WORKERS=WORKERS,
            BGTASKS_QUEUE_SIZE=None,
            BGTASKS_STORE=(
                "memory" if store == "memory" else "sqlite:///" + os.path.join(folder, "tasks.db")
            ),
        )
        bg = BGTasks(app)

        # Named, since a durable task needs a name that a new process finds.
        @bg.task(name="throughput.noop", durable=durable)
        def noop() -> None:
            pass

        results: list[TaskResult[None]] = []

        def run(tasks: int) -> None:
            nonlocal results
            results = [noop.submit() for _ in range(tasks)]
            if not bg.join(RUN_TIMEOUT):
                raise TimeoutError(f"The tasks did not finish within {RUN_TIMEOUT:g} s.")

        try:
            with app.app_context():
                start_all_workers(bg, noop.submit)
                yield System(run, bg.store(app))
                for result in results:
                    result.result(timeout=0)  # raises what a task raised
        finally:
            # Before the folder goes: it closes the database.
            bg.shutdown()


def start_all_workers(bg: BGTasks, submit_noop: t.Callable[[], TaskResult[None]]) -> None:
    """Run one task per worker at the same time, so every thread has
    started, then one no-op task, so its code path is warm."""
    everyone_running = threading.Barrier(WORKERS)
    futures = []
    try:
        for _ in range(WORKERS):
            futures.append(bg.submit(everyone_running.wait, START_TIMEOUT))
    except BaseException:
        everyone_running.abort()
        raise
    for future in futures:
        future.result()
    submit_noop().result()
    bg.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process does not exit in time."""
    process.terminate()
    try:
        process.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_worker(command: list[str], log: t.IO[bytes]) -> subprocess.Popen[bytes]:
    """Start a worker command in a process group of its own, for
    :func:`stop_worker`; its output goes to ``log``."""
    return subprocess.Popen(
        command,
        cwd=BENCHMARKS,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to the worker's process group (the worker
    processes that ``flask bgtasks worker --processes`` forked too) if it
    has not exited within :data:`STOP_TIMEOUT` seconds.

    An idle RQ worker often takes a minute to exit: with rq 3.0 and redis-py
    8, stopping its pub/sub thread waits for the thread's 60-second read
    (``PubSubWorkerThread.stop()`` now joins the thread). Its tasks are done
    and checked by then, so it is not waited for.
    """
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def last_line(log: t.IO[bytes]) -> str:
    """The last line a process wrote: its error, if it failed."""
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "(no output)"


@contextlib.contextmanager
def redis_server() -> t.Iterator[str]:
    """Start ``redis-server`` on 127.0.0.1 and a free port, without
    persistence; yield its URL; stop it."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            ["redis-server", *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            with Redis.from_url(url) as connection:
                deadline = time.monotonic() + START_TIMEOUT
                pause = threading.Event()
                while True:
                    try:
                        connection.ping()
                        break
                    except RedisConnectionError:
                        pass
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start: {last_line(log)}")
                    pause.wait(0.05)  # the polling interval, not a synchronisation
            yield url
        finally:
            stop(process)


@contextlib.contextmanager
def rq_worker(url: str, worker_class: str) -> t.Iterator[System]:
    """An emptied Redis database and a new RQ worker process, warmed up
    with one job."""
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(url)
    connection.flushdb()
    queue = Queue(RQ_QUEUE, connection=connection)
    command = [
        sys.executable, "-m", "rq.cli", "worker", RQ_QUEUE,
        "--url", url,
        "--worker-class", worker_class,
        "--path", BENCHMARKS,
        # A log line per job would be I/O that Flask-BGTasks does not do.
        "--quiet", "--disable-job-desc-logging",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        worker = start_worker(command, log)
        # The warm-up job, then each timed run's.
        enqueued = 1

        def run(tasks: int) -> None:
            nonlocal enqueued
            jobs = [queue.enqueue(RQ_JOB) for _ in range(tasks)]
            enqueued += tasks
            wait_for_job(jobs[-1], worker, log, RUN_TIMEOUT)

        try:
            wait_for_job(queue.enqueue(RQ_JOB), worker, log, START_TIMEOUT)
            yield System(run)
            check_all_finished(queue, enqueued)
        finally:
            stop_worker(worker)
            connection.close()


def wait_for_job(
    job: Job, worker: subprocess.Popen[bytes], log: t.IO[bytes], timeout: float
) -> None:
    """Wait for the job's result; raise if it failed or the worker died."""
    from rq.results import Result

    deadline = time.monotonic() + timeout
    while True:
        # A blocking read of the job's result stream, which returns as soon
        # as the worker writes the result. A second at a time, to notice a
        # dead worker.
        result = job.latest_result(timeout=1)
        if result is not None:
            break
        if worker.poll() is not None:
            raise RuntimeError(
                f"{last_line(log)} (the RQ worker exited with code {worker.returncode})"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"RQ job {job.id} did not finish within {timeout:g} s.")
    if result.type is not Result.Type.SUCCESSFUL:
        raise RuntimeError(f"RQ job {job.id} ended as {result.type.name}: {result.exc_string}")


def check_all_finished(queue: Queue, enqueued: int) -> None:
    """Every job enqueued in this round ran, and succeeded."""
    finished = queue.finished_job_registry.count
    failed = queue.failed_job_registry.count
    if finished != enqueued or failed or queue.count:
        raise RuntimeError(
            f"RQ ran {finished} of {enqueued} jobs ({failed} failed, {queue.count} still queued)."
        )


def rq_missing() -> str | None:
    """Why the RQ row can't run here, or ``None``."""
    if shutil.which("redis-server") is None:
        return "n/a (skipped: redis-server is not installed; apt-get install redis-server)"
    if importlib.util.find_spec("rq") is None:
        return "n/a (skipped: rq is not installed; pip install -e '.[benchmarks]')"
    return None


# Flask-BGTasks on RQ ---------------------------------------------------------


def bgtasks_worker_command(url: str, processes: int, *, burst: bool = False) -> list[str]:
    """``flask bgtasks worker`` for the app of ``_rq_app.py`` on ``url``,
    run with :data:`BENCHMARKS` as its current folder."""
    command = [
        sys.executable, "-m", "flask", "--app", f"_rq_app:create_app({url!r})",
        "bgtasks", "worker", "--processes", str(processes),
        # As the plain RQ row: no log line per task.
        "--quiet",
    ]  # fmt: skip
    return [*command, "--burst"] if burst else command


def check_alive(worker: subprocess.Popen[bytes], log: t.IO[bytes]) -> None:
    if worker.poll() is not None:
        raise RuntimeError(
            f"{last_line(log)} (the worker command exited with code {worker.returncode})"
        )


def warm_up_workers(processes: int, worker: subprocess.Popen[bytes], log: t.IO[bytes]) -> None:
    """Submit tasks that return the pid of the process that ran them until
    every worker process has run one."""
    import _rq_app

    seen: set[int] = set()
    deadline = time.monotonic() + START_TIMEOUT
    while len(seen) < processes:
        handles = [_rq_app.pid.submit() for _ in range(processes)]
        for handle in handles:
            try:
                seen.add(handle.result(timeout=START_TIMEOUT))
            except TimeoutError:
                check_alive(worker, log)
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Only {len(seen)} of {processes} worker processes ran a task"
                f" within {START_TIMEOUT:g} s."
            )


def wait_for_records(
    connection: Redis,
    finished_key: str,
    expected: int,
    worker: subprocess.Popen[bytes],
    log: t.IO[bytes],
    timeout: float,
) -> None:
    """Wait until the store's set of finished records holds ``expected``
    ids: one ``ZCARD`` every :data:`RECORDS_POLL_INTERVAL` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while connection.zcard(finished_key) < expected:
        # A --burst worker exits once it has run them all: look once more.
        if worker.poll() is not None and connection.zcard(finished_key) < expected:
            check_alive(worker, log)
        if time.monotonic() > deadline:
            raise TimeoutError(f"The tasks did not finish within {timeout:g} s.")
        pause.wait(RECORDS_POLL_INTERVAL)  # the polling interval, not a synchronisation


def check_all_succeeded(store: TaskStore, expected: int) -> None:
    """Every task submitted to this app, warm-ups included, succeeded."""
    from flask_bgtasks import TaskStatus

    succeeded = len(store.records(TaskStatus.SUCCEEDED, limit=expected + 1))
    if succeeded != expected:
        raise RuntimeError(f"{succeeded} of {expected} tasks succeeded.")


@contextlib.contextmanager
def bgtasks_on_rq(url: str, processes: int) -> t.Iterator[System]:
    """An emptied Redis database, the app of ``_rq_app.py`` in this process,
    and a new ``flask bgtasks worker`` with ``processes`` worker processes,
    each warmed up with a task."""
    import _rq_app
    from redis import Redis

    connection = Redis.from_url(url)
    connection.flushdb()
    app = _rq_app.create_app(url)
    store = _rq_app.bg.store(app)
    # The Redis store's sorted set of finished records (stores/_redis_scripts.py).
    finished_key = f"{store.prefix}finished"  # type: ignore[attr-defined]
    with tempfile.TemporaryFile() as log, app.app_context():
        worker = start_worker(bgtasks_worker_command(url, processes), log)
        submitted = 0

        def run(tasks: int) -> None:
            nonlocal submitted
            for _ in range(tasks):
                _rq_app.noop.submit()
            submitted += tasks
            wait_for_records(connection, finished_key, submitted, worker, log, RUN_TIMEOUT)

        try:
            warm_up_workers(processes, worker, log)
            submitted = len(store)
            wait_for_records(connection, finished_key, submitted, worker, log, START_TIMEOUT)
            yield System(run, store)
            check_all_succeeded(store, submitted)
        finally:
            stop_worker(worker)
            _rq_app.bg.shutdown()
            connection.close()


class CommandLog:
    """Redis's ``MONITOR``, read by a thread: every command that a client
    sent, by connection, without those that scripts run, and without this
    process's own.

    Each connection is ours or RQ's: ours if a command on it names a key of
    the store (under its prefix, ``bgtasks:``); RQ's keys are ``rq:...``. A
    transaction (``MULTI`` ... ``EXEC``), which redis-py sends as one
    pipeline, is one round trip.
    """

    #: Echoed by :meth:`stop`: the reader has seen everything before it.
    END = b"throughput-command-log-end"

    def __init__(self, connection: Redis, url: str, prefix: str) -> None:
        from redis import Redis

        self._connection = connection
        self._prefix = prefix.encode()
        # The address of this process's connection (one thread, so always
        # the same), whose commands (ZCARD, ECHO) are the measurement's.
        self._own = str(connection.client_info()["addr"]).encode()
        self._commands: dict[bytes, list[list[bytes]]] = {}
        # A client of its own, which waits for the next line as long as it takes.
        self._client = Redis.from_url(url, socket_timeout=None)
        self._monitor = self._client.monitor()  # type: ignore[no-untyped-call]
        self._monitor.__enter__()  # sends MONITOR and reads its OK
        self._thread = threading.Thread(target=self._read, name="throughput-monitor")
        self._thread.start()

    def _read(self) -> None:
        read = self._monitor.connection.read_response
        while True:
            # 1700000000.123456 [0 127.0.0.1:50000] "EVALSHA" "1f0c..." "2" ...
            line: bytes = read()
            head, _, quoted = line.partition(b"] ")
            client = head.rsplit(b" ", 1)[-1]
            command = quoted[1:-1].split(b'" "')
            if client == self._own:
                if command == [b"ECHO", self.END]:
                    return
            elif client != b"lua":
                self._commands.setdefault(client, []).append(command)

    def stop(self) -> None:
        """Stop reading, once every command sent so far is in."""
        self._connection.echo(self.END)
        self._thread.join(RUN_TIMEOUT)
        self._monitor.__exit__()
        self._client.close()
        if self._thread.is_alive():
            raise RuntimeError("The MONITOR reader did not see the end of the commands.")

    def round_trips(self) -> dict[str, tuple[int, int]]:
        """``{"ours": (round trips, commands), "rq": (round trips, commands)}``."""
        totals = {"ours": [0, 0], "rq": [0, 0]}
        for commands in self._commands.values():
            ours = any(arg.startswith(self._prefix) for command in commands for arg in command)
            trips = 0
            in_transaction = False
            for command in commands:
                name = command[0].upper()
                if name == b"MULTI":
                    in_transaction = True
                    trips += 1
                elif name in (b"EXEC", b"DISCARD"):
                    in_transaction = False
                elif not in_transaction:
                    trips += 1
            total = totals["ours" if ours else "rq"]
            total[0] += trips
            total[1] += len(commands)
        return {side: (trips, commands) for side, (trips, commands) in totals.items()}


def count_round_trips(url: str, tasks: int) -> dict[str, float]:
    """Submit ``tasks`` no-op tasks with no worker running; then run them
    with ``flask bgtasks worker --burst`` of one process. Redis's
    ``MONITOR`` (:class:`CommandLog`) tells the round trips of each side,
    ours and RQ's, per task."""
    import _rq_app
    from redis import Redis

    connection = Redis.from_url(url)
    connection.flushdb()
    app = _rq_app.create_app(url)
    store = _rq_app.bg.store(app)
    prefix: str = store.prefix  # type: ignore[attr-defined]
    try:
        with app.app_context(), tempfile.TemporaryFile() as log:
            web = CommandLog(connection, url, prefix)
            try:
                for _ in range(tasks):
                    _rq_app.noop.submit()
            finally:
                web.stop()
            ran = CommandLog(connection, url, prefix)
            try:
                worker = start_worker(bgtasks_worker_command(url, 1, burst=True), log)
                try:
                    wait_for_records(
                        connection, f"{prefix}finished", tasks, worker, log, RUN_TIMEOUT
                    )
                    # RQ's bookkeeping of the last job follows the end of its task.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        worker.wait(STOP_TIMEOUT)
                finally:
                    stop_worker(worker)
            finally:
                ran.stop()
            check_all_succeeded(store, tasks)
    finally:
        _rq_app.bg.shutdown()
        connection.close()
    numbers = {}
    for side, commands_log in (("web", web), ("worker", ran)):
        for who, (trips, commands) in commands_log.round_trips().items():
            numbers[f"{side}_{who}_trips"] = trips / tasks
            numbers[f"{side}_{who}_commands"] = commands / tasks
    return numbers


#: The rows, in their order in the table: key (for ``--case`` and
#: ``--profile``) and label.
LABELS = {
    "memory": "Flask-BGTasks, memory store",
    "sqlite": "Flask-BGTasks, SQLite store",
    "sqlite-durable": "Flask-BGTasks, SQLite, durable",
    "rq": "RQ, Redis, 1 worker process",
    "rq-backend": "Flask-BGTasks on RQ, 1 worker process",
    "rq-backend-2": "Flask-BGTasks on RQ, 2 worker processes",
}
ROWS = list(LABELS)
#: The rows on Redis, with the worker processes of each.
ON_REDIS = {"rq": 1, "rq-backend": 1, "rq-backend-2": 2}
BGTASKS_SYSTEMS: dict[str, SystemFactory] = {
    "memory": functools.partial(flask_bgtasks, "memory"),
    "sqlite": functools.partial(flask_bgtasks, "sqlite"),
    "sqlite-durable": functools.partial(flask_bgtasks, "sqlite", durable=True),
}
#: The case that counts Redis round trips, run once after the rounds.
TRIPS = "rq-backend-trips"
#: What it measures, per task: each side's round trips and commands, ours
#: and RQ's.
TRIP_NAMES = [
    f"{side}_{who}_{what}"
    for side in ("worker", "web")
    for who in ("ours", "rq")
    for what in ("trips", "commands")
]
#: Tasks that the count of round trips runs: their fixed costs (a worker's
#: start and end) spread thin enough.
TRIPS_TASKS = 1_000


# The measuring process -------------------------------------------------------


def preload() -> None:
    """Import :data:`PRELOADED`, so that every row starts with the same
    modules; skip those that are not installed."""
    for name in PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def time_system(factory: SystemFactory, tasks: int) -> float:
    """Seconds from the first submit until all ``tasks`` have finished, on
    a new, warmed-up system."""
    with factory() as system:
        gc.collect()
        start = time.perf_counter()
        system.run(tasks)
        return time.perf_counter() - start


def run_case(
    case: str, tasks: int, redis_url: str | None, rq_worker_class: str
) -> dict[str, float]:
    """Measure one case once, in this process: a row's microseconds per
    task, or the round trips of :data:`TRIPS`."""
    preload()
    if case in BGTASKS_SYSTEMS:
        factory = BGTASKS_SYSTEMS[case]
    elif redis_url is None:
        raise ValueError(f"{case!r} needs the URL of a running Redis (--redis-url).")
    elif case == TRIPS:
        return count_round_trips(redis_url, tasks)
    elif case == "rq":
        factory = functools.partial(rq_worker, redis_url, rq_worker_class)
    else:
        factory = functools.partial(bgtasks_on_rq, redis_url, ON_REDIS[case])
    seconds = time_system(factory, tasks)
    return {"us_per_task": seconds / tasks * 1e6}


# Starting the measuring processes --------------------------------------------

#: This script, as it runs again to time one row.
SCRIPT = Script(os.path.abspath(__file__), CASE_TIMEOUT)


def start_redis(stack: contextlib.ExitStack) -> str:
    """The URL of a ``redis-server`` that runs until ``stack`` closes.

    :raises MeasurementFailed: with the ``n/a`` text of why there is none.
    """
    missing = rq_missing()
    if missing is not None:
        raise MeasurementFailed(missing)
    try:
        return stack.enter_context(redis_server())
    except Exception as exc:  # noqa: BLE001 - shown as n/a
        raise MeasurementFailed(describe_error(exc)) from exc


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How many tasks each timed run submits."""

    #: In the rows of Flask-BGTasks without Redis.
    tasks: int
    #: In the rows on Redis, which are a hundred times slower.
    redis_tasks: int

    def of(self, row: str) -> int:
        return self.redis_tasks if row in ON_REDIS else self.tasks


def measure(sizes: Sizes, rounds: int, rq_worker_class: str) -> tuple[dict[str, Samples], Samples]:
    """The microseconds per task of every row in every round, each in a fresh
    process, one process at a time (a row that failed once is not run
    again); then, in one more process, the round trips of :data:`TRIPS`."""
    with contextlib.ExitStack() as stack:
        failed: dict[str, str] = {}
        redis_url: str | None = None
        try:
            redis_url = start_redis(stack)
        except MeasurementFailed as exc:
            failed = dict.fromkeys(ON_REDIS, str(exc))

        def options(case: str, tasks: int) -> list[str]:
            options = ["--case", case, "--tasks", str(tasks)]
            if redis_url is not None and (case in ON_REDIS or case == TRIPS):
                options += ["--redis-url", redis_url, "--rq-worker-class", rq_worker_class]
            return options

        def measure_row(row: str) -> dict[str, float]:
            return SCRIPT.measure(options(row, sizes.of(row)), ["us_per_task"])

        timings = measure_rounds(ROWS, rounds, measure_row, failed)
        trips = Samples(error=failed.get("rq"))
        if redis_url is not None:
            progress("Redis round trips")
            try:
                numbers = SCRIPT.measure(options(TRIPS, TRIPS_TASKS), TRIP_NAMES)
                trips.numbers = {name: [value] for name, value in numbers.items()}
            except MeasurementFailed as exc:
                trips.error = str(exc)
        return timings, trips


# Profiling -------------------------------------------------------------------


class WatchedLock:
    """Wraps a lock: counts how often taking it had to wait, for how long,
    and how long it was held."""

    def __init__(self, lock: t.Any) -> None:
        self._lock = lock
        self.taken = 0
        self.waited = 0
        self.wait_seconds = 0.0
        self.held_seconds = 0.0
        self._taken_at = 0.0

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            start = time.perf_counter()
            self._lock.acquire()
            self.wait_seconds += time.perf_counter() - start
            self.waited += 1
        # Counted while held, so no two threads count at once.
        self.taken += 1
        self._taken_at = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self.held_seconds += time.perf_counter() - self._taken_at
        self._lock.release()

    def describe(self, tasks: int, wall: float) -> str:
        taken = max(self.taken, 1)
        return (
            f"The store's writer held its connection (Writer._db_lock) {self.taken:,} times,"
            f" once per batch of writes ({tasks / taken:,.1f} tasks per batch), for"
            f" {self.held_seconds / taken * 1e6:,.1f} us each on average,"
            f" {self.held_seconds / wall:.0%} of the wall time; {self.waited / taken:.0%} of"
            f" the takes waited, {self.wait_seconds / tasks * 1e6:,.1f} us per task summed"
            " over the threads."
        )


def watch_store_lock(store: TaskStore | None) -> WatchedLock | None:
    """Put a :class:`WatchedLock` around the lock of the SQLite store's
    connection for writes (its writer's ``_db_lock``), which each batch of
    statements holds while it runs and commits. Private attributes, since
    nothing public tells how busy the writer is; ``None`` for another store."""
    writer = getattr(store, "_writer", None)
    lock = getattr(writer, "_db_lock", None)
    if writer is None or lock is None:
        return None
    watched = WatchedLock(lock)
    writer._db_lock = watched
    return watched


@dataclasses.dataclass(frozen=True)
class Watched:
    """One run of a row: its wall and CPU seconds, and what its store's
    writer lock saw, if it has one."""

    wall: float
    cpu: float
    lock: str | None

    def describe(self, tasks: int) -> str:
        text = (
            f"{tasks / self.wall:,.0f} tasks/s, {self.wall / tasks * 1e6:,.1f} us/task wall,"
            f" {self.cpu / tasks * 1e6:,.1f} us/task CPU (all threads)."
        )
        if self.lock is not None:
            text += "\n" + self.lock
        return text


def watched_run(key: str, tasks: int, profile: cProfile.Profile | None = None) -> Watched:
    """Run one Flask-BGTasks row once, its store's writer lock watched, the
    submitting thread under ``profile`` if given."""
    with BGTASKS_SYSTEMS[key]() as system:
        lock = watch_store_lock(system.store)
        gc.collect()
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        if profile is None:
            system.run(tasks)
        else:
            profile.runcall(system.run, tasks)
        wall = time.perf_counter() - wall_start
        cpu = time.process_time() - cpu_start
        # Described before the store closes, which takes the lock once more.
        described = None if lock is None else lock.describe(tasks, wall)
    return Watched(wall, cpu, described)


def profile_system(key: str, tasks: int, top: int) -> None:
    """Run one Flask-BGTasks row once as is, then once with every thread
    under cProfile, and print what each run shows."""
    plain = watched_run(key, tasks)
    print(f"{LABELS[key]}, {tasks:,} no-op tasks on {WORKERS} workers.")
    print(f"\nWithout the profiler: {plain.describe(tasks)}")

    profiles: list[cProfile.Profile] = []
    original_run = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.runcall(original_run, thread)

    # Every thread started from here on: the pool's workers, the store's writer.
    threading.Thread.run = profiled_run  # type: ignore[method-assign,assignment]
    try:
        main = cProfile.Profile()
        profiles.append(main)
        profiled = watched_run(key, tasks, main)
    finally:
        threading.Thread.run = original_run  # type: ignore[method-assign]
    print(f"\nUnder cProfile, which slows every call: {profiled.describe(tasks)}")
    print(
        "\nAll threads merged: the main thread submits and joins; the workers"
        " wait for tasks in SimpleQueue.get; the store's writer thread waits for"
        " statements in Condition.wait. Waits for the writer's connection are in"
        " WatchedLock.__enter__.\n"
    )
    stats = pstats.Stats(*profiles, stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)


# Tables ----------------------------------------------------------------------


def rate(us_per_task: float | None) -> float | None:
    """Tasks per second."""
    return None if not us_per_task else 1e6 / us_per_task


def throughput_table(
    timings: dict[str, Samples], sizes: Sizes, rounds: int, rq_worker_class: str
) -> Table:
    baseline = timings[BASELINE].median("us_per_task")
    simple = rq_worker_class == RQ_WORKER_CLASS
    rows = []
    for key, record in timings.items():
        median = record.median("us_per_task")
        values = [
            format_number(rate(median), 0),
            format_number(median),
            format_ratio(ratio(median, baseline)),
        ]
        rows.append(Row([LABELS[key]], values, record.error))
    return Table(
        title=(
            f"Throughput: {sizes.tasks:,} no-op tasks ({sizes.redis_tasks:,} on Redis)"
            f" from the first submit until all finished, median of {rounds} rounds"
        ),
        header=["Store/system", "tasks/s", "us/task", "x memory"],
        rows=rows,
        notes=[
            (
                "Each row of each round in a fresh Python process, one at a time, in"
                " an order rotated from round to round."
            ),
            (
                f"Flask-BGTasks: {WORKERS} worker threads in the submitting process,"
                " a new app and a new SQLite file per process; noop.submit() from an"
                " app context, then bg.join()."
            ),
            (
                "RQ: jobs enqueued one by one to a local redis-server without"
                f" persistence, run by one rq worker process of the class {rq_worker_class}"
                f"{' (jobs run in the worker process, no fork per job)' if simple else ''};"
                " done when the last job's result is in. Redis runs for the whole run"
                " and is emptied for each process, which starts its own worker."
            ),
            (
                "Flask-BGTasks on RQ: BGTASKS_BACKEND = 'rq' on the same Redis, which"
                " also holds the records; noop.submit() from an app context while one"
                " 'flask bgtasks worker' command (its default worker, tasks run in the"
                " worker process) with 1 or 2 worker processes runs them; done when the"
                " store counts every record finished."
            ),
            "x memory: the cost per task as a multiple of the memory store's.",
        ],
    )


#: The sides and owners of the round trips, as the table names them.
TRIP_LABELS = {
    ("worker", "ours"): ["worker", "Flask-BGTasks (its store's scripts)"],
    ("worker", "rq"): ["worker", "RQ"],
    # One transaction holds the record and RQ's enqueue: a connection of ours.
    ("web", "ours"): ["submit", "Flask-BGTasks (the record and RQ's enqueue)"],
    ("web", "rq"): ["submit", "RQ (apart from that)"],
}


def trips_table(trips: Samples) -> Table:
    rows = [
        Row(
            labels,
            [
                format_number(trips.median(f"{side}_{who}_trips"), 2),
                format_number(trips.median(f"{side}_{who}_commands"), 2),
            ],
            trips.error,
        )
        for (side, who), labels in TRIP_LABELS.items()
    ]
    return Table(
        title=f"Redis round trips per task, Flask-BGTasks on RQ, {TRIPS_TASKS:,} no-op tasks",
        header=["Side", "Whose", "round trips", "commands"],
        rows=rows,
        notes=[
            (
                "The tasks are submitted with no worker running, then run by"
                " 'flask bgtasks worker --burst' with one worker process. Redis's MONITOR"
                " lists every command a client sent (not those a script runs), by"
                " connection; a connection is ours if it names a key of the store"
                " (bgtasks:...). MULTI ... EXEC, sent as one pipeline, is one round trip."
                " The worker's start and exit are spread over the tasks."
            ),
        ],
    )


def target_lines(timings: dict[str, Samples], trips: Samples) -> list[str]:
    """One line per goal of the issue, each about the row it names."""
    cost = ratio(
        timings[TARGET_RATIO_ROW].median("us_per_task"), timings[BASELINE].median("us_per_task")
    )
    durable = rate(timings[TARGET_DURABLE_ROW].median("us_per_task"))
    rates = {row: rate(timings[row].median("us_per_task")) for row in ON_REDIS}
    one = ratio(rates["rq-backend"], rates["rq"])
    two = rates["rq-backend-2"]
    ours = trips.median("worker_ours_trips")
    return [
        target_line(
            f"the SQLite store costs <= {TARGET_RATIO:g}x the memory store per task",
            {LABELS[TARGET_RATIO_ROW]: (cost, format_ratio(cost))},
            lambda value: value <= TARGET_RATIO,
        ),
        target_line(
            f"durable tasks run >= {TARGET_DURABLE_RATE:,.0f} no-op tasks/s",
            {LABELS[TARGET_DURABLE_ROW]: (durable, rate_text(durable))},
            lambda value: value >= TARGET_DURABLE_RATE,
        ),
        target_line(
            f"on RQ with one worker process, >= {TARGET_RQ_SHARE:.0%} of plain RQ's tasks/s",
            {LABELS["rq-backend"]: (one, "n/a" if one is None else f"{one:.0%} of RQ's")},
            lambda value: value >= TARGET_RQ_SHARE,
        ),
        target_line(
            f"on RQ with two worker processes, >= {TARGET_RQ_RATE:,.0f} tasks/s",
            {LABELS["rq-backend-2"]: (two, rate_text(two))},
            lambda value: value >= TARGET_RQ_RATE,
        ),
        target_line(
            f"<= {TARGET_TRIPS:g} Redis round trips of ours per task in the worker",
            {"Flask-BGTasks on RQ": (ours, f"{format_number(ours, 2)} round trips")},
            lambda value: value <= TARGET_TRIPS,
        ),
    ]


def rate_text(value: float | None) -> str:
    return "n/a" if value is None else f"{format_number(value, 0)} tasks/s"


def target_line(
    goal: str, values: dict[str, tuple[float | None, str]], met: t.Callable[[float], bool]
) -> str:
    verdicts = {label: value is not None and met(value) for label, (value, _) in values.items()}
    if all(verdicts.values()):
        overall = "MET"
    elif any(verdicts.values()):
        overall = "PARTLY MET"
    else:
        overall = "NOT MET"
    details = "; ".join(
        f"{label.removeprefix('Flask-BGTasks, ')}: {text},"
        f" {'met' if verdicts[label] else 'not met'}"
        for label, (_, text) in values.items()
    )
    return f"Target: {goal}: {overall} ({details})"


def write_rst(path: str, tables: list[Table], targets: list[str]) -> None:
    parts = []
    for table in tables:
        parts += [
            render_rst(table, f"{table.title}. {machine_description()}"),
            rst_escape(" ".join(table.notes)),
        ]
    text = "\n\n".join([*parts, *map(rst_escape, targets)])
    with open(path, "w", encoding="utf-8") as file:
        file.write(text + "\n")


# Command line ----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the end-to-end throughput of no-op tasks with the"
        " memory and SQLite stores of Flask-BGTasks, with RQ, and with Flask-BGTasks"
        " on RQ."
    )
    add_tasks_argument(parser, 5_000)
    parser.add_argument(
        "--redis-tasks",
        type=positive_int,
        default=2_000,
        help="no-op tasks per timed run in the rows on Redis (default: %(default)s)",
    )
    add_rounds_argument(parser, one_table=True)
    parser.add_argument(
        "--rq-worker-class",
        default=RQ_WORKER_CLASS,
        metavar="CLASS",
        help="the RQ worker class of the plain RQ row (default: %(default)s)",
    )
    add_output_arguments(parser)
    one = parser.add_mutually_exclusive_group()
    one.add_argument(
        "--profile",
        choices=list(BGTASKS_SYSTEMS),
        metavar="ROW",
        help="instead of the table, run this row once as is and once under"
        " cProfile, and print where the time goes and how busy the store's writer"
        f" is; one of: {', '.join(BGTASKS_SYSTEMS)}",
    )
    cases = [*ROWS, TRIPS]
    one.add_argument(
        "--case",
        choices=cases,
        metavar="CASE",
        help="measure one case once, in this process, with --tasks tasks, and print the"
        " result as one JSON line; the full run starts one such process per row and"
        f" round, and one for the round trips; one of: {', '.join(cases)}",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="with --case and a row on Redis, the Redis to use; its database is emptied",
    )
    parser.add_argument(
        "--top",
        type=positive_int,
        default=30,
        help="with --profile, how many functions to list (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if (args.case in ON_REDIS or args.case == TRIPS) and args.redis_url is None:
        parser.error(f"--case {args.case} needs --redis-url")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case is not None:
        report(lambda: run_case(args.case, args.tasks, args.redis_url, args.rq_worker_class))
        return
    if args.profile:
        profile_system(args.profile, args.tasks, args.top)
        return
    started = time.perf_counter()
    sizes = Sizes(args.tasks, args.redis_tasks)
    timings, trips = measure(sizes, args.rounds, args.rq_worker_class)
    tables = [
        throughput_table(timings, sizes, args.rounds, args.rq_worker_class),
        trips_table(trips),
    ]
    targets = target_lines(timings, trips)
    print("\n\n".join(map(render_text, tables)))
    if args.markdown:
        print()
        print("\n\n".join(map(render_markdown, tables)))
    if args.rst:
        write_rst(args.rst, tables, targets)
        print(f"\nWrote the tables as reST to {args.rst}")
    print(f"\n{machine_description()}; took {time.perf_counter() - started:.0f} s.")
    print("\n".join(targets))


if __name__ == "__main__":
    main()
