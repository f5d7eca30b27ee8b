"""What submit refuses as arguments, and which functions can't be tasks."""

from __future__ import annotations

import functools
import inspect
import re
import subprocess
import sys
import textwrap
import typing as t

import pytest
from flask import Flask, g, request

from flask_bgtasks import BGTasks, InvalidTaskError, TaskStatus
from flask_bgtasks._context import MAX_DEPTH, MAX_ITEMS

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy


def nest(value: t.Any, levels: int) -> t.Any:
    for _ in range(levels):
        value = [value]
    return value


# What to submit, given the proxy, and where the message says it is.
NESTED_PROXIES: list[
    tuple[t.Callable[[t.Any], tuple[tuple[t.Any, ...], dict[str, t.Any]]], str]
] = [
    (lambda proxy: (([proxy],), {}), "Argument 0[0]"),
    (lambda proxy: ((1, (2, proxy)), {}), "Argument 1[1]"),
    (lambda proxy: ((), {"data": {"user": {"req": proxy}}}), "Argument 'data'['user']['req']"),
    (lambda proxy: (([1, 2, {"a": [proxy]}],), {}), "Argument 0[2]['a'][0]"),
    (lambda proxy: (({proxy: 1},), {}), "A key of argument 0"),
    (lambda proxy: (({"x": {(1, proxy): 2}},), {}), "Item [1] of a key of argument 0['x']"),
    (lambda proxy: (([{proxy}],), {}), "An item of argument 0[0]"),
    (lambda proxy: ((frozenset({proxy}),), {}), "An item of argument 0"),
    (lambda proxy: ((nest(proxy, MAX_DEPTH),), {}), "Argument 0" + "[0]" * MAX_DEPTH),
]


@pytest.mark.parametrize(("make", "where"), NESTED_PROXIES, ids=[w for _, w in NESTED_PROXIES])
@pytest.mark.parametrize("proxy", [request, g], ids=["request", "g"])
def test_proxies_inside_containers_are_refused(
    app: Flask, bg: BGTasks, make: t.Callable[[t.Any], t.Any], where: str, proxy: t.Any
) -> None:
    task = bg.task(name="report")(print)
    with app.test_request_context("/"):
        args, kwargs = make(proxy)
        message = f"{where} of task 'report' is a Flask context proxy"
        with pytest.raises(InvalidTaskError, match=re.escape(message) + ".*plain values"):
            task.submit(*args, **kwargs)
        with pytest.raises(
            InvalidTaskError, match=re.escape(message.replace("'report'", "'builtins.print'"))
        ):
            bg.submit(print, *args, **kwargs)


def test_proxies_deeper_than_the_limit_are_not_looked_for(app: Flask, bg: BGTasks) -> None:
    task = bg.task(len)
    with app.test_request_context("/"):
        assert task.submit(nest(request, MAX_DEPTH + 1)).result(5) == 1


def test_only_the_first_items_are_looked_at(app: Flask, bg: BGTasks) -> None:
    @bg.task
    def count(first: list[int], rest: list[t.Any]) -> int:
        return len(rest)

    with app.test_request_context("/"):
        # The items of all arguments count: the last one looked at, and the
        # first one that is not.
        with pytest.raises(InvalidTaskError, match=rf"Argument 1\[{MAX_ITEMS - 2}\] "):
            count.submit([0], [0] * (MAX_ITEMS - 2) + [request])
        assert count.submit([0], [0] * (MAX_ITEMS - 1) + [request]).result(5) == MAX_ITEMS


def test_plain_containers_are_accepted(app: Flask, bg: BGTasks) -> None:
    @bg.task
    def echo(*args: t.Any, **kwargs: t.Any) -> t.Any:
        return args, kwargs

    value = [1, (2.5, "x"), {"a": {None, b"b"}}, frozenset({3}), {(1, 2): [True]}]
    with app.test_request_context("/"):
        assert echo.submit(value, key=value).result(5) == ((value,), {"key": value})


class Database(t.NamedTuple):
    app: Flask
    db: SQLAlchemy
    User: t.Any


@pytest.fixture
def database(make_app: t.Callable[..., Flask]) -> t.Iterator[Database]:
    """An app with Flask-SQLAlchemy on an in-memory SQLite database that
    holds one User."""
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    app = make_app(SQLALCHEMY_DATABASE_URI="sqlite://")
    db = flask_sqlalchemy.SQLAlchemy(app)

    class User(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String)

    with app.app_context():
        db.create_all()
        db.session.add(User(id=1, name="ada"))
        db.session.commit()
    yield Database(app, db, User)
    with app.app_context():
        db.engine.dispose()


def test_orm_instances_in_a_session_are_refused(bg: BGTasks, database: Database) -> None:
    app, db, User = database

    @bg.task(name="mail")
    def mail(*args: t.Any, **kwargs: t.Any) -> None:
        pass

    with app.test_request_context("/"):
        user = db.session.get(User, 1)
        hint = r"attached to a database session.*primary key.*db\.session\.get\(User, id\)"
        with pytest.raises(
            InvalidTaskError, match=r"^Argument 0 of task 'mail' is a User instance " + hint
        ):
            mail.submit(user)
        with pytest.raises(
            InvalidTaskError, match=r"^Argument 'to'\[0\]\['user'\] of task 'mail' is a User"
        ):
            mail.submit(to=[{"user": user}])
        with pytest.raises(
            InvalidTaskError, match=r"^Argument 0 of task 'builtins.print' is a User"
        ):
            bg.submit(print, user)
        # Added but not yet written: attached all the same.
        new = User(name="bob")
        db.session.add(new)
        with pytest.raises(InvalidTaskError, match=r"^Argument 0\[0\] of task 'mail' is a User"):
            mail.submit((new,))


def test_orm_instances_without_a_session_are_accepted(bg: BGTasks, database: Database) -> None:
    app, db, User = database

    @bg.task
    def name_of(user: t.Any) -> str:
        return str(user.name)

    with app.test_request_context("/"):
        detached = db.session.get(User, 1)
        db.session.expunge(detached)
        assert name_of.submit(detached).result(5) == "ada"
        assert name_of.submit(User(name="transient")).result(5) == "transient"
        assert bg.submit(dict, {"id": 1, "name": "ada"}).result(5) == {"id": 1, "name": "ada"}
        # The class itself is not an instance in a session.
        assert bg.submit(repr, User).result(5) == repr(User)


def test_checking_arguments_never_imports_sqlalchemy(tmp_path: t.Any) -> None:
    script = textwrap.dedent(
        """
        import sys
        from flask import Flask
        from flask_bgtasks import BGTasks

        class Thing:
            pass

        bg = BGTasks()
        app = Flask("x")
        bg.init_app(app)
        with app.app_context():
            bg.submit(repr, [Thing(), {"a": Thing()}]).result(5)
        bg.shutdown()
        assert "sqlalchemy" not in sys.modules, "sqlalchemy was imported"
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


async def fetch(n: int = 1) -> int:
    return n


async def numbers() -> t.AsyncIterator[int]:
    yield 1


def plain_decorator(fn: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    @functools.wraps(fn)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        return fn(*args, **kwargs)

    return wrapper


def async_decorator(fn: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    @functools.wraps(fn)
    async def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        return fn(*args, **kwargs)

    return wrapper


class Fetcher:
    async def __call__(self) -> int:
        return 1

    async def method(self) -> int:
        return 1


class SyncCaller:
    def __call__(self) -> int:
        return 1


ASYNC_CALLABLES: list[tuple[object, str]] = [
    (fetch, "'fetch' is an 'async def' function"),
    (numbers, "'numbers' is an 'async def' function"),
    (functools.partial(fetch, 2), "A partial object runs the 'async def' function 'fetch'"),
    (plain_decorator(fetch), "'fetch' is an 'async def' function"),
    (
        functools.partial(plain_decorator(fetch), 2),
        "A partial object runs the 'async def' function 'fetch'",
    ),
    (async_decorator(len), "'len' is an 'async def' function"),
    (Fetcher(), "A Fetcher object runs the 'async def' function 'Fetcher.__call__'"),
    (
        plain_decorator(Fetcher()),
        "'plain_decorator.<locals>.wrapper' runs the 'async def' function 'Fetcher.__call__'",
    ),
    (Fetcher().method, "'Fetcher.method' is an 'async def' function"),
]


@pytest.mark.parametrize(("fn", "what"), ASYNC_CALLABLES, ids=[what for _, what in ASYNC_CALLABLES])
def test_async_callables_are_refused_at_decoration(
    app: Flask, bg: BGTasks, fn: t.Any, what: str
) -> None:
    message = re.escape(what) + r"; background tasks run plain functions in threads\..*asyncio\.run"
    with pytest.raises(InvalidTaskError, match="^" + message):
        bg.task(fn)
    with app.app_context(), pytest.raises(InvalidTaskError, match="^" + message):
        bg.submit(fn)


@pytest.mark.parametrize(
    "fn",
    [len, SyncCaller, SyncCaller(), functools.partial(divmod, 7), plain_decorator(divmod), print],
)
def test_sync_callables_are_accepted(bg: BGTasks, fn: t.Any) -> None:
    assert bg.task(fn).fn is fn


def test_a_function_that_returns_a_coroutine_fails(app: Flask, bg: BGTasks) -> None:
    made = []

    def start() -> t.Any:
        made.append(fetch())
        return made[-1]

    with app.app_context():
        results = [bg.submit(start), bg.submit(lambda: fetch())]
    for result in results:
        error = result.exception(5)
        assert isinstance(error, InvalidTaskError)
        assert re.match(
            r"Task '.*' returned a coroutine, which is awaitable: its function is"
            r" async.*asyncio\.run",
            str(error),
        )
        assert result.status is TaskStatus.FAILED
    # Closed, so it never warns that it was not awaited (an error under this
    # suite's filterwarnings).
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED


def test_a_function_that_returns_another_awaitable_fails(app: Flask, bg: BGTasks) -> None:
    class Later:
        def __await__(self) -> t.Generator[None, None, int]:
            yield
            return 1

    with app.app_context():
        result = bg.submit(Later)
    with pytest.raises(InvalidTaskError, match=r"returned a .*Later, which is awaitable"):
        result.result(5)
