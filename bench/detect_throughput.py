"""Benchmark: training images/s of ``recipes/detect.py`` against a plain torchvision detection loop.
Not a test: it prints numbers and the ratio (target >= 1.0x).

    python bench/detect_throughput.py            # 3 rounds of 60 steps each side: ~10 min on 2 cores
    python bench/detect_throughput.py --quick    # smoke run: 1 round of 16 steps, ~2 min

Both sides train the same detector (the recipe's defaults: FCOS on ``small_resnet``, 96 px scenes,
batch 16, AdamW, gradient clipping at 10) on the same dense shards (the built-in Fashion-MNIST
scenes, written once into a temporary cache by the first cvdist run), with the same decoder and
``transforms.v2`` augmentation and the same number of data workers and threads.

The baseline has the shape of torchvision's detection reference ``train.py``: a map-style data set
(here over the shard's samples held in memory, like image files in the page cache, decoded in
``__getitem__``), a shuffling ``DataLoader`` with a list collate, and ``loss = sum(model(images,
targets).values())``, ``zero_grad``, ``backward``, clip, ``step``. cvdist is the recipe itself,
started as a user starts it (one process), streaming from the shards, logging every step.

Images/s of a side = batch / median step time after ``--warmup`` steps (data waits included: the
recipe's ``samples_per_s`` at ``tracking.log_every_steps=1``; the baseline's wall time per
step). The sides alternate within each round; the ratio is of the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "detect.py"


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """What both sides share: the recipe's defaults, a fixed budget, no evaluation, W&B off."""
    return [f"train.max_steps={args.steps}", f"data.num_workers={args.workers}", "train.eval_every_steps=0",
            f"data.num_eval_samples={args.batch}", f"data.global_batch_size={args.batch}",
            "tracking.wandb_mode=disabled", "tracking.log_every_steps=1", f"checkpoint.every_steps={args.steps}"]


def run_cvdist(args: argparse.Namespace, *, work: Path, round_index: int) -> float:
    """One recipe run; its median images/s after the warm-up steps."""
    name = f"cvdist-{round_index}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "CVDIST_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(RECIPE), *recipe_overrides(args), f"output_dir={work / 'runs'}", f"name={name}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"recipes/detect.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    speeds = [row["samples_per_s"] for row in rows if "samples_per_s" in row][args.warmup:]
    return statistics.median(speeds)


def read_samples(shard_dir: Path, *, split: str) -> list[dict]:
    """Every sample of ``split`` in ``shard_dir`` as a dict of member bytes (webdataset's layout)."""
    samples: dict[str, dict] = {}
    for shard in sorted(shard_dir.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, extension = member.name.partition(".")
                sample = samples.setdefault(f"{shard.name}/{key}", {"__key__": key})
                sample[extension] = tar.extractfile(member).read()
    return list(samples.values())


class MemoryScenes:
    """The baseline's map-style data set: raw samples in memory, decoded per item (as a reference
    ``CocoDetection`` opens and decodes one file per item)."""

    def __init__(self, samples: list[dict], decoder) -> None:
        self.samples, self.decoder = samples, decoder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, target, _ = self.decoder(self.samples[index])
        return image, target


def list_collate(batch):
    """torchvision reference's ``collate_fn``: tuples of images and targets, not stacks."""
    return tuple(zip(*batch))


def build_plain_model():
    """The recipe's default detector, built with the recipe's own builder so both sides train the
    same network (the loop around it is what is compared)."""
    import torch

    from cvdist.tasks.detect.step import build_detection_model

    torch.manual_seed(0)
    return build_detection_model(name="small_resnet", architecture="fcos", num_categories=10, in_channels=1,
                                 small_stem=True, image_size=96, mean=[0.5], std=[0.5], fpn_channels=32,
                                 num_levels=3, anchor_base=8, load_trunk=lambda _: None)


def run_plain(args: argparse.Namespace, *, samples: list[dict]) -> float:
    """The reference-shaped loop; its median images/s after the warm-up steps."""
    import torch
    from torch.utils.data import DataLoader

    from cvdist.data.dense_decode import build_dense_decoder

    torch.set_num_threads(args.threads)
    decoder = build_dense_decoder(num_categories=10, train=True, size=96, hflip=0.5, scale_range=(0.75, 1.25))
    loader = DataLoader(MemoryScenes(samples, decoder), batch_size=args.batch, shuffle=True, drop_last=True,
                        num_workers=args.workers, collate_fn=list_collate,
                        generator=torch.Generator().manual_seed(0))
    model = build_plain_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=1e-4)
    step_seconds: list[float] = []
    started = time.perf_counter()
    while len(step_seconds) < args.steps:
        for images, targets in loader:
            loss = sum(model(list(images), list(targets)).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            now = time.perf_counter()
            step_seconds.append(now - started)
            started = now
            if len(step_seconds) == args.steps:
                break
    return args.batch / statistics.median(step_seconds[args.warmup:])


def scenes_dir(work: Path) -> Path:
    """The shards the first cvdist run wrote into the temporary cache."""
    found = sorted((work / "cache").glob("scenes-*"))
    if not found:
        raise SystemExit(f"no scenes shards under {work / 'cache'}: the first cvdist run wrote none")
    return found[0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="steps per run (each side, each round)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the timing")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="data workers, both sides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--quick", action="store_true", help="1 round of 16 steps (warm-up 4): a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 16, 4
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps={args.steps} must exceed --warmup={args.warmup} + 1")
    return args


def main() -> None:
    args = parse_args()
    print(f"[bench] detection images/s: FCOS small_resnet, 96 px scenes, batch {args.batch}, {args.workers} data "
          f"worker(s), {args.threads} thread(s), {args.rounds} round(s) of {args.steps} steps", flush=True)
    cvdist_speeds, plain_speeds = [], []
    with tempfile.TemporaryDirectory(prefix="cvdist-bench-") as tmp:
        work, samples = Path(tmp), None
        for round_index in range(args.rounds):
            cvdist_speeds.append(run_cvdist(args, work=work, round_index=round_index))
            samples = samples or read_samples(scenes_dir(work), split="train")
            plain_speeds.append(run_plain(args, samples=samples))
            print(f"[bench] round {round_index + 1}: cvdist {cvdist_speeds[-1]:.1f} images/s, plain torchvision "
                  f"loop {plain_speeds[-1]:.1f} images/s", flush=True)
    cvdist_median, plain_median = statistics.median(cvdist_speeds), statistics.median(plain_speeds)
    print(f"[bench] median: cvdist {cvdist_median:.1f} images/s, plain {plain_median:.1f} images/s, "
          f"cvdist/plain {cvdist_median / plain_median:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
