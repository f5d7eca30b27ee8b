"""What a ``module:name`` setting names: :func:`import_path`."""

from __future__ import annotations

import importlib
import typing as t


def import_path(path: str) -> t.Any:
    """The object at ``module:name`` (``name`` may be dotted).

    :raises ImportError: If the module can't be imported.
    :raises AttributeError: If it has no such name.
    """
    module_name, _, name = path.partition(":")
    found: t.Any = importlib.import_module(module_name)
    for part in name.split("."):
        found = getattr(found, part)
    return found
