"""The one-pass batch normalisation (cvdist/data/_normalise.c): the per-image torchvision kernels'
values bit for bit, for any channel count, layout and statistics; the torch fallback the same;
other layouts fall back; bad calls raise instead of writing out of bounds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as F

from cvdist.data import decode
from cvdist.data.decode import BatchNormalise, normalise_in_one_pass

FINITE = dict(allow_nan=False, allow_infinity=False)  # (doubles: rounded to float32 as torch rounds them)


def test_the_extension_is_built():
    assert decode._normalise is not None, "cvdist.data._normalise was not built: a C compiler is needed (make venv)"


def _per_image(images: torch.Tensor, mean, std) -> torch.Tensor:
    if images.shape[0] == 0:
        return torch.empty(images.shape)
    return torch.stack([F.normalize(F.to_dtype(image, torch.float32, scale=True), mean, std) for image in images])


@settings(max_examples=80, deadline=None)
@given(batch=st.integers(0, 4), channels=st.integers(1, 4), height=st.integers(1, 19), width=st.integers(1, 23),
       layout=st.sampled_from(["contiguous", "channels last"]), seed=st.integers(0, 2**31 - 1),
       means=st.lists(st.floats(-300, 300, **FINITE), min_size=4, max_size=4),
       stds=st.lists(st.floats(1e-3, 300, **FINITE), min_size=4, max_size=4))
def test_one_pass_equals_the_per_image_kernels(batch, channels, height, width, layout, seed, means, stds):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8, generator=generator)
    if layout == "channels last":
        images = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    mean, std = means[:channels], stds[:channels]
    out = torch.full((batch, channels, height, width), float("nan"))
    assert normalise_in_one_pass(images, out, mean=mean, std=std)
    assert torch.equal(out, _per_image(images, mean, std))


def test_the_torch_fallback_gives_the_same_bits(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (5, 3, 31, 17), dtype=torch.uint8, generator=generator)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    fast = BatchNormalise(mean, std)(images).clone()
    monkeypatch.setattr(decode, "_normalise", None)
    assert not normalise_in_one_pass(images, torch.empty(5, 3, 31, 17), mean=mean, std=std)
    assert torch.equal(BatchNormalise(mean, std)(images), fast)


def test_single_value_statistics_apply_to_every_channel():
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    out = torch.empty(2, 3, 4, 5)
    assert normalise_in_one_pass(images, out, mean=[0.5], std=[0.25])
    assert torch.equal(out, _per_image(images, [0.5], [0.25]))


def test_other_layouts_fall_back_and_leave_the_output_alone():
    images = torch.randint(0, 256, (2, 3, 8, 10), dtype=torch.uint8)
    out = torch.zeros(2, 3, 8, 5)
    strided = images[..., ::2]  # neither contiguous nor channels last
    assert not normalise_in_one_pass(strided, out, mean=[0.5] * 3, std=[0.5] * 3)
    assert not normalise_in_one_pass(torch.zeros(2, 5, 3, 3, dtype=torch.uint8), torch.empty(2, 5, 3, 3),
                                     mean=[0.5] * 5, std=[0.5] * 5)  # more than 4 channels
    assert not normalise_in_one_pass(images, torch.empty(2, 3, 8, 10), mean=[0.5, 0.5], std=[0.5] * 3)
    assert torch.equal(out, torch.zeros(2, 3, 8, 5))
    assert torch.equal(BatchNormalise([0.5] * 3, [0.5] * 3)(strided), _per_image(strided, [0.5] * 3, [0.5] * 3))


def test_wrong_buffers_are_refused():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8).numpy()
    with pytest.raises(ValueError, match="bytes"):
        decode._normalise.normalise(images, torch.empty(2, 3, 4, 3).numpy(), (2, 3, 4, 4), False, 1 / 255,
                                    [0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="channels"):
        decode._normalise.normalise(images, torch.empty(2, 3, 4, 4).numpy(), (2, 3, 4, 4), False, 1 / 255,
                                    [0.0] * 2, [1.0] * 3)
    with pytest.raises(ValueError, match="shape"):
        decode._normalise.normalise(images, torch.empty(2, 3, 4, 4).numpy(), (1, 6, 4, 4), False, 1 / 255,
                                    [0.0] * 6, [1.0] * 6)
    with pytest.raises(TypeError):  # a read-only target
        decode._normalise.normalise(images, bytes(2 * 3 * 16 * 4), (2, 3, 4, 4), False, 1 / 255, [0.0] * 3, [1.0] * 3)
