"""The methods of ssl.method in process: each variant YAML loads, validates and trains a step on
the model it builds; multi-crop views (the global ones are two_views' draws, the local ones are
seeded per batch); DINO's teacher temperature schedule and center state; config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvdist.config import ConfigError
from cvdist.config_loading import load_recipe_config
from cvdist.data.batch_views import ViewAugmentation, multi_crop_views, two_views
from cvdist.engine.loop import Progress
from cvdist.models.heads import momentum_at
from cvdist.tasks.contrastive.config import ContrastiveRunConfig, validate_contrastive
from cvdist.tasks.contrastive.methods import teacher_temperature_at
from cvdist.tasks.contrastive.step import ContrastiveStep, build_contrastive_model
from tests.helpers.recipes import REPO

RECIPE_YAML = REPO / "recipes" / "pretrain_contrastive.yaml"
VARIANTS = {"byol": "byol", "simsiam": "simsiam", "dino": "dino", "vicreg": "vicreg", "barlow": "barlow_twins"}
SMALL = ["model.name=tiny_cnn", "ssl.projection_hidden_dim=32", "ssl.projection_dim=16",
         "ssl.prediction_hidden_dim=16", "ssl.dino_num_prototypes=32", "ssl.dino_bottleneck_dim=8"]


def _config(args: list[str]) -> ContrastiveRunConfig:
    config = load_recipe_config(args, default_yaml=RECIPE_YAML, recipe="pretrain_contrastive",
                                schema=ContrastiveRunConfig)
    validate_contrastive(config)
    return config


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_yaml_selects_its_method_and_trains_a_step(variant):
    config = _config(["--config", str(REPO / "recipes" / f"pretrain_{variant}.yaml"), *SMALL])
    assert config.ssl.method == VARIANTS[variant] and config.name == f"pretrain_{variant}"
    torch.manual_seed(0)
    model = build_contrastive_model(config)
    step = ContrastiveStep(model=model, ssl=config.ssl, data=config.data, seed=0, rank=0, world_size=1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trunk_before = [p.detach().clone() for p in model.trunk.parameters()]
    images = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    loss, metrics = step(model, {"image": images}, Progress(step=0, micro_batch=0, epoch=0, total_steps=10))
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    step.on_step_end(Progress(step=1, micro_batch=1, epoch=0, total_steps=10))
    assert any(not torch.equal(a, b) for a, b in zip(trunk_before, model.trunk.parameters()))
    heads = model.heads
    if config.ssl.method in ("byol", "dino"):  # the target moved towards the online weights, by the schedule
        online, target = next(model.trunk.parameters()), next(heads.momentum_trunk.parameters())
        m = momentum_at(1, total_steps=10, base=config.ssl.momentum)
        torch.testing.assert_close(target, m * trunk_before[0] + (1 - m) * online.detach())
    if config.ssl.method == "dino":
        assert config.ssl.num_local_crops == 4 and metrics["train/teacher_temperature"] == 0.04
        assert heads.center.abs().sum() > 0 and f"{model.head_name}.center" in model.state_dict()
    else:
        assert "center" not in "".join(model.state_dict())  # the other methods' keys are unchanged


def test_teacher_temperature_warms_up_linearly_then_stays():
    config = _config(["--config", str(REPO / "recipes" / "pretrain_dino.yaml"), "ssl.dino_teacher_warmup_steps=10"])
    values = [teacher_temperature_at(step, ssl=config.ssl) for step in (0, 5, 10, 50)]
    assert values == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_multi_crop_keeps_the_two_views_and_seeds_the_local_crops_per_batch():
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    aug, local_aug = ViewAugmentation(brightness=0.4), ViewAugmentation(scale=(0.05, 0.4), brightness=0.4)
    draw = dict(seed=7, rank=1, mean=[0.5], std=[0.25])
    first, second, local = multi_crop_views(images, aug, local_aug, num_local=2, local_size=12, index=4, **draw)
    a, b = two_views(images, aug, index=4, **draw)
    assert torch.equal(first, a) and torch.equal(second, b)  # switching multi-crop on keeps the global draws
    assert local.shape == (6, 1, 12, 12)
    again = multi_crop_views(images, aug, local_aug, num_local=2, local_size=12, index=4, **draw)[2]
    other = multi_crop_views(images, aug, local_aug, num_local=2, local_size=12, index=5, **draw)[2]
    assert torch.equal(local, again) and not torch.equal(local, other)
    assert not torch.equal(local[:3], local[3:])  # two different crops per image


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="ssl.num_local_crops=2 is used by ssl.method=dino only"):
        _config(["ssl.method=byol", "ssl.num_local_crops=2"])
    with pytest.raises(ConfigError, match="ssl.dino_center_momentum=1.0"):
        _config(["ssl.method=dino", "ssl.dino_center_momentum=1.0"])
    with pytest.raises(ConfigError, match="ssl.local_crop_scale"):
        _config(["ssl.method=dino", "ssl.local_crop_scale=[0.5,0.1]"])
    with pytest.raises(ConfigError, match="ssl.barlow_lambda=-1"):
        _config(["ssl.method=barlow_twins", "ssl.barlow_lambda=-1"])
    assert Path(RECIPE_YAML).exists()


@pytest.mark.parametrize("backbone", ["vit_micro", "small_resnet"])
def test_dino_with_multi_crop_on_a_vit_and_a_resnet(backbone):
    # the ViT's 4 px patches tile the 12 px local crops (3 x 3) as well as the 28 px global views
    config = _config(["--config", str(REPO / "recipes" / "pretrain_dino.yaml"), *SMALL, f"model.name={backbone}"])
    torch.manual_seed(0)
    model = build_contrastive_model(config)
    step = ContrastiveStep(model=model, ssl=config.ssl, data=config.data, seed=0, rank=0, world_size=1)
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    loss, _ = step(model, {"image": images}, Progress(step=0, micro_batch=0, epoch=0, total_steps=4))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.trunk.parameters())
