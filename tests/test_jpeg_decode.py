"""JPEG members decoded by simplejpeg (cvdist/data/jpeg_decode.py): the same pixels and layout as
PIL + ``PILToImage`` for every JPEG kind it takes, PIL for the rest, and a decoder's output and
refusals unchanged by it, on valid and on damaged files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from torchvision.transforms import v2

import cvdist.data.jpeg_decode as jpeg_decode
import cvdist.data.jpeg_region as jpeg_region
from cvdist.data.decode import Decoder
from cvdist.data.fast_decode import build_decoder
from cvdist.data.jpeg_decode import decode_jpeg_pixels
from cvdist.data.transforms import PILToImage

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo_like(rng: np.random.Generator, *, width: int, height: int, mode: str) -> Image.Image:
    """Smooth colour blobs plus fine noise: a JPEG with real entropy data at every frequency."""
    coarse = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(coarse).astype(np.int16) + rng.integers(-24, 25, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert(mode)


def encode(image: Image.Image, *, quality: int = 90, subsampling: int = 2, progressive: bool = False,
           **options) -> bytes:
    buffer = io.BytesIO()
    # Pillow writes a progressive JPEG through a buffer of 1-2 bytes per pixel, which a noisy 4:4:4
    # image at high quality outgrows ("Suspension not allowed here"); MAXBLOCK is that buffer's floor.
    floor, ImageFile.MAXBLOCK = ImageFile.MAXBLOCK, max(ImageFile.MAXBLOCK, 4 * image.width * image.height + 4096)
    try:
        image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling, progressive=progressive,
                   **options)
    finally:
        ImageFile.MAXBLOCK = floor
    return buffer.getvalue()


def pil_pixels(data: bytes, mode: str) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return PILToImage(grey=mode == "L")(image)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), quality=st.integers(20, 100),
       subsampling=st.sampled_from([0, 1, 2]), progressive=st.booleans(), mode=st.sampled_from(["RGB", "L"]),
       seed=st.integers(0, 2**16))
def test_simplejpeg_pixels_and_layout_equal_pils(width, height, quality, subsampling, progressive, mode, seed):
    data = encode(photo_like(np.random.default_rng(seed), width=width, height=height, mode=mode),
                  quality=quality, subsampling=subsampling, progressive=progressive)
    with Image.open(io.BytesIO(data)) as image:
        fast = decode_jpeg_pixels(data, image=image, mode=mode)
    assert fast is not None, "simplejpeg should take every baseline / progressive RGB or grey JPEG"
    expected = pil_pixels(data, mode)
    assert torch.equal(fast, expected)
    assert fast.stride() == expected.stride() and type(fast) is type(expected)


def test_pil_decodes_what_simplejpeg_should_not():
    rng = np.random.default_rng(0)
    rgb = encode(photo_like(rng, width=40, height=30, mode="RGB"))
    cmyk = encode(photo_like(rng, width=40, height=30, mode="CMYK"))
    with Image.open(io.BytesIO(rgb)) as image:
        assert decode_jpeg_pixels(rgb, image=image, mode="L") is None  # a mode conversion: PIL's
    with Image.open(io.BytesIO(cmyk)) as image:
        assert image.mode == "CMYK" and decode_jpeg_pixels(cmyk, image=image, mode="RGB") is None
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with Image.open(io.BytesIO(png.getvalue())) as image:
        assert decode_jpeg_pixels(png.getvalue(), image=image, mode="RGB") is None


def damaged(data: bytes, rng: np.random.Generator, kind: int) -> bytes:
    """A truncated, bit-flipped or header-damaged copy of ``data``."""
    out = bytearray(data)
    if kind == 0:
        return bytes(out[:int(rng.integers(1, len(out)))])
    if kind == 1:
        for _ in range(int(rng.integers(1, 6))):
            out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
    else:
        out[int(rng.integers(0, min(len(out), 600)))] = int(rng.integers(0, 256))
    return bytes(out)


def outcome(decoder, sample: dict, seed: int):
    """The decoder's uint8 pixels for ``sample`` under ``seed``, or the error it raised."""
    torch.manual_seed(seed)
    try:
        return decoder.decode_pixels(sample)[0]
    except Exception as error:  # noqa: BLE001 - the refusal itself is what is compared
        return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("jpeg_draft", [False, True])
def test_decoders_give_the_same_output_and_refusals_with_and_without_simplejpeg(monkeypatch, jpeg_draft):
    """Valid and damaged JPEGs (colour, grey, CMYK) through a training decoder: the output, or the
    refusal, is the same whether simplejpeg (and, for the draft decoder, the crop-region decoder of
    cvdist/data/jpeg_region.py) decodes or PIL alone does; damaged files that PIL
    still decodes but simplejpeg refuses must occur (the fallback is exercised, not assumed)."""
    rng = np.random.default_rng(7)
    decoder = build_decoder(preset="standard", image_size=32, mean=MEAN, std=STD, grey=False, train=True,
                            num_classes=3, jpeg_draft=jpeg_draft)
    assert isinstance(decoder, Decoder)
    refused_by_simplejpeg_only = 0
    for index in range(240):
        mode = ("RGB", "L", "CMYK")[index % 3]
        size = dict(width=int(rng.integers(24, 200)), height=int(rng.integers(24, 200)))
        data = encode(photo_like(rng, mode=mode, **size), subsampling=index % 3, progressive=index % 4 == 0)
        if index % 5:
            data = damaged(data, rng, kind=index % 3)
        sample = {"__key__": f"s{index}", "jpg": data, "cls": b"1"}
        with_simplejpeg = outcome(decoder, sample, seed=index)
        monkeypatch.setattr(jpeg_decode, "simplejpeg", None)
        monkeypatch.setattr(jpeg_region, "_jpeg_region", None)  # nor the crop-region decoder
        pil_only = outcome(decoder, sample, seed=index)
        monkeypatch.undo()
        if isinstance(pil_only, torch.Tensor):
            assert isinstance(with_simplejpeg, torch.Tensor) and torch.equal(with_simplejpeg, pil_only), index
            try:
                simplejpeg.decode_jpeg(data, strict=True)
            except ValueError:
                refused_by_simplejpeg_only += 1
        else:
            assert with_simplejpeg == pil_only, index
    assert refused_by_simplejpeg_only > 0


def test_decoder_uses_simplejpeg_for_photos(monkeypatch):
    """The fast path is the one taken for a plain RGB JPEG (not silently PIL every time); a leading
    random-resized crop would decode only its region instead (tests/test_jpeg_region.py)."""
    calls = []
    real = jpeg_decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(jpeg_decode.simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = encode(photo_like(np.random.default_rng(1), width=120, height=100, mode="RGB"))
    transform = v2.Compose([PILToImage(grey=False), v2.CenterCrop(64), v2.ToPureTensor()])
    out = Decoder(transform, num_classes=2)({"__key__": "k", "jpg": data, "cls": b"0"})[0]
    assert calls == [1] and out.shape == (3, 64, 64) and out.dtype == torch.uint8
