"""Run the real recipes as subprocesses (python or torchrun) on tiny data: the settings and the
environment every recipe test shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "supervised.py"
BIN = Path(sys.executable).parent

# A few-second run: tiny CNN without normalisation layers on synthetic 28x28 images.
TINY = [
    "data.dataset=synthetic", "model.name=tiny_cnn", "data.num_train_samples=256",
    "data.num_eval_samples=64", "data.global_batch_size=32", "tracking.wandb_mode=disabled",
    "optim.lr=0.05", "schedule.warmup_steps=2", "tracking.log_every_steps=1",
]


def recipe_command(*, nproc: int, script: Path = RECIPE) -> list[str]:
    """The command line that starts ``script`` with ``nproc`` processes (plain python for one)."""
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
    """Run a recipe with config overrides ``args``; raise with its output when it fails (``check``)."""
    result = subprocess.run(recipe_command(nproc=nproc, script=script) + list(args), cwd=REPO,
                            env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"recipe failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result



# The long-tail recipe on TINY's settings: a long-tailed synthetic set with tau-norm and post-hoc adjustment.
LONGTAIL_TINY = [
    *[arg for arg in TINY if not arg.startswith("data.num_train_samples")], "data.num_train_samples=600",
    "data.imbalance_factor=10", "longtail.holdout_per_class=5", "longtail.tau_norm=true",
    "longtail.posthoc_tau=1.0", "longtail.shot_many=200", "longtail.shot_few=80",  # non-empty groups at this size
    "train.eval_every_steps=4",
]


# The detection recipe on 64 px synthetic scenes, 2-3 items of 16-28 px: about a second per step.
TINY_DETECT = [
    "data.dataset=synthetic", "data.num_train_samples=48", "data.num_eval_samples=12", "data.image_size=64",
    "scenes.min_item_size=16", "scenes.max_item_size=28", "scenes.max_items=3", "data.global_batch_size=8",
    "data.eval_batch_size=4", "schedule.warmup_steps=2", "tracking.wandb_mode=disabled", "tracking.log_every_steps=1",
]


# The segmentation recipe on 32 px synthetic scenes, 1-2 items of 10-18 px, the U-Net head on the
# small CNN: well under a second per step.
TINY_SEGMENT = [
    "data.dataset=synthetic", "data.num_train_samples=48", "data.num_eval_samples=12", "data.image_size=32",
    "scenes.min_item_size=10", "scenes.max_item_size=18", "scenes.max_items=2", "data.global_batch_size=8",
    "data.eval_batch_size=6", "model.name=small_cnn", "schedule.warmup_steps=2", "tracking.wandb_mode=disabled",
    "tracking.log_every_steps=1",
]
