"""Which project code a function reaches, and a hash of it: the code part of every stage's cache key.

The walk is static (AST, nothing is imported): start from the function's own source, follow the helper
functions of its module it names, then every ``import`` those bodies make into the project packages,
and from each reached module every import it makes anywhere in its file (a module is one unit: any
function in it may run). Imports of other packages (torch, pandas) are not followed; the installed
versions of those are not part of the key.

The stdlib's ``modulefinder`` is not used on purpose: it works per module (not from one function),
follows every third-party import (torch alone is thousands of files) and compiles what it reads.

Over-reaching is safe (a cache misses more often); under-reaching is what this replaces: hand-kept
lists that missed ``plots.py``, ``registry.py`` and others, so a cached stage outlived its code.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["PROJECT_PACKAGES", "reached_modules", "code_version"]

PROJECT_PACKAGES = ("steermoe",)
_ROOT = Path(__file__).resolve().parent.parent  # the folder that holds the project packages


def _module_file(name: str) -> Path | None:
    """The source file of a project module (``steermoe.routing.store``), or None outside the project."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = _ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    parts = importer.split(".")
    package = parts if is_package else parts[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(tree: ast.AST, importer: str, is_package: bool) -> set[str]:
    """Project modules an AST imports: ``import a.b``, ``from a import b`` (b a module or a name in a)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, importer, is_package)
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # Importing a.b.c runs a/__init__ and a/b/__init__ too.
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i]))}
    return found


def _file_imports(path: Path, name: str) -> set[str]:
    return _imports_of_text(_source_bytes(path), name, path.name == "__init__.py")


@functools.lru_cache(maxsize=1024)
def _imports_of_text(source: bytes, name: str, is_package: bool) -> frozenset[str]:
    # Keys are computed several times per run; a file is parsed again only when its text changed.
    return frozenset(_imports(ast.parse(source), name, is_package))


def _source_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _function_sources(function: Callable) -> tuple[list[str], set[str]]:
    """The source of ``function`` and of the same-module helpers it names (transitively), and the
    project modules those bodies import, plus the imports at the top of their module."""
    module = inspect.getmodule(function)
    name, is_package = module.__name__, Path(module.__file__).name == "__init__.py"
    helpers = {n: f for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == name}
    sources, modules, todo, seen = [], set(), [function], set()
    while todo:
        current = todo.pop()
        if current.__name__ in seen:
            continue
        seen.add(current.__name__)
        source = textwrap.dedent(inspect.getsource(current))
        sources.append(source)
        imported, names = _body_facts(source, name, is_package)
        modules |= imported
        todo += [helpers[n] for n in sorted(names & helpers.keys() - seen)]
    return sources, modules | _top_level_imports(inspect.getsource(module), name, is_package)


@functools.lru_cache(maxsize=1024)
def _body_facts(source: str, module: str, is_package: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(project modules a function body imports, the names it uses)."""
    tree = ast.parse(source)
    return frozenset(_imports(tree, module, is_package)), frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))


@functools.lru_cache(maxsize=256)
def _top_level_imports(source: str, module: str, is_package: bool) -> frozenset[str]:
    imports = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return frozenset(_imports(ast.Module(body=imports, type_ignores=[]), module, is_package))


def _close(modules: Iterable[str]) -> set[str]:
    """Every project module reachable by imports from ``modules``."""
    reached, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo += sorted(_file_imports(_module_file(name), name) - reached)
    return reached


def reached_modules(function: Callable) -> dict[str, Path]:
    """Project modules ``function`` can run, by name, with their files. Its own module counts only
    where another module imports it; otherwise only the parts the function reaches do (see
    :func:`code_version`), so editing one stage function leaves the other stages' keys alone."""
    _, direct = _function_sources(function)
    own = inspect.getmodule(function).__name__
    return {name: _module_file(name) for name in sorted(_close(direct - {own}))}


def code_version(function: Callable) -> str:
    """Hash of ``function``'s source, its same-module helpers and every project module it reaches."""
    return _code_version(function, _project_stamp(), _source_bytes)


def _project_stamp() -> tuple:
    """(path, mtime, size) of every project source file: a changed file invalidates the memo below."""
    files = sorted(p for package in PROJECT_PACKAGES for p in (_ROOT / package).rglob("*.py"))
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


@functools.lru_cache(maxsize=256)
def _code_version(function: Callable, stamp: tuple, read: Callable[[Path], bytes]) -> str:
    sources, _ = _function_sources(function)
    digest = hashlib.sha256()
    for source in sorted(sources):
        digest.update(source.encode())
    for name, path in reached_modules(function).items():
        digest.update(name.encode())
        digest.update(read(path))
    return digest.hexdigest()[:16]
