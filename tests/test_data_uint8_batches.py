"""Workers send uint8 batches and the main process normalises them: the batches must equal,
bit for bit, those of the per-sample float path, through workers and a mid-epoch resume."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvdist.data.decode import Decoder
from cvdist.data.fast_decode import FastDecoder
from cvdist.data.stream import ShardSet, ShardStream
from cvdist.data.transforms import build_transform


class FloatOnly:
    """A decoder without ``normaliser``: the stream takes the per-sample float path."""

    def __init__(self, decoder):
        self.decoder = decoder

    def __call__(self, sample):
        return self.decoder(sample)


def image_bytes(index: int, size: tuple[int, int], mode: str, fmt: str) -> bytes:
    rng = np.random.default_rng(index)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format=fmt)
    return buffer.getvalue()


def write_shards(directory: Path, num_shards: int, per_shard: int, make_image) -> ShardSet:
    urls, index = [], 0
    for shard in range(num_shards):
        path = directory / f"train-{shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(per_shard):
                ext, data = make_image(index)
                for name, payload in ((f"s{index:05d}.{ext}", data), (f"s{index:05d}.cls", str(index % 3).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                index += 1
        urls.append(str(path))
    return ShardSet(urls=urls, shard_sizes=[per_shard] * num_shards, class_counts=None)


def batches(source: ShardSet, decoder, num_workers: int, resume_after: int | None = None) -> list[dict]:
    options = dict(sources=[source], rank=0, world_size=1, num_workers=num_workers, batch_size=4, seed=3,
                   decoder=decoder, shuffle_buffer=8)
    stream = ShardStream(**options)
    out = list(stream.iterate(epoch=1))
    if resume_after is None:
        return out
    first = stream.iterate(epoch=1)
    head = [next(first) for _ in range(resume_after)]
    state = stream.state()
    first.close()
    resumed = ShardStream(**options)
    resumed.load_state(state)
    return head + list(resumed.iterate(epoch=1, start_batch=resume_after))


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a["image"].dtype == torch.float32 and a["key"] == b["key"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_photo_preset_uint8_batches_equal_float_path(tmp_path):
    source = write_shards(tmp_path, 2, 10, lambda i: ("jpg", image_bytes(i, (50, 40), "RGB", "JPEG")))
    transform = build_transform(preset="standard", image_size=24, mean=[0.485, 0.456, 0.406],
                                std=[0.229, 0.224, 0.225], grey=False, train=True)
    decoder = Decoder(transform, num_classes=10)
    assert decoder.normaliser is not None
    want = batches(source, FloatOnly(decoder), 0)
    assert_same(batches(source, decoder, 0), want)
    assert_same(batches(source, Decoder(transform, num_classes=10), 1), want)  # through a worker process


@pytest.mark.parametrize("num_workers", [0, 2])
def test_fast_decoder_uint8_batches_equal_float_path_and_resume(tmp_path, num_workers):
    # Most images at the training size (the table path), some larger (Resize + CenterCrop path).
    source = write_shards(tmp_path, 4, 9, lambda i: ("png", image_bytes(i, (12, 12) if i % 5 else (16, 14), "L", "PNG")))
    options = dict(preset="flip", image_size=12, mean=[0.3], std=[0.7], grey=True, train=True)
    fast = FastDecoder(num_classes=10, **options)
    want = batches(source, FloatOnly(Decoder(build_transform(**options), num_classes=10)), num_workers)
    assert_same(batches(source, fast, num_workers), want)
    assert_same(batches(source, fast, num_workers, resume_after=3), want)


def test_multi_view_transforms_keep_the_float_path():
    from cvdist.data.transforms import build_multiview_transform

    transform = build_multiview_transform(image_size=8, mean=[0.5], std=[0.5], grey=True)
    assert Decoder(transform, num_classes=10).normaliser is None
