"""``flask bgtasks worker``: run the engine's workers (RQ) for the app's pools.

The app is loaded as for any ``flask`` command (``--app``, factories work),
once; with ``--processes N`` the command forks N workers from it, replaces
one that dies, and passes on SIGTERM and Ctrl-C, so that each finishes its
running task and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
import typing as t

import click
from flask.cli import ScriptInfo

from ._engine import runtime_of
from ._errors import UsageError


@click.command("worker")
@click.option(
    "--pool",
    "pools",
    multiple=True,
    metavar="NAME",
    help="A pool whose tasks to run; repeat for several. Default: every pool of the app.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="How many worker processes to run.",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option(
    "--fork",
    is_flag=True,
    help="Run each task in a process forked for it (RQ's Worker) rather than in the worker.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Log warnings and errors only, not a line for each task's steps.",
)
@click.pass_context
def worker_command(
    ctx: click.Context,
    pools: tuple[str, ...],
    processes: int,
    burst: bool,
    fork: bool,
    quiet: bool,
) -> None:
    """Run workers of the engine backend (BGTASKS_BACKEND = 'rq') for the
    app's task pools. Stop them with SIGTERM or Ctrl-C: each finishes its
    running task first."""
    app = ctx.ensure_object(ScriptInfo).load_app()
    runtime = runtime_of(app)
    if runtime.config.eager:
        raise click.ClickException(
            f"The app {app.name!r} runs every task inside submit (BGTASKS_EAGER),"
            " so it needs no worker. Turn BGTASKS_EAGER off to run tasks on workers."
        )
    if not runtime.remote:
        raise click.ClickException(
            f"The app {app.name!r} runs its tasks in its own processes"
            f" (BGTASKS_BACKEND = {runtime.config.backend!r}), so it needs no"
            " worker. Set BGTASKS_BACKEND = 'rq' to run tasks on workers."
        )
    chosen = list(pools) or sorted(runtime.config.pools)
    unknown = sorted(set(chosen) - set(runtime.config.pools))
    if unknown:
        raise click.BadParameter(
            f"The app has no pool named {unknown[0]!r}; its pools are:"
            f" {', '.join(sorted(runtime.config.pools))}.",
            param_hint="--pool",
        )
    if not logging.getLogger().handlers:
        level = logging.WARNING if quiet else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")

    def work() -> None:
        try:
            runtime.backend.work(chosen, burst=burst, fork=fork, quiet=quiet)
        except UsageError as exc:
            raise click.ClickException(str(exc)) from None

    if processes == 1:
        work()
        return
    sys.exit(_supervise(work, processes))


#: A worker process that dies sooner than this after it started is not
#: replaced: it could not start, and would not start again either.
STARTUP_SECONDS = 1.0


def _supervise(work: t.Callable[[], None], processes: int) -> int:
    """Fork ``processes`` workers and keep that many running: one that dies
    (killed, or ended by an error) is replaced, unless it died in its first
    :data:`STARTUP_SECONDS`. SIGTERM and SIGINT are passed on, and from then
    on none is replaced. Wait for all; the exit code is the first non-zero
    one of those that were not replaced."""
    logger = logging.getLogger("flask_bgtasks")
    children: dict[int, float] = {}  # pid: when it started
    stopping = False

    def start() -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - measured in the child
            # Not the supervisor's handlers, which would signal the siblings.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _die_with_parent()
            code = 0
            try:
                work()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                logger.exception("The worker failed.")
                code = 1
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def pass_on(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    for _ in range(processes):
        start()
    result = 0
    while children:
        pid, status = os.wait()
        lasted = time.monotonic() - children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if code == 0 or stopping:
            result = result or max(code, 0)
        elif lasted < STARTUP_SECONDS:
            logger.error(
                "Worker process %d %s as it started; not starting another.", pid, _ended(code)
            )
            result = result or max(code, 1)
        else:
            logger.warning("Worker process %d %s; starting another.", pid, _ended(code))
            start()
    return result


def _ended(code: int) -> str:
    """How a process ended, from its exit code (negative: the signal)."""
    if code >= 0:
        return f"exited with {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"was killed by signal {-code}"


def _die_with_parent() -> None:
    # On Linux, the kernel ends a worker when the command that forked it
    # dies, even by kill -9: no worker outlives its supervisor.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
