"""What a pool of child processes buys and costs, next to a pool of threads.

The app (``_cpu_app.py``, beside this script) has two pools of the same
size, and declares the same plain functions on both:

* ``cpu``: ``{"kind": "process", "max_workers": 2}``, two child processes,
  each of which builds the app again from ``BGTASKS_APP =
  "_cpu_app:create_app()"`` (forkserver on Linux);
* ``threads``: ``{"max_workers": 2}``, two worker threads of the submitting
  process.

Three things are measured:

CPU-bound tasks
    ``--cpu-tasks`` tasks (8 by default) that each sum ``i * i`` in a pure
    Python loop, which holds the GIL throughout. On threads they run one
    at a time whatever the number of threads; on two processes, two at a
    time. The loop count is set once per run, before the rounds, so that
    one task takes about ``--task-seconds`` alone in this process. The
    clock runs from the first submit until the last result is in, on a
    warmed-up pool: every worker has started (every child has built the
    app and said which process it is) and run a task. The speed-up is the
    thread pool's wall time over the process pool's; it can't pass 2.0x
    with two workers, nor the number of CPUs.

No-op tasks per second
    ``--tasks`` no-op tasks (5,000 by default) submitted one after another,
    then every result waited for, on a warmed-up pool: what a task costs
    when it does nothing. A task on a process pool is pickled to its child
    over a pipe, and the child asks the parent whether it may start and
    reports its end over the same pipe, while the parent's worker thread
    applies what it says to the task's handle.

The first task on a cold process pool
    From the first submit until that task's result is in, in a process
    that has built the app but started no child and no fork server: what
    the first request that uses a process pool waits. It covers starting
    the fork server (a new Python that imports this script's modules),
    forking the child, building the app in it, and one task.

Every measurement runs in a fresh Python process of its own, started by
this script as ``python processes.py --case CASE`` with this folder as its
current folder (which puts ``_cpu_app`` on the children's ``sys.path``),
and prints its result as one JSON line. A fresh process gives every case
the same start: no pool, no child, no fork server left by an earlier case.
A process that fails, or gives no result within :data:`CASE_TIMEOUT`
seconds, makes its case ``n/a`` with the error, and the run goes on. Each
round starts one process per case, one process at a time, in an order
rotated from round to round; the tables show the medians over the rounds.

The last lines compare the process pool with the goals of the issue: the
CPU-bound tasks run at least 1.7x faster on two processes than on two
threads, two children run at least 5,000 no-op tasks per second, and the
first task on a cold pool has its result within 1 s.

Run it from the project root::

    pip install -e '.[benchmarks]'
    python benchmarks/processes.py
    python benchmarks/processes.py --rst docs/_processes_table.rst

The defaults take under a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import time
import typing as t

import _cpu_app
from _fresh import Samples, Script, measure_rounds, report
from _tables import (
    Row,
    Table,
    add_output_arguments,
    add_rounds_argument,
    add_tasks_argument,
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

if t.TYPE_CHECKING:
    from flask_bgtasks import Task, TaskResult

#: This folder: the current folder of the measuring processes, from which
#: their children import ``_cpu_app``.
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
#: Seconds to wait for a pool's workers to start, or for one task's result.
START_TIMEOUT = 60.0
#: Seconds that one timed run may take before it counts as hung.
RUN_TIMEOUT = 300.0
#: Seconds a measuring process may take before its case is given up as n/a:
#: more than :data:`RUN_TIMEOUT`, so that a hung run reports itself first.
CASE_TIMEOUT = 400.0
#: Seconds each warm-up task holds its worker, so that the next one goes to
#: another worker.
WARM_UP_HOLD = 0.05
#: Warm-up batches to try before giving up on seeing every child.
WARM_UP_TRIES = 50
#: The goals from the issue.
TARGET_SPEEDUP = 1.7
TARGET_RATE = 5_000.0
TARGET_COLD_SECONDS = 1.0

WORKERS = _cpu_app.POOL_WORKERS
PROCESS = "process"
THREADS = "threads"
POOL_LABELS = {
    PROCESS: f"process pool, {WORKERS} children",
    THREADS: f"thread pool, {WORKERS} threads",
}

#: The cases, each timed in a fresh process per round.
CPU_CASES = {PROCESS: "cpu-process", THREADS: "cpu-threads"}
NOOP_CASES = {PROCESS: "noop-process", THREADS: "noop-threads"}
COLD_CASE = "cold-start"
ALL_CASES = [*CPU_CASES.values(), *NOOP_CASES.values(), COLD_CASE]


@dataclasses.dataclass(frozen=True)
class Tasks:
    """One pool's tasks, as the cases use them."""

    burn: Task[[int], int]
    noop: Task[[], None]
    pid_after: Task[[float], int]


TASKS = {
    PROCESS: Tasks(_cpu_app.burn_in_process, _cpu_app.noop_in_process, _cpu_app.pid_in_process),
    THREADS: Tasks(_cpu_app.burn_in_thread, _cpu_app.noop_in_thread, _cpu_app.pid_in_thread),
}


# Running tasks ---------------------------------------------------------------


def wait_all(results: t.Iterable[TaskResult[t.Any]], timeout: float = RUN_TIMEOUT) -> None:
    """Wait for each result in order; raise what a task raised."""
    deadline = time.monotonic() + timeout
    for result in results:
        result.result(max(0.0, deadline - time.monotonic()))


def warm_up(pool: str) -> None:
    """Start every worker of the pool (on a process pool, every child has
    built the app), then run one no-op task, so its code path is warm.

    Each batch holds :data:`WORKERS` workers at once for a moment, so each
    of its tasks goes to a worker of its own; on a process pool, batches
    run until as many different processes have answered.

    :raises RuntimeError: If the children did not all answer.
    """
    tasks = TASKS[pool]
    pids: set[int] = set()
    for _ in range(WARM_UP_TRIES):
        batch = [tasks.pid_after.submit(WARM_UP_HOLD) for _ in range(WORKERS)]
        pids.update(result.result(START_TIMEOUT) for result in batch)
        if pool == THREADS or len(pids) >= WORKERS:
            break
    else:
        raise RuntimeError(
            f"Only {len(pids)} of the {WORKERS} child processes ran a warm-up task"
            f" in {WARM_UP_TRIES} tries."
        )
    if pool == PROCESS and os.getpid() in pids:
        raise RuntimeError("A task of the process pool ran in the submitting process.")
    tasks.noop.submit().result(START_TIMEOUT)


def time_cpu(pool: str, tasks: int, loops: int) -> float:
    """Seconds for ``tasks`` CPU-bound tasks on a warmed-up pool."""
    burn = TASKS[pool].burn
    warm_up(pool)
    gc.collect()
    start = time.perf_counter()
    wait_all([burn.submit(loops) for _ in range(tasks)])
    return time.perf_counter() - start


def time_noop(pool: str, tasks: int) -> float:
    """Seconds for ``tasks`` no-op tasks on a warmed-up pool."""
    noop = TASKS[pool].noop
    warm_up(pool)
    gc.collect()
    start = time.perf_counter()
    results = [noop.submit() for _ in range(tasks)]
    wait_all(results)
    return time.perf_counter() - start


def time_cold_start() -> float:
    """Seconds from the first submit to a process pool with no child yet
    until that task's result is in."""
    gc.collect()
    start = time.perf_counter()
    _cpu_app.noop_in_process.submit().result(START_TIMEOUT)
    return time.perf_counter() - start


# The measuring process -------------------------------------------------------


def time_case(case: str, tasks: int, cpu_tasks: int, loops: int) -> float:
    """Time one case once, in this process, on a new app."""
    app = _cpu_app.create_app()
    try:
        with app.app_context():
            if case == COLD_CASE:
                return time_cold_start()
            for pool, name in CPU_CASES.items():
                if case == name:
                    return time_cpu(pool, cpu_tasks, loops)
            for pool, name in NOOP_CASES.items():
                if case == name:
                    return time_noop(pool, tasks)
            raise ValueError(f"Unknown case {case!r}; choose from {ALL_CASES}.")
    finally:
        _cpu_app.bg.shutdown(wait=True, timeout=30)


def run_case(case: str, tasks: int, cpu_tasks: int, loops: int) -> dict[str, float]:
    return {"seconds": time_case(case, tasks, cpu_tasks, loops)}


# Starting the measuring processes --------------------------------------------

#: This script, as it runs again to time one case: in this folder, from
#: which the measuring process's children import ``_cpu_app``.
SCRIPT = Script(os.path.abspath(__file__), CASE_TIMEOUT, cwd=BENCHMARKS)


def measure(tasks: int, cpu_tasks: int, loops: int, rounds: int) -> dict[str, Samples]:
    """The seconds of every case in every round, each in a fresh process, one
    process at a time. A case that failed once is not run again."""

    def measure_case(case: str) -> dict[str, float]:
        options = ["--case", case, "--tasks", str(tasks)]
        options += ["--cpu-tasks", str(cpu_tasks), "--loops", str(loops)]
        return SCRIPT.measure(options, ["seconds"])

    return measure_rounds(ALL_CASES, rounds, measure_case)


def calibrate(task_seconds: float) -> tuple[int, float]:
    """The loop count for which one CPU-bound task takes about
    ``task_seconds`` in this process, and the seconds it took."""
    probe = 200_000
    _cpu_app.burn(probe)  # warm
    fastest = min(timed_burn(probe) for _ in range(3))
    loops = max(1_000, int(round(task_seconds / fastest * probe, -3)))
    return loops, min(timed_burn(loops) for _ in range(3))


def timed_burn(loops: int) -> float:
    start = time.perf_counter()
    _cpu_app.burn(loops)
    return time.perf_counter() - start


# Tables ----------------------------------------------------------------------


def rate(tasks: int, seconds: float | None) -> float | None:
    """Tasks per second."""
    return None if not seconds else tasks / seconds


def speedup(timings: dict[str, Samples]) -> float | None:
    """The thread pool's wall time over the process pool's."""
    return ratio(
        timings[CPU_CASES[THREADS]].median("seconds"),
        timings[CPU_CASES[PROCESS]].median("seconds"),
    )


def cpu_table(
    timings: dict[str, Samples], cpu_tasks: int, loops: int, alone: float, rounds: int
) -> Table:
    baseline = timings[CPU_CASES[THREADS]].median("seconds")
    rows = []
    for pool, case in CPU_CASES.items():
        record = timings[case]
        seconds = record.median("seconds")
        values = [
            format_number(seconds, 2),
            format_number(rate(cpu_tasks, seconds), 2),
            format_ratio(ratio(baseline, seconds)),
        ]
        rows.append(Row([POOL_LABELS[pool]], values, record.error))
    return Table(
        title=(
            f"CPU-bound tasks: {cpu_tasks} tasks of {alone:.2f} s each, from the first"
            f" submit until all results are in, median of {rounds} rounds"
        ),
        header=["Pool", "wall s", "tasks/s", "speed-up"],
        rows=rows,
        notes=[
            (
                f"Each task sums i * i for i below {loops:,} in pure Python: {alone:.3f} s"
                f" alone in the process that started the run, {cpu_tasks * alone:.2f} s"
                f" for all {cpu_tasks} one after another."
            ),
            (
                "speed-up: the thread pool's wall time over this pool's. Above 2.0x"
                " is noise: the same task's time varies by some 10% from one process"
                " to the next on a busy machine."
            ),
        ],
    )


def noop_table(timings: dict[str, Samples], tasks: int, rounds: int) -> Table:
    baseline = timings[NOOP_CASES[THREADS]].median("seconds")
    rows = []
    for pool, case in NOOP_CASES.items():
        record = timings[case]
        seconds = record.median("seconds")
        values = [
            format_number(rate(tasks, seconds), 0),
            format_number(None if seconds is None else seconds / tasks * 1e6),
            format_ratio(ratio(seconds, baseline)),
        ]
        rows.append(Row([POOL_LABELS[pool]], values, record.error))
    return Table(
        title=(f"No-op tasks: {tasks:,} submitted, then all waited for, median of {rounds} rounds"),
        header=["Pool", "tasks/s", "us/task", "x threads"],
        rows=rows,
        notes=["x threads: the cost per task as a multiple of the thread pool's."],
    )


def cold_table(timings: dict[str, Samples], rounds: int) -> Table:
    record = timings[COLD_CASE]
    seconds = sorted(record.values("seconds"))
    values = [
        format_number(record.median("seconds"), 3),
        format_number(seconds[0] if seconds else None, 3),
        format_number(seconds[-1] if seconds else None, 3),
    ]
    return Table(
        title=(
            f"The first task on a cold process pool: from its submit until its result"
            f" is in, {rounds} rounds"
        ),
        header=["Pool", "median s", "best s", "worst s"],
        rows=[Row([POOL_LABELS[PROCESS]], values, record.error)],
        notes=[
            (
                "No child and no fork server yet: the time covers starting the fork"
                " server, forking the child, building the app in it and one no-op task."
            )
        ],
    )


def common_notes() -> list[str]:
    return [
        (
            "Each case of each round in a fresh Python process, one at a time, in an"
            " order rotated from round to round. The pools are warmed up first: every"
            " thread and child started, except for the cold start."
        )
    ]


def target_lines(timings: dict[str, Samples], tasks: int) -> list[str]:
    """One line per goal of the issue."""
    limit = min(WORKERS, os.cpu_count() or 1)
    value = speedup(timings)
    noop_rate = rate(tasks, timings[NOOP_CASES[PROCESS]].median("seconds"))
    cold = timings[COLD_CASE].median("seconds")
    worst = max(timings[COLD_CASE].values("seconds"), default=None)
    return [
        target_line(
            f"CPU-bound tasks run >= {TARGET_SPEEDUP:.1f}x faster on {WORKERS} processes"
            f" than on {WORKERS} threads ({limit:.1f}x at most here)",
            format_ratio(value),
            value is not None and value >= TARGET_SPEEDUP,
        ),
        target_line(
            f"a process pool of {WORKERS} children runs >= {TARGET_RATE:,.0f} no-op tasks/s",
            "n/a" if noop_rate is None else f"{format_number(noop_rate, 0)} tasks/s",
            noop_rate is not None and noop_rate >= TARGET_RATE,
        ),
        target_line(
            f"the first task on a cold process pool has its result within"
            f" {TARGET_COLD_SECONDS:g} s",
            "n/a" if cold is None else f"{cold:.3f} s (median; worst {worst:.3f} s)",
            cold is not None and cold <= TARGET_COLD_SECONDS,
        ),
    ]


def load_average() -> str:
    """The 1-minute load average, or ``n/a`` where there is none: a load
    near the number of CPUs means the run shared them with other work."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "n/a"


def target_line(goal: str, measured: str, met: bool) -> str:
    return f"Target: {goal}: {measured}, {'MET' if met else 'NOT MET'}"


def write_rst(path: str, tables: list[Table], targets: list[str]) -> None:
    machine = machine_description()
    parts = []
    for table in tables:
        parts.append(render_rst(table, f"{table.title}. {machine}"))
        if table.notes:
            parts.append(rst_escape(" ".join(table.notes)))
    parts += [rst_escape(" ".join(common_notes())), *map(rst_escape, targets)]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n\n".join(parts) + "\n")


# Command line ----------------------------------------------------------------


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure a process pool of Flask-BGTasks against a thread pool:"
        " CPU-bound tasks, no-op tasks per second, and the first task on a cold pool."
    )
    add_tasks_argument(parser, 5_000)
    parser.add_argument(
        "--cpu-tasks",
        type=positive_int,
        default=8,
        help="CPU-bound tasks per timed run (default: %(default)s)",
    )
    parser.add_argument(
        "--task-seconds",
        type=positive_float,
        default=0.3,
        help="about how long one CPU-bound task takes alone (default: %(default)s)",
    )
    add_rounds_argument(parser)
    add_output_arguments(parser)
    parser.add_argument(
        "--case",
        choices=ALL_CASES,
        metavar="CASE",
        help="time one case once, in this process, and print the result as one JSON"
        " line; the full run starts one such process per case and round; one of:"
        f" {', '.join(ALL_CASES)}",
    )
    parser.add_argument(
        "--loops",
        type=positive_int,
        help="with --case, the loop count of a CPU-bound task; the full run sets it"
        " from --task-seconds",
    )
    args = parser.parse_args(argv)
    if args.case in CPU_CASES.values() and args.loops is None:
        parser.error(f"--case {args.case} needs --loops")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case is not None:
        report(lambda: run_case(args.case, args.tasks, args.cpu_tasks, args.loops or 1))
        return
    started = time.perf_counter()
    load_before = load_average()
    loops, alone = calibrate(args.task_seconds)
    progress(f"a CPU-bound task: {loops:,} loops, {alone:.3f} s alone")
    timings = measure(args.tasks, args.cpu_tasks, loops, args.rounds)
    tables = [
        cpu_table(timings, args.cpu_tasks, loops, alone, args.rounds),
        noop_table(timings, args.tasks, args.rounds),
        cold_table(timings, args.rounds),
    ]
    targets = target_lines(timings, args.tasks)
    print("\n\n".join(render_text(table) for table in tables))
    print()
    print("\n".join(common_notes()))
    if args.markdown:
        print()
        print("\n\n".join(render_markdown(table) for table in tables))
    if args.rst:
        write_rst(args.rst, tables, targets)
        print(f"\nWrote the tables as reST to {args.rst}")
    print(f"\n{machine_description()}; took {time.perf_counter() - started:.0f} s.")
    print(f"Load average (1 min): {load_before} before the run, {load_average()} after.")
    print("\n".join(targets))


if __name__ == "__main__":
    main()
