"""small_resnet (cvdist.models.small_resnet) and the supervised recipe's loss.label_smoothing."""

from __future__ import annotations

import json

import pytest
import torch

from cvdist.config import ConfigError
from cvdist.config_loading import load_recipe_config
from cvdist.models import MODEL_NAMES, build_backbone, build_model
from cvdist.models.small_resnet import BasicBlock, build_small_resnet
from cvdist.tasks.supervised.config import SupervisedRunConfig, validate_supervised
from tests.helpers.recipes import RECIPE, TINY, run_recipe


def test_small_resnet_shapes_size_and_backbone_keys():
    assert "small_resnet" in MODEL_NAMES
    model = build_model(name="small_resnet", num_classes=10, in_channels=1)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)  # any 28-64 px side works (adaptive pool)
    assert 130_000 < sum(p.numel() for p in model.parameters()) < 150_000
    rgb = build_small_resnet(num_classes=5, in_channels=3, width=16)
    assert rgb(torch.randn(2, 3, 28, 28)).shape == (2, 5)
    trunk, dim = build_backbone("small_resnet", in_channels=1)
    assert dim == 64 * 7 * 7 and trunk(torch.randn(3, 1, 28, 28)).shape == (3, 64 * 7 * 7)
    assert set(trunk.state_dict()) == {k for k in model.state_dict() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match="width"):
        build_small_resnet(num_classes=10, in_channels=1, width=0)


def test_head_reads_the_7x7_grid_and_head_grid_1_is_global_pooling():
    model = build_small_resnet(num_classes=10, in_channels=1)
    features = {}
    model.avgpool.register_forward_hook(lambda module, inputs, output: features.update(grid=inputs[0], pooled=output))
    model.eval()
    model(torch.randn(2, 1, 28, 28))
    assert torch.equal(features["pooled"], features["grid"]), "at 28 px the 7x7 grid reaches the head unchanged"
    pooled = build_small_resnet(num_classes=10, in_channels=1, head_grid=1)
    assert pooled.fc.in_features == 64 and pooled(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="head_grid"):
        build_small_resnet(num_classes=10, in_channels=1, head_grid=0)


def test_residual_blocks_start_as_the_identity():
    block = BasicBlock(8)
    x = torch.relu(torch.randn(2, 8, 7, 7))  # block inputs follow a ReLU
    assert torch.equal(block(x), x)


def test_label_smoothing_config_is_checked():
    yaml = RECIPE.with_suffix(".yaml")
    config = load_recipe_config(["loss.label_smoothing=0.2"], default_yaml=yaml, recipe="supervised",
                                schema=SupervisedRunConfig)
    assert config.loss.label_smoothing == 0.2
    validate_supervised(config)
    for bad in (1.0, -0.1):
        config.loss.label_smoothing = bad
        with pytest.raises(ConfigError, match="loss.label_smoothing"):
            validate_supervised(config)


def test_recipe_trains_with_and_without_label_smoothing(tmp_path):
    first_losses = {}
    for smoothing in (0.0, 0.5):
        name = f"ls{smoothing:g}"
        run_recipe([*TINY, f"output_dir={tmp_path}", f"name={name}", "train.max_steps=2",
                    f"loss.label_smoothing={smoothing}", "checkpoint.every_steps=0"])
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        first_losses[smoothing] = rows[0]["train/loss"]
    # same seed, same first batch and weights: only the loss's targets differ
    assert first_losses[0.0] != pytest.approx(first_losses[0.5], abs=1e-4)
