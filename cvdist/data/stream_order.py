"""The order samples come in within one reader slot: re-sampling (class- or image-level repeat
factors), mixing several sources by weight, and the shuffle buffer. Pure generators over raw
samples, seeded by the caller (:mod:`cvdist.data.stream`)."""

from __future__ import annotations

import random
from typing import Callable, Iterator, Optional, Union

# Marks the end of one pass over a slot's shards: the shuffle buffer empties itself before the
# next pass starts, so a pass's samples are all delivered before any of them is read again.
PASS_END: dict = {"__key__": "__pass_end__"}


SampleRepeat = Callable[[dict], Optional[float]]
"""A raw sample -> its repeat factor (image-level re-sampling, :mod:`cvdist.data.repeat_factor`);
None for a sample it cannot read (passed on once for the decoder to count)."""


def resampled(samples: Iterator[dict], factors: Union[None, list[float], SampleRepeat], rng: random.Random,
              errors: list[str]) -> Iterator[dict]:
    """``samples`` with each repeated by its class's or its own factor (None: unchanged)."""
    if factors is None:
        return samples  # plain instance sampling: no generator layer per sample
    return _repeated(samples, factors, rng)


def _class_factor(sample: dict, factors: list[float]) -> Optional[float]:
    try:
        label = int(sample["cls"])
        return factors[label] if label >= 0 else None  # (a negative index would pick another class)
    except (KeyError, ValueError, IndexError, TypeError):
        return None


def _repeated(samples: Iterator[dict], factors: Union[list[float], SampleRepeat], rng: random.Random) -> Iterator[dict]:
    for sample in samples:
        if sample is PASS_END:
            yield sample
            continue
        factor = factors(sample) if callable(factors) else _class_factor(sample, factors)
        if factor is None:
            yield sample  # the decoder counts it as corrupt
            continue
        repeats = int(factor) + (1 if rng.random() < factor - int(factor) else 0)
        for _ in range(repeats):
            yield sample


def shuffled(samples: Iterator[dict], buffer_size: int, rng: random.Random) -> Iterator[dict]:
    if buffer_size <= 1:
        yield from (sample for sample in samples if sample is not PASS_END)
        return
    buffer: list[dict] = []
    for sample in samples:
        if sample is PASS_END:
            rng.shuffle(buffer)
            yield from buffer
            buffer = []
            continue
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        buffer[index], sample = sample, buffer[index]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def mixed(streams: list[Iterator[dict]], weights: list[float], rng: random.Random) -> Iterator[dict]:
    if len(streams) == 1:
        return streams[0]
    return _interleaved(streams, weights, rng)


def _interleaved(streams: list[Iterator[dict]], weights: list[float], rng: random.Random) -> Iterator[dict]:
    live = list(range(len(streams)))
    while live:
        choice = rng.choices(live, weights=[weights[i] for i in live])[0]
        try:
            sample = next(streams[choice])
        except StopIteration:
            live.remove(choice)
            continue
        if sample is not PASS_END:  # mixed sources cycle independently; passes do not align
            yield sample
