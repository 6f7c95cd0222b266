"""Reduced-scale JPEG decoding (``data.jpeg_draft``): the same crops and RNG draws as full
decoding, pixels within a stated tolerance, the draft used only where it keeps the crop at least
the target size, and everything else bit-identical to the full path."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import v2

from cvdist.config import DataConfig
from cvdist.config_loading import load_config
from cvdist.data.decode import Decoder
from cvdist.data.fast_decode import FastDecoder, build_decoder
from cvdist.data.from_config import build_train_decoder
from cvdist.data.jpeg_draft import JpegDraftDecoder, draft_scale, draw_draft_crop
from cvdist.data.transforms import build_transform

# Measured (uint8 outputs of decode_pixels, preset standard, 8 seeds per image, sizes 400x500,
# 500x400, 1000x1200, targets 64 / 112 / 224, RGB and grey): photo-like images differ from full
# decoding by a mean of at most 0.7 / 255 and a max of 7; seeded uniform noise, the worst case
# (all its energy at the finest scale, where averaging pixel blocks before the bilinear filter
# differs most from filtering the full image), by a mean of at most 8 / 255 and a max of 39.
# The tolerances below leave about 2x margin over those. (A real photograph, matplotlib's
# grace_hopper.jpg cut to 400x500 and scaled to 1000x1250, measured a mean of at most 0.83 / 255 and
# a max of 43 at a few edge pixels, 99.9 % of pixels within 18; it is not shipped with cvdist.)
TOLERANCE = {"photo": (2.0, 16), "noise": (16.0, 80)}  # content -> (mean |diff|, max |diff|) in uint8 levels


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_pixels(content: str, *, height: int, width: int, grey: bool, seed: int) -> np.ndarray:
    """Seeded uniform noise, or a smooth photo-like image (waves of a few cycles per side)."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if grey else (height, width, 3)
    if content == "noise":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(1 if grey else 3):
        a, b, phase = rng.uniform(2, 9, size=3)
        channels.append(127 + 60 * np.sin(2 * np.pi * a * x + phase) * np.cos(2 * np.pi * b * y)
                        + 40 * np.sin(3 * b * (x + y)))
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return pixels[..., 0] if grey else pixels


def sample_of(data: bytes, extension: str = "jpg") -> dict:
    return {"__key__": "k", extension: data, "cls": b"1"}


def decoder_pair(*, image_size: int, grey: bool, preset: str = "standard", **options) -> tuple:
    """(full-decoding Decoder, build_decoder's draft decoder) for one transform configuration."""
    channels = 1 if grey else 3
    config = dict(preset=preset, image_size=image_size, mean=[0.5] * channels, std=[0.25] * channels, grey=grey,
                  train=True, **options)
    full = Decoder(build_transform(**config), num_classes=2)
    draft = build_decoder(num_classes=2, jpeg_draft=True, **config)
    return full, pickle.loads(pickle.dumps(draft))  # as DataLoader workers receive it


def decode_both(full: Decoder, draft: Decoder, sample: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both decoders' uint8 pixels under the same torch seed; both must leave the RNG at the same
    state (the same draws in the same order, so later samples and exact resume are unaffected)."""
    outputs, next_draws = [], []
    for decoder in (full, draft):
        torch.default_generator.manual_seed(seed)
        outputs.append(decoder.decode_pixels(sample)[0])
        next_draws.append(torch.rand(1))
    assert torch.equal(next_draws[0], next_draws[1])
    return outputs[0], outputs[1]


@pytest.mark.parametrize("content", ["noise", "photo"])
@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("height,width,image_size", [(500, 400, 112), (400, 500, 64), (1000, 1200, 224)])
def test_draft_gives_the_full_crops_and_pixels_within_tolerance(content, grey, height, width, image_size):
    full, draft = decoder_pair(image_size=image_size, grey=grey)
    assert isinstance(draft, JpegDraftDecoder)
    data = jpeg_bytes(image_pixels(content, height=height, width=width, grey=grey, seed=height + width))
    crop = full.transform.transforms[1]
    scales = []
    for seed in range(6):
        # The crop box in full-resolution coordinates is the one the full path draws.
        torch.default_generator.manual_seed(seed)
        expected_box = crop.make_params([torch.zeros(1 if grey else 3, height, width)])
        torch.default_generator.manual_seed(seed)
        plan = draw_draft_crop(Image.open(io.BytesIO(data)), crop=crop, channels=1 if grey else 3)
        assert plan.box == tuple(expected_box[name] for name in ("top", "left", "height", "width"))
        scales.append(plan.scale)
        expected, got = decode_both(full, draft, sample_of(data), seed)
        assert got.shape == expected.shape == (1 if grey else 3, image_size, image_size)
        difference = (got.int() - expected.int()).abs().float()
        mean_limit, max_limit = TOLERANCE[content]
        assert difference.mean().item() <= mean_limit and difference.max().item() <= max_limit, (
            seed, plan, difference.mean().item(), difference.max().item())
    assert max(scales) > 1  # the draft was used: the comparison above is not vacuous


@settings(max_examples=40, deadline=None)
@given(width=st.integers(16, 1400), height=st.integers(16, 1400), image_size=st.integers(8, 256),
       low=st.floats(0.01, 1.0), seed=st.integers(0, 2**31))
def test_draft_keeps_every_crop_at_least_the_target_and_draws_the_full_box(width, height, image_size, low, seed):
    crop = v2.RandomResizedCrop(image_size, scale=(low, 1.0), antialias=True)
    torch.default_generator.manual_seed(seed)
    expected = crop.make_params([torch.zeros(1, height, width)])
    expected_next = torch.rand(1)
    image = Image.open(io.BytesIO(jpeg_bytes(np.full((height, width), 128, np.uint8))))
    torch.default_generator.manual_seed(seed)
    plan = draw_draft_crop(image, crop=crop, channels=1)
    assert torch.equal(torch.rand(1), expected_next)
    top, left, crop_height, crop_width = plan.box
    assert (top, left, crop_height, crop_width) == tuple(expected[k] for k in ("top", "left", "height", "width"))
    # Never an upsampling the full path would not do (scale 1 is the full path: a crop smaller
    # than the target is upsampled there too), and the largest reduction that allows it.
    reduced = plan.scale > 1
    assert not reduced or (crop_height >= image_size * plan.scale and crop_width >= image_size * plan.scale)
    assert plan.scale == 8 or crop_height < image_size * 2 * plan.scale or crop_width < image_size * 2 * plan.scale
    assert image.size == (math.ceil(width / plan.scale), math.ceil(height / plan.scale))
    box_left, box_top, box_right, box_bottom = plan.reduced_box()
    assert 0 <= box_left < box_right <= image.size[0] and 0 <= box_top < box_bottom <= image.size[1]
    assert not reduced or (box_right - box_left >= image_size and box_bottom - box_top >= image_size)


def test_draft_scale_rule():
    assert draft_scale(crop_height=1000, crop_width=900, target_height=112, target_width=112) == 8
    assert draft_scale(crop_height=895, crop_width=900, target_height=112, target_width=112) == 4
    assert draft_scale(crop_height=448, crop_width=500, target_height=224, target_width=224) == 2
    assert draft_scale(crop_height=447, crop_width=900, target_height=224, target_width=224) == 1


def test_a_big_jpeg_is_decoded_smaller_and_a_small_crop_of_it_is_not():
    data = jpeg_bytes(image_pixels("photo", height=1000, width=1200, grey=False, seed=0))
    crop = v2.RandomResizedCrop(64, scale=(0.9, 1.0), antialias=True)
    image = Image.open(io.BytesIO(data))
    plan = draw_draft_crop(image, crop=crop, channels=3)
    image.load()
    assert plan.scale == 8 and image.size == (150, 125)  # decoded at 1/8: 150 x 125 pixels, not 1200 x 1000
    # A crop of ~5 % of the area (~250 px sides) with a 224 target: any reduction would upsample,
    # so the image is decoded in full and the output is the full path's, bit for bit.
    full, draft = decoder_pair(image_size=224, grey=False, crop_scale=(0.05, 0.05))
    for seed in range(4):
        torch.default_generator.manual_seed(seed)
        image = Image.open(io.BytesIO(data))
        assert draw_draft_crop(image, crop=full.transform.transforms[1], channels=3).scale == 1
        assert image.size == (1200, 1000)
        expected, got = decode_both(full, draft, sample_of(data), seed)
        assert torch.equal(expected, got)


def test_png_small_jpegs_and_the_option_off_are_bit_identical_to_full_decoding():
    full, draft = decoder_pair(image_size=64, grey=False, preset="strong")
    photo = image_pixels("photo", height=1000, width=1200, grey=False, seed=1)
    small = image_pixels("noise", height=100, width=90, grey=False, seed=2)  # every crop < 2 x 64: scale 1
    for sample in (sample_of(png_bytes(photo), "png"), sample_of(jpeg_bytes(small))):
        for seed in range(3):
            expected, got = decode_both(full, draft, sample, seed)
            assert torch.equal(expected, got)
            torch.default_generator.manual_seed(seed)
            normalised = draft(sample)[0]
            torch.default_generator.manual_seed(seed)
            assert torch.equal(normalised, full(sample)[0])
    options = dict(image_size=64, mean=[0.5] * 3, std=[0.25] * 3, grey=False, num_classes=2)
    off = build_decoder(preset="standard", train=True, jpeg_draft=False, **options)
    assert type(off) is Decoder
    # No leading random-resized crop: the draft option changes nothing.
    assert type(build_decoder(preset="standard", train=False, jpeg_draft=True, **options)) is Decoder
    assert isinstance(build_decoder(preset="flip", train=True, jpeg_draft=True, **options), FastDecoder)


def test_the_config_option_reaches_the_training_decoder():
    assert DataConfig().jpeg_draft is True
    config = load_config(yaml_paths=[], overrides=["data.augment=standard", "data.image_size=32"])
    decoder = build_train_decoder(config.data, in_channels=1, num_classes=2, extra_labels={})
    assert type(decoder) is JpegDraftDecoder
    config = load_config(yaml_paths=[], overrides=["data.augment=standard", "data.jpeg_draft=false"])
    assert config.data.jpeg_draft is False
    decoder = build_train_decoder(config.data, in_channels=1, num_classes=2, extra_labels={})
    assert type(decoder) is Decoder
