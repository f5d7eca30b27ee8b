"""Connections to Redis, for the Redis store and the RQ backend: the URL as
it may be shown (never with its password), a client made from it, and the
errors that say what went wrong and where.

The ``redis`` package is imported here, and only when a Redis URL is used.
"""

from __future__ import annotations

import contextlib
import typing as t
import urllib.parse

from ._errors import ConfigError, StoreError, StoreUnavailable

if t.TYPE_CHECKING:
    import redis

#: Seconds to wait for Redis to accept a connection, or to answer.
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: what logs, errors and
    the CLI show."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _without_password(text: str, url: str) -> str:
    """An error's text, without the password and the final period (the
    message that quotes it goes on)."""
    password = urllib.parse.urlsplit(url).password
    if password:
        text = text.replace(password, "***")
        text = text.replace(urllib.parse.quote(password, safe=""), "***")
    return text.rstrip(".")


def import_redis() -> t.Any:
    """The ``redis`` package. :raises ConfigError: If it is not installed."""
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "A Redis URL in BGTASKS_STORE needs the 'redis' package: pip install"
            " 'flask-bgtasks[redis]' (or '[rq]' for the RQ backend)."
        ) from None
    return redis


def client(url: str, *, decode: bool, timeout: float | None = SOCKET_TIMEOUT) -> redis.Redis:
    """A client for ``url``, which connects on first use and reconnects by
    itself after Redis comes back.

    :param decode: Answers as ``str`` (the store) or ``bytes`` (RQ).
    :param timeout: Seconds to wait for an answer, or ``None`` (RQ sets its
        own, longer than its blocking waits).
    """
    redis = import_redis()
    try:
        return redis.Redis.from_url(  # type: ignore[no-any-return]
            url,
            decode_responses=decode,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=timeout,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError(
            f"BGTASKS_STORE is {shown_url(url)!r}, which is not a Redis URL that"
            f" redis-py understands: {_without_password(str(exc), url)}. Give"
            " 'redis://[user:password@]host:port/db' or 'rediss://...' for TLS."
        ) from None


def check_reachable(connection: redis.Redis, url: str) -> None:
    """Ask Redis for a PING, at ``init_app``.

    :raises StoreError: If it can't be reached or refuses the credentials;
        the message names the host, never the password.
    """
    redis = import_redis()
    try:
        connection.ping()
    except redis.AuthenticationError as exc:
        raise StoreError(
            f"The Redis at {shown_url(url)} refused the user name or password in"
            f" BGTASKS_STORE ({type(exc).__name__}: {_without_password(str(exc), url)})."
            " Check them, and the user's ACL."
        ) from None
    except redis.RedisError as exc:
        raise StoreError(
            f"Can't reach the Redis that BGTASKS_STORE names, {shown_url(url)}:"
            f" {type(exc).__name__}: {_without_password(str(exc), url)}. Start it, or"
            " fix the host, port or database in BGTASKS_STORE."
        ) from None


@contextlib.contextmanager
def unavailable_as(url: str, doing: str) -> t.Iterator[None]:
    """Turn a lost connection into :class:`StoreUnavailable` (a 503 over
    HTTP), saying what could not be done."""
    redis = import_redis()
    exceptions = redis.exceptions
    try:
        yield
    except (
        exceptions.ConnectionError,
        exceptions.TimeoutError,
        # A Redis that is full (maxmemory with noeviction), or a replica
        # that can't be written: unavailable for writes, not a bug.
        exceptions.OutOfMemoryError,
        exceptions.ReadOnlyError,
    ) as exc:
        raise StoreUnavailable(
            f"Redis at {shown_url(url)} is unavailable, so the task store could not"
            f" {doing} ({type(exc).__name__}: {_without_password(str(exc), url)})."
            " Nothing was written; try again when Redis is back, which the app"
            " notices by itself."
        ) from None
