"""Shared helpers: run the real recipe as a subprocess (python or torchrun) on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "supervised.py"
BIN = Path(sys.executable).parent

# A few-second run: tiny CNN without normalisation layers on synthetic 28x28 images.
TINY = [
    "data.dataset=synthetic", "model.name=tiny_cnn", "data.num_train_samples=256",
    "data.num_eval_samples=64", "data.global_batch_size=32", "tracking.wandb_mode=disabled",
    "optim.lr=0.05", "schedule.warmup_steps=2", "tracking.log_every_steps=1",
]


def recipe_command(*, nproc: int, script: Path = RECIPE) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(script)]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(script)]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without launcher variables that would confuse a child."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "WANDB_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                   "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def run_recipe(args: list[str], *, nproc: int = 1, timeout: float = 300, env: dict | None = None,
               check: bool = True, script: Path = RECIPE) -> subprocess.CompletedProcess:
    result = subprocess.run(recipe_command(nproc=nproc, script=script) + list(args), cwd=REPO,
                            env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"recipe failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session", autouse=True)
def builtin_shard_cache(tmp_path_factory):
    """One cache of built-in shard sets for the whole test session (the tests and the recipes they
    start as subprocesses), never the user's ``~/.cache/cvdist``."""
    cache = tmp_path_factory.mktemp("cvdist-cache")
    previous = os.environ.get("CVDIST_CACHE_DIR")
    os.environ["CVDIST_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("CVDIST_CACHE_DIR", None)
    else:
        os.environ["CVDIST_CACHE_DIR"] = previous


@pytest.fixture
def tiny_args(tmp_path):
    return [*TINY, f"output_dir={tmp_path / 'runs'}"]
