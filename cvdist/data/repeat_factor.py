"""Image-level repeat-factor sampling for detection (LVIS; Gupta et al., "LVIS", CVPR 2019).

For each category c, ``f_c`` is the fraction of training images that contain c and
``r_c = max(1, sqrt(t / f_c))`` with the threshold ``t`` (LVIS uses 0.001); an image's repeat
factor is the largest ``r_c`` over the categories it contains, ``r_i = max_c r_c``. In each epoch
an image is emitted ``floor(r_i)`` times plus once more with probability ``frac(r_i)``
(stochastic rounding), so rare-category images come back more often.

How it fits the stream (:mod:`cvdist.data.stream`): a stream cannot draw images by index, so the
repeat is decided when a sample is read, in the same place (and with the same per-slot random
generator) as the classification repeat factors of :mod:`cvdist.data.resampling`: a sample's
``.json`` annotations give its categories, hence ``r_i``, as it flows past. ``f_c`` must be known
before the first sample, and the manifest counts instances per category, not images containing
it; so :func:`category_image_fractions` makes one first pass over the training split's
annotations at start-up (every rank reads the same ``.json`` members and gets the same
``f_c``). Why a sequential per-slot generator and not one seeded by ``(seed, epoch, key)``: it is
already seeded by ``(seed, epoch, slot)`` and a resumed run replays the slot's stream from the
start of the epoch (skipping the consumed samples without decoding them), so the same images
repeat the same number of times after a resume, exactly, with no second mechanism.

An epoch keeps its planned length (the same number of batches per rank as without re-sampling,
so every rank yields equal batches and ``train.epochs`` means the same number of steps whatever
``t``): the repeated stream is longer by the mean ``r_i``, and its end is not reached within the
epoch. The shard order is reshuffled every epoch, so which images fall past the end changes from
epoch to epoch, and the category mix of the part that is read is, in expectation, the
re-sampled one: category c's share of training instances becomes
``sum_i r_i n_ic / sum_i r_i n_i`` (:func:`expected_instance_shares`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from cvdist.data.dense_shards import ANNOTATION_MEMBER, parse_annotations
from cvdist.data.stream import DataError, read_shard_samples
from cvdist.data.tar_samples import DEFAULT_MAX_MEMBER_BYTES


def category_repeat_factors(image_fractions: Sequence[float], *, threshold: float) -> list[float]:
    """``r_c = max(1, sqrt(threshold / f_c))`` per category; 1 for a category in no image (never drawn)."""
    return [max(1.0, math.sqrt(threshold / f)) if f > 0 else 1.0 for f in image_fractions]


def image_repeat_factor(categories: Iterable[int], category_factors: Sequence[float]) -> float:
    """``r_i``: the largest repeat factor of the categories in the image (1 for an image without any)."""
    return max((category_factors[c] for c in categories), default=1.0)


def read_image_categories(urls: Sequence[str], *, num_categories: int,
                          max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> list[list[int]]:
    """The category ids of every sample's annotations in the shards ``urls`` (the first pass);
    a damaged shard or annotation is a one-line DataError, since ``f_c`` would be wrong without it."""
    errors: list[str] = []
    images = []
    for url in urls:
        for sample in read_shard_samples(url, errors, max_member_bytes=max_member_bytes):
            try:
                images.append(parse_annotations(sample[ANNOTATION_MEMBER], num_categories=num_categories)["labels"]
                              .tolist())
            except Exception as error:  # noqa: BLE001 - any bad annotation: one line naming the sample
                raise DataError(f"repeat-factor sampling: {url}: sample {sample.get('__key__')} has unreadable "
                                f"annotations ({type(error).__name__}: {error}); repair the shard") from None
        if errors:
            raise DataError(f"repeat-factor sampling: {errors[0]}; repair the shard")
    if not images:
        raise DataError(f"repeat-factor sampling: no training samples in {len(urls)} shard(s)")
    return images


def category_image_fractions(image_categories: Sequence[Sequence[int]], *, num_categories: int) -> list[float]:
    """``f_c``: the fraction of images containing category c (each image counted once per category)."""
    counts = [0] * num_categories
    for categories in image_categories:
        for category in set(categories):
            counts[category] += 1
    return [count / len(image_categories) for count in counts]


def expected_instance_shares(image_categories: Sequence[Sequence[int]], image_factors: Sequence[float], *,
                             num_categories: int) -> list[float]:
    """Each category's expected share of training instances when image i is drawn ``r_i`` times
    on average: ``sum_i r_i n_ic / sum_i r_i n_i``."""
    weighted = [0.0] * num_categories
    for categories, factor in zip(image_categories, image_factors, strict=True):
        for category in categories:
            weighted[category] += factor
    total = sum(weighted)
    return [w / total for w in weighted]


@dataclass(frozen=True)
class RepeatFactor:
    """A raw sample -> its ``r_i`` (the stream's per-sample repeat; picklable for DataLoader
    workers). None for a sample whose annotations cannot be read: it is passed on once and the
    decoder counts it as corrupt."""

    category_factors: tuple[float, ...]

    def __call__(self, sample: dict) -> Optional[float]:
        try:
            labels = parse_annotations(sample[ANNOTATION_MEMBER], num_categories=len(self.category_factors))["labels"]
        except Exception:  # noqa: BLE001 - the decoder reports it, with the shard named
            return None
        return image_repeat_factor(labels.tolist(), self.category_factors)


def build_repeat_factor(urls: Sequence[str], *, threshold: float, num_categories: int,
                        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> RepeatFactor:
    """The per-sample repeat factor for the training shards ``urls`` at ``threshold`` (t > 0)."""
    images = read_image_categories(urls, num_categories=num_categories, max_member_bytes=max_member_bytes)
    fractions = category_image_fractions(images, num_categories=num_categories)
    return RepeatFactor(tuple(category_repeat_factors(fractions, threshold=threshold)))
