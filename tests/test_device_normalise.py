"""data.device_normalise: uint8 batches cross to the training device and are normalised there by
the engine (one place for every task), to the same values as the pipeline's per-batch path."""

from __future__ import annotations

import torch

from tests.helpers.recipes import TINY, run_recipe
from tests.helpers.runs import assert_same, weights
from tests.helpers.shards import UNEVEN
from tests.test_stream import make_stream, write_uneven_shards


def test_a_stream_that_hands_over_its_normaliser_yields_uint8_batches_that_it_normalises_identically(tmp_path):
    source = write_uneven_shards(tmp_path, UNEVEN)
    normalised = [batch["image"] for batch in make_stream(source).iterate(epoch=0)]
    stream = make_stream(source)
    normaliser = stream.take_normaliser()
    raw = [batch["image"] for batch in stream.iterate(epoch=0)]
    assert normaliser is not None and all(image.dtype == torch.uint8 for image in raw)
    assert all(torch.equal(normaliser(image.clone()), expected) for image, expected in zip(raw, normalised))
    assert make_stream(source, multi_scale=object()).take_normaliser() is None  # resizing works on floats


def test_a_run_normalising_on_the_device_equals_the_pipeline_path(tmp_path):
    args = [*TINY, f"output_dir={tmp_path}", "train.max_steps=4", "data.augment=flip"]
    pipeline = run_recipe([*args, "name=pipeline", "data.device_normalise=false"]).stdout
    device = run_recipe([*args, "name=device", "data.device_normalise=true", "dist.channels_last=true"]).stdout
    assert "normalised on cpu after the copy" in device and "after the copy" not in pipeline
    assert_same(weights(tmp_path / "device"), weights(tmp_path / "pipeline"), atol=0)
