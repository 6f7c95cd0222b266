"""Training-step speed of cvdist's CNNs with NCHW vs channels-last layout (``dist.channels_last``).

For each model: SGD training steps (forward, cross-entropy, backward, step) on a fixed random batch
of 28x28 images, once with the default NCHW layout and once with the model and the batch in
channels-last layout, as the backends do. The two layouts alternate over ``--rounds`` rounds in
this one process; it prints images/s of each (median of the rounds) and channels-last / NCHW.

    .venv/bin/python bench/channels_last.py                 # all models, 5 rounds (about 3 min)
    .venv/bin/python bench/channels_last.py --quick         # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from cvdist.models import build_model

MODELS = ("tiny_cnn", "mini_cnn", "small_cnn", "small_resnet")


def images_per_second(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for _ in range(2):  # warm-up: oneDNN picks and caches its kernels
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(images) / (time.perf_counter() - start)


def measure(name: str, *, batch_size: int, steps: int, rounds: int) -> dict[str, list[float]]:
    images, labels = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    speeds: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for _ in range(rounds):
        for layout in speeds:
            torch.manual_seed(0)
            model = build_model(name=name, num_classes=10, in_channels=1)
            batch = images
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
                batch = images.contiguous(memory_format=torch.channels_last)
            speeds[layout].append(images_per_second(model, batch, labels, steps=steps))
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and layout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round: checks that it runs")
    args = parser.parse_args()
    steps, rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{steps} steps x {rounds} alternated rounds per layout")
    print("| model | NCHW images/s | channels-last images/s | channels-last / NCHW |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.models:
        speeds = measure(name, batch_size=args.batch_size, steps=steps, rounds=rounds)
        nchw, last = statistics.median(speeds["nchw"]), statistics.median(speeds["channels_last"])
        print(f"| {name} | {nchw:.0f} | {last:.0f} | {last / nchw:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
