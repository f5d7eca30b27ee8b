"""Task options: :class:`TaskOptions`, declared once and checked once, and
the TypedDict that types the keywords of ``@bg.task``."""

from __future__ import annotations

import dataclasses
import re
import typing as t

import pytest

from flask_bgtasks import BGTasks, InvalidTaskError, TaskOptions
from flask_bgtasks._options import TaskOptionArgs
from flask_bgtasks._retry import RetryPolicy

#: Where the keywords of @bg.task are deliberately wider than the fields:
#: field name -> (the field's annotation, the keyword's annotation).
WIDER_KEYWORDS = {
    # Left out or None: the name comes from the function.
    "name": ("str", "str | None"),
    # Any iterable of names; the options keep a tuple.
    "copy_g": ("tuple[str, ...]", "t.Iterable[str]"),
}


def sample() -> None:
    """A module-level function to name tasks after."""


class Holder:
    def method(self) -> None:
        """A method to name tasks after."""


class CallableObject:
    def __call__(self) -> None:
        """An instance of this is a callable with no ``__qualname__``."""


def keyword_annotations() -> dict[str, str]:
    # With `from __future__ import annotations` a TypedDict keeps each
    # annotation as a ForwardRef of the text.
    return {
        name: annotation.__forward_arg__
        if isinstance(annotation, t.ForwardRef)
        else str(annotation)
        for name, annotation in TaskOptionArgs.__annotations__.items()
    }


def test_keywords_and_fields_have_the_same_names() -> None:
    fields = {field.name for field in dataclasses.fields(TaskOptions)}
    keywords = set(TaskOptionArgs.__annotations__)
    assert (fields - keywords, keywords - fields) == (set(), set()), (
        "TaskOptions and TaskOptionArgs must list the same options:"
        " (only in TaskOptions, only in TaskOptionArgs)."
    )
    # Every keyword may be left out.
    assert TaskOptionArgs.__optional_keys__ == frozenset(fields)
    assert TaskOptionArgs.__required_keys__ == frozenset()


def test_keywords_and_fields_have_the_same_types() -> None:
    keywords = keyword_annotations()
    differences = {
        field.name: (field.type, keywords[field.name])
        for field in dataclasses.fields(TaskOptions)
        if field.type != keywords.get(field.name)
    }
    assert differences == WIDER_KEYWORDS


def test_options_are_frozen() -> None:
    options = TaskOptions(name="tests.frozen", timeout=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.timeout = 10  # type: ignore[misc]
    assert options.timeout == 5
    assert dataclasses.replace(options, timeout=10).timeout == 10
    assert options == TaskOptions(name="tests.frozen", timeout=5)


def test_defaults() -> None:
    options = TaskOptions(name="tests.defaults")
    assert options.pool == "default"
    assert options.copy_request is False
    assert options.copy_g == ()
    assert options.timeout is None
    assert options.durable is None
    assert options.retries == 0
    assert options.retry_backoff == 1.0
    assert options.retry_on is Exception
    assert options.expose_result is False
    assert options.expose_error is False
    assert options.captures is False


def test_task_keeps_its_options(bg: BGTasks) -> None:
    @bg.task(pool="reports", timeout=60, retries=3, retry_on=ConnectionError, copy_g=["user_id"])
    def build_report(user_id: int) -> str:
        return str(user_id)

    options = build_report.options
    assert isinstance(options, TaskOptions)
    assert options.name == f"{__name__}.test_task_keeps_its_options.<locals>.build_report"
    assert build_report.name == options.name
    assert options.pool == "reports" == build_report.pool
    assert options.timeout == 60 == build_report.timeout
    assert options.retries == 3
    assert options.retry_on is ConnectionError
    # A list of names becomes a tuple: the options can't change afterwards.
    assert options.copy_g == ("user_id",)
    assert options.captures is True
    assert options.durable is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.pool = "default"  # type: ignore[misc]


def test_copy_g_takes_any_iterable_of_names(bg: BGTasks) -> None:
    assert bg.task(copy_g={"user_id"})(sample).options.copy_g == ("user_id",)
    keys = {"user_id": 1, "locale": 2}.keys()
    assert TaskOptions(name="tests.copy_g", copy_g=keys).copy_g == ("user_id", "locale")  # type: ignore[arg-type]


def test_copy_g_takes_a_one_shot_iterator(bg: BGTasks) -> None:
    # t.Iterable[str] includes generators, which can be read only once: the
    # names must survive the check.
    names = (name for name in ["user_id", "locale"])
    task = bg.task(copy_g=names)(sample)
    assert task.options.copy_g == ("user_id", "locale")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", 0),
        ("timeout", -1.5),
        ("timeout", True),
        ("retries", -1),
        ("retries", 1.5),
        ("retry_backoff", -1),
        ("retry_on", int),
        ("retry_on", ()),
        ("retry_on", (ValueError, "KeyError")),
        ("pool", ""),
        ("pool", None),
        ("expose_result", "yes"),
        ("expose_error", 1),
        ("copy_request", None),
        ("copy_g", "user_id"),
        ("copy_g", [1]),
        ("durable", "yes"),
    ],
)
def test_bad_option_names_the_task_and_the_option(bg: BGTasks, option: str, value: object) -> None:
    options: dict[str, t.Any] = {option: value}

    def job() -> None:
        pass

    name = f"{job.__module__}.{job.__qualname__}"
    with pytest.raises(InvalidTaskError) as caught:
        bg.task(**options)(job)
    message = str(caught.value)
    assert repr(name) in message
    assert repr(option) in message
    assert repr(value) in message
    assert name not in bg.tasks  # nothing was declared


def test_bad_name() -> None:
    with pytest.raises(InvalidTaskError, match="name must be a non-empty string"):
        TaskOptions(name="")
    with pytest.raises(InvalidTaskError, match="name must be a non-empty string"):
        TaskOptions(name=42)  # type: ignore[arg-type]


def test_unknown_option_is_a_type_error_naming_it(bg: BGTasks) -> None:
    options: dict[str, t.Any] = {"colour": "red"}
    with pytest.raises(TypeError, match="colour"):
        bg.task(**options)(sample)
    with pytest.raises(TypeError, match="colour"):
        TaskOptions.for_function(sample, colour="red")
    assert not bg.tasks


def test_for_function_names_the_task_module_qualname() -> None:
    assert TaskOptions.for_function(sample).name == f"{__name__}.sample"
    assert TaskOptions.for_function(Holder.method).name == f"{__name__}.Holder.method"
    assert TaskOptions.for_function(Holder().method).name == f"{__name__}.Holder.method"

    def inner() -> None:
        pass

    assert TaskOptions.for_function(inner).name == (
        f"{__name__}.test_for_function_names_the_task_module_qualname.<locals>.inner"
    )
    # A callable object is named after its class.
    assert TaskOptions.for_function(CallableObject()).name == f"{__name__}.CallableObject"


def test_for_function_keeps_a_given_name_and_the_options() -> None:
    options = TaskOptions.for_function(sample, name="tests.named", timeout=3)
    assert options.name == "tests.named"
    assert options.timeout == 3
    # None stands for the default, as the TypedDict allows.
    assert TaskOptions.for_function(sample, name=None).name == f"{__name__}.sample"


def test_retry_policy() -> None:
    assert TaskOptions(name="tests.once").retry is None
    assert TaskOptions(name="tests.once", retry_backoff=5, retry_on=KeyError).retry is None
    policy = TaskOptions(name="tests.again", retries=2, retry_backoff=3, retry_on=KeyError).retry
    assert policy == RetryPolicy(2, 3.0, (KeyError,))
    both = TaskOptions(name="tests.again", retries=1, retry_on=(KeyError, OSError)).retry
    assert both is not None
    assert both.retry_on == (KeyError, OSError)
    assert both.backoff == 1.0


def test_error_messages_are_sentences() -> None:
    with pytest.raises(InvalidTaskError) as caught:
        TaskOptions(name="tests.sentence", retries=-1)
    assert re.fullmatch(r"[A-Z].*\.", str(caught.value))
