"""The ``BGTASKS_*`` settings: defaults, and validation done once in ``init_app``."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import multiprocessing
import os
import re
import typing as t

from ._errors import ConfigError, ConfigTypeError
from .stores import DEFAULT_MAX_PAYLOAD_BYTES, parse_url

logger = logging.getLogger("flask_bgtasks")

#: The pool a task uses unless it names another.
DEFAULT_POOL = "default"

_POOL_KEYS = frozenset({"max_workers", "queue_size", "kind", "start_method", "recycle_after"})
#: Keys that only a pool of kind "process" takes.
_PROCESS_KEYS = frozenset({"start_method", "recycle_after"})

#: The most worker threads one pool may have. Each is an OS thread with its
#: own stack, and Python runs one of them at a time: past a few hundred, more
#: threads cost memory and switching without running more at once.
MAX_WORKERS_CEILING = 256
_WORKERS_WHY = (
    "Each worker is an OS thread with its own stack, and past a few hundred"
    " threads a process gets slower, not faster. For more tasks at once, run"
    " more processes (such as more Gunicorn workers)."
)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """The validated settings of one task pool."""

    max_workers: int
    queue_size: int | None
    #: ``"thread"``: threads of this process. ``"process"``: child processes.
    kind: str = "thread"
    #: How a process pool starts its children: ``"forkserver"`` on Linux,
    #: ``"spawn"`` elsewhere, unless set.
    start_method: str | None = None
    #: A process pool replaces a child after it ran this many tasks.
    recycle_after: int | None = None
    #: For a process pool: how a child builds the app, and the seconds past
    #: a task's timeout before its child is killed (BGTASKS_APP and
    #: BGTASKS_TIMEOUT_GRACE, copied here).
    app_import: str | None = None
    timeout_grace: float = 3.0


@dataclasses.dataclass(frozen=True)
class Config:
    """The validated ``BGTASKS_*`` settings of one app."""

    pools: t.Mapping[str, PoolConfig]
    result_ttl: float | None
    max_results: int
    #: ``"threads"``, or the import path of a Backend subclass.
    backend: str
    eager: bool
    shutdown_timeout: float
    shutdown_queued: str
    #: ``("memory", None)``, ``("sqlite", path as configured)``,
    #: ``("redis", url)`` or ``("import", "module:function")``.
    store: tuple[str, str | None]
    durable: bool
    store_lease: float
    #: Most bytes a shared store keeps of one task's arguments, value or
    #: errors; ``None`` for no limit.
    max_payload_bytes: int | None
    #: Whether the HTTP status API is registered, and under which prefix.
    api: bool
    api_prefix: str
    #: Whether the task dashboard is registered, and under which prefix.
    dashboard: bool = False
    dashboard_prefix: str = "/bgtasks"
    #: How a child process builds the app: BGTASKS_APP, else FLASK_APP.
    app_import: str | None = None
    #: Seconds a process task may run past its timeout before its child is
    #: killed.
    timeout_grace: float = 3.0
    #: The engine's hard time limit for a task without a timeout, in
    #: seconds, or ``None`` for none.
    engine_timeout: float | None = 3600.0


def default_max_workers() -> int:
    """As :class:`concurrent.futures.ThreadPoolExecutor`: tasks are mostly I/O."""
    return min(32, (os.cpu_count() or 1) + 4)


def set_defaults(config: t.MutableMapping[str, t.Any]) -> None:
    """Put every key with its default into ``app.config`` where it is missing."""
    config.setdefault("BGTASKS_MAX_WORKERS", default_max_workers())
    config.setdefault("BGTASKS_QUEUE_SIZE", 1000)
    config.setdefault("BGTASKS_POOLS", {})
    config.setdefault("BGTASKS_RESULT_TTL", 3600)
    config.setdefault("BGTASKS_MAX_RESULTS", 10_000)
    config.setdefault("BGTASKS_BACKEND", "threads")
    config.setdefault("BGTASKS_EAGER", False)
    config.setdefault("BGTASKS_SHUTDOWN_TIMEOUT", 20.0)
    config.setdefault("BGTASKS_SHUTDOWN_QUEUED", "run")
    config.setdefault("BGTASKS_STORE", "memory")
    config.setdefault("BGTASKS_DURABLE", False)
    config.setdefault("BGTASKS_STORE_LEASE", 15.0)
    config.setdefault("BGTASKS_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES)
    config.setdefault("BGTASKS_API", False)
    config.setdefault("BGTASKS_API_PREFIX", "/tasks")
    config.setdefault("BGTASKS_DASHBOARD", False)
    config.setdefault("BGTASKS_DASHBOARD_PREFIX", "/bgtasks")
    config.setdefault("BGTASKS_APP", None)
    config.setdefault("BGTASKS_TIMEOUT_GRACE", 3.0)
    config.setdefault("BGTASKS_ENGINE_TIMEOUT", 3600.0)


def known_keys() -> frozenset[str]:
    """Every ``BGTASKS_*`` setting: the keys :func:`set_defaults` sets, the one list."""
    defaults: dict[str, t.Any] = {}
    set_defaults(defaults)
    return frozenset(defaults)


def warn_unknown_keys(config: t.Mapping[str, t.Any]) -> None:
    """Log a warning for each ``BGTASKS_*`` key that is no setting, naming the
    closest one: a misspelled key would otherwise be silently ignored."""
    prefix = "BGTASKS_"
    known = known_keys()
    # Compared without the prefix, which every key shares and which would
    # make any two keys look alike.
    suffixes = [key.removeprefix(prefix) for key in sorted(known)]
    for key in sorted(k for k in config if isinstance(k, str) and k.startswith(prefix)):
        if key in known:
            continue
        close = difflib.get_close_matches(key.removeprefix(prefix), suffixes, n=1)
        if close:
            logger.warning(
                "%s is not a Flask-BGTasks setting; did you mean %s? It is ignored.",
                key,
                prefix + close[0],
            )
        else:
            logger.warning(
                "%s is not a Flask-BGTasks setting; it is ignored. The configuration"
                " page of the docs lists every setting.",
                key,
            )


def load(config: t.MutableMapping[str, t.Any]) -> Config:
    """Default and validate the ``BGTASKS_*`` keys of ``app.config``, and warn
    about the keys that are no setting.

    :raises ConfigTypeError: If a value has the wrong type.
    :raises ConfigError: If a value is out of range.
    """
    warn_unknown_keys(config)
    set_defaults(config)
    store = parse_url(config["BGTASKS_STORE"])
    durable = _bool("BGTASKS_DURABLE", config["BGTASKS_DURABLE"])
    if durable and store[0] == "memory":
        raise ConfigError(
            "BGTASKS_DURABLE is True, but durable tasks need a store that"
            " outlives the process, and BGTASKS_STORE is 'memory'. Set"
            " BGTASKS_STORE = 'sqlite:///tasks.db' (one machine) or"
            " 'redis://host:6379/0' (several)."
        )
    default = PoolConfig(
        max_workers=_workers("BGTASKS_MAX_WORKERS", config["BGTASKS_MAX_WORKERS"]),
        queue_size=_int("BGTASKS_QUEUE_SIZE", config["BGTASKS_QUEUE_SIZE"], 0, none=True),
    )
    pools = {DEFAULT_POOL: default, **_pools(config["BGTASKS_POOLS"], default)}
    backend = _backend(config["BGTASKS_BACKEND"])
    processes = sorted(name for name, pool in pools.items() if pool.kind == "process")
    if backend == "rq" and processes and not config["BGTASKS_EAGER"]:
        raise ConfigError(
            f"BGTASKS_BACKEND is 'rq', whose workers run every pool, but the pools"
            f' {processes} say "kind": "process", which only the thread backend'
            " uses. Remove it: each RQ worker is a process of its own, and"
            " 'flask bgtasks worker --fork' runs each task in a fresh one."
        )
    app_import = _app_import(config["BGTASKS_APP"], pools)
    grace = _seconds("BGTASKS_TIMEOUT_GRACE", config["BGTASKS_TIMEOUT_GRACE"], none=False)
    pools = {
        name: dataclasses.replace(pool, app_import=app_import, timeout_grace=grace)
        if pool.kind == "process"
        else pool
        for name, pool in pools.items()
    }
    return Config(
        pools=pools,
        result_ttl=_seconds("BGTASKS_RESULT_TTL", config["BGTASKS_RESULT_TTL"]),
        max_results=_int("BGTASKS_MAX_RESULTS", config["BGTASKS_MAX_RESULTS"], 0),
        backend=backend,
        eager=_bool("BGTASKS_EAGER", config["BGTASKS_EAGER"]),
        shutdown_timeout=_seconds(
            "BGTASKS_SHUTDOWN_TIMEOUT", config["BGTASKS_SHUTDOWN_TIMEOUT"], none=False
        ),
        shutdown_queued=_choice(
            "BGTASKS_SHUTDOWN_QUEUED", config["BGTASKS_SHUTDOWN_QUEUED"], ("run", "cancel")
        ),
        store=store,
        durable=durable,
        store_lease=_lease(config["BGTASKS_STORE_LEASE"]),
        max_payload_bytes=_int(
            "BGTASKS_MAX_PAYLOAD_BYTES", config["BGTASKS_MAX_PAYLOAD_BYTES"], 1, none=True
        ),
        api=_bool("BGTASKS_API", config["BGTASKS_API"]),
        api_prefix=_prefix("BGTASKS_API_PREFIX", config["BGTASKS_API_PREFIX"]),
        dashboard=_bool("BGTASKS_DASHBOARD", config["BGTASKS_DASHBOARD"]),
        dashboard_prefix=_prefix("BGTASKS_DASHBOARD_PREFIX", config["BGTASKS_DASHBOARD_PREFIX"]),
        app_import=app_import,
        timeout_grace=grace,
        engine_timeout=_seconds("BGTASKS_ENGINE_TIMEOUT", config["BGTASKS_ENGINE_TIMEOUT"]),
    )


def _pools(value: object, default: PoolConfig) -> dict[str, PoolConfig]:
    key = "BGTASKS_POOLS"
    example = '{"reports": {"max_workers": 2, "queue_size": 50}}'
    if not isinstance(value, t.Mapping):
        raise ConfigTypeError(
            f"{key} must be a dict of pool name to settings, such as {example}; got {_show(value)}."
        )
    pools = {}
    for name, settings in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigTypeError(
                f"{key} has the pool name {name!r}; names must be non-empty strings."
            )
        if name == DEFAULT_POOL:
            raise ConfigError(
                f"{key} must not define {DEFAULT_POOL!r}: that pool is set by"
                " BGTASKS_MAX_WORKERS and BGTASKS_QUEUE_SIZE."
            )
        where = f"{key}[{name!r}]"
        if not isinstance(settings, t.Mapping):
            raise ConfigTypeError(
                f"{where} must be a dict with 'max_workers' and/or 'queue_size',"
                f" such as {example}; got {_show(settings)}."
            )
        unknown = set(settings) - _POOL_KEYS
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys {sorted(map(str, unknown))}; the"
                f" accepted keys are {', '.join(map(repr, sorted(_POOL_KEYS)))}."
            )
        kind = _choice(f"{where}['kind']", settings.get("kind", "thread"), ("thread", "process"))
        if kind == "thread" and _PROCESS_KEYS & set(settings):
            raise ConfigError(
                f"{where} sets {sorted(_PROCESS_KEYS & set(settings))}, which only a"
                " pool of child processes takes. Add 'kind': 'process', or remove them."
            )
        pools[name] = PoolConfig(
            max_workers=_workers(
                f"{where}['max_workers']", settings.get("max_workers", default.max_workers)
            ),
            queue_size=_int(
                f"{where}['queue_size']",
                settings.get("queue_size", default.queue_size),
                0,
                none=True,
            ),
            kind=kind,
            start_method=_start_method(where, settings.get("start_method")),
            recycle_after=_int(
                f"{where}['recycle_after']", settings.get("recycle_after"), 1, none=True
            ),
        )
    return pools


def _start_method(where: str, value: object) -> str | None:
    if value is None:
        return None
    return _choice(
        f"{where}['start_method']", value, tuple(multiprocessing.get_all_start_methods())
    )


def _app_import(value: object, pools: t.Mapping[str, PoolConfig]) -> str | None:
    """BGTASKS_APP, else FLASK_APP: how a child process builds the app."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigTypeError(
            "BGTASKS_APP must be what 'flask --app' takes, such as 'myapp:create_app()'"
            f" or 'myapp:app'; got {_show(value)}."
        )
    found = value or os.environ.get("FLASK_APP") or None
    processes = sorted(name for name, pool in pools.items() if pool.kind == "process")
    if processes and found is None:
        raise ConfigError(
            f"The pools {processes} run tasks in child processes, and each child"
            " builds the app itself, but neither BGTASKS_APP nor FLASK_APP says"
            " how. Set BGTASKS_APP to what 'flask --app' takes, such as"
            " 'myapp:create_app()'."
        )
    return found


def _show(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _int(
    key: str,
    value: object,
    minimum: int,
    none: bool = False,
    maximum: int | None = None,
    why: str = "",
) -> t.Any:
    """Check a count; ``why`` says why a value over ``maximum`` is refused."""
    accepted = f"a whole number of at least {minimum}" + (", or None for no limit" if none else "")
    if value is None and none:
        return None
    # bool is an int subclass, but True is never meant as a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(f"{key} must be {accepted}; got {_show(value)}.")
    if value < minimum:
        raise ConfigError(f"{key} must be {accepted}; got {value!r}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be at most {maximum}; got {value!r}. {why}".rstrip())
    return value


def _workers(key: str, value: object) -> int:
    workers: int = _int(key, value, 1, maximum=MAX_WORKERS_CEILING, why=_WORKERS_WHY)
    return workers


@t.overload
def _seconds(key: str, value: object, none: t.Literal[False]) -> float: ...
@t.overload
def _seconds(key: str, value: object, none: bool = True) -> float | None: ...
def _seconds(key: str, value: object, none: bool = True) -> float | None:
    accepted = "a number of seconds of at least 0"
    if none:
        accepted += ", or None for no time limit"
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(f"{key} must be {accepted}; got {_show(value)}.")
    if not value >= 0:  # also rejects NaN
        raise ConfigError(f"{key} must be {accepted}; got {value!r}.")
    return float(value)


def _lease(value: object) -> float:
    seconds = _seconds("BGTASKS_STORE_LEASE", value, none=False)
    if seconds < 0.3:
        raise ConfigError(
            "BGTASKS_STORE_LEASE must be at least 0.3 seconds: it is renewed every"
            f" third of itself. Got {value!r}; the default is 15."
        )
    return seconds


def _prefix(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigTypeError(f"{key} must be a URL path such as '/tasks'; got {_show(value)}.")
    if not value.startswith("/") or value.endswith("/") or "<" in value or len(value) < 2:
        raise ConfigError(
            f"{key} must be a URL path that starts with '/' and does not end with"
            f" one, without variables, such as '/tasks' or '/api/jobs'; got {value!r}."
        )
    return value


def _backend(value: object) -> str:
    key = "BGTASKS_BACKEND"
    accepted = (
        "'threads', 'rq', or the import path of a flask_bgtasks.backends.Backend"
        " subclass, such as 'myapp.backends:ProcessBackend'"
    )
    if not isinstance(value, str):
        raise ConfigTypeError(f"{key} must be {accepted}; got {_show(value)}.")
    if value not in ("threads", "rq") and not re.fullmatch(
        r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value
    ):
        raise ConfigError(f"{key} must be {accepted}; got {value!r}.")
    return value


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    accepted = ", ".join(map(repr, choices))
    if not isinstance(value, str):
        raise ConfigTypeError(f"{key} must be one of {accepted}; got {_show(value)}.")
    if value not in choices:
        raise ConfigError(f"{key} must be one of {accepted}; got {_show(value)}.")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{key} must be True or False; got {_show(value)}.")
    return value
