"""The dependency direction (recipes -> tasks -> engine / tracking -> building blocks) holds in
the real tree, and the checker catches each kind of wrong import in small fixture trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.import_contract import contract_violations, imported_modules, unit_of
from tests.helpers.recipes import REPO

# A fixture tree that keeps every rule; each case below adds one file that breaks one.
CLEAN_TREE = {
    "cvdist/__init__.py": "",
    "cvdist/config.py": "from cvdist.models import build_model\n",
    "cvdist/cli.py": "from cvdist.commands import eval\n",
    "cvdist/commands/__init__.py": "",
    "cvdist/commands/eval.py": "from cvdist.tasks.longtail import main\n",
    "cvdist/data/__init__.py": "import torch\nfrom cvdist.config import DataConfig\n",
    "cvdist/eval/__init__.py": "from cvdist import comm\n",
    "cvdist/comm.py": "import torch.distributed\n",
    "cvdist/models/__init__.py": "",
    "cvdist/engine/__init__.py": "import accelerate\nimport deepspeed\nfrom cvdist.tracking import records\n",
    "cvdist/tracking/__init__.py": "import wandb\n",
    "cvdist/tasks/__init__.py": "",
    "cvdist/tasks/common.py": "from cvdist.losses import longtail\n",
    "cvdist/losses/__init__.py": "",
    "cvdist/tasks/longtail/__init__.py": "from .main import main\n",
    "cvdist/tasks/longtail/main.py": ("from cvdist.engine import fit\nfrom cvdist.tasks.common import LossConfig\n"
                                      "from cvdist.data import x\nfrom . import step\n"),
    "cvdist/tasks/longtail/step.py": "",
    "cvdist/tasks/distill/__init__.py": "from cvdist.tasks.common import StepCounter\n",
}

BAD_IMPORTS = {
    "block imports engine": ("cvdist/data/loader.py", "from cvdist.engine import fit\n",
                             "building block 'data' may not import 'engine'"),
    "block imports a task (lazily)": ("cvdist/models/x.py", "def f():\n    from cvdist.tasks.longtail import step\n",
                                      "building block 'models' may not import 'tasks.longtail'"),
    "block imports tracking": ("cvdist/eval/x.py", "from cvdist.tracking import records\n",
                               "building block 'eval' may not import 'tracking'"),
    "deepspeed outside engine": ("cvdist/tasks/longtail/zero.py", "import deepspeed.comm\n",
                                 "only cvdist.engine may import accelerate / deepspeed"),
    "accelerate in a block": ("cvdist/data/acc.py", "from accelerate import Accelerator\n",
                              "only cvdist.engine may import accelerate / deepspeed"),
    "wandb outside tracking": ("cvdist/engine/log.py", "import wandb\n", "only cvdist.tracking may import wandb"),
    "recipes imported": ("cvdist/commands/run.py", "from recipes.longtail import main\n",
                         "nothing imports recipes/"),
    "task imports another task": ("cvdist/tasks/distill/step.py", "from cvdist.tasks.longtail.step import x\n",
                                  "a task imports no other task"),
    "task imports another task (relative)": ("cvdist/tasks/distill/main.py", "from ..longtail import step\n",
                                             "a task imports no other task"),
    "common imports a task": ("cvdist/tasks/common2.py", "", None),  # placeholder replaced below
    "engine imports a task": ("cvdist/engine/glue.py", "from cvdist.tasks.longtail import main\n",
                              "'engine' sits below the tasks and commands"),
    "a task imports a command": ("cvdist/tasks/longtail/cmd.py", "from cvdist.commands import eval\n",
                                 "only cvdist.cli imports the commands"),
    "two blocks import each other": ("cvdist/comm.py", "import torch.distributed\nfrom cvdist.eval import x\n",
                                     "units comm, eval import each other"),
    "cycle through three units": ("cvdist/models/y.py", "from cvdist.config import ModelConfig\n"
                                  "from cvdist.data import z\n", "units config, data, models import each other"),
}
BAD_IMPORTS["common imports a task"] = ("cvdist/tasks/common.py", "from cvdist.tasks.distill import StepCounter\n",
                                        "tasks/common.py is shared glue and imports no task")


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_real_tree_keeps_the_contract():
    assert (REPO / "cvdist" / "tasks" / "longtail").is_dir()  # the layout the rules talk about exists
    assert contract_violations(REPO) == []


def test_the_clean_fixture_tree_has_no_violation(tmp_path):
    assert contract_violations(write_tree(tmp_path, CLEAN_TREE)) == []


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_each_wrong_import_is_reported(tmp_path, case):
    relative, text, expected = BAD_IMPORTS[case]
    files = {**CLEAN_TREE, relative: text}
    problems = contract_violations(write_tree(tmp_path, files))
    assert any(expected in problem for problem in problems), problems


def test_real_tree_fails_when_a_wrong_import_is_added(tmp_path):
    # a copy of the real package with one deliberately wrong import in a building block
    files = {str(p.relative_to(REPO)): p.read_text() for p in (REPO / "cvdist").rglob("*.py")}
    files["cvdist/data/stream.py"] += "\nfrom cvdist.engine.loop import fit  # wrong on purpose\n"
    problems = contract_violations(write_tree(tmp_path, files))
    assert problems == ["cvdist.data.stream imports cvdist.engine.loop: building block 'data' may not import 'engine'"]


def test_units_and_relative_imports(tmp_path):
    assert unit_of("cvdist.tasks.longtail.step") == "tasks.longtail"
    assert unit_of("cvdist.tasks.common") == "tasks.common"
    assert unit_of("cvdist.data.stream") == "data" and unit_of("cvdist.cli") == "cli"
    root = write_tree(tmp_path, CLEAN_TREE)
    found = imported_modules("from ..common import LossConfig\nfrom . import step\n",
                             module="cvdist.tasks.longtail.main", is_package=False, root=root)
    assert {"cvdist.tasks.common", "cvdist.tasks.longtail.step"} <= found
