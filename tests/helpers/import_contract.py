"""The dependency direction of the ``cvdist`` package, checked from the source's imports.

recipes -> tasks -> (engine, tracking) -> building blocks. Each module belongs to a *unit*: its
top-level package or module under ``cvdist/`` (``data``, ``engine``, ``cli``, ...), except that
every task package is a unit of its own (``tasks.longtail``, ``tasks.common``). The rules:

* a building block imports none of engine, tasks, tracking, commands, cli, accelerate,
  deepspeed or wandb (so it is testable in a plain process);
* only ``engine`` imports accelerate or deepspeed; only ``tracking`` imports wandb;
* nothing imports ``recipes`` (they are entry points, not a library);
* a task imports no other task (``tasks.common`` is shared glue and imports no task);
* engine, tracking and config (config_loading) import no task and no command; only ``cli`` imports commands;
* no two units import each other, directly or through others (no cycle).

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

BUILDING_BLOCKS = frozenset({"data", "models", "losses", "eval", "compress", "optim", "comm", "io", "plotting",
                             "redact"})
ABOVE_BLOCKS = frozenset({"engine", "tracking", "commands", "cli"})
ENGINE_ONLY = frozenset({"accelerate", "deepspeed"})
TRACKING_ONLY = frozenset({"wandb"})


def module_name(path: Path, root: Path) -> str:
    """``cvdist.data.stream`` for ``root/cvdist/data/stream.py`` (``root`` holds the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The unit a ``cvdist.*`` module belongs to (see the module docstring)."""
    parts = module.split(".")[1:]
    if not parts:
        return "cvdist"
    if parts[0] == "tasks" and len(parts) > 1:
        return f"tasks.{parts[1]}"
    return parts[0]


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, *, module: str, is_package: bool, root: Path) -> set[str]:
    """Every module ``source`` imports (absolute names; relative imports resolved against
    ``module``; ``from package import submodule`` counts as importing the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}", root))
    return found


def _rule_violations(unit: str, module: str, target: str) -> list[str]:
    top = target.split(".")[0]
    problems = []
    if top in ENGINE_ONLY and unit != "engine":
        problems.append(f"{module} imports {target}: only cvdist.engine may import accelerate / deepspeed")
    if top in TRACKING_ONLY and unit != "tracking":
        problems.append(f"{module} imports {target}: only cvdist.tracking may import wandb")
    if top == "recipes":
        problems.append(f"{module} imports {target}: nothing imports recipes/ (entry points only)")
    if top != "cvdist" or target == "cvdist":
        return problems
    other = unit_of(target)
    if unit in BUILDING_BLOCKS and (other.split(".")[0] == "tasks" or other in ABOVE_BLOCKS):
        problems.append(f"{module} imports {target}: building block '{unit}' may not import '{other}'")
    if unit.startswith("tasks.") and other.startswith("tasks.") and other not in (unit, "tasks.common", "tasks"):
        problems.append(f"{module} imports {target}: a task imports no other task; move what both need "
                        "into cvdist/tasks/common.py or a building block")
    if unit == "tasks.common" and other.startswith("tasks.") and other != "tasks.common":
        problems.append(f"{module} imports {target}: tasks/common.py is shared glue and imports no task")
    if unit in ("engine", "tracking", "config", "config_loading") and (other.startswith("tasks") or other == "commands"):
        problems.append(f"{module} imports {target}: '{unit}' sits below the tasks and commands")
    if other == "commands" and unit not in ("cli", "commands"):
        problems.append(f"{module} imports {target}: only cvdist.cli imports the commands")
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def contract_violations(root: Path) -> list[str]:
    """Every breach of the dependency rules in ``root/cvdist`` (empty when the tree keeps them)."""
    package = root / "cvdist"
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"{package} is not a package")
    problems, edges, witnesses = [], {}, {}
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, root)
        unit = unit_of(module)
        for target in sorted(imported_modules(path.read_text(), module=module, is_package=path.name == "__init__.py",
                                                   root=root)):
            problems.extend(_rule_violations(unit, module, target))
            if target.startswith("cvdist.") and unit_of(target) not in (unit, "tasks", "cvdist"):
                edges.setdefault(unit, set()).add(unit_of(target))
                witnesses.setdefault((unit, unit_of(target)), f"{module} imports {target}")
    for group in _cycles(edges):
        links = [witnesses[(a, b)] for a in group for b in group if (a, b) in witnesses]
        problems.append(f"units {', '.join(group)} import each other: " + "; ".join(links))
    return problems
