from __future__ import annotations

import pathlib
import re
import typing as t

import pytest
from flask import Flask

from flask_bgtasks import BGTasks, BGTasksError, ConfigError, ConfigTypeError, _config


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


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("BGTASKS_MAX_WORKER", "BGTASKS_MAX_WORKERS"),
        ("BGTASKS_RESULTS_TTL", "BGTASKS_RESULT_TTL"),
        ("BGTASKS_SHUTDOWN_TIMOUT", "BGTASKS_SHUTDOWN_TIMEOUT"),
        ("BGTASKS_STORE_URL", "BGTASKS_STORE"),
    ],
)
def test_misspelled_key_warns_with_the_closest_setting(
    caplog: pytest.LogCaptureFixture, typo: str, meant: str
) -> None:
    with caplog.at_level("WARNING", logger="flask_bgtasks"):
        app = init(**{typo: 3})
    warnings = [r for r in caplog.records if r.name == "flask_bgtasks" and typo in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"]
    assert warnings[0].getMessage() == (
        f"{typo} is not a Flask-BGTasks setting; did you mean {meant}? It is ignored."
    )
    assert app.config[typo] == 3  # left alone, and the app still starts
    assert app.extensions["bgtasks"]


def test_unknown_key_without_a_close_setting_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="flask_bgtasks"):
        init(BGTASKS_WIBBLE=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "flask_bgtasks"]
    assert messages == [
        "BGTASKS_WIBBLE is not a Flask-BGTasks setting; it is ignored."
        " The configuration page of the docs lists every setting."
    ]


def test_misspelled_key_warns_before_a_bad_value_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="flask_bgtasks"), pytest.raises(ConfigError):
        init(BGTASKS_MAX_WORKERS=0, BGTASKS_QUEUE_SIZ=5)
    assert any("did you mean BGTASKS_QUEUE_SIZE?" in r.getMessage() for r in caplog.records)


def test_every_setting_and_other_keys_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    settings = {key: value for key, value in init().config.items() if key.startswith("BGTASKS_")}
    with caplog.at_level("DEBUG", logger="flask_bgtasks"):
        init(**settings, SECRET_KEY="x", BGTASKSX=1, MY_BGTASKS_MAX_WORKER=2)
    assert [r.getMessage() for r in caplog.records if r.name == "flask_bgtasks"] == []


def test_the_settings_are_the_defaulted_keys_and_the_documented_ones() -> None:
    settings = {key for key in init().config if key.startswith("BGTASKS_")}
    assert _config.known_keys() == settings
    # docs/config.rst documents each key once, as ".. data:: KEY".
    page = (pathlib.Path(__file__).parent.parent / "docs" / "config.rst").read_text("utf-8")
    assert set(re.findall(r"^\.\. data:: (BGTASKS_\w+)$", page, re.M)) == settings
