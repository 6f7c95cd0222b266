"""Fuzz campaign: thousands of valid shards mutated at random, read by cvdist's tar reader and
decoded by both decoders. Not a test: it prints the figures the README's "Reliability" section
quotes (cases, clean / corrupt endings, hangs, uncaught exceptions, peak memory).

    .venv/bin/python bench/fuzz_shards.py                  # 20000 cases, a few minutes on one core
    .venv/bin/python bench/fuzz_shards.py --cases 2000     # quick

The mutations and the contract are ``tests/helpers/tar_fuzz.py``'s (the CI fuzz test draws the
same mutations with hypothesis): 1-4 mutations per case from a seeded NumPy generator, each case
under a CPU-time bound (a hang bound: a case takes milliseconds). "Uncaught" counts anything the
tar reader raises other than ``CorruptShard`` and anything the decoders raise that is not an
``Exception`` (the pipeline counts every ``Exception`` of a decoder as a corrupt sample). Peak
memory is the largest traced allocation peak of one read (tracemalloc) and the largest single read
the reader asked of the stream; the process's peak RSS is printed too.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers (and this checkout's cvdist)

from cvdist.data.decode import Decoder  # noqa: E402
from cvdist.data.fast_decode import build_decoder  # noqa: E402
from cvdist.data.transforms import build_transform  # noqa: E402
from tests.helpers.tar_fuzz import base_shards, mutate, random_mutations, run_case  # noqa: E402


def decoders(max_image_pixels: int) -> list:
    options = dict(image_size=8, mean=[0.5], std=[0.5], grey=True, train=True)
    return [build_decoder(preset="flip", num_classes=3, extra_labels={"coarse": 2},
                          max_image_pixels=max_image_pixels, **options),
            Decoder(build_transform(preset="standard", **options), num_classes=3, extra_labels={"coarse": 2},
                    max_image_pixels=max_image_pixels)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000, help="mutated shards to read (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    parser.add_argument("--max-member-bytes", type=int, default=64 * 1024, help="the reader's member limit")
    parser.add_argument("--cpu-seconds", type=float, default=20.0, help="per-case hang bound (CPU time)")
    args = parser.parse_args()
    rng, bases, decode = np.random.default_rng(args.seed), base_shards(), decoders(64 * 64)
    counts, failures = Counter(), []
    peak = largest_read = decoded = refused = 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    for index in range(args.cases):
        base = bases[index % len(bases)]
        data = mutate(base, random_mutations(rng, int(rng.integers(1, 5))))
        outcome = run_case(data, max_member_bytes=args.max_member_bytes, decoders=decode,
                           cpu_seconds=args.cpu_seconds)
        counts[outcome.status] += 1
        peak, largest_read = max(peak, outcome.peak_bytes), max(largest_read, outcome.largest_read)
        decoded, refused = decoded + outcome.decoded, refused + outcome.refused
        if outcome.status in ("hang", "crash") and len(failures) < 10:
            failures.append(f"case {index} ({base.name}): {outcome.detail}")
    elapsed = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fuzz_shards: {args.cases} cases (seed {args.seed}, max_member_bytes {args.max_member_bytes}) "
          f"in {elapsed:.0f} s")
    print(f"  reader endings: {counts['clean']} clean, {counts['corrupt']} CorruptShard; "
          f"hangs: {counts['hang']}; uncaught exceptions: {counts['crash']}")
    print(f"  samples decoded: {decoded}, refused as corrupt: {refused} (both decoders)")
    print(f"  peak traced memory of one read: {peak / 1024:.0f} KiB; largest read asked of the stream: "
          f"{largest_read / 1024:.0f} KiB; process peak RSS: {rss:.0f} MiB "
          f"({rss_before:.0f} MiB before the first case)")
    for failure in failures:
        print(f"  FAILED {failure}")
    return 1 if counts["hang"] or counts["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
