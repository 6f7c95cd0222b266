"""Benchmark: training steps/s of bf16 autocast against fp32 on the CPU, per cvdist model. Not a
test: it prints a table and the bf16/fp32 ratio of each row.

    python bench/bf16_cpu.py            # 5 rounds x 10 timed steps per row: ~5-8 min on 2 cores
    python bench/bf16_cpu.py --quick    # 2 rounds x 4 steps: ~1-2 min

Each row trains one model (cvdist's ``build_model``, channels-last as the engine does) with AdamW
on random images of its size, fp32 and bf16 alternating within each round in one process (so
load from other jobs hits both alike). bf16 is what ``dist.precision=bf16`` does on the CPU:
``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward and the loss, fp32 parameters,
gradients and optimiser state. Steps/s = median over rounds of timed steps / wall time, after two
untimed warm-up steps per precision. ``dist.precision=auto`` picks fp32 on the CPU unless this
bench says bf16 pays (see ``resolve_precision`` in cvdist/engine/backends.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

ROWS = (  # model, image size, channels, batch
    ("small_cnn", 28, 1, 128),
    ("small_resnet", 32, 3, 64),
    ("resnet18", 64, 3, 32),
    ("vit_tiny", 32, 3, 64),
)


def make_step(name: str, *, size: int, channels: int, batch: int, bf16: bool):
    """A closure that runs one training step of a fresh ``name`` at the given precision."""
    from cvdist.models import build_model

    torch.manual_seed(0)
    model = build_model(name=name, num_classes=10, in_channels=channels).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def steps_per_s(step, *, steps: int) -> float:
    """Timed steps / wall time (``loss.item()`` in each step waits for the step to finish)."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def measure_row(name: str, *, size: int, channels: int, batch: int, rounds: int, steps: int) -> dict:
    """fp32 and bf16 steps/s of one model, alternating within each round."""
    runs = {precision: make_step(name, size=size, channels=channels, batch=batch, bf16=precision == "bf16")
            for precision in ("fp32", "bf16")}
    for step in runs.values():  # warm-up: oneDNN primitive creation, allocator
        step(), step()
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision, step in runs.items():
            speeds[precision].append(steps_per_s(step, steps=steps))
    fp32, bf16 = statistics.median(speeds["fp32"]), statistics.median(speeds["bf16"])
    return {"model": name, "input": f"{batch} x {channels} x {size}^2", "fp32": fp32, "bf16": bf16,
            "ratio": bf16 / fp32}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 rounds x 4 steps")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 4
    torch.set_num_threads(args.threads)
    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    print(f"[bench] bf16 autocast vs fp32 training steps on the CPU: {args.threads} thread(s), {args.rounds} rounds "
          f"x {args.steps} steps; CPU has avx512_bf16: {'avx512_bf16' in cpu_flags}, amx_bf16: "
          f"{'amx_bf16' in cpu_flags}", flush=True)
    print("| model | batch x C x H^2 | fp32 steps/s | bf16 steps/s | bf16/fp32 |\n| --- | --- | --- | --- | --- |")
    for name, size, channels, batch in ROWS:
        row = measure_row(name, size=size, channels=channels, batch=batch, rounds=args.rounds, steps=args.steps)
        print(f"| {row['model']} | {row['input']} | {row['fp32']:.2f} | {row['bf16']:.2f} | {row['ratio']:.2f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
