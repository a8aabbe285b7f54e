"""Every function in ``steermoe/`` fits a screen and takes its settings as objects: at most 80 lines, at most
10 parameters (``self``/``cls`` not counted; ``*args``/``**kwargs`` count one each). Read with ``ast``, so a
nested function or a method is held to the same limits as a module-level one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "steermoe"
MAX_LINES, MAX_PARAMETERS = 80, 10
# Functions that are data tables rather than logic, by "path:name" (none today; keep it short).
ALLOWED: set[str] = set()


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    bound = 1 if names and names[0] in ("self", "cls") else 0
    return len(names) - bound + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(PACKAGE.parent)}:{node.name}", node


def test_no_function_is_longer_than_a_screen_or_takes_a_keyword_list():
    found = list(_functions())
    assert len(found) > 500, "the walk found too few functions; is PACKAGE right?"
    too_long = [f"{name} ({node.end_lineno - node.lineno + 1} lines)" for name, node in found
                if node.end_lineno - node.lineno + 1 > MAX_LINES and name not in ALLOWED]
    too_many = [f"{name} ({_parameters(node)} parameters)" for name, node in found if _parameters(node) > MAX_PARAMETERS and name not in ALLOWED]
    assert not too_long, f"longer than {MAX_LINES} lines: {too_long}; split them into named steps"
    assert not too_many, f"more than {MAX_PARAMETERS} parameters: {too_many}; pass a settings object (e.g. GenerationSettings)"


def test_the_parameter_count_is_the_one_the_limit_means():
    tree = ast.parse("class A:\n    def m(self, a, b=1, *c, d, **e): pass\ndef f(x, /, y): pass\n")
    counts = {n.name: _parameters(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert counts == {"m": 5, "f": 2}
