"""The uWSGI configuration check, with a stand-in for the ``uwsgi`` module
that only exists inside uWSGI. tests/test_server_uwsgi.py runs the real one.
"""

from __future__ import annotations

import logging
import sys
import types
import typing as t

import pytest

import flask_bgtasks._uwsgi
from flask_bgtasks import UsageError
from flask_bgtasks._uwsgi import check_uwsgi

FORK = "--py-call-uwsgi-fork-hooks"
HOOK = "unix_signal:15 gracefully_kill_them_all"


@pytest.fixture
def uwsgi(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A ``uwsgi`` module like that of a worker of ``--lazy-apps``, which
    passes the check; each test changes what it is about."""
    module = types.ModuleType("uwsgi")
    module.has_threads = 1  # type: ignore[attr-defined]
    module.numproc = 2  # type: ignore[attr-defined]
    module.opt = {"master": True, "processes": b"2", "lazy-apps": True}  # type: ignore[attr-defined]
    module.worker_id = lambda: 1  # type: ignore[attr-defined]
    module.masterpid = lambda: 100  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    # Each test is a fresh process, as far as the once-only warning goes.
    monkeypatch.setattr(flask_bgtasks._uwsgi, "_checked_stop", False)
    return module


def in_master(module: types.ModuleType, **opt: t.Any) -> None:
    """Make ``module`` look like the master of the default prefork mode."""
    module.worker_id = lambda: 0  # type: ignore[attr-defined]
    module.opt = {"master": True, "processes": b"2", **opt}  # type: ignore[attr-defined]


def test_outside_uwsgi_does_nothing() -> None:
    assert "uwsgi" not in sys.modules
    check_uwsgi(20)


def test_lazy_apps_worker_passes(uwsgi: types.ModuleType) -> None:
    check_uwsgi(20)


def test_threads_disabled(uwsgi: types.ModuleType) -> None:
    uwsgi.has_threads = 0  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="--enable-threads"):
        check_uwsgi(20)


def test_app_loaded_in_the_master(uwsgi: types.ModuleType) -> None:
    in_master(uwsgi)
    with pytest.raises(UsageError, match="--lazy-apps") as info:
        check_uwsgi(20)
    assert FORK in str(info.value)


def test_app_loaded_before_forking_without_a_master(uwsgi: types.ModuleType) -> None:
    uwsgi.worker_id = lambda: 0  # type: ignore[attr-defined]
    uwsgi.masterpid = lambda: 0  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="--lazy-apps"):
        check_uwsgi(20)


def test_single_process_without_a_master_never_forks(uwsgi: types.ModuleType) -> None:
    uwsgi.worker_id = lambda: 0  # type: ignore[attr-defined]
    uwsgi.masterpid = lambda: 0  # type: ignore[attr-defined]
    uwsgi.numproc = 1  # type: ignore[attr-defined]
    check_uwsgi(20)


@pytest.mark.parametrize("value", [True, b"true", b"1", b"", [b"false", True]])
def test_fork_hooks_on(uwsgi: types.ModuleType, value: object) -> None:
    in_master(uwsgi, **{FORK[2:]: value})
    check_uwsgi(20)


@pytest.mark.parametrize("value", [b"false", b"Off", b"no", b"0", [True, b"false"]])
def test_fork_hooks_off(uwsgi: types.ModuleType, value: object) -> None:
    in_master(uwsgi, **{FORK[2:]: value})
    with pytest.raises(UsageError, match="--lazy-apps"):
        check_uwsgi(20)


@pytest.mark.parametrize("option", ["skip-atexit", "skip-atexit-teardown"])
def test_exit_handlers_skipped(uwsgi: types.ModuleType, option: str) -> None:
    uwsgi.opt[option] = True
    with pytest.raises(UsageError, match=f"Remove --{option}\\."):
        check_uwsgi(20)


def test_every_problem_in_one_message(uwsgi: types.ModuleType) -> None:
    in_master(uwsgi, **{"skip-atexit": True})
    uwsgi.has_threads = 0  # type: ignore[attr-defined]
    with pytest.raises(UsageError) as info:
        check_uwsgi(20)
    for name in ("--enable-threads", "--lazy-apps", FORK, "--skip-atexit"):
        assert name in str(info.value)


def test_init_app_checks(uwsgi: types.ModuleType) -> None:
    """The check runs in init_app, except in eager mode, which starts no
    thread."""
    from flask import Flask

    from flask_bgtasks import BGTasks

    in_master(uwsgi)
    with pytest.raises(UsageError, match="--lazy-apps"):
        BGTasks(Flask(__name__))
    eager = Flask(__name__)
    eager.config["BGTASKS_EAGER"] = True
    BGTasks(eager)


@pytest.mark.parametrize(
    ("mercy", "timeout", "refused"),
    [(None, 20, False), (None, 60, True), (b"10", 20, True), (b"30", 20, False)],
)
def test_worker_reload_mercy_must_outlast_the_drain(
    uwsgi: types.ModuleType, mercy: bytes | None, timeout: float, refused: bool
) -> None:
    if mercy is not None:
        uwsgi.opt["worker-reload-mercy"] = mercy  # type: ignore[attr-defined]
    if refused:
        with pytest.raises(UsageError, match="worker-reload-mercy .* BGTASKS_SHUTDOWN_TIMEOUT"):
            check_uwsgi(timeout)
    else:
        check_uwsgi(timeout)


def stop_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flask_bgtasks" and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize(
    ("opt", "master", "expected"),
    [
        ({"die-on-term": True}, True, "Add --hook-master-start"),
        ({}, True, "Without --die-on-term, uWSGI 2.0 takes SIGTERM as a reload"),
        ({"hook-master-start": HOOK.encode()}, False, "Start uWSGI with --master and"),
    ],
    ids=["die-on-term", "neither", "no-master"],
)
def test_warns_once_when_sigterm_would_lose_tasks(
    uwsgi: types.ModuleType,
    caplog: pytest.LogCaptureFixture,
    opt: dict[str, t.Any],
    master: bool,
    expected: str,
) -> None:
    uwsgi.opt.update(opt)
    if not master:
        uwsgi.masterpid = lambda: 0  # type: ignore[attr-defined]
        uwsgi.numproc = 1  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        check_uwsgi(20)
        check_uwsgi(20)  # a second app in the same process
    [message] = stop_warnings(caplog)
    assert expected in message
    assert "tasks are lost without a log line" in message
    assert f'--hook-master-start "{HOOK}"' in message


@pytest.mark.parametrize(
    "hook",
    [HOOK.encode(), b"unix_signal:15   gracefully_kill_them_all", [b"x", HOOK.encode()]],
    ids=["bytes", "spaces", "list"],
)
def test_no_warning_with_the_sigterm_hook(
    uwsgi: types.ModuleType, caplog: pytest.LogCaptureFixture, hook: object
) -> None:
    uwsgi.opt["hook-master-start"] = hook
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        check_uwsgi(20)
    assert stop_warnings(caplog) == []


def test_other_hooks_do_not_count(
    uwsgi: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    uwsgi.opt["hook-master-start"] = b"unix_signal:2 kill_them_all"
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        check_uwsgi(20)
    assert len(stop_warnings(caplog)) == 1


def test_only_the_first_worker_warns(
    uwsgi: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """With lazy-apps every worker loads the app; one line is enough."""
    uwsgi.worker_id = lambda: 2  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, "flask_bgtasks"):
        check_uwsgi(20)
    assert stop_warnings(caplog) == []
