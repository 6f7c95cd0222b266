"""Workers stack batches into reused shared buffers (cvdist/data/batch_ring.py) and the main process
hands each one back after normalising it: the batches are those of fresh segments, bit for bit, and
no buffer is written while the main process may still read it."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cvdist.data.batch_collate import BatchStacking
from cvdist.data.batch_ring import BatchRing
from cvdist.data.fast_decode import build_decoder
from cvdist.data.stream import ShardSet
from tests.helpers.shards import UNEVEN, write_tar
from tests.test_jpeg_decode import encode, photo_like
from tests.test_stream import make_stream, plain_decoder, write_uneven_shards


def _no_free_slots(monkeypatch) -> None:
    # Every batch in a fresh segment: the pipeline as it was without the ring (patched before the
    # workers fork, so they inherit it).
    monkeypatch.setattr(BatchRing, "_take_free_slot", lambda self, worker_id: None)


def _epochs(stream, epochs) -> list[dict]:
    return [batch for epoch in epochs for batch in stream.iterate(epoch=epoch)]


def _schedule(stream) -> list[dict]:
    """Three epochs, one abandoned after two batches (its in-flight batches are dropped: their
    slots must come back), one more."""
    batches = _epochs(stream, range(3))
    abandoned = stream.iterate(epoch=3)
    batches += [next(abandoned) for _ in range(2)]
    del abandoned
    return batches + _epochs(stream, [4])


def test_reused_buffers_give_the_fresh_segments_batches_across_epochs(tmp_path, monkeypatch):
    source = write_uneven_shards(tmp_path, UNEVEN)
    options = dict(num_workers=2, shuffle_buffer=8, decoder=plain_decoder(augment=True))
    ring_stream = make_stream(source, **options)
    got = _schedule(ring_stream)
    ring = ring_stream.dataset.ring
    with monkeypatch.context() as patch:
        _no_free_slots(patch)
        fresh_stream = make_stream(source, **options)
        expected = _schedule(fresh_stream)
    assert len(got) == len(expected) > 40
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, expected))
    assert got[0]["image"].dtype == torch.float32  # (normalised in the main process: the ring's case)
    # The ring was used: both workers' batches came back through it, and a worker found a free
    # slot for nearly every batch (the patched reference for none).
    per_worker = ring.slots_per_worker
    assert any(slot < per_worker for slot in ring._held) and any(slot >= per_worker for slot in ring._held)
    assert ring.fresh_batches <= len(got) // 4
    assert fresh_stream.dataset.ring.fresh_batches >= len(expected)


def _colour_jpeg_shards(directory, sizes: list[int]) -> ShardSet:
    """Shards of photo-like colour JPEGs of varied sizes (decoded channels last, as every photo is)."""
    rng = np.random.default_rng(0)
    urls, counts, index = [], [0, 0], 0
    for shard, size in enumerate(sizes):
        samples = []
        for _ in range(size):
            image = photo_like(rng, width=int(rng.integers(40, 90)), height=int(rng.integers(40, 90)), mode="RGB")
            samples.append((f"c{index:05d}", {"jpg": encode(image), "cls": str(index % 2).encode()}))
            counts[index % 2] += 1
            index += 1
        urls.append(str(write_tar(directory / f"train-{shard:06d}.tar", samples)))
    return ShardSet(urls=urls, shard_sizes=list(sizes), class_counts=counts)


def test_colour_photos_travel_channels_last_and_arrive_as_the_fresh_segments_batches(tmp_path, monkeypatch):
    """Colour photos are stacked channels last in the ring (a plain copy per image); the main
    process's normalisation gives the same contiguous float batches as fresh segments."""
    source = _colour_jpeg_shards(tmp_path, [13, 11, 9, 12])
    decoder = build_decoder(preset="standard", image_size=24, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3],
                            grey=False, train=True, num_classes=2)
    options = dict(num_workers=2, shuffle_buffer=8, decoder=decoder)
    ring_stream = make_stream(source, **options)
    got = _schedule(ring_stream)
    with monkeypatch.context() as patch:
        _no_free_slots(patch)
        expected = _schedule(make_stream(source, **options))
    assert len(got) == len(expected) > 20
    assert all(torch.equal(a["image"], b["image"]) and a["image"].is_contiguous() for a, b in zip(got, expected))
    received = list(ring_stream.dataset.ring._held.values())
    assert received and all(batch.shape[1] == 3 and batch.stride(1) == 1 for batch in received)  # B x H x W x C


def test_stacking_channels_last_images_keeps_their_values():
    ring = BatchRing(num_workers=1, slots_per_worker=1)
    images = [torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8).permute(2, 0, 1) for _ in range(4)]
    batch, slot = ring.stack(images, worker_id=0)
    assert slot == 0 and torch.equal(batch, torch.stack(images)) and batch.permute(0, 2, 3, 1).is_contiguous()
    contiguous = [image.contiguous() for image in images]  # (e.g. a decoder's contiguous output: kept as it is)
    ring.release(0, batch=batch, result=batch.clone())
    batch, _ = ring.stack(contiguous, worker_id=0)
    assert torch.equal(batch, torch.stack(images)) and batch.is_contiguous()


def test_uint8_batches_the_caller_keeps_are_never_written_again(tmp_path, monkeypatch):
    # With the normalisation taken by the engine (to run on the device), the main process does not
    # know when a batch is done with: the ring must stay out of the way.
    source = write_uneven_shards(tmp_path, UNEVEN)
    stream = make_stream(source, num_workers=2, shuffle_buffer=8)
    assert stream.take_normaliser() is not None
    kept = _epochs(stream, range(2))
    snapshots = [batch["image"].clone() for batch in kept]
    with monkeypatch.context() as patch:
        _no_free_slots(patch)
        reference = make_stream(source, num_workers=2, shuffle_buffer=8)
        reference.take_normaliser()
        expected = _epochs(reference, range(2))
    assert kept[0]["image"].dtype == torch.uint8
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(kept, expected))
    assert all(torch.equal(a["image"], b) for a, b in zip(kept, snapshots))
    assert stream.dataset.ring._held == {}


@settings(max_examples=60, deadline=None)
@given(operations=st.lists(st.tuples(st.sampled_from(["stack", "release", "new epoch"]), st.integers(0, 7)),
                           max_size=60),
       slots=st.integers(1, 4))
def test_a_slot_is_reused_only_after_its_release(operations, slots):
    # Both sides in one process: the worker's stack calls and the main process's releases in any
    # order. A batch not yet released keeps its pixels, and holds its slot.
    ring = BatchRing(num_workers=2, slots_per_worker=slots)
    outstanding: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (batch, its pixels, slot)
    for step, (operation, value) in enumerate(operations):
        if operation == "stack":
            images = [torch.full((3, 2, 2), (step * 8 + i) % 256, dtype=torch.uint8) for i in range(2)]
            batch, slot = ring.stack(images, worker_id=1)
            assert torch.equal(batch, torch.stack(images))
            if slot is not None:
                assert slot in range(slots, 2 * slots) and slot not in [s for _, _, s in outstanding]
                outstanding.append((batch, batch.clone(), slot))
            else:
                assert len(outstanding) == slots
        elif operation == "release" and outstanding:
            batch, pixels, slot = outstanding.pop(value % len(outstanding))
            assert ring.release(slot, batch=batch, result=batch.float())
        elif operation == "new epoch":
            # (the main process has read the last batch it will: in-flight ones were dropped)
            ring.free_all(worker_id=1)
            outstanding = []
        assert all(torch.equal(batch, pixels) for batch, pixels, _ in outstanding)


def test_release_refuses_a_result_that_shares_the_batch_memory():
    ring = BatchRing(num_workers=1, slots_per_worker=1)
    batch, slot = ring.stack([torch.zeros(3, 2, 2)], worker_id=0)
    assert slot == 0 and not ring.release(slot, batch=batch, result=batch[:1])
    assert ring.stack([torch.ones(3, 2, 2)], worker_id=0)[1] is None  # (still taken)


def test_without_workers_batches_are_stacked_channels_last_into_reused_buffers(tmp_path, monkeypatch):
    """No workers: the main process stacks colour photos channels last into a few buffers it reuses
    once each batch is normalised; the float batches are those of a fresh contiguous stack."""
    source = _colour_jpeg_shards(tmp_path, [13, 11, 9, 12])
    options = dict(preset="standard", image_size=24, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], grey=False,
                   train=True, num_classes=2)
    stream = make_stream(source, num_workers=0, shuffle_buffer=8, decoder=build_decoder(**options))
    normalise, received = stream.dataset.decoder.normaliser, []

    def recording(images):
        received.append((images.untyped_storage().data_ptr(), images.permute(0, 2, 3, 1).is_contiguous()))
        return normalise(images)

    monkeypatch.setattr(stream.dataset.decoder, "normaliser", recording)
    got = _schedule(stream)
    with monkeypatch.context() as patch:
        patch.setattr(BatchStacking, "choose", staticmethod(lambda **_: BatchStacking()))  # default_collate
        expected = _schedule(make_stream(source, num_workers=0, shuffle_buffer=8, decoder=build_decoder(**options)))
    assert len(got) == len(expected) == len(received) > 20
    assert all(torch.equal(a["image"], b["image"]) and a["image"].is_contiguous() for a, b in zip(got, expected))
    assert all(channels_last for _, channels_last in received)
    assert len({pointer for pointer, _ in received}) <= 3  # the same few buffers over every epoch
