"""A small app that builds reports in the background with Flask-BGTasks.

Run it from the repository root with::

    flask --app examples/reports/reports_app run
"""

from __future__ import annotations

import typing as t

from flask import Flask

from .extensions import bg
from .views import bp


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        # The default pool, for tasks that name no pool.
        BGTASKS_MAX_WORKERS=2,
        # Reports are heavy: one at a time, at most 20 waiting.
        BGTASKS_POOLS={"reports": {"max_workers": 1, "queue_size": 20}},
        # How long each simulated step of a report takes.
        REPORT_STEP_SECONDS=0.5,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    bg.init_app(app)
    app.register_blueprint(bp)
    return app
