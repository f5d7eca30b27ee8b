from __future__ import annotations

import sys
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

# The example is not installed, and pytest runs with --import-mode=importlib,
# which does not add rootdirs to sys.path: put examples/reports there.
sys.path.insert(0, str(Path(__file__).parents[1]))

from reports_app import create_app  # noqa: E402
from reports_app.extensions import bg  # noqa: E402


@pytest.fixture
def app() -> t.Iterator[Flask]:
    app = create_app({"TESTING": True, "REPORT_STEP_SECONDS": 0})
    yield app
    # Stop the worker threads, so no test leaves one behind.
    bg.shutdown()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
