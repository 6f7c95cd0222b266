"""data.persistent_workers: DataLoader workers live across epochs and get each epoch's plan through
a shared buffer (cvdist/data/setup_channel.py); the batches are the per-epoch workers' exactly."""

from __future__ import annotations

import torch

from cvdist.data.setup_channel import CAPACITY, SetupChannel
from tests.helpers.shards import UNEVEN
from tests.test_stream import make_stream, write_uneven_shards


def _worker_pids(stream) -> list[int]:
    return sorted(worker.pid for worker in stream._loader._iterator._workers)


def test_workers_persist_across_epochs_and_yield_the_same_batches(tmp_path):
    source = write_uneven_shards(tmp_path, UNEVEN)
    options = dict(num_workers=2, shuffle_buffer=8)
    fresh = make_stream(source, persistent_workers=False, **options)
    persistent = make_stream(source, **options)
    pids = []
    for epoch in range(3):
        expected = list(fresh.iterate(epoch=epoch))
        got = list(persistent.iterate(epoch=epoch))
        assert [b["key"] for b in got] == [b["key"] for b in expected] and len(got) > 0
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, expected))
        pids.append(_worker_pids(persistent))
    assert pids[0] == pids[1] == pids[2], "the workers were restarted"
    assert fresh._loader is None


def test_an_epoch_abandoned_midway_and_a_resume_on_the_living_workers(tmp_path):
    source = write_uneven_shards(tmp_path, UNEVEN)
    plain = [b["key"] for b in make_stream(source, num_workers=2, persistent_workers=False).iterate(epoch=1)]
    stream = make_stream(source, num_workers=2)
    iterator = stream.iterate(epoch=1)
    first = [next(iterator)["key"] for _ in range(3)]
    state = stream.state()
    del iterator  # e.g. the run stopped at train.max_steps mid-epoch
    stream.load_state(state)
    rest = [b["key"] for b in stream.iterate(epoch=1, start_batch=3)]
    assert first + rest == plain
    assert [b["key"] for b in stream.iterate(epoch=1)] == plain  # and the whole epoch again


def test_the_channel_round_trips_a_setup_and_refuses_one_too_large():
    channel = SetupChannel()
    assert channel.read() is None
    assert channel.publish({"epoch": 3, "plan": list(range(1000))})
    assert channel.read() == {"epoch": 3, "plan": list(range(1000))}
    assert not channel.publish(b"x" * (CAPACITY + 1)) and channel.read() is None
