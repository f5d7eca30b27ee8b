"""Sphinx configuration for the Flask-BGTasks documentation."""

from __future__ import annotations

import re
import tomllib
import typing as t
from pathlib import Path

from pallets_sphinx_themes import ProjectLink, get_version

if t.TYPE_CHECKING:
    from docutils.nodes import Element, TextElement
    from sphinx.addnodes import pending_xref
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

# Project --------------------------------------------------------------

project = "Flask-BGTasks"
copyright = "The Flask-BGTasks team"
author = "The Flask-BGTasks team"
release, version = get_version("Flask-BGTasks")

# General --------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "pallets_sphinx_themes",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types of documented parameters, and return types; constructors of classes
# users never instantiate show no parameter list.
autodoc_typehints_description_target = "documented_params"
# Type hints written as ``t.Any`` and the package's type variables resolve to
# nothing; nitpicky mode would flag each of them.
nitpicky = False

# Links to Python, Flask and Werkzeug go to their sites, but the inventories
# that name their objects are read from _inventories/, so that the docs build
# without a network (CI has none). _inventories/README says where each file
# comes from and how to refresh it.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", "_inventories/python.inv"),
    "flask": ("https://flask.palletsprojects.com/en/stable/", "_inventories/flask.inv"),
    "werkzeug": (
        "https://werkzeug.palletsprojects.com/en/stable/",
        "_inventories/werkzeug.inv",
    ),
}

# Files starting with "_" are fragments for ".. include::", not pages.
exclude_patterns = ["_build", "_*.rst"]
default_role = None

# HTML -----------------------------------------------------------------

# The look of Flask's docs, as Flask-SQLAlchemy and other Pallets extensions
# use it.
html_theme = "flask"
html_theme_options = {"index_sidebar_logo": False}
# The sidebar's project links: the project URLs of pyproject.toml, as on PyPI,
# less the one to these docs.
_project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))
html_context = {
    "project_links": [
        ProjectLink(title, url)
        for title, url in _project["project"]["urls"].items()
        if title != "Documentation"
    ]
}
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
singlehtml_sidebars = {"index": ["project.html", "localtoc.html"]}
html_static_path = ["_static"]
# Long BGTASKS_* names wrap in the sidebar and in headings instead of running
# past them.
html_css_files = ["bgtasks.css"]
html_title = f"Flask-BGTasks Documentation ({version})"
html_show_sourcelink = False
# The theme's banner asks pypi.org, from each reader's browser, whether a newer
# release exists; these docs describe the version they ship with.
version_banner = False

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


# Type hints that autodoc shows by the name a module imported (under
# TYPE_CHECKING, or from a private module), linked to the documented object.
_HINT_TARGETS = {
    "Flask": "flask.Flask",
    "datetime": "datetime.datetime",
    "concurrent.futures._base.CancelledError": "concurrent.futures.CancelledError",
}


def _link_hint_names(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: TextElement
) -> Element | None:
    from sphinx.ext.intersphinx import missing_reference

    target = _HINT_TARGETS.get(node.get("reftarget", ""))
    if node.get("refdomain") != "py" or target is None:
        return None
    node = node.deepcopy()
    node["reftarget"] = target
    return missing_reference(app, env, node, contnode)


def _break_toc_names(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, t.Any], doctree: object
) -> None:
    # A line may break after an underscore or a dot of a code name in the
    # sidebar's table of contents, so that a long BGTASKS_* key or method name
    # wraps there (see _static/bgtasks.css) rather than being cut off.
    toc = context.get("toc")
    if toc:
        context["toc"] = re.sub(
            r'(<span class="pre">)([^<]*)(</span>)',
            lambda m: m[1] + re.sub(r"([_.])(?=\w)", r"\1<wbr>", m[2]) + m[3],
            toc,
        )


def setup(app: Sphinx) -> None:
    app.connect("builder-inited", _drop_overloads)
    app.connect("autodoc-process-signature", _plain_class_defaults)
    app.connect("autodoc-process-docstring", _drop_field_number_docs)
    app.connect("missing-reference", _link_hint_names)
    app.connect("html-page-context", _break_toc_names)
