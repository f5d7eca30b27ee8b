from __future__ import annotations

import typing as t

import click
import pytest
from flask import Blueprint, Flask, current_app

from flask_bgtasks import BGTasks, TaskStatus, UsageError


def app_name() -> str:
    return current_app.name


def test_app_extensions_holds_the_instance(app: Flask, bg: BGTasks) -> None:
    assert app.extensions["bgtasks"] is bg


def test_constructor_with_app() -> None:
    app = Flask("direct")
    bg = BGTasks(app)
    try:
        with app.app_context():
            assert bg.submit(app_name).result(5) == "direct"
    finally:
        bg.shutdown()


def test_init_app_twice_raises(app: Flask, bg: BGTasks) -> None:
    with pytest.raises(
        RuntimeError, match="already registered on the app 'test_app'.*once per app"
    ):
        bg.init_app(app)
    with pytest.raises(UsageError, match="already registered"):
        BGTasks().init_app(app)


def test_app_not_registered(bg: BGTasks) -> None:
    other = Flask("other")
    with other.app_context(), pytest.raises(UsageError) as info:
        bg.submit(app_name)
    assert str(info.value) == (
        "The app 'other' is not registered with this BGTasks instance; did you call init_app()?"
    )


def test_submit_outside_app_context(app: Flask, bg: BGTasks) -> None:
    task = bg.task(app_name)
    with pytest.raises(RuntimeError, match=r"needs an application context.*app\.app_context\(\)"):
        task.submit()
    with pytest.raises(UsageError):
        bg.get("abc")


def test_two_apps_one_instance(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    task = bg.task(app_name)
    first = make_app("first")
    second = make_app("second", BGTASKS_MAX_WORKERS=1)
    with first.app_context():
        a = task.submit()
    with second.app_context():
        b = task.submit()
    assert a.result(5) == "first"
    assert b.result(5) == "second"
    # Records are per app.
    with first.app_context():
        assert bg.get(a.id) is a
        assert bg.get(b.id) is None
    assert bg.join(5)


def test_task_declared_before_app_and_used_in_blueprint(bg: BGTasks) -> None:
    # Module-level declarations: the extension and task exist before any app.
    @bg.task
    def greet(name: str) -> str:
        return f"hello {name} from {current_app.name}"

    blueprint = Blueprint("greetings", __name__)

    @blueprint.post("/greet/<name>")
    def start(name: str) -> tuple[dict[str, str], int]:
        return {"id": greet.submit(name).id}, 202

    def create_app() -> Flask:
        app = Flask("factory_app")
        bg.init_app(app)
        app.register_blueprint(blueprint)
        return app

    app = create_app()
    response = app.test_client().post("/greet/ana")
    assert response.status_code == 202
    with app.app_context():
        result = bg.get(response.json["id"])  # type: ignore[index]
        assert result is not None
        assert result.result(5) == "hello ana from factory_app"
        assert result.status is TaskStatus.SUCCEEDED


def test_submit_from_cli_command(app: Flask, bg: BGTasks) -> None:
    @bg.task
    def double(x: int) -> int:
        return 2 * x

    @app.cli.command("double")
    @click.argument("x", type=int)
    def double_command(x: int) -> None:
        click.echo(double.submit(x).result(5))

    result = app.test_cli_runner().invoke(args=["double", "21"])
    assert result.exception is None, result.output
    assert result.output.strip() == "42"


def test_submit_from_app_context(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        assert bg.submit(app_name).result(5) == "test_app"


def test_get_unknown_and_wrong_type(app: Flask, bg: BGTasks) -> None:
    with app.app_context():
        assert bg.get("no-such-task") is None
        with pytest.raises(TypeError, match="task id is a string"):
            bg.get(123)  # type: ignore[arg-type]


def test_no_thread_before_first_submit(make_app: t.Callable[..., Flask], bg: BGTasks) -> None:
    import threading

    before = threading.active_count()
    app = make_app()
    with app.app_context():
        bg.task(app_name)  # declaring starts nothing either
        assert threading.active_count() == before
        bg.submit(app_name).result(5)
    names = [thread.name for thread in threading.enumerate()]
    assert any(name.startswith("bgtasks-test_app-default-") for name in names)


def test_join_inside_task_raises(app: Flask, bg: BGTasks) -> None:
    def join() -> bool:
        return bg.join(1)

    with app.app_context():
        with pytest.raises(UsageError, match="wait for that task itself"):
            bg.submit(join).result(5)


def test_join_timeout(app: Flask, bg: BGTasks, gate: t.Callable[[], None]) -> None:
    with app.app_context():
        bg.submit(gate)
    assert bg.join(0.01) is False
    gate.open()  # type: ignore[attr-defined]
    assert bg.join(5) is True
