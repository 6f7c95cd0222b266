"""Decoding only a crop's region of a JPEG (cvdist/data/jpeg_region.py, the C extension
cvdist/data/_jpeg_region.c): the whole decode's slice bit for bit for every JPEG kind it takes,
None (the whole-file path) for the rest, no crash on damaged files, and the draft decoder using it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import cvdist.data.jpeg_region as jpeg_region
from cvdist.data.decode import Decoder
from cvdist.data.fast_decode import build_decoder
from cvdist.data.jpeg_region import decode_jpeg_crop, region_decoder_available
from test_jpeg_decode import damaged, encode, photo_like

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def whole_decode_slice(data: bytes, *, mode: str, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The reference: the whole image decoded (simplejpeg, which equals PIL: test_jpeg_decode.py), then sliced."""
    top, left, height, width = box
    array = simplejpeg.decode_jpeg(data, colorspace="GRAY" if mode == "L" else "RGB")
    return torch.from_numpy(array).permute(2, 0, 1)[:, top:top + height, left:left + width]


def region_of(data: bytes, *, mode: str, box: tuple[int, int, int, int]):
    return decode_jpeg_crop(data, mode=mode, box=box)


def test_the_extension_is_built():
    assert region_decoder_available(), (
        "cvdist.data._jpeg_region was not built: install libjpeg's headers (Debian: libjpeg62-turbo-dev) "
        "and reinstall (make venv)")


@st.composite
def jpeg_and_box(draw):
    """A photo-like JPEG of any size, chroma subsampling (4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1),
    quality, scan mode and restart interval, and a crop box inside it."""
    width, height = draw(st.integers(1, 260)), draw(st.integers(1, 260))
    mode = draw(st.sampled_from(["RGB", "L"]))
    image = photo_like(np.random.default_rng(draw(st.integers(0, 2**16))), width=width, height=height, mode=mode)
    quality = draw(st.integers(20, 100))
    subsampling = draw(st.sampled_from([0, 1, 2, "440", "411"]))
    if isinstance(subsampling, str) and mode == "RGB":  # 4:4:0 and 4:1:1, which PIL does not write
        data = simplejpeg.encode_jpeg(np.asarray(image), quality=quality, colorsubsampling=subsampling)
    else:
        data = encode(image, quality=quality, subsampling=subsampling if isinstance(subsampling, int) else 2,
                      progressive=draw(st.booleans()), restart_marker_blocks=draw(st.sampled_from([0, 0, 1, 3])))
    top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
    box = (top, left, draw(st.integers(1, height - top)), draw(st.integers(1, width - left)))
    return data, mode, box


@settings(max_examples=150, deadline=None)
@given(case=jpeg_and_box())
def test_the_region_is_the_whole_decodes_slice_bit_for_bit(case):
    data, mode, box = case
    region = region_of(data, mode=mode, box=box)
    assert region is not None, "every baseline / progressive RGB or grey JPEG should be taken"
    expected = whole_decode_slice(data, mode=mode, box=box)
    assert region.shape == expected.shape and torch.equal(region, expected)
    assert region.permute(1, 2, 0).is_contiguous(), "packed rows, channels last (torch's fast uint8 resize)"


def test_what_it_leaves_to_the_whole_file_path():
    rng = np.random.default_rng(0)
    rgb = encode(photo_like(rng, width=80, height=60, mode="RGB"))
    box = (0, 0, 10, 10)
    assert region_of(rgb, mode="RGB", box=box) is not None
    assert region_of(rgb, mode="L", box=box) is None  # a mode change: PIL converts
    assert region_of(rgb[:-2], mode="RGB", box=box) is None  # no end marker: maybe truncated
    assert region_of(rgb[:len(rgb) // 2] + b"\xff\xd9", mode="RGB", box=(50, 0, 10, 80)) is None  # cut in the crop
    assert region_of(rgb, mode="RGB", box=(55, 0, 10, 10)) is None  # outside the image
    cmyk = encode(photo_like(rng, width=40, height=30, mode="CMYK"))
    assert region_of(cmyk, mode="RGB", box=box) is None
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert region_of(png.getvalue(), mode="RGB", box=(0, 0, 4, 4)) is None


def test_damaged_files_raise_or_give_the_lenient_whole_decodes_pixels():
    """Truncated, bit-flipped and header-damaged JPEGs: the extension raises ValueError (never a
    crash), or gives what PIL's lenient whole decode gives for the region (damage below it)."""
    rng = np.random.default_rng(3)
    decoded = refused = 0
    for index in range(600):
        mode = ("RGB", "L")[index % 2]
        width, height = int(rng.integers(16, 200)), int(rng.integers(16, 200))
        data = damaged(encode(photo_like(rng, width=width, height=height, mode=mode), subsampling=index % 3,
                              progressive=index % 5 == 0), rng, kind=index % 3)
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        box = (top, left, int(rng.integers(1, height - top + 1)), int(rng.integers(1, width - left + 1)))
        try:
            rows = jpeg_region._jpeg_region.decode_region(data, *box, 1 if mode == "L" else 3)
        except ValueError:
            refused += 1
            continue
        decoded += 1
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                whole = np.asarray(image.convert(mode)).reshape(image.height, image.width, -1)
        except (OSError, SyntaxError, ValueError):
            continue  # PIL refuses what it cannot read whole (a truncated file: no end marker)
        region = np.frombuffer(rows, dtype=np.uint8).reshape(box[2], box[3], -1)
        assert np.array_equal(region, whole[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]), index
    assert decoded > 100 and refused > 50  # both outcomes exercised


@pytest.mark.parametrize("jpeg_draft", [False, True])
def test_decoders_decode_only_the_crop_and_keep_the_whole_decodes_output(monkeypatch, jpeg_draft):
    """Both training decoders (reduced-scale decoding off and on) take the region path for a JPEG
    whose random crop is decoded at full scale, with the output of whole-image decoding."""
    calls = []  # the regions decoded (not those the extension refused)
    real = jpeg_region._jpeg_region.decode_region
    options = dict(preset="standard", image_size=128, mean=MEAN, std=STD, grey=False, train=True, num_classes=2)
    decoder = build_decoder(jpeg_draft=jpeg_draft, **options)
    assert (type(decoder) is Decoder) is not jpeg_draft
    rng = np.random.default_rng(5)
    for index in range(6):
        mode = "RGB" if index % 3 else "L"
        data = encode(photo_like(rng, width=250, height=200, mode=mode), subsampling=index % 3,
                      progressive=index == 4)
        sample = {"__key__": f"k{index}", "jpg": data, "cls": b"1"}
        torch.default_generator.manual_seed(index)
        monkeypatch.setattr(jpeg_region, "_jpeg_region", None)  # whole-image decoding
        whole = decoder(sample)[0]
        monkeypatch.undo()
        monkeypatch.setattr(jpeg_region._jpeg_region, "decode_region", lambda *a: calls.append(real(*a)) or calls[-1])
        torch.default_generator.manual_seed(index)
        by_region = decoder(sample)[0]
        monkeypatch.undo()
        assert torch.equal(by_region, whole), index
    # Every colour image took the region path once: no crop of a 250 x 200 image reaches 2 x 128 (no
    # reduced scale); grey JPEGs under a colour transform's PILToImage("RGB") are a mode change: PIL's.
    assert len(calls) == 4


def test_a_clean_jpeg_is_cropped_without_pil_and_the_rest_still_opens_with_it(monkeypatch):
    """The box is drawn from the size libjpeg reads, so a plain JPEG never reaches PIL; CMYK files,
    damaged headers and images above data.max_image_pixels are opened (and judged) by PIL as before."""
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    options = dict(preset="standard", image_size=64, mean=MEAN, std=STD, grey=False, train=True, num_classes=2)
    rng = np.random.default_rng(9)
    rgb = encode(photo_like(rng, width=120, height=90, mode="RGB"))
    build_decoder(**options)({"__key__": "rgb", "jpg": rgb, "cls": b"0"})
    assert opened == []
    cmyk = encode(photo_like(rng, width=120, height=90, mode="CMYK"))
    out = build_decoder(**options)({"__key__": "cmyk", "jpg": cmyk, "cls": b"0"})[0]
    assert opened == [1] and out.shape == (3, 64, 64)
    bad_header = rgb[:2] + b"\x00\x00" + rgb[2:]  # junk between markers: libjpeg warns, PIL refuses
    with pytest.raises(ValueError):
        build_decoder(**options)({"__key__": "bad", "jpg": bad_header, "cls": b"0"})
    assert len(opened) == 2
    with pytest.raises(ValueError, match="data.max_image_pixels=10000"):
        build_decoder(max_image_pixels=10_000, **options)({"__key__": "big", "jpg": rgb, "cls": b"0"})
    assert len(opened) == 3
