"""What a ``module:name`` setting names (:func:`import_path`), and how
another process builds the app (:func:`load_app`)."""

from __future__ import annotations

import importlib
import os
import sys
import typing as t

if t.TYPE_CHECKING:
    from flask import Flask


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


def load_app(app_import: str) -> Flask:
    """Build the app as ``flask --app app_import`` does: a module, a
    ``module:app`` attribute, or a ``module:create_app()`` factory call.
    The current folder is importable, as for the ``flask`` command."""
    from flask.cli import ScriptInfo

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return ScriptInfo(app_import_path=app_import).load_app()
