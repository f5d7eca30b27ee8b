"""The package's layout rules: small modules, no import cycle at run time,
a docstring on every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import flask_bgtasks

PACKAGE = Path(flask_bgtasks.__file__).parent
#: Most lines in one module: one a newcomer can hold in mind.
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:``, ``if t.TYPE_CHECKING:`` or ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def run_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: at
    module level, in class bodies, and in blocks other than ``if
    TYPE_CHECKING:``; not those inside functions."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                found += run_time_imports(node.body)
            found += run_time_imports(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            found += run_time_imports(node.body)
            for handler in node.handlers:
                found += run_time_imports(handler.body)
            found += run_time_imports(node.orelse)
            found += run_time_imports(node.finalbody)
        elif isinstance(node, ast.With | ast.For | ast.While | ast.ClassDef):
            found += run_time_imports(node.body)
            if isinstance(node, ast.For | ast.While):
                found += run_time_imports(node.orelse)
    return found


def imported_modules(name: str, path: Path) -> set[str]:
    """The modules of the package that importing ``name`` imports directly."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in run_time_imports(tree.body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            # The package the import is relative to: the module's own
            # package, then one up per extra dot.
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            # `from . import signals` imports the module flask_bgtasks.signals;
            # `from .stores import TaskStore` imports flask_bgtasks.stores.
            submodule = f"{source}.{alias.name}"
            targets.add(submodule if submodule in MODULES else source)
    # Importing a module of a subpackage runs the subpackage's __init__
    # first. The top package is imported before any of its modules anyway.
    for target in list(targets):
        parts = target.split(".")
        targets.update(".".join(parts[:end]) for end in range(2, len(parts)))
    return {target for target in targets if target in MODULES and target != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path that ends where it starts, or ``None``."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph[node]):
            if target in on_path:
                return path[path.index(target) :] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_the_package_is_found() -> None:
    # The rules below would pass on no module at all.
    assert {"flask_bgtasks", "flask_bgtasks._extension", "flask_bgtasks.stores.sqlite"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (
        f"{MODULES[name].relative_to(PACKAGE.parent)} has {lines} lines, more than"
        f" {MAX_LINES}: split it by behaviour."
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_has_a_docstring(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring and docstring.strip(), f"{name} has no module docstring."


def test_no_import_cycle_at_run_time() -> None:
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    # The graph is not empty: the package imports its parts.
    assert "flask_bgtasks._extension" in graph["flask_bgtasks"]
    assert "flask_bgtasks.signals" in graph["flask_bgtasks._run"]
    cycle = find_cycle(graph)
    assert cycle is None, "Import cycle at run time: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_resolve_relative_to_their_package() -> None:
    # stores/sqlite.py imports from its own package (`from . import ...`),
    # and from the top package (`from .._record import ...`).
    targets = imported_modules(
        "flask_bgtasks.stores.sqlite", MODULES["flask_bgtasks.stores.sqlite"]
    )
    assert "flask_bgtasks.stores" in targets
    assert "flask_bgtasks._record" in targets
    assert "flask_bgtasks.stores._writer" in targets
    # Imports under `if t.TYPE_CHECKING:` don't run.
    assert "flask_bgtasks._message" not in targets
    # A module of a subpackage imports the subpackage first.
    targets = imported_modules(
        "flask_bgtasks.backends.threads", MODULES["flask_bgtasks.backends.threads"]
    )
    assert {"flask_bgtasks._pool", "flask_bgtasks.backends"} <= targets


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_architecture_page_names_every_module(name: str) -> None:
    """docs/architecture.rst says what each module owns: a new module is
    added there too."""
    page = (PACKAGE.parent / "docs" / "architecture.rst").read_text(encoding="utf-8")
    path = MODULES[name].relative_to(PACKAGE).as_posix()
    if path == "__init__.py":
        return  # the package itself
    if path.endswith("/__init__.py"):
        needle = path.rpartition("/")[0] + "/"  # a subpackage, by its folder
    else:
        needle = path.rpartition("/")[2]
    assert needle in page, f"{path} is not on the page."
