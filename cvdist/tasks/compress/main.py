"""``main`` of the compress task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/compress.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cvdist.config_loading import load_recipe_config
from cvdist.tasks.compress.run import CompressRunConfig, run_compress


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml, recipe="compress",
                                schema=CompressRunConfig)
    run_compress(config)
    return 0
