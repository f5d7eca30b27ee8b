"""The progress page of ``examples/progress``, with its reports run by RQ
workers instead of child processes of the web server.

Run it from the repository root, with a Redis at ``REDIS_URL``
(``redis://127.0.0.1:6379/0`` if unset)::

    redis-server
    flask --app examples/rq_progress/rq_progress_app run
    flask --app examples/rq_progress/rq_progress_app bgtasks worker --processes 2

The page, its task and its routes are the progress example's own: this
module builds that app with other settings. The tasks and their records are
in Redis, so the web process and every worker, on this machine or another,
see the same reports.
"""

from __future__ import annotations

import os
import sys
import typing as t
from pathlib import Path

from flask import Flask

# The examples are not installed: the progress example's package is found
# next to this one.
_PROGRESS = str(Path(__file__).resolve().parent.parent / "progress")
if _PROGRESS not in sys.path:
    sys.path.insert(0, _PROGRESS)

import progress_app  # noqa: E402


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """The progress app, with its reports queued on RQ in the Redis at
    ``REDIS_URL`` for ``flask bgtasks worker`` to run."""
    return progress_app.create_app(
        {
            "BGTASKS_BACKEND": "rq",
            # The queues, and the records that the page and the workers share.
            "BGTASKS_STORE": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            # The reports' pool is the RQ queue 'bgtasks.reports'. The worker
            # processes are the pool, so not the progress app's process pool.
            "BGTASKS_POOLS": {"reports": {}},
            **(test_config or {}),
        }
    )
