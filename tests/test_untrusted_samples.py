"""Untrusted sample content: image formats, the pixel cap, label ranges and the model/manifest
class check, through both decoders and every shard reader (training, start-up scan, evaluation)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from cvdist.config import DataConfig
from cvdist.data.decode import Decoder
from cvdist.data.fast_decode import build_decoder
from cvdist.data.from_config import build_labelled_data
from cvdist.data.shard_sources import iterate_eval_shards, resolve_source
from cvdist.data.stream import DataError, ShardSet, ShardStream
from cvdist.data.transforms import build_transform
from tests.helpers.shards import png_bytes, write_tar

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
OPTIONS = dict(image_size=8, mean=[0.5], std=[0.5], grey=True, train=False)


def encoded(fmt: str, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size[::-1], 77, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def decoders(num_classes: int = 10, max_image_pixels: int = 4096 * 4096) -> list:
    """The fast decoder and the torchvision v2 one, with the same checks."""
    return [build_decoder(preset="none", num_classes=num_classes, max_image_pixels=max_image_pixels, **OPTIONS),
            Decoder(build_transform(preset="none", **OPTIONS), num_classes=num_classes,
                    max_image_pixels=max_image_pixels)]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels and holds one compressed row: decoding it
    would allocate the whole image first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + \
        chunk(b"IEND", b"")


@settings(max_examples=30, deadline=None)
@given(declared=st.sampled_from(["png", "jpg", "jpeg", "webp"]), actual=st.sampled_from(["PNG", "JPEG", "WEBP", "EPS"]))
def test_only_the_declared_format_is_decoded(declared, actual):
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n" if actual == "EPS" else encoded(actual)
    sample = {"__key__": "k", declared: data, "cls": b"1"}
    for decoder in decoders():
        if FORMATS.get(declared, "JPEG") == actual:
            assert decoder(sample)[1] == 1
        else:
            expected = FORMATS.get(declared, "JPEG")
            with pytest.raises(ValueError, match=rf"its .{declared} member is not a {expected} image"):
                decoder(sample)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own warning above 89 MP
@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 40_000), height=st.integers(1, 40_000), cap=st.integers(1, 10 ** 8))
def test_images_above_the_pixel_cap_are_refused_before_decoding(width, height, cap):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    sample = {"__key__": "k", "png": png_header_only(width, height), "cls": b"0"}
    for decoder in decoders(max_image_pixels=cap):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ImageFile.ImageFile, "load", no_decoding)
            with pytest.raises((ValueError, AssertionError)) as raised:
                decoder(sample)
        assert (raised.type is ValueError) == (width * height > cap), raised.value
        if width * height > cap:
            assert f"more than data.max_image_pixels={cap}" in str(raised.value), raised.value


def test_images_at_the_cap_still_decode():
    sample = {"__key__": "k", "png": encoded("PNG", (8, 8)), "cls": b"0"}
    for decoder in decoders(max_image_pixels=64):
        assert decoder(sample)[0].shape == (1, 8, 8)
    for decoder in decoders(max_image_pixels=63):
        with pytest.raises(ValueError, match="an 8 x 8 image|a 8 x 8 image"):
            decoder(sample)


@settings(max_examples=60, deadline=None)
@given(label=st.one_of(st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 12)), num_classes=st.integers(1, 10))
def test_labels_outside_the_classes_are_corrupt(label, num_classes):
    sample = {"__key__": "k", "png": png_bytes(3), "cls": str(label).encode()}
    for decoder in decoders(num_classes=num_classes):
        if 0 <= label < num_classes:
            assert decoder(sample)[1] == label
        else:
            with pytest.raises(ValueError, match=rf"outside \[0, model.num_classes={num_classes}\)"):
                decoder(sample)


def test_extra_labels_must_lie_in_their_classes():
    decoder = build_decoder(preset="none", num_classes=10, extra_labels={"coarse": 4}, **OPTIONS)
    assert decoder({"__key__": "k", "png": png_bytes(1), "cls": b"1", "json": b'{"coarse": 3}'})[2] == {"coarse": 3}
    for text in (b'{"coarse": -1}', b'{"coarse": 4}', b'{"coarse": 1e400}', b'{"coarse": true}', b'[1]', b'{}',
                 b'{"coarse": 99999999999}'):
        with pytest.raises(ValueError, match="extra label 'coarse'"):
            decoder({"__key__": "k", "png": png_bytes(1), "cls": b"1", "json": text})


def hostile_shard(path, *, max_member_bytes: int) -> list[str]:
    """A shard whose samples are each wrong in one way; returns the keys that must survive."""
    samples = [("ok0", {"png": png_bytes(0), "cls": b"1"}),
               ("label", {"png": png_bytes(1), "cls": b"7"}),             # outside 3 classes
               ("negative", {"png": png_bytes(2), "cls": b"-1"}),
               ("format", {"png": encoded("JPEG"), "cls": b"0"}),          # JPEG bytes in a .png member
               ("huge", {"png": png_header_only(9000, 9000), "cls": b"0"}),  # above the pixel cap
               ("ok1", {"png": png_bytes(5), "cls": b"2"}),
               ("lost", {"png": png_bytes(6), "cls": b"2"}),  # being assembled when the damage is found
               ("big", {"png": bytes(max_member_bytes + 1), "cls": b"0"})]  # ends the shard, counted
    write_tar(path, samples)
    return ["ok0", "ok1"]


def test_every_reader_counts_hostile_samples_and_names_the_shard(tmp_path, capsys):
    url = str(tmp_path / "train-000000.tar")
    survivors = hostile_shard(tmp_path / "train-000000.tar", max_member_bytes=4096)
    decoder = build_decoder(preset="none", num_classes=3, max_image_pixels=1000 * 1000, **OPTIONS)
    source = ShardSet(urls=[url], shard_sizes=[7], class_counts=[2, 3, 2])
    stream = ShardStream(sources=[source], rank=0, world_size=1, num_workers=0, batch_size=1, seed=0,
                         decoder=decoder, shuffle=False, max_corrupt=100, max_member_bytes=4096)
    keys = [key for batch in stream.iterate(epoch=0) for key in batch["key"]]
    assert sorted(set(keys)) == survivors  # (a slot that lost samples repeats some: equal batches)
    assert stream.metrics()["data/corrupt_skipped"] >= 5
    printed = capsys.readouterr().out
    for problem in ("outside [0, model.num_classes=3)", "not a PNG image", "data.max_image_pixels",
                    "data.max_member_bytes=4096"):
        assert f"{url}: " in printed and problem in printed, problem
    evaluated = list(iterate_eval_shards(source, rank=0, world_size=1, batch_size=4, decoder=decoder,
                                         max_corrupt=5, max_member_bytes=4096))
    assert [k for b in evaluated for k, v in zip(b["key"], b["valid"]) if v] == survivors
    with pytest.raises(DataError, match=rf"more than data.max_corrupt=4 \(last: {url}: "):
        list(iterate_eval_shards(source, rank=0, world_size=1, batch_size=4, decoder=decoder, max_corrupt=4,
                                 max_member_bytes=4096))
    scanned, _ = resolve_source(url, split="train", num_classes=3, max_corrupt=5, max_member_bytes=4096)
    # the scan reads labels only: out-of-range ones count in no class; 'lost' and 'big' are not read
    assert scanned.shard_sizes == [6] and scanned.class_counts == [2, 1, 1]
    with pytest.raises(DataError, match="scanning shards without a manifest: .* more than data.max_corrupt=2"):
        resolve_source(url, split="train", num_classes=3, max_corrupt=2, max_member_bytes=4096)


def three_class_shards(tmp_path) -> str:
    from cvdist.data.converters import build_folder_source
    from cvdist.data.shard_writer import write_dataset_shards

    for label, name in enumerate(("cat", "dog", "eel")):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.full((8, 8), label, dtype=np.uint8)).save(folder / "0.png")
    write_dataset_shards(source=build_folder_source(splits={"train": tmp_path / "images", "test": tmp_path / "images"}),
                         out_dir=tmp_path / "shards", samples_per_shard=7)
    return str(tmp_path / "shards")


def test_model_classes_are_checked_against_the_manifest(tmp_path):
    data = DataConfig(train_shards=[three_class_shards(tmp_path)], image_size=8, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match=r"lists 3 classes but model.num_classes=10; set model.num_classes=3"):
        build_labelled_data(data, in_channels=1, num_classes=10, rank=0, world_size=1, micro_batch_size=1, seed=0,
                            num_epochs=1)
    assert build_labelled_data(data, in_channels=1, num_classes=3, rank=0, world_size=1, micro_batch_size=1, seed=0,
                               num_epochs=1).class_counts == [1, 1, 1]


def test_the_limits_are_config_keys_with_the_readers_defaults():
    from cvdist.config import ConfigError, validate
    from cvdist.config_loading import load_config
    from cvdist.data.decode import DEFAULT_MAX_IMAGE_PIXELS
    from cvdist.data.tar_samples import DEFAULT_MAX_MEMBER_BYTES

    assert DataConfig().max_member_bytes == DEFAULT_MAX_MEMBER_BYTES
    assert DataConfig().max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    for key in ("data.max_member_bytes", "data.max_image_pixels"):
        with pytest.raises(ConfigError, match=f"{key}=0 must be > 0"):
            validate(load_config(overrides=[f"{key}=0"]), world_size=1)


@pytest.mark.parametrize("recipe", ["supervised", "pretrain_contrastive", "longtail"])
def test_recipes_stop_at_start_when_the_model_and_manifest_classes_differ(tmp_path, recipe):
    from tests.helpers.recipes import REPO, TINY, run_recipe

    shards = three_class_shards(tmp_path)
    result = run_recipe([*TINY, f"data.train_shards=[{shards}]", "model.num_classes=10", "data.image_size=8",
                         f"output_dir={tmp_path / 'runs'}"], script=REPO / "recipes" / f"{recipe}.py", check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("cvdist: error: ")
    assert "lists 3 classes but model.num_classes=10; set model.num_classes=3" in result.stderr


def test_a_newline_in_a_member_name_keeps_the_error_on_one_line(tmp_path):
    url = str(write_tar(tmp_path / "train-000000.tar", [("bad\nkey", {"png": png_bytes(1), "cls": b"9"})]))
    decoder = build_decoder(preset="none", num_classes=3, **OPTIONS)
    with pytest.raises(DataError) as raised:
        list(iterate_eval_shards(ShardSet(urls=[url], shard_sizes=[1]), rank=0, world_size=1, batch_size=1,
                                 decoder=decoder, max_corrupt=0))
    assert "\n" not in str(raised.value) and "bad\\nkey" in str(raised.value)
