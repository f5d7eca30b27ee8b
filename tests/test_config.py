from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_bgtasks import BGTasks, BGTasksError, ConfigError, ConfigTypeError


def init(**config: t.Any) -> Flask:
    app = Flask("config_test")
    app.config.update(config)
    BGTasks(app)
    return app


def test_defaults_are_set_in_config() -> None:
    app = init()
    assert app.config["BGTASKS_QUEUE_SIZE"] == 1000
    assert app.config["BGTASKS_POOLS"] == {}
    assert app.config["BGTASKS_RESULT_TTL"] == 3600
    assert app.config["BGTASKS_MAX_RESULTS"] == 10_000
    assert app.config["BGTASKS_EAGER"] is False
    assert app.config["BGTASKS_SHUTDOWN_TIMEOUT"] == 20.0
    assert app.config["BGTASKS_SHUTDOWN_QUEUED"] == "run"
    assert isinstance(app.config["BGTASKS_MAX_WORKERS"], int)
    assert app.config["BGTASKS_MAX_WORKERS"] >= 1


def test_valid_values_are_accepted() -> None:
    init(
        BGTASKS_MAX_WORKERS=1,
        BGTASKS_QUEUE_SIZE=None,
        BGTASKS_POOLS={"reports": {"max_workers": 1}, "mail": {"queue_size": None}},
        BGTASKS_RESULT_TTL=0.5,
        BGTASKS_MAX_RESULTS=0,
        BGTASKS_EAGER=True,
        BGTASKS_SHUTDOWN_TIMEOUT=0,
        BGTASKS_SHUTDOWN_QUEUED="cancel",
    )


@pytest.mark.parametrize(
    ("key", "value", "error", "words"),
    [
        ("BGTASKS_MAX_WORKERS", "4", ConfigTypeError, "whole number of at least 1"),
        ("BGTASKS_MAX_WORKERS", True, ConfigTypeError, "got True (bool)"),
        ("BGTASKS_MAX_WORKERS", 2.0, ConfigTypeError, "whole number"),
        ("BGTASKS_MAX_WORKERS", 0, ConfigError, "at least 1; got 0"),
        ("BGTASKS_MAX_WORKERS", None, ConfigTypeError, "whole number"),
        ("BGTASKS_QUEUE_SIZE", -1, ConfigError, "or None for no limit; got -1"),
        ("BGTASKS_QUEUE_SIZE", "big", ConfigTypeError, "at least 0"),
        ("BGTASKS_QUEUE_SIZE", False, ConfigTypeError, "got False (bool)"),
        ("BGTASKS_POOLS", ["reports"], ConfigTypeError, "dict of pool name to settings"),
        ("BGTASKS_POOLS", {"": {}}, ConfigTypeError, "non-empty strings"),
        ("BGTASKS_POOLS", {"default": {}}, ConfigError, "BGTASKS_MAX_WORKERS"),
        ("BGTASKS_POOLS", {"r": 3}, ConfigTypeError, "BGTASKS_POOLS['r'] must be a dict"),
        ("BGTASKS_POOLS", {"r": {"workers": 2}}, ConfigError, "unknown keys ['workers']"),
        (
            "BGTASKS_POOLS",
            {"r": {"max_workers": 0}},
            ConfigError,
            "BGTASKS_POOLS['r']['max_workers']",
        ),
        ("BGTASKS_POOLS", {"r": {"queue_size": "x"}}, ConfigTypeError, "['queue_size']"),
        ("BGTASKS_RESULT_TTL", -5, ConfigError, "at least 0"),
        ("BGTASKS_RESULT_TTL", float("nan"), ConfigError, "at least 0"),
        ("BGTASKS_RESULT_TTL", "1h", ConfigTypeError, "number of seconds"),
        ("BGTASKS_RESULT_TTL", True, ConfigTypeError, "number of seconds"),
        ("BGTASKS_MAX_RESULTS", -1, ConfigError, "at least 0"),
        ("BGTASKS_MAX_RESULTS", None, ConfigTypeError, "whole number"),
        ("BGTASKS_EAGER", 1, ConfigTypeError, "True or False"),
        ("BGTASKS_EAGER", "false", ConfigTypeError, "True or False"),
        ("BGTASKS_SHUTDOWN_TIMEOUT", None, ConfigTypeError, "number of seconds of at least 0;"),
        ("BGTASKS_SHUTDOWN_TIMEOUT", -1, ConfigError, "at least 0"),
        ("BGTASKS_SHUTDOWN_QUEUED", "drop", ConfigError, "one of 'run', 'cancel'; got 'drop'"),
        ("BGTASKS_SHUTDOWN_QUEUED", 1, ConfigTypeError, "one of 'run', 'cancel'"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(
    key: str, value: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        init(**{key: value})
    message = str(info.value)
    assert key in message
    assert words in message
    assert isinstance(info.value, BGTasksError)
    # A type error is a TypeError, a range error a ValueError; both are ConfigError.
    expected_builtin = TypeError if error is ConfigTypeError else ValueError
    assert isinstance(info.value, expected_builtin)


def test_bad_config_leaves_app_unregistered() -> None:
    app = Flask("config_test")
    app.config["BGTASKS_MAX_WORKERS"] = 0
    bg = BGTasks()
    with pytest.raises(ConfigError):
        bg.init_app(app)
    assert "bgtasks" not in app.extensions
    app.config["BGTASKS_MAX_WORKERS"] = 1
    bg.init_app(app)  # fixing the config and retrying works
    assert app.extensions["bgtasks"] is bg
