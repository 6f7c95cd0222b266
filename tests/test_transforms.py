"""Augmentation presets, multi-view crops and multi-scale batches (fast, CPU only)."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cvdist.data.transforms import (PRESET_DEFAULTS, MultiScaleBatch, build_multiview_transform, build_transform,
                                    resize_batch)

GREY_STATS = dict(mean=(0.5,), std=(0.25,))
RGB_STATS = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def stats(grey: bool) -> dict:
    return GREY_STATS if grey else RGB_STATS


def random_image(*, grey: bool, width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width) if grey else (height, width, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L" if grey else "RGB")


@pytest.mark.parametrize("grey", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("preset", list(PRESET_DEFAULTS))
def test_output_shape_and_dtype(preset, train, grey):
    transform = build_transform(preset=preset, image_size=24, grey=grey, train=train, **stats(grey))
    out = transform(random_image(grey=grey))
    assert type(out) is torch.Tensor  # a plain tensor, not a torchvision tv_tensor subclass
    assert out.dtype == torch.float32 and out.shape == (1 if grey else 3, 24, 24)


@pytest.mark.parametrize("grey", [True, False])
def test_mode_is_converted_to_requested_channels(grey):
    transform = build_transform(preset="none", image_size=16, grey=grey, train=False, **stats(grey))
    out = transform(random_image(grey=not grey, width=16, height=16))
    assert out.shape == (1 if grey else 3, 16, 16)


@pytest.mark.parametrize("train", [True, False])
def test_constant_image_maps_to_normalised_value(train):
    values, mean, std = (10, 100, 200), RGB_STATS["mean"], RGB_STATS["std"]
    image = Image.fromarray(np.broadcast_to(np.array(values, dtype=np.uint8), (20, 20, 3)).copy(), "RGB")
    out = build_transform(preset="none", image_size=20, grey=False, train=train, **RGB_STATS)(image)
    for channel, value in enumerate(values):
        expected = (value / 255 - mean[channel]) / std[channel]
        torch.testing.assert_close(out[channel], torch.full((20, 20), expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("grey", [True, False])
def test_flip_with_probability_one_flips(grey):
    image = random_image(grey=grey, width=24, height=24)
    plain = build_transform(preset="none", image_size=24, grey=grey, train=True, **stats(grey))(image)
    horizontal = build_transform(preset="flip", image_size=24, grey=grey, train=True, hflip=1.0,
                                 **stats(grey))(image)
    vertical = build_transform(preset="flip", image_size=24, grey=grey, train=True, hflip=0.0,
                               vflip=1.0, **stats(grey))(image)
    assert torch.equal(horizontal, torch.flip(plain, dims=[-1]))
    assert torch.equal(vertical, torch.flip(plain, dims=[-2]))


def test_eval_ignores_augmentation():
    image = random_image(grey=False, width=24, height=24)
    eval_strong = build_transform(preset="strong", image_size=24, grey=False, train=False, **RGB_STATS)
    eval_none = build_transform(preset="none", image_size=24, grey=False, train=False, **RGB_STATS)
    assert torch.equal(eval_strong(image), eval_none(image))


def test_strong_grey_keeps_one_channel_and_augments():
    image = random_image(grey=True, width=28, height=28)
    transform = build_transform(preset="strong", image_size=28, grey=True, train=True,
                                rotation_degrees=30.0, color_jitter=0.8, vflip=0.5, **GREY_STATS)
    plain = build_transform(preset="none", image_size=28, grey=True, train=True, **GREY_STATS)(image)
    outs = [transform(image) for _ in range(5)]
    assert all(out.shape == (1, 28, 28) and torch.isfinite(out).all() for out in outs)
    assert any(not torch.equal(out, plain) for out in outs)


def test_user_errors_name_the_argument():
    common = dict(image_size=24, grey=False, train=True, **RGB_STATS)
    with pytest.raises(ValueError, match="preset='fancy'.*none, flip, standard, strong"):
        build_transform(preset="fancy", **common)
    with pytest.raises(ValueError, match="rotation_degrees=10.0 does not apply to preset='flip'.*strong"):
        build_transform(preset="flip", rotation_degrees=10.0, **common)
    with pytest.raises(ValueError, match="hflip=1.5"):
        build_transform(preset="flip", hflip=1.5, **common)
    with pytest.raises(ValueError, match="crop_scale"):
        build_transform(preset="standard", crop_scale=(0.5, 0.2), **common)
    with pytest.raises(ValueError, match="need 1 values each for grey=True"):
        build_transform(preset="none", image_size=24, grey=True, train=True, **RGB_STATS)
    with pytest.raises(ValueError, match="local_size is required"):
        build_multiview_transform(image_size=24, grey=False, num_local_views=2, **RGB_STATS)


@pytest.mark.parametrize("grey", [True, False])
def test_multiview_gives_distinct_views(grey):
    transform = build_multiview_transform(num_views=3, image_size=20, grey=grey, blur_p=0.5, **stats(grey))
    views = transform(random_image(grey=grey))
    assert isinstance(views, tuple) and len(views) == 3
    assert all(view.shape == (1 if grey else 3, 20, 20) and view.dtype == torch.float32 for view in views)
    assert all(not torch.equal(views[i], views[j]) for i in range(3) for j in range(i + 1, 3))


def test_multicrop_sizes():
    transform = build_multiview_transform(num_views=2, image_size=24, num_local_views=4, local_size=12,
                                          crop_scale=(0.4, 1.0), grey=False, **RGB_STATS)
    views = transform(random_image(grey=False))
    assert [tuple(view.shape) for view in views] == [(3, 24, 24)] * 2 + [(3, 12, 12)] * 4


def _all_outputs(image: Image.Image) -> list[torch.Tensor]:
    outs = [build_transform(preset=preset, image_size=16, grey=False, train=True, **RGB_STATS)(image)
            for preset in PRESET_DEFAULTS]
    outs += build_multiview_transform(image_size=16, grey=False, blur_p=0.5, num_local_views=1,
                                      local_size=8, **RGB_STATS)(image)
    return outs


def test_seeding_torch_reproduces_augmentations():
    image = random_image(grey=False)
    torch.manual_seed(7)
    first = _all_outputs(image)
    torch.manual_seed(7)
    second = _all_outputs(image)
    torch.manual_seed(8)
    other = _all_outputs(image)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_multiscale_sizes_are_rounded():
    assert MultiScaleBatch(scales=(0.5, 1.0, 1.5), base_size=28, seed=0).sizes == (16, 28, 44)
    assert MultiScaleBatch(scales=(0.5, 1.0, 1.5), base_size=28, seed=0, divisor=2).sizes == (14, 28, 42)
    with pytest.raises(ValueError, match="scales"):
        MultiScaleBatch(scales=(), base_size=28, seed=0)


def test_multiscale_is_deterministic_and_roughly_uniform():
    keys = [(epoch, index) for epoch in range(3) for index in range(1000)]
    picker = MultiScaleBatch(scales=(0.5, 1.0, 1.5), base_size=32, seed=3)
    sizes = [picker.size_for(*key) for key in keys]
    resumed = pickle.loads(pickle.dumps(MultiScaleBatch(scales=(0.5, 1.0, 1.5), base_size=32, seed=3)))
    assert [resumed.size_for(*key) for key in keys] == sizes
    other = MultiScaleBatch(scales=(0.5, 1.0, 1.5), base_size=32, seed=4)
    assert [other.size_for(*key) for key in keys] != sizes
    counts = collections.Counter(sizes)
    assert set(counts) == {16, 32, 48}
    assert all(abs(count / len(keys) - 1 / 3) < 0.04 for count in counts.values())


def test_resize_batch_shapes():
    batch = torch.rand(2, 3, 28, 28)
    assert resize_batch(batch, 28) is batch
    assert resize_batch(batch, 16).shape == (2, 3, 16, 16)
    assert resize_batch(batch, 44).shape == (2, 3, 44, 44)
    constant = torch.full((2, 1, 28, 28), 0.3)
    torch.testing.assert_close(resize_batch(constant, 16), torch.full((2, 1, 16, 16), 0.3))
    with pytest.raises(ValueError, match="float B x C x H x W"):
        resize_batch(torch.zeros(3, 28, 28), 16)


def test_transforms_pickle_round_trip():
    image = random_image(grey=False)
    for transform in (build_transform(preset="strong", image_size=16, grey=False, train=True, **RGB_STATS),
                      build_multiview_transform(image_size=16, grey=False, num_local_views=2,
                                                local_size=8, **RGB_STATS)):
        clone = pickle.loads(pickle.dumps(transform))
        torch.manual_seed(0)
        expected = transform(image)
        torch.manual_seed(0)
        actual = clone(image)
        expected, actual = (out if isinstance(out, tuple) else (out,) for out in (expected, actual))
        assert all(torch.equal(a, b) for a, b in zip(expected, actual, strict=True))


class ImageList(torch.utils.data.Dataset):
    """A few PIL images with labels, each mapped by a single-view and a multi-view transform."""

    def __init__(self, images, single, multi):
        self.images, self.single, self.multi = images, single, multi

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        return self.single(image), self.multi(image), index % 3


def test_transforms_work_in_dataloader_workers():
    images = [random_image(grey=True, seed=seed) for seed in range(8)]
    dataset = ImageList(images,
                        build_transform(preset="strong", image_size=16, grey=True, train=True, **GREY_STATS),
                        build_multiview_transform(num_views=2, image_size=16, grey=True, **GREY_STATS))
    # The default start method (fork on Linux) keeps this test fast; what spawn/forkserver add,
    # pickling the transforms into the workers, is checked by the round-trip test above.
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)

    def run():
        torch.manual_seed(11)  # the workers' seeds derive from the main process's torch RNG
        return list(loader)

    first, second = run(), run()
    assert len(first) == 2
    single, views, labels = first[0]
    assert single.shape == (4, 1, 16, 16) and labels.shape == (4,)
    assert len(views) == 2 and all(view.shape == (4, 1, 16, 16) for view in views)
    for (a_single, a_views, _), (b_single, b_views, _) in zip(first, second, strict=True):
        assert torch.equal(a_single, b_single)
        assert all(torch.equal(a, b) for a, b in zip(a_views, b_views, strict=True))


def test_builtin_data_honours_multi_scale():
    from cvdist.config import DataConfig
    from cvdist.data.from_config import build_labelled_data

    config = DataConfig(dataset="synthetic", num_train_samples=256, num_eval_samples=64, multi_scale=[0.75, 1.0, 1.25])
    data = build_labelled_data(config, in_channels=1, num_classes=10, rank=0, world_size=1, micro_batch_size=32,
                               seed=0, num_epochs=1)
    sizes = [batch["image"].shape[-1] for batch in data.train.iterate(epoch=0)]
    assert set(sizes) == {20, 28, 36}
    assert sizes == [batch["image"].shape[-1] for batch in data.train.iterate(epoch=0)]  # seeded
