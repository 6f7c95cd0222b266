"""Memory and time of ``dist.activation_checkpointing`` against the plain model, side by side.

For each model, two fresh child processes (plain, checkpointed) each build the model and a
fixed random batch, then run training steps (forward, cross-entropy, backward, SGD step). Each
reports the peak resident memory of its step above what it held before the step (model,
optimiser, batch: the same in both), i.e. the activation memory of a step plus the kernels'
workspace, and the median step time. A fresh process per measurement, because the peak
resident set of a process only grows. Prints both and the ratios checkpointed / plain.

    .venv/bin/python bench/activation_checkpointing.py            # resnet18 and vit_tiny at 32 px (about 2 min)
    .venv/bin/python bench/activation_checkpointing.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cvdist.models import build_model  # noqa: E402
from cvdist.models.checkpointing import checkpoint_blocks  # noqa: E402

# (model, channels, image side, batch)
CASES = [("resnet18", 3, 32, 64), ("vit_tiny", 3, 32, 64)]
QUICK = [("small_resnet", 1, 28, 32)]


def measure(name: str, channels: int, side: int, batch: int, *, checkpointed: bool, steps: int) -> dict:
    """One configuration in this process: peak step memory above the pre-step level (MiB), median step time (s)."""
    torch.manual_seed(0)
    model = build_model(name=name, num_classes=10, in_channels=channels).train()
    if checkpointed:
        checkpoint_blocks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(batch, channels, side, side), torch.randint(0, 10, (batch,))
    for parameter in model.parameters():  # the gradients and momentum exist before the measurement
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    before = psutil.Process().memory_info().rss
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"step_mib": (peak - before) / 2**20, "step_s": statistics.median(times)}


def _child(case: tuple, checkpointed: bool, steps: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); from activation_checkpointing import measure; "
            f"print(json.dumps(measure(*{case!r}, checkpointed={checkpointed}, steps={steps})))")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small model, 2 steps")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cases, steps = (QUICK, 2) if args.quick else (CASES, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak memory of a training step above "
          "the memory held before it, median step time")
    print(f"{'model':<14}{'input':>12}{'plain MiB':>11}{'ckpt MiB':>10}{'memory':>9}{'plain s':>9}{'ckpt s':>8}{'time':>7}")
    for case in cases:
        plain, checkpointed = _child(case, False, steps), _child(case, True, steps)
        name, channels, side, batch = case
        print(f"{name:<14}{f'{batch}x{channels}x{side}²':>12}{plain['step_mib']:>11.0f}{checkpointed['step_mib']:>10.0f}"
              f"{checkpointed['step_mib'] / plain['step_mib']:>8.2f}x{plain['step_s']:>9.3f}{checkpointed['step_s']:>8.3f}"
              f"{checkpointed['step_s'] / plain['step_s']:>6.2f}x")


if __name__ == "__main__":
    main()
