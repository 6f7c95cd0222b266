"""Vertical flips and rotation are reachable from the config on every data path: the per-sample
decoder of the labelled recipes (``data.vflip``, ``data.rotation_degrees``, ... over the
``data.augment`` preset) and the on-device views of the SSL recipes (``ssl.view_vflip``,
``ssl.view_rotation_degrees``, ``multitask.view_*``)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from cvdist.config import ConfigError, DataConfig
from cvdist.config_loading import load_config
from cvdist.data.batch_views import ViewAugmentation, _view_transforms, augment_view, view_generator
from cvdist.data.from_config import augmentation_options, build_labelled_data
from cvdist.tasks.autoencoder.config import AutoencoderRunConfig, validate_autoencoder
from cvdist.tasks.contrastive.config import ContrastiveRunConfig, validate_contrastive
from cvdist.tasks.contrastive.step import view_augmentation


def _first_batch(tmp_path, **options) -> dict:
    data = DataConfig(dataset="synthetic", num_train_samples=64, num_eval_samples=16, shuffle_buffer=0,
                      cache_dir=str(tmp_path), **options)
    labelled = build_labelled_data(data, in_channels=1, num_classes=10, rank=0, world_size=1, micro_batch_size=16,
                                   seed=0, num_epochs=1)
    return next(iter(labelled.train.iterate(epoch=0)))


def test_data_vflip_reaches_the_training_batches(tmp_path):
    plain = _first_batch(tmp_path, augment="none")
    flipped = _first_batch(tmp_path, augment="flip", hflip=0.0, vflip=1.0)
    assert plain["key"] == flipped["key"]
    assert torch.equal(flipped["image"], plain["image"].flip(-2))
    assert not torch.equal(flipped["image"], plain["image"])


def test_data_rotation_reaches_the_training_transform(tmp_path):
    data = DataConfig(augment="standard", rotation_degrees=30.0, vflip=0.25, crop_scale=[0.5, 1.0])
    assert augmentation_options(data) == {"rotation_degrees": 30.0, "vflip": 0.25, "crop_scale": (0.5, 1.0)}
    decoder = build_labelled_data(
        DataConfig(dataset="synthetic", num_train_samples=32, num_eval_samples=8, cache_dir=str(tmp_path),
                   augment="standard", rotation_degrees=30.0, vflip=0.25), in_channels=1, num_classes=10,
        rank=0, world_size=1, micro_batch_size=8, seed=0, num_epochs=1).train.dataset.decoder
    ops = {type(op): op for op in decoder.transform.transforms}
    assert ops[v2.RandomRotation].degrees == [-30.0, 30.0] and ops[v2.RandomVerticalFlip].p == 0.25


@pytest.mark.parametrize("options, message", [
    ({"augment": "none", "vflip": 0.5}, r"data\.vflip=0\.5 does not apply to preset='none'"),
    ({"augment": "flip", "rotation_degrees": 10.0}, r"data\.rotation_degrees=10\.0 .*presets that use it: standard, strong"),
    ({"augment": "flip", "vflip": 1.5}, r"data\.vflip=1\.5 must be a probability"),
    ({"augment": "standard", "crop_scale": [0.9, 0.2]}, r"data\.crop_scale=\(0\.9, 0\.2\)"),
    ({"augment": "strong", "color_jitter": -1.0}, r"data\.color_jitter=-1\.0 must be >= 0"),
])
def test_options_a_preset_does_not_take_are_config_errors_before_any_data_is_written(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        build_labelled_data(DataConfig(dataset="synthetic", cache_dir=str(tmp_path / "cache"), **options),
                            in_channels=1, num_classes=10, rank=0, world_size=1, micro_batch_size=8, seed=0,
                            num_epochs=1)
    assert not (tmp_path / "cache").exists()


def test_view_vflip_flips_exactly_and_leaves_the_other_draws_alone():
    images = torch.randn(64, 1, 12, 12, dtype=torch.float64)
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    views = augment_view(images, ViewAugmentation(**whole, vflip=True), view_generator(seed=3, rank=0, index=0),
                         mean=[0.0], std=[1.0])
    flipped = [torch.allclose(v, i.flip(-2)) for v, i in zip(views, images)]
    same = [torch.allclose(v, i) for v, i in zip(views, images)]
    assert all(f != s for f, s in zip(flipped, same)) and 16 < sum(flipped) < 48
    # without the new options the maps are the ones drawn before they existed: one flip draw each
    boxes = torch.rand(8, 4, dtype=torch.float64)
    theta = _view_transforms(8, boxes, ViewAugmentation(), view_generator(seed=1, rank=0, index=2))
    signs = torch.where(torch.rand(8, generator=view_generator(seed=1, rank=0, index=2)) < 0.5, -1.0, 1.0).double()
    expected = torch.zeros(8, 2, 3, dtype=torch.float64)
    expected[:, 0, 0], expected[:, 1, 1] = boxes[:, 2] * signs, boxes[:, 3]
    expected[:, 0, 2], expected[:, 1, 2] = boxes[:, 0] * 2 - 1, boxes[:, 1] * 2 - 1
    assert torch.equal(theta, expected)


def test_view_rotation_stays_within_the_configured_angle_and_keeps_the_crop_size():
    count, degrees = 500, 25.0
    boxes = torch.tensor([[0.5, 0.5, 0.6, 0.8]], dtype=torch.float64).repeat(count, 1)
    aug = ViewAugmentation(rotation_degrees=degrees, flip=True, vflip=True)
    theta = _view_transforms(count, boxes, aug, view_generator(seed=0, rank=0, index=0))
    linear = theta[:, :, :2]
    # R @ diag(sx w, sy h): the columns keep the crop's side lengths, the angle is within bounds
    assert torch.allclose(linear[:, :, 0].norm(dim=1), torch.full((count,), 0.6, dtype=torch.float64))
    assert torch.allclose(linear[:, :, 1].norm(dim=1), torch.full((count,), 0.8, dtype=torch.float64))
    angles = torch.atan2(linear[:, 1, 0] * linear[:, 0, 0].sign(), linear[:, 0, 0].abs())
    assert angles.abs().max() <= math.radians(degrees) + 1e-9 and angles.abs().max() > math.radians(degrees) * 0.9
    determinants = torch.linalg.det(linear).abs()
    assert torch.allclose(determinants, torch.full_like(determinants, 0.6 * 0.8))


def test_ssl_view_options_reach_the_views_and_are_checked():
    config = load_config(schema=ContrastiveRunConfig, overrides=["ssl.view_vflip=true", "ssl.view_rotation_degrees=20"])
    validate_contrastive(config)
    augmentation = view_augmentation(config.ssl)
    assert augmentation.vflip and augmentation.rotation_degrees == 20.0
    with pytest.raises(ConfigError, match=r"ssl\.view_rotation_degrees=200\.0 must lie in \[0, 180\]"):
        validate_contrastive(load_config(schema=ContrastiveRunConfig, overrides=["ssl.view_rotation_degrees=200"]))
    with pytest.raises(ConfigError, match=r"multitask\.view_rotation_degrees=-5\.0"):
        validate_autoencoder(load_config(schema=AutoencoderRunConfig, overrides=[
            "multitask.weights.contrastive=0.5", "multitask.view_rotation_degrees=-5"]))
