"""The fast decoder gives bit-identical tensors to the torchvision v2 path under the same seed."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cvdist.data.decode import Decoder
from cvdist.data.fast_decode import FastDecoder, build_decoder
from cvdist.data.transforms import build_transform


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("grey", [True, False])
@pytest.mark.parametrize("preset,train", [("flip", True), ("none", True), ("none", False)])
@pytest.mark.parametrize("size", [8, 11])  # 11: not the target size, goes through resize
def test_fast_decoder_matches_v2_path(grey, preset, train, size):
    rng = np.random.default_rng(0)
    channels = 1 if grey else 3
    mean, std = [0.3] * channels, [0.7] * channels
    options = dict(preset=preset, image_size=8, mean=mean, std=std, grey=grey, train=train)
    fast = build_decoder(extra_labels={"coarse": 4}, num_classes=10, **options)
    assert isinstance(fast, FastDecoder)
    fast = pickle.loads(pickle.dumps(fast))
    reference = Decoder(build_transform(**options), num_classes=10, extra_labels={"coarse": 4})
    for index in range(40):
        shape = (size, size) if grey else (size, size, 3)
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        sample = {"__key__": f"k{index}", "png" if index % 2 else "jpg": encoded(pixels, "PNG" if index % 2 else "JPEG"),
                  "cls": b"3", "json": b'{"coarse": 1}'}
        torch.default_generator.manual_seed(index)
        expected = reference(sample)
        torch.default_generator.manual_seed(index)
        got = fast(sample)
        assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_other_presets_use_the_v2_decoder_and_bad_samples_raise():
    decoder = build_decoder(preset="standard", image_size=8, mean=[0.5], std=[0.5], grey=True, train=True,
                            num_classes=10)
    assert isinstance(decoder, Decoder)
    fast = build_decoder(preset="flip", image_size=8, mean=[0.5], std=[0.5], grey=True, train=True, num_classes=10)
    with pytest.raises(ValueError, match="no .cls label"):
        fast({"__key__": "x", "png": encoded(np.zeros((8, 8), np.uint8), "PNG")})
    with pytest.raises(Exception):
        fast({"__key__": "x", "png": b"not an image", "cls": b"1"})
