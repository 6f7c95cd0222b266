"""Fuzzing the shard readers: valid shards mutated at random by hypothesis (see
tests/helpers/tar_fuzz.py for the mutations and the contract). Every case must end — samples or
CorruptShard from the tar reader, samples or a counted corrupt event from the decoders — within a
CPU-time bound, with memory bounded by the shard and ``max_member_bytes``; the whole training
stream over a mutated shard ends with its batches or DataError, never another exception.
``bench/fuzz_shards.py`` runs a longer campaign of the same cases."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvdist.data import tar_samples
from cvdist.data.decode import Decoder
from cvdist.data.fast_decode import build_decoder
from cvdist.data.stream import DataError, ShardSet, ShardStream
from cvdist.data.transforms import build_transform
from tests.helpers.tar_fuzz import SIZE_KINDS, TYPE_FLAGS, base_shards, mutate, run_case

BASES = base_shards()
MAX_MEMBER_BYTES = 64 * 1024
CPU_SECONDS = 20.0  # a hang bound, not a speed test: a case takes milliseconds
OPTIONS = dict(image_size=8, mean=[0.5], std=[0.5], grey=True, num_classes=3, extra_labels={"coarse": 2},
               max_image_pixels=64 * 64)
DECODERS = [build_decoder(preset="flip", train=True, **OPTIONS),
            Decoder(build_transform(preset="standard", image_size=8, mean=[0.5], std=[0.5], grey=True, train=True),
                    num_classes=3, extra_labels={"coarse": 2}, max_image_pixels=64 * 64)]

header = st.integers(0, 1000)
fix = st.booleans()
byte = st.integers(0, 255)
fraction = st.floats(0, 0.999)
MUTATION = st.one_of(
    st.tuples(st.just("header_byte"), header, st.integers(0, 511), byte, fix),
    st.tuples(st.just("size"), header, st.sampled_from(SIZE_KINDS), st.integers(0, 2 ** 100), fix),
    st.tuples(st.just("type"), header, st.integers(0, len(TYPE_FLAGS) - 1), fix),
    st.tuples(st.just("payload_byte"), header, st.integers(0, 4095), byte),
    st.tuples(st.just("zero_blocks"), fraction, st.integers(1, 3)),
    st.tuples(st.just("drop_block"), fraction),
    st.tuples(st.just("dup_block"), fraction),
    st.tuples(st.just("cut"), fraction, st.integers(0, 511)),
)
CASES = st.tuples(st.sampled_from(BASES), st.lists(MUTATION, min_size=1, max_size=4))


def memory_bound(data: bytes) -> int:
    """Most the reader may hold: a few copies of the stream's bytes or of one member, never more."""
    return 4 * (len(data) + MAX_MEMBER_BYTES) + (256 << 10)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
def test_mutated_shards_end_with_samples_or_corrupt_shard(case):
    base, mutations = case
    data = mutate(base, mutations)
    outcome = run_case(data, max_member_bytes=MAX_MEMBER_BYTES, decoders=DECODERS, cpu_seconds=CPU_SECONDS)
    assert outcome.status in ("clean", "corrupt"), outcome.detail
    assert outcome.peak_bytes <= memory_bound(data), outcome
    assert outcome.largest_read <= max(tar_samples._CHUNK, MAX_MEMBER_BYTES + 1024), outcome


def test_the_unmutated_shards_are_read_whole():
    for base in BASES:
        outcome = run_case(base.data, max_member_bytes=MAX_MEMBER_BYTES, decoders=DECODERS, cpu_seconds=CPU_SECONDS)
        assert (outcome.status, outcome.samples, outcome.refused) == ("clean", 4, 0), (base.name, outcome)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
def test_the_training_stream_over_a_mutated_shard_ends_in_batches_or_data_error(tmp_path_factory, case):
    base, mutations = case
    path = tmp_path_factory.mktemp("fuzz") / "train-000000.tar"
    path.write_bytes(mutate(base, mutations))
    stream = ShardStream(sources=[ShardSet(urls=[str(path)], shard_sizes=[4], class_counts=[2, 1, 1])], rank=0,
                         world_size=1, num_workers=0, batch_size=2, seed=0, decoder=DECODERS[0], shuffle_buffer=4,
                         max_corrupt=100, max_member_bytes=MAX_MEMBER_BYTES)
    try:
        batches = list(stream.iterate(epoch=0))
    except DataError as error:
        # every sample lost: the slot ran dry, or (samples that read but never decode: the slot
        # re-reads its shard) the user's max_corrupt limit ends it; either way one line
        assert "ran out of samples" in str(error) or "more than data.max_corrupt=100" in str(error), str(error)
    else:
        assert len(batches) == 2 and all(b["image"].shape == (2, 1, 8, 8) for b in batches)
