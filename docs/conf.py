"""Sphinx configuration for the Flask-BGTasks documentation."""

from __future__ import annotations

import importlib.metadata
import re
import typing as t

if t.TYPE_CHECKING:
    from sphinx.application import Sphinx

project = "Flask-BGTasks"
copyright = "The Flask-BGTasks team"
author = "The Flask-BGTasks team"
release = importlib.metadata.version("Flask-BGTasks")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
]
# No sphinx.ext.intersphinx: the docs are built without internet access,
# where fetching the Python, Flask and Werkzeug inventories would warn.

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types of documented parameters, and return types; constructors of classes
# users never instantiate show no parameter list.
autodoc_typehints_description_target = "documented_params"
# Type hints name Flask and stdlib types that are not documented here.
nitpicky = False

# Files starting with "_" are fragments for ".. include::", not pages.
exclude_patterns = ["_build", "_*.rst"]
default_role = None
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"Flask-BGTasks {release}"

# Methods shown with one plain signature, given in api.rst, rather than the
# typing overloads that autodoc would list: the overloads only tell type
# checkers how the bare and the called decorator differ.
_ONE_SIGNATURE = {"flask_bgtasks._extension": ("BGTasks.task", "BGTasks.background_view")}


def _drop_overloads(app: Sphinx) -> None:
    # autodoc reads overloads from its module analyzer, which is cached per
    # module, so removing them once here hides them for the whole build.
    from sphinx.pycode import ModuleAnalyzer

    for module, names in _ONE_SIGNATURE.items():
        analyzer = ModuleAnalyzer.for_module(module)
        analyzer.analyze()
        for name in names:
            analyzer.overloads.pop(name, None)


def _plain_class_defaults(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    # A default that is a class shows as its name, "retry_on=Exception",
    # rather than its repr, "retry_on=<class 'Exception'>".
    if signature is not None:
        signature = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", signature)
    return signature, return_annotation


def _drop_field_number_docs(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    # A NamedTuple field without a "#:" comment would say "Alias for field
    # number 3", which tells a reader nothing: show its name and type alone.
    text = [line for line in lines if line.strip()]
    if len(text) == 1 and re.fullmatch(r"Alias for field number \d+", text[0].strip()):
        lines.clear()


def setup(app: Sphinx) -> None:
    app.connect("builder-inited", _drop_overloads)
    app.connect("autodoc-process-signature", _plain_class_defaults)
    app.connect("autodoc-process-docstring", _drop_field_number_docs)
