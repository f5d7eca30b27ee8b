"""The RQ workers that run Flask-BGTasks tasks: :class:`Worker` (each task in
the worker process, the app built once) and :class:`ForkWorker` (each task
in a process forked for it, as RQ's own ``Worker`` does).

``flask bgtasks worker`` makes them with the app it loaded. RQ's own command
works too, and builds the app from ``BGTASKS_APP`` (or ``FLASK_APP``)::

    BGTASKS_APP=myapp:create_app rq worker -w flask_bgtasks.backends.rq.Worker \\
        --url redis://localhost:6379/0 bgtasks.default

Both use RQ's JSON serializer whatever they are given, and run no job but
ours (:data:`~.rq.ENTRY`): any other fails without being imported.
"""

from __future__ import annotations

import os
import typing as t

import rq
from rq.job import Job
from rq.serializers import JSONSerializer

from .._errors import UsageError
from .rq import ENTRY, run_job

if t.TYPE_CHECKING:
    from . import WorkerSide

# The app's runtime, which runs a job's message in this process: set by the
# worker.
_side: WorkerSide | None = None


def perform_job(data: str) -> None:
    """Run one job's message with this process's app."""
    side = _side
    if side is None:
        raise UsageError(
            "This RQ job is a Flask-BGTasks task, but this worker has no app: run"
            " 'flask --app APP bgtasks worker', or 'rq worker -w"
            " flask_bgtasks.backends.rq.Worker' with BGTASKS_APP set."
        )
    side.perform(data)


def _side_from_environment() -> WorkerSide:
    """For ``rq worker -w``: build the app that BGTASKS_APP names."""
    from .._engine import runtime_of
    from .._imports import load_app

    app_import = os.environ.get("BGTASKS_APP") or os.environ.get("FLASK_APP")
    if not app_import:
        raise UsageError(
            "The Flask-BGTasks RQ worker needs the app: set BGTASKS_APP (or"
            " FLASK_APP) to what 'flask --app' takes, such as 'myapp:create_app'."
        )
    return runtime_of(load_app(app_import))


class OurJobsOnly(Job):
    """A job that calls nothing but :data:`~.rq.ENTRY`: a job that names
    another function fails, and that function is never imported."""

    @property
    def func(self) -> t.Any:
        if self.func_name != ENTRY:
            raise UsageError(
                f"This worker runs Flask-BGTasks tasks only, and refused job {self.id}"
                f" that calls {self.func_name!r}. Give it a queue of its own, served"
                " by a plain RQ worker."
            )
        return run_job


class _BGTasksWorker:
    """What both workers add to RQ's: the app, JSON, our jobs only, and a
    flag that says whether it stopped because it was asked to."""

    def __init__(
        self,
        queues: t.Any,
        *args: t.Any,
        side: WorkerSide | None = None,
        **kwargs: t.Any,
    ) -> None:
        global _side
        kwargs["serializer"] = JSONSerializer
        kwargs["job_class"] = OurJobsOnly
        super().__init__(queues, *args, **kwargs)  # type: ignore[call-arg]
        _side = side or _side or _side_from_environment()
        #: Set when a signal asked it to stop.
        self.stopping = False

    def subscribe(self) -> None:
        # As RQ's, but the thread that listens for commands wakes every
        # second rather than every 60: with redis-py 8.2, stopping it waits
        # for it to wake, so a worker took up to a minute to exit.
        self.pubsub = self.connection.pubsub()  # type: ignore[attr-defined]
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})  # type: ignore[attr-defined]
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=1,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,  # type: ignore[attr-defined]
        )

    def request_force_stop(self, signum: int, frame: object) -> None:
        # A second SIGTERM or Ctrl-C: RQ raises SystemExit inside the running
        # task. The task is ended first, as at a shutdown deadline: a durable
        # one is released, to run again on another worker, rather than fail
        # with SystemExit.
        try:
            super().request_force_stop(signum, frame)  # type: ignore[misc]
        except SystemExit:
            if _side is not None:
                _side.interrupt()
            raise

    def request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        super().request_stop(signum, frame)  # type: ignore[misc]


class Worker(_BGTasksWorker, rq.SimpleWorker):
    """Runs each task in this process: the fastest, and the app is built
    once. A task can be asked to stop (``cancel()``), not killed.

    .. versionadded:: 0.1
    """


class ForkWorker(_BGTasksWorker, rq.Worker):
    """Runs each task in a process forked for it, as RQ's ``Worker`` does:
    slower per task, but a task that crashes or leaks takes only its own
    process down, and ``cancel(force=True)`` kills that process.

    .. versionadded:: 0.1
    """

    def monitor_work_horse(self, job: Job, queue: rq.Queue, execution: t.Any) -> None:
        pid = self.horse_pid
        super().monitor_work_horse(job, queue, execution)
        # A process killed (by cancel(force=True), a crash, RQ's hard time
        # limit) left its task unfinished: its record is dealt with now, as
        # the task of a dead process, rather than when its lease ends.
        if _side is not None and job.func_name == ENTRY and job.args:
            _side.abandoned(str(job.args[0]), pid)
