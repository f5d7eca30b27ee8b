"""Whether calling a task's function runs an ``async def`` function, which a
thread would never await. Knows nothing of Flask."""

from __future__ import annotations

import functools
import inspect
import typing as t


def async_function(fn: object) -> t.Callable[..., t.Any] | None:
    """The ``async def`` function (or async generator function) that calling
    ``fn`` runs, or ``None``.

    It looks through :class:`functools.partial`, decorators that set
    ``__wrapped__`` (:func:`functools.wraps`) and the ``__call__`` of a
    callable object, at every layer: an ``async def`` anywhere in the chain
    makes a coroutine that a thread would never await.
    """
    # Each round steps into a partial or a __call__; real chains are short,
    # and the limit ends a pathological one.
    for _ in range(20):
        while isinstance(fn, functools.partial):
            fn = fn.func
        try:
            fn = inspect.unwrap(fn, stop=_makes_async)  # type: ignore[arg-type]
        except ValueError:  # a __wrapped__ cycle: nothing to learn from it
            return None
        if _makes_async(fn):
            return t.cast("t.Callable[..., t.Any]", fn)
        if isinstance(fn, type) or inspect.isroutine(fn) or not callable(fn):
            return None  # calling a class makes an instance; a plain routine
        if not isinstance(fn, functools.partial):  # found behind __wrapped__
            fn = type(fn).__call__
    return None


def _makes_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def describe_async(fn: object, found: object) -> str:
    """Say what is async, for any callable: a partial has no __qualname__."""
    inner = getattr(found, "__qualname__", None) or type(found).__qualname__
    outer = getattr(fn, "__qualname__", None)
    if outer == inner:
        return f"{inner!r} is an 'async def' function"
    what = repr(outer) if isinstance(outer, str) else f"A {type(fn).__qualname__} object"
    return f"{what} runs the 'async def' function {inner!r}"
