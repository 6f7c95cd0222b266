"""The size rules of the code (DESIGN.md, "Code is read more than written"): no function over
60 lines, no file over 500, in the package, the recipes, the benchmarks and the tests."""

from __future__ import annotations

import ast

from tests.helpers.recipes import REPO

MAX_FUNCTION_LINES, MAX_FILE_LINES = 60, 500


def _sources() -> list:
    return sorted(path for folder in ("cvdist", "recipes", "bench", "tests") for path in (REPO / folder).rglob("*.py"))


def oversized(source: str, *, name: str) -> list[str]:
    """The size rules ``source`` breaks, one line each (``name`` labels them)."""
    problems = []
    lines = source.count("\n")
    if lines > MAX_FILE_LINES:
        problems.append(f"{name}: {lines} lines (> {MAX_FILE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{name}:{node.lineno} {node.name}() has {length} lines (> {MAX_FUNCTION_LINES})")
    return problems


def test_the_checker_finds_a_long_function_and_a_long_file():
    long_function = "def f():\n" + "    x = 1\n" * 61
    assert oversized(long_function, name="a.py") == ["a.py:1 f() has 62 lines (> 60)"]
    long_file = "x = 1\n" * 501
    assert oversized(long_file, name="b.py") == ["b.py: 501 lines (> 500)"]


def test_no_function_over_60_lines_and_no_file_over_500():
    sources = _sources()
    assert len(sources) > 100  # the tree was found
    problems = [problem for path in sources for problem in oversized(path.read_text(), name=str(path.relative_to(REPO)))]
    assert problems == []
