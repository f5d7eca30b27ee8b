"""How many no-op tasks per second get from submitted to finished, per store,
next to RQ.

Four systems run the same number of no-op tasks:

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
  ``rq worker`` process with ``--worker-class rq.SimpleWorker``, which runs each job in the worker
  process; the default ``rq.Worker`` forks a process per job and is several
  times slower (compare with ``--rq-worker-class rq.Worker``). Jobs are
  enqueued one by one with ``Queue.enqueue``. The one worker takes them in
  order, so all are finished when the last one's result is in, which a
  blocking read of its result stream tells without polling; then the
  finished-job registry is checked to hold every job. Skipped, with a note,
  if ``redis-server`` or ``rq`` is not installed.

Every timed run happens in a fresh Python process of its own, started by
this script as ``python benchmarks/throughput.py --case ROW``, which prints
its result as one JSON line. Timed one after another in one process, the
rows disturbed each other: the heap, the garbage, the threads and the
SQLite connections that earlier runs left behind made even the memory store
vary by 35% from one run to the next (10.7 against 14.5 us per task). A
fresh process gives every row the same start: the same modules imported
(the SQLite store, and ``rq`` and ``redis`` if installed, whichever row
runs), an empty heap, no other threads, and for the SQLite rows a new file.
A process that fails, or gives no result within :data:`CASE_TIMEOUT`
seconds, makes its row ``n/a`` with the error, and the run goes on.

In its process each row gets a new app and store (RQ: an emptied Redis
database and a new worker process), warmed up first: all its workers have
started and run a task, its database is open. The clock runs from the first
submit until the last task has finished. ``redis-server`` is started once,
by this script, for the whole run. Each round starts one process per row,
one process at a time, in an order rotated from round to round; the table
shows the median over the rounds as tasks per second, microseconds per
task, and the cost per task as a multiple of the memory store's.

The systems do not use the same resources: Flask-BGTasks runs its tasks on
threads of the submitting process, where the GIL lets one thread run Python
at a time, while RQ spreads the work over three processes (the submitting
one, the worker and Redis), which can use two cores at once.

The last lines compare the SQLite store with the goals of the issue: it
costs at most 5x the memory store per task, and durable tasks run at least
5,000 tasks per second.

With ``--profile sqlite`` (or another Flask-BGTasks row) the script prints,
instead of the table, how often and how long the SQLite store's writer held
its connection (the lock that each batch of writes holds while it runs and
commits, ``Writer._db_lock``) and how often that made a thread wait, in one
plain run of that row; then where the time goes in a second run with every
thread under :mod:`cProfile`. Both runs happen in this process.

Run it from the project root::

    pip install -e '.[benchmarks]'
    apt-get install redis-server      # for the RQ row
    python benchmarks/throughput.py
    python benchmarks/throughput.py --rst docs/_throughput_table.rst
    python benchmarks/throughput.py --profile sqlite

The defaults take two to three minutes on a 2-core machine, most of it RQ.
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
    ratio,
    render_markdown,
    render_rst,
    render_text,
    rst_escape,
)
from flask import Flask

from flask_bgtasks import BGTasks

if t.TYPE_CHECKING:
    from rq import Queue
    from rq.job import Job

    from flask_bgtasks import TaskResult
    from flask_bgtasks.stores import TaskStore

#: Worker threads of every Flask-BGTasks app.
WORKERS = 4
#: Seconds to wait for a pool's workers, or for Redis or an RQ worker, to start.
START_TIMEOUT = 30.0
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
#: The row every ratio is taken against.
BASELINE = "memory"
#: Imported by every measuring process, whichever row it runs, so that all
#: start with the same modules; those not installed are left out.
PRELOADED = ("sqlite3", "flask_bgtasks.stores.sqlite", "redis", "rq", "rq.job", "rq.results")

#: This folder: the RQ worker imports its job from here.
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
RQ_QUEUE = "throughput"
#: Enqueued by name, so that only the worker imports it.
RQ_JOB = "_rq_jobs.noop"
RQ_WORKER_CLASS = "rq.SimpleWorker"


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
        worker = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
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
            stop(worker)
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


#: The rows, in their order in the table: key (for ``--case`` and
#: ``--profile``) and label.
LABELS = {
    "memory": "Flask-BGTasks, memory store",
    "sqlite": "Flask-BGTasks, SQLite store",
    "sqlite-durable": "Flask-BGTasks, SQLite, durable",
    "rq": "RQ, Redis, 1 worker process",
}
ROWS = list(LABELS)
BGTASKS_SYSTEMS: dict[str, SystemFactory] = {
    "memory": functools.partial(flask_bgtasks, "memory"),
    "sqlite": functools.partial(flask_bgtasks, "sqlite"),
    "sqlite-durable": functools.partial(flask_bgtasks, "sqlite", durable=True),
}


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


def run_case(row: str, tasks: int, redis_url: str | None, rq_worker_class: str) -> dict[str, float]:
    """Time one row once, in this process: its microseconds per task."""
    preload()
    if row == "rq":
        if redis_url is None:
            raise ValueError("The RQ row needs the URL of a running Redis (--redis-url).")
        factory: SystemFactory = functools.partial(rq_worker, redis_url, rq_worker_class)
    else:
        factory = BGTASKS_SYSTEMS[row]
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


def measure(tasks: int, rounds: int, rq_worker_class: str) -> dict[str, Samples]:
    """The microseconds per task of every row in every round, each in a fresh
    process, one process at a time. A row that failed once is not run again."""
    with contextlib.ExitStack() as stack:
        failed: dict[str, str] = {}
        redis_url: str | None = None
        try:
            redis_url = start_redis(stack)
        except MeasurementFailed as exc:
            failed["rq"] = str(exc)

        def measure_row(key: str) -> dict[str, float]:
            options = ["--case", key, "--tasks", str(tasks)]
            if key == "rq" and redis_url is not None:
                options += ["--redis-url", redis_url, "--rq-worker-class", rq_worker_class]
            return SCRIPT.measure(options, ["us_per_task"])

        return measure_rounds(ROWS, rounds, measure_row, failed)


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
    timings: dict[str, Samples], tasks: int, rounds: int, rq_worker_class: str
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
            f"Throughput: {tasks:,} no-op tasks from the first submit until all"
            f" finished, median of {rounds} rounds"
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
            "x memory: the cost per task as a multiple of the memory store's.",
        ],
    )


def target_lines(timings: dict[str, Samples]) -> list[str]:
    """One line per goal of the issue, each about the row it names."""
    cost = ratio(
        timings[TARGET_RATIO_ROW].median("us_per_task"), timings[BASELINE].median("us_per_task")
    )
    durable = rate(timings[TARGET_DURABLE_ROW].median("us_per_task"))
    durable_text = "n/a" if durable is None else f"{format_number(durable, 0)} tasks/s"
    return [
        target_line(
            f"the SQLite store costs <= {TARGET_RATIO:g}x the memory store per task",
            {TARGET_RATIO_ROW: (cost, format_ratio(cost))},
            lambda value: value <= TARGET_RATIO,
        ),
        target_line(
            f"durable tasks run >= {TARGET_DURABLE_RATE:,.0f} no-op tasks/s",
            {TARGET_DURABLE_ROW: (durable, durable_text)},
            lambda value: value >= TARGET_DURABLE_RATE,
        ),
    ]


def target_line(
    goal: str, values: dict[str, tuple[float | None, str]], met: t.Callable[[float], bool]
) -> str:
    verdicts = {key: value is not None and met(value) for key, (value, _) in values.items()}
    if all(verdicts.values()):
        overall = "MET"
    elif any(verdicts.values()):
        overall = "PARTLY MET"
    else:
        overall = "NOT MET"
    details = "; ".join(
        f"{LABELS[key].removeprefix('Flask-BGTasks, ')}: {text},"
        f" {'met' if verdicts[key] else 'not met'}"
        for key, (_, text) in values.items()
    )
    return f"Target: {goal}: {overall} ({details})"


def write_rst(path: str, table: Table, targets: list[str]) -> None:
    text = "\n\n".join(
        [
            render_rst(table, f"{table.title}. {machine_description()}"),
            rst_escape(" ".join(table.notes)),
            *map(rst_escape, targets),
        ]
    )
    with open(path, "w", encoding="utf-8") as file:
        file.write(text + "\n")


# Command line ----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the end-to-end throughput of no-op tasks with the"
        " memory and SQLite stores of Flask-BGTasks, and with RQ."
    )
    add_tasks_argument(parser, 5_000)
    add_rounds_argument(parser, one_table=True)
    parser.add_argument(
        "--rq-worker-class",
        default=RQ_WORKER_CLASS,
        metavar="CLASS",
        help="the RQ worker class (default: %(default)s)",
    )
    add_output_arguments(parser, one_table=True)
    one = parser.add_mutually_exclusive_group()
    one.add_argument(
        "--profile",
        choices=list(BGTASKS_SYSTEMS),
        metavar="ROW",
        help="instead of the table, run this row once as is and once under"
        " cProfile, and print where the time goes and how busy the store's writer"
        f" is; one of: {', '.join(BGTASKS_SYSTEMS)}",
    )
    one.add_argument(
        "--case",
        choices=ROWS,
        metavar="ROW",
        help="time one row once, in this process, with --tasks tasks, and print the"
        " result as one JSON line; the full run starts one such process per row and"
        f" round; one of: {', '.join(ROWS)}",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="with --case rq, the Redis to use; its database is emptied",
    )
    parser.add_argument(
        "--top",
        type=positive_int,
        default=30,
        help="with --profile, how many functions to list (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.case == "rq" and args.redis_url is None:
        parser.error("--case rq needs --redis-url")
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
    timings = measure(args.tasks, args.rounds, args.rq_worker_class)
    table = throughput_table(timings, args.tasks, args.rounds, args.rq_worker_class)
    targets = target_lines(timings)
    print(render_text(table))
    if args.markdown:
        print()
        print(render_markdown(table))
    if args.rst:
        write_rst(args.rst, table, targets)
        print(f"\nWrote the table as reST to {args.rst}")
    print(f"\n{machine_description()}; took {time.perf_counter() - started:.0f} s.")
    print("\n".join(targets))


if __name__ == "__main__":
    main()
