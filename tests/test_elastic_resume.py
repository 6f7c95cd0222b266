"""Elastic mid-epoch resume (cvdist/data/elastic.py): an epoch interrupted under one slot layout
(processes x DataLoader workers x micro-batch) and finished under another reads every remaining
sample of the old plan exactly once, with the same number of batches on every new rank."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvdist.data.stream import ShardStream
from tests.helpers.recipes import TINY, run_recipe
from tests.helpers.runs import run_killed_after_checkpoint
from tests.helpers.shards import UNEVEN, write_tar, png_bytes
from tests.test_stream import make_stream, write_uneven_shards

EPOCH = 1


def _streams(source, *, world_size: int, num_workers: int, batch_size: int) -> list[ShardStream]:
    return [make_stream(source, rank=rank, world_size=world_size, num_workers=num_workers, batch_size=batch_size)
            for rank in range(world_size)]


def _interrupted(source, layout: tuple[int, int, int], cut: int) -> tuple[list[str], list[dict]]:
    """Keys every old rank consumed in its first ``cut`` batches, and each rank's state then."""
    world_size, num_workers, batch_size = layout
    keys, states = [], []
    for stream in _streams(source, world_size=world_size, num_workers=num_workers, batch_size=batch_size):
        iterator = stream.iterate(epoch=EPOCH)
        keys += [key for _ in range(cut) for key in next(iterator)["key"]]
        states.append(stream.state())
        del iterator
    return keys, states


def _resumed(source, layout: tuple[int, int, int], states: list[dict]) -> list[list[str]]:
    """Per new rank: the keys of the batches it reads in the rest of the epoch."""
    world_size, num_workers, batch_size = layout
    per_rank = []
    for stream in _streams(source, world_size=world_size, num_workers=num_workers, batch_size=batch_size):
        start = stream.load_elastic_state(states)
        batches = list(stream.iterate(epoch=EPOCH, start_batch=start))
        assert len(batches) == stream.batches_in_epoch(EPOCH) - start
        assert all(len(batch["key"]) == batch_size for batch in batches)
        per_rank.append([key for batch in batches for key in batch["key"]])
    return per_rank


def _plain(source, layout: tuple[int, int, int]) -> list[str]:
    world_size, num_workers, batch_size = layout
    return [key for stream in _streams(source, world_size=world_size, num_workers=num_workers, batch_size=batch_size)
            for batch in stream.iterate(epoch=EPOCH) for key in batch["key"]]


@pytest.mark.parametrize("old, new, cut", [
    ((2, 2, 4), (1, 0, 8), 3),   # 2 processes x 2 workers -> 1 process x 1 worker (global batch 8)
    ((1, 0, 8), (2, 2, 4), 5),   # and back
    ((2, 0, 4), (2, 2, 4), 2),   # only the worker count changes
    ((3, 0, 4), (2, 0, 6), 4),   # 3 -> 2 processes, micro-batch re-derived (global batch 12)
    ((2, 2, 4), (4, 0, 2), 7),   # more processes than before
])
def test_the_epoch_finishes_with_the_remaining_samples_each_once(tmp_path, old, new, cut):
    source = write_uneven_shards(tmp_path, UNEVEN)
    plain = _plain(source, old)
    consumed, states = _interrupted(source, old, cut)
    per_rank = _resumed(source, new, states)
    assert len({len(keys) for keys in per_rank}) == 1, "every new rank reads the same number of samples"
    seen = consumed + [key for keys in per_rank for key in keys]
    assert not [key for key, count in Counter(seen).items() if count > 1], "a sample was read twice"
    assert sorted(seen) == sorted(plain), "the union differs from the uninterrupted epoch's"


def test_corrupt_samples_in_the_remainder_are_counted_and_replaced_from_unread_ones(tmp_path, capsys):
    # 3 shards of 44 on 2 slots: 66 samples each, 16 batches of 4 (64): 2 unread per slot
    sizes = [44, 44, 44]
    source = write_uneven_shards(tmp_path, sizes)
    broken = [(f"x{i:03d}", {"png": b"not a png" if i in (3, 17) else png_bytes(i), "cls": b"1"}) for i in range(44)]
    source.urls[1] = str(write_tar(tmp_path / "train-000001.tar", broken))
    old, new = (2, 0, 4), (1, 0, 8)
    plain = _plain(source, old)
    consumed, states = _interrupted(source, old, 1)
    (resumed,) = _resumed(source, new, states)
    seen = consumed + resumed
    assert len(seen) == len(set(seen)) and len(resumed) + len(consumed) == len(plain)
    assert len(set(plain) - set(seen)) <= 2  # at most the corrupt ones' places, filled with unread samples
    assert "skipped corrupt data" in capsys.readouterr().out


def test_an_old_position_without_its_layout_is_refused(tmp_path):
    from cvdist.data.stream import DataError

    stream = make_stream(write_uneven_shards(tmp_path, UNEVEN), num_workers=2)
    with pytest.raises(DataError, match="older cvdist without its slot layout"):
        stream.load_elastic_state([{"epoch": 0, "batch": 3, "consumed": [1, 2], "corrupt": 0}])


@pytest.mark.slow
def test_a_two_process_two_worker_run_killed_mid_epoch_finishes_on_one_process(tmp_path):
    # 256 samples, global batch 32: 8 steps an epoch; killed after the checkpoint at step 3
    args = [*TINY, f"output_dir={tmp_path}", "name=elastic", "train.max_steps=6", "checkpoint.every_steps=3",
            "data.num_workers=2"]
    run_killed_after_checkpoint(args, nproc=2, step=3, marker=tmp_path / "marker", kind="hang_after_checkpoint")
    result = run_recipe([*args, "checkpoint.resume=auto", "data.num_workers=0"], nproc=1)
    assert "data layout changed (2 process(es) -> 1" in result.stdout and "re-planned" in result.stdout
    from cvdist.tracking.records import read_metrics

    steps = [r["step"] for r in read_metrics(tmp_path / "elastic") if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def uneven_source(tmp_path_factory):
    return write_uneven_shards(tmp_path_factory.mktemp("uneven"), UNEVEN)


LAYOUTS = [(world_size, workers, 12 // world_size) for world_size in (1, 2, 3, 4, 6) for workers in (0, 2)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=st.sampled_from(LAYOUTS), new=st.sampled_from(LAYOUTS), cut_fraction=st.floats(0.0, 1.0))
def test_any_layout_change_at_any_batch_reads_each_remaining_sample_once(uneven_source, old, new, cut_fraction):
    total = make_stream(uneven_source, world_size=old[0], num_workers=old[1], batch_size=old[2]).batches_in_epoch(EPOCH)
    cut = max(1, min(int(cut_fraction * total), total))  # (a state is taken after at least one batch)
    consumed, states = _interrupted(uneven_source, old, cut)
    per_rank = _resumed(uneven_source, new, states)
    assert len({len(keys) for keys in per_rank}) == 1
    seen = consumed + [key for keys in per_rank for key in keys]
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(_plain(uneven_source, old))
