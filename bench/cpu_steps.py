"""Benchmark: training steps/s on the CPU of bf16 autocast and of ``torch.compile`` against plain
fp32 eager, per cvdist model. Not a test: it prints a table with each variant's ratio to eager.

    python bench/cpu_steps.py                          # both variants, 5 rounds x 10 timed steps
    python bench/cpu_steps.py --variant bf16 --quick   # 2 rounds x 4 steps, one variant
    python bench/cpu_steps.py --variant compile --models small_cnn,vit_tiny

Each row trains one model (cvdist's ``build_model``, channels-last as the engine does) with AdamW
on random images of its size; eager fp32 and the variant alternate within each round in one
process (so load from other jobs hits both alike). ``bf16`` is what ``dist.precision=bf16`` does
on the CPU: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward and the loss, fp32
parameters, gradients and optimiser state. ``compile`` is ``dist.compile=true``: the model through
``torch.compile`` (default mode); its first step (the compilation) is timed apart. Steps/s =
median over rounds of timed steps / wall time, after two untimed warm-up steps per variant.
``dist.precision=auto`` picks fp32 on the CPU and ``dist.compile`` is off by default because of
what this bench measured (README.md here).
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


def make_step(name: str, *, size: int, channels: int, batch: int, bf16: bool = False, compiled: bool = False):
    """A closure that runs one training step of a fresh ``name`` (bf16 autocast / compiled or not)."""
    from cvdist.models import build_model

    torch.manual_seed(0)
    model = build_model(name=name, num_classes=10, in_channels=channels).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model
    images = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(images).float(), labels)
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


def measure_row(name: str, *, variant: str, size: int, channels: int, batch: int, rounds: int, steps: int) -> dict:
    """Eager fp32 and ``variant`` steps/s of one model, alternating within each round."""
    options = {"bf16": {"bf16": True}, "compile": {"compiled": True}}[variant]
    runs = {"eager": make_step(name, size=size, channels=channels, batch=batch),
            variant: make_step(name, size=size, channels=channels, batch=batch, **options)}
    first_step_s = {}
    for label, step in runs.items():  # warm-up: compilation, oneDNN primitive creation, allocator
        start = time.perf_counter()
        step()
        first_step_s[label] = time.perf_counter() - start
        step()
    speeds: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(rounds):
        for label, step in runs.items():
            speeds[label].append(steps_per_s(step, steps=steps))
    eager, other = statistics.median(speeds["eager"]), statistics.median(speeds[variant])
    return {"model": name, "input": f"{batch} x {channels} x {size}^2", "eager": eager, "variant": other,
            "ratio": other / eager, "first_step_s": first_step_s[variant]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("bf16", "compile", "both"), default="both")
    parser.add_argument("--models", default=",".join(row[0] for row in ROWS), help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 rounds x 4 steps")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 4
    torch.set_num_threads(args.threads)
    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    print(f"[bench] training steps on the CPU, variant vs fp32 eager: {args.threads} thread(s), {args.rounds} rounds "
          f"x {args.steps} steps; CPU has avx512_bf16: {'avx512_bf16' in cpu_flags}, amx_bf16: "
          f"{'amx_bf16' in cpu_flags}", flush=True)
    print("| variant | model | batch x C x H^2 | eager steps/s | variant steps/s | variant/eager | first step (s) |\n"
          "| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    wanted = args.models.split(",")
    for variant in (("bf16", "compile") if args.variant == "both" else (args.variant,)):
        for name, size, channels, batch in (row for row in ROWS if row[0] in wanted):
            row = measure_row(name, variant=variant, size=size, channels=channels, batch=batch, rounds=args.rounds,
                              steps=args.steps)
            print(f"| {variant} | {row['model']} | {row['input']} | {row['eager']:.2f} | {row['variant']:.2f} | "
                  f"{row['ratio']:.2f}x | {row['first_step_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
