"""Benchmark: distillation and compression on Fashion-MNIST with the real recipes. Not a test:
it prints the compression report and the KD gain, and writes them to
``bench/results/distill_fmnist.md``.

    python bench/distill_fmnist.py                                  # default budget
    python bench/distill_fmnist.py --train-samples 10000 --epochs 1  # a quicker look

Chain (each step a subprocess of a recipe, one process, ``OMP_NUM_THREADS=--threads``):

1. teacher: ``small_cnn`` (~140 k parameters) trained by ``recipes/supervised.py``;
2. student alone: ``mini_cnn`` (~36 k parameters; ``--student tiny_cnn``: ~1.4 k) by ``recipes/distill.py`` with ``kd.alpha=0``
   (label loss only; the same recipe, data order and budget as 3);
3. student + KD: the same student, Hinton KD from the teacher (T = 4, alpha = 0.9);
4. ``recipes/compress.py`` over all three, pruning (global L1, ``--sparsity``) and INT8-quantizing
   the teacher and the KD student: one table, every row evaluated on the full Fashion-MNIST test split.

The students see the same ``--train-samples`` images for ``--epochs`` epochs from the same seed,
so the KD gain is the difference of two runs that differ only in the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "distill_fmnist.md"


def run(script: str, args: list[str], *, threads: int, log: Path) -> float:
    """One recipe subprocess; returns its wall time; raises with the log's tail if it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call([sys.executable, str(REPO / "recipes" / script), *args], cwd=REPO, env=env,
                               stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{script} failed ({code}): {' '.join(args)}\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def train_all(args: argparse.Namespace, runs: Path, common: list[str], root: Path, times: dict) -> None:
    """Steps 1-3: the teacher, the student alone, the student with KD."""
    # the schedule and loss of the measured table (the recipe's defaults moved to one-cycle + smoothing)
    times["teacher"] = run("supervised.py", [*common, "name=teacher", "model.name=small_cnn",
                                             "schedule.name=cosine", "schedule.warmup_steps=50",
                                             "loss.label_smoothing=0.0", f"train.epochs={args.teacher_epochs}"],
                           threads=args.threads,
                           log=root / "teacher.log")
    student = [*common, f"teacher.path={runs / 'teacher'}", f"train.epochs={args.epochs}", f"model.name={args.student}"]
    times["student"] = run("distill.py", [*student, "name=student", "kd.alpha=0"], threads=args.threads,
                           log=root / "student.log")
    times["student_kd"] = run("distill.py", [*student, "name=student_kd"], threads=args.threads,
                              log=root / "student_kd.log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=20000, help="training images (0 = all 60 000)")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="student epochs (both students)")
    parser.add_argument("--student", default="mini_cnn", choices=["tiny_cnn", "mini_cnn"],
                        help="student model (default mini_cnn, 36 k params; tiny_cnn's 1.4 k gained +0.09 points)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="directory for the runs (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep the trained runs in --out; only compress again")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="distill_fmnist-"))
    root.mkdir(parents=True, exist_ok=True)  # a new --out directory
    runs = root / "runs"
    common = [f"output_dir={runs}", "tracking.wandb_mode=disabled", f"data.num_train_samples={args.train_samples}"]
    times: dict[str, float] = {}
    if not args.reuse:
        train_all(args, runs, common, root, times)
    report_name = f"report-{int(time.time())}"
    times["compress"] = run("compress.py", [
        f"output_dir={runs}", "tracking.wandb_mode=disabled", f"name={report_name}",
        f"models.teacher={runs / 'teacher'}", f"models.student={runs / 'student'}",
        f"models.student_kd={runs / 'student_kd'}",
        f"prune.sparsity={args.sparsity}", "compress=[teacher,student_kd]"], threads=args.threads,
        log=root / "compress.log")
    report = (runs / report_name / "report.md").read_text()
    rows = {row[0]: row for row in json.loads((runs / report_name / "summary.json").read_text())["report"]["rows"]}
    gain = rows["student_kd"][1] - rows["student"][1]
    text = (f"# Distillation and compression on Fashion-MNIST\n\n"
            f"teacher small_cnn {args.teacher_epochs} epoch(s), students {args.student} {args.epochs} epoch(s), "
            f"{args.train_samples or 60000} training images, full test split; KD T=4, alpha=0.9; "
            f"pruning global L1 {args.sparsity:.0%}.\n\n{report}\n"
            f"KD gain (student_kd - student, top-1): {100 * gain:+.2f} points.\n\n"
            f"Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + "\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
