"""End-to-end runs of recipes/pretrain_autoencoder.py with 2 processes: multi-task (conv
reconstruction + rotation) under DDP, the masked autoencoder under ZeRO-2; reconstruction loss
falls, grids are written (and logged to W&B offline), each loss is logged on its own, and the
pretrained trunks transfer (into recipes/longtail.py, and the MAE encoder into its ViT)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from cvdist.engine.transfer import load_backbone
from cvdist.models.vit import build_vit
from tests.helpers.recipes import REPO, run_recipe

SCRIPT = REPO / "recipes" / "pretrain_autoencoder.py"
slow = pytest.mark.slow

# Fashion-MNIST (the Debian package `make test` installs): real images, so reconstruction is learnable
# in a few steps; 512 training images, 64 for evaluation.
COMMON = [
    "data.num_train_samples=512", "data.num_eval_samples=64", "data.global_batch_size=32",
    "schedule.warmup_steps=2", "tracking.log_every_steps=1", "train.max_steps=24", "train.eval_every_steps=12",
    "ae.num_grid_images=4", "ae.knn_bank_size=512",
]


def read_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_grids(run_dir, steps):
    for step in steps:
        with Image.open(run_dir / f"recon_step{step}.png") as image:
            assert image.size == (4 * (28 + 2) + 2, 2 * (28 + 2) + 2)  # 4 images, inputs over reconstructions


@slow
def test_multitask_ddp_run_learns_logs_each_loss_writes_grids_and_transfers(tmp_path):
    runs = tmp_path / "runs"
    run_recipe([*COMMON, "--config", "recipes/pretrain_multitask.yaml", "model.name=tiny_cnn", "optim.lr=0.01",
                "dist.strategy=ddp", "tracking.wandb_mode=offline", f"output_dir={runs}"], nproc=2, script=SCRIPT)
    run_dir = runs / "pretrain_multitask"
    rows = read_rows(run_dir)
    train_rows = [r for r in rows if "train/loss" in r]
    assert len(train_rows) == 24
    for row in train_rows:  # each loss on its own, and the total is their weighted sum (yaml: 1, 0.5, 0.5)
        assert row["train/loss"] == pytest.approx(row["train/loss_reconstruction"] + 0.5 * row["train/loss_rotation"]
                                                   + 0.5 * row["train/loss_contrastive"])
    evals = [r for r in rows if "eval/loss_reconstruction" in r]
    assert [r["step"] for r in evals] == [12, 24]
    assert all(0 <= r["eval/rotation_top1"] <= 1 and 0 <= r["eval/knn_top1"] <= 1 for r in evals)
    assert evals[-1]["eval/loss_reconstruction"] < 0.7 * train_rows[0]["train/loss_reconstruction"]
    check_grids(run_dir, [12, 24])
    logged = [p.name for p in (run_dir / "wandb").rglob("reconstructions_*.png")]
    assert len(logged) == 2, logged  # rank 0 logged each grid once

    # the trunk carries into the long-tail recipe with a new head
    result = run_recipe(["model.name=tiny_cnn", f"transfer.from_path={run_dir}", "data.num_train_samples=1000",
                         "data.imbalance_factor=10", "data.num_eval_samples=64", "data.global_batch_size=32", "train.max_steps=2",
                         "tracking.wandb_mode=disabled", f"output_dir={tmp_path / 'lt'}"],
                        script=REPO / "recipes" / "longtail.py")
    assert f"loaded trunk weights from {run_dir} (new head '4')" in result.stdout


@slow
def test_mae_zero2_run_learns_and_its_encoder_loads_into_the_vit(tmp_path):
    runs = tmp_path / "runs"
    run_recipe([*COMMON, "--config", "recipes/pretrain_mae.yaml", "ae.vit=vit_micro", "ae.decoder_dim=32",
                "ae.decoder_depth=1", "optim.lr=0.005", "dist.strategy=zero2", "tracking.wandb_mode=disabled",
                f"output_dir={runs}"], nproc=2, script=SCRIPT)
    run_dir = runs / "pretrain_mae"
    rows = read_rows(run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["strategy"] == "zero2"
    first = rows[0]["train/loss_reconstruction"]
    evals = [r["eval/loss_reconstruction"] for r in rows if "eval/loss_reconstruction" in r]
    assert len(evals) == 2 and evals[-1] < evals[0] < first
    assert 0 <= rows[-1]["eval/knn_top1"] <= 1
    check_grids(run_dir, [12, 24])
    vit = build_vit(name="vit_micro", num_classes=10, in_channels=1)
    assert load_backbone(vit, source=run_dir) == "head"  # consolidated ZeRO weights, decoder left out
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # and through the long-tail recipe, by model name
    result = run_recipe(["model.name=vit_micro", f"transfer.from_path={run_dir}", "data.num_train_samples=1000",
                         "data.imbalance_factor=10", "data.num_eval_samples=64", "data.global_batch_size=32",
                         "train.max_steps=2", "tracking.wandb_mode=disabled", f"output_dir={tmp_path / 'lt'}"],
                        script=REPO / "recipes" / "longtail.py")
    assert f"loaded trunk weights from {run_dir} (new head 'head')" in result.stdout


@slow
def test_multitask_run_resumed_from_a_checkpoint_continues_exactly(tmp_path):
    # constant LR, so a 4-step run resumed to 8 steps follows the same schedule as a straight 8-step run;
    # the views' seeds, rotations (global RNG, restored) and data order must all continue where they stopped
    tiny = ["data.dataset=synthetic", "model.name=tiny_cnn", "data.num_train_samples=128", "data.num_eval_samples=32",
            "data.global_batch_size=16", "schedule.name=constant", "tracking.log_every_steps=1", "ae.knn_k=0",
            "ae.num_grid_images=0", "tracking.wandb_mode=disabled", "--config", "recipes/pretrain_multitask.yaml",
            "multitask.projection_hidden_dim=32", "multitask.projection_dim=16", "optim.lr=0.01"]
    run_recipe([*tiny, "train.max_steps=8", f"output_dir={tmp_path / 'straight'}"], script=SCRIPT)
    resumed_dir = tmp_path / "resumed"
    run_recipe([*tiny, "train.max_steps=4", f"output_dir={resumed_dir}"], script=SCRIPT)
    run_recipe([*tiny, "train.max_steps=8", "checkpoint.resume=auto", f"output_dir={resumed_dir}"], script=SCRIPT)
    keys = ("train/loss_reconstruction", "train/loss_rotation", "train/loss_contrastive")
    straight = [r[k] for r in read_rows(tmp_path / "straight" / "pretrain_multitask") if "train/loss" in r for k in keys]
    resumed = [r[k] for r in read_rows(resumed_dir / "pretrain_multitask") if "train/loss" in r for k in keys]
    assert len(straight) == len(resumed) == 8 * len(keys)
    assert resumed == pytest.approx(straight, rel=1e-5)
