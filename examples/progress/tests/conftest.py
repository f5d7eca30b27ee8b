from __future__ import annotations

import sys
import typing as t
from pathlib import Path

import pytest
from flask import Flask

# The example is not installed, and pytest runs with --import-mode=importlib,
# which does not add rootdirs to sys.path: put examples/progress there.
sys.path.insert(0, str(Path(__file__).parents[1]))

from progress_app import bg, create_app  # noqa: E402


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Flask]:
    # The report's child process builds the app again, without this test's
    # config: the environment tells it where the store is.
    monkeypatch.setenv("FLASK_BGTASKS_STORE", "sqlite:///" + str(tmp_path / "progress.db"))
    app = create_app(
        {
            "TESTING": True,
            "BGTASKS_STORE": "sqlite:///" + str(tmp_path / "progress.db"),
            "PAGES": 3,
            "STEP_SECONDS": 0.01,
        }
    )
    yield app
    bg.shutdown()  # stop the worker threads, so no test leaves one behind
