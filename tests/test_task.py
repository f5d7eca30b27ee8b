from __future__ import annotations

import typing as t

import pytest
from flask import Flask, current_app, g, request, session

from flask_bgtasks import (
    BGTasks,
    InvalidTaskError,
    QueueFull,
    TaskResult,
    TaskStatus,
)


def test_plain_call_runs_inline(app: Flask, bg: BGTasks) -> None:
    @bg.task
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    assert add(2, 3) == 5  # no app context needed
    assert add.__name__ == "add"
    assert add.__doc__ == "Add two numbers."
    assert add.name == f"{__name__}.test_plain_call_runs_inline.<locals>.add"


def test_submit_returns_result_at_once(app: Flask, bg: BGTasks) -> None:
    @bg.task(name="adder", pool="default")
    def add(a: int, b: int = 0) -> int:
        return a + b

    with app.app_context():
        result = add.submit(2, b=3)
    assert isinstance(result, TaskResult)
    assert result.name == "adder"
    assert result.result(5) == 5
    assert result.status is TaskStatus.SUCCEEDED


def test_decorator_with_empty_parentheses(app: Flask, bg: BGTasks) -> None:
    @bg.task()
    def one() -> int:
        return 1

    with app.app_context():
        assert one.submit().result(5) == 1


def test_map_keeps_input_order(app: Flask, bg: BGTasks) -> None:
    @bg.task
    def power(x: int, y: int) -> int:
        return int(x**y)

    with app.app_context():
        assert list(power.map([1, 2, 3], [2, 2, 2])) == [1, 4, 9]
        assert list(power.map(range(50), [2] * 50, buffersize=3)) == [x * x for x in range(50)]
        assert list(power.map([], [])) == []


def test_map_that_does_not_fit_cancels_what_it_submitted(
    make_app: t.Callable[..., Flask], bg: BGTasks, gate: t.Any
) -> None:
    app = make_app(BGTASKS_MAX_WORKERS=1, BGTASKS_QUEUE_SIZE=2)
    submitted: list[TaskResult[t.Any]] = []

    @bg.task
    def noop(x: int) -> int:
        return x

    from flask_bgtasks import signals

    with (
        app.app_context(),
        signals.task_submitted.connected_to(lambda app, task: submitted.append(task), app),
    ):
        bg.submit(gate)
        gate.wait_entered()
        with pytest.raises(QueueFull):
            noop.map(range(10))
    mapped = [result for result in submitted if result.name == noop.name]
    assert len(mapped) == 2  # one worker busy + a queue of two: two fitted
    assert all(result.status is TaskStatus.CANCELLED for result in mapped)


def test_map_timeout_and_early_exit(app: Flask, bg: BGTasks, gate: t.Any) -> None:
    @bg.task
    def wait(x: int) -> int:
        gate()
        return x

    with app.app_context():
        results = wait.map(range(4), timeout=0.05)
        with pytest.raises(TimeoutError):
            next(results)
    gate.open()
    assert bg.join(5)


def test_map_bad_buffersize(app: Flask, bg: BGTasks) -> None:
    task = bg.task(abs)
    with app.app_context(), pytest.raises(ValueError, match="buffersize"):
        task.map([1], buffersize=0)


def test_bg_submit_ad_hoc_callable(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        result = bg.submit(divmod, 7, 2)
    assert result.result(5) == (3, 1)
    assert result.name == "builtins.divmod"


@pytest.mark.parametrize("thing", [42, "report"])
def test_decorating_a_non_callable(bg: BGTasks, thing: t.Any) -> None:
    with pytest.raises(TypeError, match=r"@bg.task needs a function.*directly above a 'def'"):
        bg.task(thing)


def test_async_functions_are_rejected(bg: BGTasks) -> None:
    async def fetch() -> int:
        return 1

    with pytest.raises(InvalidTaskError, match=r"'async def'.*asyncio.run"):
        bg.task(fetch)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"name": ""}, "non-empty string"),
        ({"pool": 3}, "'pool' must be a pool name"),
        ({"copy_request": "yes"}, "'copy_request' must be True or False"),
        ({"copy_g": "user"}, "'copy_g' must be a list"),
        ({"copy_g": [1]}, "'copy_g' must be a list"),
    ],
)
def test_bad_task_options(bg: BGTasks, options: dict[str, t.Any], words: str) -> None:
    with pytest.raises(TypeError, match=words):
        bg.task(**options)(abs)


def test_unknown_pool_fails_at_submit(app: Flask, bg: BGTasks) -> None:
    task = bg.task(pool="nope")(abs)
    with (
        app.app_context(),
        pytest.raises(RuntimeError, match=r"no task pool named 'nope'.*default"),
    ):
        task.submit(1)


@pytest.mark.parametrize("proxy", [request, session, g, current_app], ids=repr)
def test_context_proxies_are_rejected_as_arguments(app: Flask, bg: BGTasks, proxy: t.Any) -> None:
    app.secret_key = "test"
    task = bg.task(repr)
    with app.test_request_context("/?id=1"):
        with pytest.raises(
            InvalidTaskError, match="Argument 0 of task 'builtins.repr'.*plain values"
        ):
            task.submit(proxy)
        with pytest.raises(InvalidTaskError, match="Argument 'obj'"):
            task.submit(obj=proxy)
        # A plain value taken from the proxy is fine.
        assert task.submit(request.args["id"]).result(5) == "'1'"
