"""Benchmark: DataLoader workers kept across epochs (``data.persistent_workers=true``, the default)
against workers started again every epoch, in one invocation. Not a test.

    python bench/persistent_workers.py                  # 2000 Fashion-MNIST images, 2 workers, 8 epochs x 3 rounds
    python bench/persistent_workers.py --limit 500 --workers 4

Reads the same shards with cvdist's training stream (preset ``flip``, batch 64) for ``--epochs``
short epochs, once with each setting per round, alternating; reports the median over rounds of the
time to the first batch of each epoch after the first and of the whole run, and their ratios.
Short epochs are where restarting workers shows (fine-tuning on small data sets, frequent
evaluation); on long epochs the restart is a fixed cost per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pretrain_fmnist import write_shards  # noqa: E402


def one_run(shards: Path, *, persistent: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(median seconds to an epoch's first batch after epoch 0, total seconds) of one stream."""
    from cvdist.data.fast_decode import build_decoder
    from cvdist.data.shard_sources import resolve_source
    from cvdist.data.stream import ShardStream

    source, _ = resolve_source(str(shards), split="train", num_classes=10)
    decoder = build_decoder(preset="flip", image_size=28, mean=[0.5], std=[0.5], grey=True, train=True,
                            num_classes=10)
    stream = ShardStream(sources=[source], rank=0, world_size=1, num_workers=args.workers, batch_size=64, seed=0,
                         decoder=decoder, persistent_workers=persistent)
    firsts, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        epoch_start = time.perf_counter()
        for index, _ in enumerate(stream.iterate(epoch=epoch)):
            if index == 0 and epoch > 0:
                firsts.append(time.perf_counter() - epoch_start)
    return statistics.median(firsts), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=2000, help="Fashion-MNIST training images")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    shards = Path(tempfile.mkdtemp(prefix="persistent-")) / "fmnist"
    write_shards(shards, limit=args.limit, log=shards.parent / "shards.log")
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for persistent in (False, True):
            results[persistent].append(one_run(shards, persistent=persistent, args=args))
    first = {p: statistics.median(r[0] for r in rows) for p, rows in results.items()}
    total = {p: statistics.median(r[1] for r in rows) for p, rows in results.items()}
    print(f"{args.limit} images, {args.workers} workers, batch 64, {args.epochs} epochs, median of {args.rounds} rounds")
    print("| workers | first batch of an epoch | whole run |\n| --- | --- | --- |")
    print(f"| started every epoch | {1000 * first[False]:.0f} ms | {total[False]:.2f} s |")
    print(f"| persistent | {1000 * first[True]:.0f} ms | {total[True]:.2f} s |")
    print(f"ratio (started / persistent): first batch {first[False] / first[True]:.2f}x, "
          f"whole run {total[False] / total[True]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
