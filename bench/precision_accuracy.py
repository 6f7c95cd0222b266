"""Benchmark: does ``dist.precision=bf16`` on the CPU reach fp32's accuracy? Not a test.

    nice -n 10 python bench/precision_accuracy.py              # 1 epoch of Fashion-MNIST, 2 seeds
    python bench/precision_accuracy.py --epochs 1 --seeds 0     # one pair

Runs the supervised recipe at its defaults (small_resnet, SGD + one-cycle, label smoothing) on the
built-in Fashion-MNIST for ``--epochs`` epochs, once with ``dist.precision=fp32`` and once with
``bf16`` (autocast on the CPU: convolutions and matmuls in bf16, fp32 parameters and optimiser
state), per seed, one process each; prints each run's final top-1 and the bf16 - fp32 difference
and writes ``bench/results/precision_accuracy.md``. The tolerance the README states (``--tolerance``,
top-1 points) is checked here and reported, not asserted in a test (a run takes minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from pretrain_fmnist import run  # noqa: E402  (the shared subprocess helper)

RESULTS = REPO / "bench" / "results" / "precision_accuracy.md"


def train(precision: str, *, seed: int, args: argparse.Namespace, runs: Path) -> tuple[float, float]:
    """One supervised run; (final top-1, wall seconds)."""
    name = f"{precision}-seed{seed}"
    overrides = [f"output_dir={runs}", f"name={name}", "tracking.wandb_mode=disabled", f"dist.precision={precision}",
                 f"train.epochs={args.epochs}", f"train.seed={seed}", "checkpoint.every_steps=0"]
    wall = run([sys.executable, str(REPO / "recipes" / "supervised.py"), *overrides], threads=args.threads,
               log=runs / f"{name}.log")
    final = json.loads((runs / name / "summary.json").read_text())["final"]
    return final["eval/top1"], wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds; one fp32 and one bf16 run each")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--tolerance", type=float, default=1.0, help="allowed |bf16 - fp32| top-1, in points")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    runs = Path(tempfile.mkdtemp(prefix="precision-accuracy-"))
    lines = ["| seed | fp32 top-1 | bf16 top-1 | bf16 - fp32 (points) | fp32 wall | bf16 wall |",
             "| --- | --- | --- | --- | --- | --- |"]
    differences = []
    for seed in (int(s) for s in args.seeds.split(",")):
        (fp32, fp32_wall), (bf16, bf16_wall) = (train(p, seed=seed, args=args, runs=runs) for p in ("fp32", "bf16"))
        differences.append(100 * (bf16 - fp32))
        lines.append(f"| {seed} | {100 * fp32:.2f} % | {100 * bf16:.2f} % | {differences[-1]:+.2f} | "
                     f"{fp32_wall:.0f} s | {bf16_wall:.0f} s |")
        print(f"[bench] {lines[-1]}", flush=True)
    worst = max(abs(d) for d in differences)
    verdict = "within" if worst <= args.tolerance else "NOT within"
    text = (f"Supervised recipe defaults (small_resnet, built-in Fashion-MNIST), {args.epochs} epoch(s), one process x "
            f"{args.threads} thread(s), {time.strftime('%Y-%m-%d')}:\n\n" + "\n".join(lines) +
            f"\n\nLargest |bf16 - fp32|: {worst:.2f} points, {verdict} the stated tolerance of {args.tolerance} points.\n")
    print(text)
    if not args.no_write:
        RESULTS.write_text("# bf16 autocast vs fp32 on the CPU: accuracy\n\n" + text)
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
