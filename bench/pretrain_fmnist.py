"""Benchmark: self-supervised pretraining on Fashion-MNIST shards, measured by frozen-feature
probes. Not a test: it prints a table and writes it to ``bench/results/pretrain_fmnist.md``.

    nice -n 10 python bench/pretrain_fmnist.py            # full budget (~20 min on 2 cores)
    nice -n 10 python bench/pretrain_fmnist.py --quick    # smoke run: 4000 images, 30 steps, ~6 min
    python bench/pretrain_fmnist.py --out /tmp/pf --reuse  # re-print / resume: finished runs are kept

Chain (every training run is a real recipe subprocess, ``torchrun --standalone --nproc_per_node
--nproc``, ``OMP_NUM_THREADS=1`` per process; ``--nproc 1`` runs plain ``python``):

1. ``cvdist shards fashion-mnist --limit N`` (the first N images of each split; kept under
   ``--data`` and reused when its manifest exists);
2. ``recipes/pretrain_contrastive.py`` (SimCLR, NT-Xent with negatives from all ranks, the
   recipe's YAML defaults otherwise; MoCo v3; BYOL, SimSiam, DINO, VICReg and Barlow Twins with
   their variant YAMLs), ``recipes/pretrain_autoencoder.py`` (conv autoencoder, MSE)
   and ``recipes/supervised.py`` (cross-entropy, its YAML's SGD): the same ``small_cnn``, the same
   ``--steps`` optimiser steps at the same global batch ``--batch-size``, seed 0, warmup over the
   first tenth of the steps then cosine (the YAMLs' 50 warmup steps would outlast a 30-step budget);
3. a randomly initialised ``small_cnn`` (``torch.manual_seed(seed)``, then ``build_model``) saved
   as a weights file: the floor every pretraining method must beat;
4. ``cvdist eval <run or weights> --knn --linear-probe`` on each trunk: weighted cosine kNN
   (k=200, T=0.07) and a linear probe on frozen pooled features; bank / probe training set = the
   shards' train split, evaluation = their test split. The supervised run also gets its own test
   top-1 (its classifier head, from ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pretrain_fmnist.md"
QUICK = {"limit": 4000, "steps": 30, "batch_size": 256, "probe_epochs": 50}
FULL = {"limit": 20000, "steps": 200, "batch_size": 256, "probe_epochs": 100}
_SSL = "pretrain_contrastive.py"
METHODS = {  # row label -> recipe script, run name and its extra overrides
    "SimCLR (contrastive)": (_SSL, "pretrain_contrastive", ["ssl.method=simclr"]),
    "MoCo v3": (_SSL, "pretrain_moco_v3", ["ssl.method=moco_v3"]),
    # the other SSL methods with their variant YAML's defaults (DINO: 2 global + 4 local crops)
    **{label: (_SSL, f"pretrain_{variant}", ["--config", f"recipes/pretrain_{variant}.yaml"])
       for label, variant in (("BYOL", "byol"), ("SimSiam", "simsiam"), ("DINO (multi-crop)", "dino"),
                              ("VICReg", "vicreg"), ("Barlow Twins", "barlow"))},
    "conv autoencoder": ("pretrain_autoencoder.py", "pretrain_autoencoder", ["ae.kind=conv"]),
    # the schedule and loss of the measured table (the recipe's defaults moved to one-cycle + smoothing)
    "supervised (CE)": ("supervised.py", "supervised", ["schedule.name=cosine", "loss.label_smoothing=0.0"]),
}


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    return env


def run(argv: list[str], *, threads: int, log: Path) -> float:
    """One subprocess; returns its wall time; raises with the log's tail if it fails."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(argv, cwd=REPO, env=_env(threads), stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"failed ({code}): {' '.join(argv)}\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def write_shards(data: Path, *, limit: int, log: Path) -> None:
    """Fashion-MNIST shards (first ``limit`` images of each split) unless already written."""
    if (data / "manifest.json").is_file():
        print(f"[bench] reusing shards in {data}")
        return
    run([sys.executable, "-m", "cvdist.cli", "shards", "fashion-mnist", "--root", "/usr/share/datasets/fashion-mnist",
         "--out", str(data), "--limit", str(limit), "--quiet"], threads=2, log=log)


def save_random_init(path: Path, *, seed: int) -> None:
    """The floor: ``small_cnn`` at random initialisation, seeded as the recipes seed before building it."""
    import torch

    from cvdist.models import build_model

    torch.manual_seed(seed)
    model = build_model(name="small_cnn", num_classes=10, in_channels=1, small_stem=True)
    torch.save(model.state_dict(), path)


def train(script: str, extra: list[str], *, name: str, args: argparse.Namespace, runs: Path, data: Path) -> float:
    """One recipe run at the shared budget; returns its wall time (reused if it finished before)."""
    run_dir = runs / name
    if args.reuse and (run_dir / "summary.json").is_file() and (run_dir / "wall_s.txt").is_file():
        return float((run_dir / "wall_s.txt").read_text())
    epochs = math.ceil(args.steps * args.batch_size / args.limit) + 1  # enough data; max_steps ends the run
    overrides = [f"output_dir={runs}", f"name={name}", "tracking.wandb_mode=disabled", "model.name=small_cnn",
                 f"data.train_shards=[{data}]", f"data.global_batch_size={args.batch_size}",
                 f"train.max_steps={args.steps}", f"train.epochs={epochs}", f"train.seed={args.seed}",
                 f"schedule.warmup_steps={max(1, args.steps // 10)}", "train.eval_every_steps=0",
                 "checkpoint.every_steps=0", *extra]
    if args.nproc > 1:
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={args.nproc}"]
        threads = 1
    else:
        launcher, threads = [sys.executable], args.threads
    wall = run([*launcher, str(REPO / "recipes" / script), *overrides], threads=threads, log=runs / f"{name}.log")
    (run_dir / "wall_s.txt").write_text(f"{wall:.1f}\n")
    return wall


def probe(source: Path, *, args: argparse.Namespace, data: Path, out: Path, weights_file: bool) -> dict:
    """``cvdist eval`` kNN + linear probe on ``source``'s trunk; returns its JSON report."""
    if args.reuse and out.is_file():
        return json.loads(out.read_text())
    argv = [sys.executable, "-m", "cvdist.cli", "eval", str(source), "--knn", "--linear-probe",
            "--probe-epochs", str(args.probe_epochs), "--out", str(out)]
    if weights_file:
        argv += ["--model", "small_cnn", "--in-channels", "1", "--train-shards", str(data)]
    run(argv, threads=args.threads, log=out.with_suffix(".log"))
    return json.loads(out.read_text())


def table(rows: list[dict], *, args: argparse.Namespace, caption: str) -> str:
    """The Markdown table, ``caption`` above it."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [caption, "", "| method | steps x batch | kNN top-1 (%) | linear-probe top-1 (%) | test top-1 (%) "
             "| wall time (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        budget = "-" if row["wall"] is None else f"{args.steps} x {args.batch_size}"
        wall = "-" if row["wall"] is None else f"{row['wall']:.0f}"
        lines.append(f"| {row['method']} | {budget} | {pct(row['knn'])} | {pct(row['probe'])} | "
                     f"{pct(row.get('top1'))} | {wall} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; ``--quick`` / full presets fill whatever is not given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke budget {QUICK}")
    parser.add_argument("--limit", type=int, default=None, help="images per split in the shards")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps of every training run")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch of every training run")
    parser.add_argument("--probe-epochs", type=int, default=None, help="linear-probe epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nproc", type=int, default=2, help="processes per training run (torchrun when > 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads of single-process steps (shards, eval)")
    parser.add_argument("--out", default="", help="directory for runs (default: a temporary one)")
    parser.add_argument("--data", default="", help="shard directory (default: <out>/fashion-mnist-<limit>)")
    parser.add_argument("--reuse", action="store_true", help="skip runs / probes that already finished under --out")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="pretrain_fmnist-"))
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else root / f"fashion-mnist-{args.limit}"
    start = time.perf_counter()
    write_shards(data, limit=args.limit, log=root / "shards.log")
    rows = []
    for method, (script, name, extra) in METHODS.items():
        print(f"[bench] training {method} ...", flush=True)
        wall = train(script, extra, name=name, args=args, runs=runs, data=data)
        report = probe(runs / name, args=args, data=data, out=runs / f"{name}.eval.json", weights_file=False)
        row = {"method": method, "knn": report.get("knn_top1"), "probe": report.get("linear_probe_top1"), "wall": wall}
        if script == "supervised.py":
            row["top1"] = json.loads((runs / name / "summary.json").read_text())["final"].get("eval/top1")
        print(f"[bench]   {row}", flush=True)
        rows.append(row)
    weights = runs / "random_init.pt"
    save_random_init(weights, seed=args.seed)
    report = probe(weights, args=args, data=data, out=runs / "random_init.eval.json", weights_file=True)
    rows.insert(0, {"method": "random init (no training)", "knn": report.get("knn_top1"),
                    "probe": report.get("linear_probe_top1"), "wall": None})
    num_test = min(args.limit, 10000)
    caption = (f"Fashion-MNIST, `small_cnn` ({'quick' if args.quick else 'full'} budget): {args.steps} optimiser "
               f"steps x global batch {args.batch_size} for every trained row ({args.steps * args.batch_size:,} "
               f"images seen), {args.nproc} process(es); shards of the first {args.limit:,} training / {num_test:,} "
               f"test images; kNN k=200 T=0.07 and a {args.probe_epochs}-epoch linear probe on frozen features, "
               f"bank / probe set = the {args.limit:,} training images, scored on the {num_test:,} test images. "
               f"Wall time = the training run (launch included), not its probes. Total bench time "
               f"{time.perf_counter() - start:.0f} s.")
    section = f"## {'Quick' if args.quick else 'Full'} budget\n\n" + table(rows, args=args, caption=caption)
    print(section)
    if not args.no_write:
        write_results(section)
    return 0


def write_results(section: str) -> None:
    """Replace this budget's section of the results file, keeping the other budget's."""
    title = "# Self-supervised pretraining on Fashion-MNIST\n"
    old = RESULTS.read_text() if RESULTS.is_file() else title
    sections = {part.split("\n", 1)[0]: "## " + part for part in old.split("\n## ")[1:]}
    sections[section.split("\n", 1)[0][3:]] = section
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(title + "".join("\n" + sections[k].rstrip("\n") + "\n" for k in sorted(sections)))


if __name__ == "__main__":
    sys.exit(main())
