"""Class-aware re-sampling on a stream, by repeat factors.

A stream cannot draw samples by index, so re-sampling is done as it flows: a sample of class
``c`` is emitted ``floor(r_c)`` times plus once more with probability ``frac(r_c)`` (LVIS's
repeat-factor sampling), where ``r_c = q_c / p_c`` turns the data's class distribution ``p``
(from the manifest) into the target ``q``. The expected number of samples per class in an
epoch is then ``N * q_c`` and the epoch keeps its length ``N`` on average; the shuffle buffer
that follows mixes the repeats.

Schemes (Kang et al., "Decoupling representation and classifier", ICLR 2020):

- ``instance``: q = p (no change);
- ``class_balanced``: q_c = 1 / C;
- ``sqrt``: q_c proportional to sqrt(n_c);
- ``progressive``: q = (1 - t) p + t / C with t = epoch / (num_epochs - 1), from instance- to
  class-balanced over training.
"""

from __future__ import annotations

import math
from typing import Sequence

SCHEMES = ("instance", "class_balanced", "sqrt", "progressive")


def target_distribution(class_counts: Sequence[int], *, scheme: str, epoch: int = 0,
                        num_epochs: int = 1) -> list[float]:
    """The class distribution ``q`` that ``scheme`` aims for (classes with no samples get 0)."""
    if scheme not in SCHEMES:
        raise ValueError(f"data.sampling={scheme!r} is not one of {', '.join(SCHEMES)}")
    present = [c > 0 for c in class_counts]
    num_present = sum(present)
    total = sum(class_counts)
    if total == 0:
        raise ValueError("class counts are all zero; the manifest has no samples for this split")
    instance = [c / total for c in class_counts]
    balanced = [1.0 / num_present if p else 0.0 for p in present]
    if scheme == "instance":
        return instance
    if scheme == "class_balanced":
        return balanced
    if scheme == "sqrt":
        roots = [math.sqrt(c) for c in class_counts]
        return [r / sum(roots) for r in roots]
    t = min(max(epoch / max(num_epochs - 1, 1), 0.0), 1.0)
    return [(1 - t) * i + t * b for i, b in zip(instance, balanced)]


def repeat_factors(class_counts: Sequence[int], *, scheme: str, epoch: int = 0, num_epochs: int = 1) -> list[float]:
    """``r_c = q_c / p_c`` per class (see module doc); 0 for classes without samples."""
    total = sum(class_counts)
    target = target_distribution(class_counts, scheme=scheme, epoch=epoch, num_epochs=num_epochs)
    return [q / (c / total) if c else 0.0 for q, c in zip(target, class_counts)]
