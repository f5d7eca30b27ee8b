"""The job that ``throughput.py`` gives RQ.

A module of its own, because the RQ worker is another process: it imports
the job by name (``_rq_jobs.noop``), with this folder on its ``--path``.
"""

from __future__ import annotations


def noop() -> None:
    """The job: does nothing, so all that is measured is the queue."""
