"""Refuse, at startup, a uWSGI configuration in which tasks would hang or be
lost, and warn about one that would lose them on a stop without a word.

Inside uWSGI the embedded ``uwsgi`` module describes the running server:
``has_threads``, ``worker_id()`` (0 in the process that loads the app before
forking), ``masterpid()`` (0 without a master) and ``opt``, the options as
given, flags as ``True`` and values as bytes (pyuwsgi 2.0.30 keeps only the
last value of a repeated option; a list is read too, as other builds may
give one). The facts are read rather than the option names where uWSGI offers them, so an
ini file, an environment variable or an alias such as ``lazy`` counts too.
"""

from __future__ import annotations

import importlib
import logging
import types

from ._errors import UsageError

logger = logging.getLogger("flask_bgtasks")

# uWSGI reads these values of a flag as "off" (uwsgi_opt_true); any other
# value, and a flag given without one, is "on".
_OFF = frozenset({"0", "false", "no", "off"})

#: The master hook that turns SIGTERM into a graceful stop of every worker.
_SIGTERM_HOOK = "unix_signal:15 gracefully_kill_them_all"

# Set once the warning about lost tasks was logged (or not needed), so that
# several apps in one process log it once.
_checked_stop = False


def check_uwsgi(shutdown_timeout: float) -> None:
    """Raise if this process runs under uWSGI with options that would leave
    background tasks hanging or lost. Does nothing outside uWSGI.

    :param shutdown_timeout: The app's ``BGTASKS_SHUTDOWN_TIMEOUT``.
    :raises UsageError: Naming the uWSGI options to set or remove.
    """
    uwsgi = _uwsgi_module()
    if uwsgi is None:
        return
    problems = []

    # Without Python thread support uWSGI keeps the interpreter lock while a
    # worker waits for a request, so task threads only run during requests:
    # a task stays queued or half done until the next request comes. That is
    # the default of older uWSGI builds; the pyuwsgi 2.0.30 wheel always
    # enables threads (has_threads is 1 even with enable-threads = false).
    if not getattr(uwsgi, "has_threads", 1):
        problems.append(
            "uWSGI runs with Python threads disabled, so the task threads would"
            " only run while a request is being handled and tasks would wait"
            " in the queue. Start uWSGI with --enable-threads"
            " (enable-threads = true)."
        )

    # By default uWSGI imports the app in the master and forks the workers
    # from it with a plain C fork(), skipping CPython's fork handling. If a
    # task thread holds the interpreter lock (or any other lock) at that
    # moment, the worker waits for it forever: a master that started a task
    # at import left every worker hung and never answering. Workers are
    # forked again later (respawns, cheaper mode), so no moment is safe.
    # Without a master but with several processes, the first one loads the
    # app and forks the others: the same copied locks, so the same rule.
    # lazy-apps (or lazy) loads the app in each worker after the fork;
    # py-call-uwsgi-fork-hooks makes uWSGI run CPython's fork handling.
    loaded_before_fork = uwsgi.worker_id() == 0 and (uwsgi.masterpid() != 0 or uwsgi.numproc > 1)
    if loaded_before_fork and not _flag(uwsgi, "py-call-uwsgi-fork-hooks"):
        problems.append(
            "uWSGI loaded the app in the process it forks its workers from, and"
            " a fork while a task thread is running can leave the new worker"
            " hung forever. Start uWSGI with --lazy-apps, so that each worker"
            " loads the app itself, or with --py-call-uwsgi-fork-hooks, so that"
            " uWSGI forks safely for Python threads."
        )

    # The drain at exit is an atexit handler, which uWSGI runs in a worker
    # only through Py_Finalize(). skip-atexit ends workers with _exit() and
    # skip-atexit-teardown skips Py_Finalize(): either way the tasks queued
    # or running when a worker stops vanish, without a log line.
    skipped = [name for name in ("skip-atexit", "skip-atexit-teardown") if _flag(uwsgi, name)]
    if skipped:
        options = " and ".join(f"--{name}" for name in skipped)
        problems.append(
            f"uWSGI runs with {options}, so a stopping worker skips Python's exit"
            " handlers and its queued and running tasks would be lost instead of"
            f" drained within BGTASKS_SHUTDOWN_TIMEOUT. Remove {options}."
        )

    # The master kills a worker that is still stopping after
    # worker-reload-mercy seconds (60 by default): a drain that may take
    # longer would be cut off without its log lines.
    mercy = _number(uwsgi, "worker-reload-mercy", 60)
    if mercy <= shutdown_timeout:
        problems.append(
            f"uWSGI kills a stopping worker after worker-reload-mercy ({mercy:g} s),"
            f" which is not longer than BGTASKS_SHUTDOWN_TIMEOUT ({shutdown_timeout:g} s),"
            " so the drain could be cut off. Raise --worker-reload-mercy or lower"
            " BGTASKS_SHUTDOWN_TIMEOUT."
        )

    if problems:
        raise UsageError("Flask-BGTasks cannot run tasks reliably here: " + " ".join(problems))
    _warn_if_stop_loses_tasks(uwsgi)


def _warn_if_stop_loses_tasks(uwsgi: types.ModuleType) -> None:
    """Log, once per server, that a SIGTERM would lose the tasks of a worker
    that is handling a request, unless the master stops workers gracefully.

    uWSGI ends a worker that is in the middle of a request at once, without
    Python's exit handlers, on SIGTERM with --die-on-term, on SIGINT, and on
    any SIGTERM without a master: its queued and running tasks vanish without
    a log line. Without --die-on-term, uWSGI 2.0 takes SIGTERM as a reload
    that does the same. The master hook makes SIGTERM wait for the requests
    and then stop each worker the normal way, which drains. (An idle worker
    drains in every case.)
    """
    global _checked_stop
    if _checked_stop:
        return
    _checked_stop = True
    # Every worker has the same options: the process that loads the app
    # first (the master, or the first worker with lazy-apps) speaks for all.
    if uwsgi.worker_id() > 1:
        return
    has_master = uwsgi.masterpid() != 0
    if has_master and _has_sigterm_hook(uwsgi):
        return
    hook = f'--hook-master-start "{_SIGTERM_HOOK}"'
    if not has_master:
        cause = (
            "uWSGI runs without a master, so SIGTERM ends a worker that is"
            " handling a request at once"
        )
        fix = f"Start uWSGI with --master and {hook}"
    elif _flag(uwsgi, "die-on-term"):
        cause = "On SIGTERM, uWSGI ends a worker that is handling a request at once"
        fix = f"Add {hook}"
    else:
        cause = (
            "Without --die-on-term, uWSGI 2.0 takes SIGTERM as a reload, which"
            " ends a worker that is handling a request at once"
        )
        fix = f"Add {hook}"
    logger.warning(
        "%s, without Python's exit handlers: its queued and running background"
        " tasks are lost without a log line. %s, so that SIGTERM lets the"
        " requests finish and the workers then drain their tasks within"
        " BGTASKS_SHUTDOWN_TIMEOUT. If it is set already, make it the last"
        " --hook-master-start, the only one this check can see.",
        cause,
        fix,
    )


def _has_sigterm_hook(uwsgi: types.ModuleType) -> bool:
    """Whether ``--hook-master-start`` has the graceful SIGTERM hook.

    uWSGI 2.0.30 shows only the last value of a repeated option in
    ``uwsgi.opt``; where it gives a list, every value counts.
    """
    value = getattr(uwsgi, "opt", {}).get("hook-master-start")
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if isinstance(item, str) and " ".join(item.split()) == _SIGTERM_HOOK:
            return True
    return False


def _uwsgi_module() -> types.ModuleType | None:
    """The ``uwsgi`` module, which only exists inside a uWSGI process.

    Imported by name so that type checking does not depend on whether the
    ``types-uWSGI`` stubs are installed.
    """
    try:
        return importlib.import_module("uwsgi")
    except ImportError:
        return None


def _flag(uwsgi: types.ModuleType, name: str) -> bool:
    """Whether the boolean option ``name`` is on, read as uWSGI reads it."""
    value = getattr(uwsgi, "opt", {}).get(name)
    if isinstance(value, list):  # given more than once: the last one wins
        value = value[-1] if value else None
    if value is None:
        return False
    if value is True:
        return True
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).lower() not in _OFF


def _number(uwsgi: types.ModuleType, name: str, default: float) -> float:
    """The numeric option ``name``, or ``default`` when not given."""
    value = getattr(uwsgi, "opt", {}).get(name)
    if isinstance(value, list):
        value = value[-1] if value else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default
