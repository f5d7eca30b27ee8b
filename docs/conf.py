"""Sphinx configuration for the Flask-BGTasks documentation."""

from __future__ import annotations

import importlib.metadata

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
