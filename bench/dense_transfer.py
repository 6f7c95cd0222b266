"""Benchmark: detection AP and segmentation mIoU on the built-in scenes, by backbone initialisation.
Not a test: it prints a table and writes it to ``bench/results/dense_transfer.md``.

    nice -n 10 python bench/dense_transfer.py            # full budget (~1.5-2 h on 2 cores)
    nice -n 10 python bench/dense_transfer.py --quick    # smoke run: ~15-20 min
    python bench/dense_transfer.py --out /tmp/dt --reuse  # resume / re-print: finished runs are kept

Chain (every run is a real recipe subprocess, ``torchrun --standalone --nproc_per_node --nproc``
with ``OMP_NUM_THREADS=1`` per process, or plain ``python`` for ``--nproc 1``):

1. ``cvdist shards fashion-mnist --limit N``: the pretraining images (labels used only by the
   supervised row);
2. pretraining, the same ``--pretrain-steps`` x ``--batch-size`` for every row: supervised
   cross-entropy (``recipes/supervised.py``), SimCLR and MoCo v3 (``recipes/pretrain_contrastive.py``)
   on ``small_resnet``, and MAE (``recipes/pretrain_autoencoder.py --config recipes/pretrain_mae.yaml``)
   on its ViT;
3. fine-tuning, the same ``--finetune-steps`` for every row, each dense recipe at its YAML defaults
   otherwise (the built-in Fashion-MNIST scenes: 96 px for detection, 64 px for segmentation), from
   each pretrained run (``detect.backbone_from`` / ``segment.backbone_from``) and from random
   initialisation of the same backbone; the final ``eval/AP`` / ``eval/AP50`` and ``eval/mIoU``
   come from each run's ``summary.json``.

A recipe that refuses a backbone (its one-line error) or is missing is a row that says so, not a
crash: the table reports what was measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from pretrain_fmnist import run, write_shards  # noqa: E402  (the same subprocess and shard helpers)

RESULTS = REPO / "bench" / "results" / "dense_transfer.md"
QUICK = {"limit": 4000, "pretrain_steps": 30, "finetune_steps": 60, "batch_size": 256}
FULL = {"limit": 20000, "pretrain_steps": 200, "finetune_steps": 500, "batch_size": 256}
_SSL = "pretrain_contrastive.py"
PRETRAINING = {  # row label -> (recipe script, run name, backbone, extra overrides)
    "supervised (CE)": ("supervised.py", "supervised", "small_resnet", ["loss.label_smoothing=0.0"]),
    "SimCLR": (_SSL, "simclr", "small_resnet", ["ssl.method=simclr"]),
    "MoCo v3": (_SSL, "moco_v3", "small_resnet", ["ssl.method=moco_v3"]),
    "MAE": ("pretrain_autoencoder.py", "mae", "vit_tiny", ["--config", "recipes/pretrain_mae.yaml"]),
}
TASKS = {"detection": ("detect.py", "detect", ("eval/AP", "eval/AP50")),
         "segmentation": ("segment.py", "segment", ("eval/mIoU",))}


def launcher(args: argparse.Namespace) -> tuple[list[str], int]:
    """The command prefix and the threads per process."""
    if args.nproc > 1:
        return [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={args.nproc}"], 1
    return [sys.executable], args.threads


def pretrain(label: str, *, args: argparse.Namespace, runs: Path, data: Path) -> Path:
    """One pretraining run at the shared budget (reused when finished before); its run directory."""
    script, name, backbone, extra = PRETRAINING[label]
    run_dir = runs / f"pretrain-{name}"
    if not (args.reuse and (run_dir / "summary.json").is_file()):
        epochs = math.ceil(args.pretrain_steps * args.batch_size / args.limit) + 1  # max_steps ends the run
        model = ["ae.vit=vit_tiny"] if backbone.startswith("vit") else [f"model.name={backbone}"]
        overrides = [f"output_dir={runs}", f"name={run_dir.name}", "tracking.wandb_mode=disabled", *model,
                     f"data.train_shards=[{data}]", f"data.global_batch_size={args.batch_size}",
                     f"train.max_steps={args.pretrain_steps}", f"train.epochs={epochs}", f"train.seed={args.seed}",
                     f"schedule.warmup_steps={max(1, args.pretrain_steps // 10)}", "train.eval_every_steps=0",
                     "checkpoint.every_steps=0", *extra]
        prefix, threads = launcher(args)
        run([*prefix, str(REPO / "recipes" / script), *overrides], threads=threads, log=runs / f"{run_dir.name}.log")
    return run_dir


def finetune(task: str, *, init: str, backbone: str, source: str, args: argparse.Namespace,
             runs: Path) -> dict[str, float] | str:
    """One dense fine-tune; its final metrics, or the one-line reason it did not run."""
    script, section, metrics = TASKS[task]
    if not (REPO / "recipes" / script).is_file():
        return f"recipes/{script} does not exist yet"
    name = f"{section}-{init}"
    summary = runs / name / "summary.json"
    if not (args.reuse and summary.is_file()):
        overrides = [f"output_dir={runs}", f"name={name}", "tracking.wandb_mode=disabled", f"model.name={backbone}",
                     f"train.max_steps={args.finetune_steps}", f"train.seed={args.seed}",
                     f"checkpoint.every_steps={args.finetune_steps}",
                     f"schedule.warmup_steps={max(1, args.finetune_steps // 10)}",
                     *([f"{section}.backbone_from={source}"] if source else [])]  # random init: none
        prefix, threads = launcher(args)
        try:
            run([*prefix, str(REPO / "recipes" / script), *overrides], threads=threads, log=runs / f"{name}.log")
        except RuntimeError as error:
            lines = [line for line in str(error).splitlines() if "Error" in line or "error" in line]
            return (lines[-1] if lines else str(error).splitlines()[0])[:200]
    final = json.loads(summary.read_text())["final"]
    return {metric: final.get(metric, float("nan")) for metric in metrics}


def rows_for(args: argparse.Namespace, *, runs: Path, data: Path) -> list[dict]:
    """Every (initialisation, backbone) row with both tasks' results."""
    rows = []
    for backbone in args.backbones.split(","):
        inits = [("random init", "")] + [(label, None) for label, spec in PRETRAINING.items() if spec[2] == backbone]
        for label, source in inits:
            print(f"[bench] {backbone}: {label} ...", flush=True)
            if source is None:
                source = str(pretrain(label, args=args, runs=runs, data=data))
            init = f"{backbone}-{label.split()[0].lower()}"
            row = {"init": label, "backbone": backbone}
            for task in TASKS:
                row[task] = finetune(task, init=init, backbone=backbone, source=source, args=args, runs=runs)
            print(f"[bench]   {row}", flush=True)
            rows.append(row)
    return rows


def cell(result: dict[str, float] | str, metric: str) -> str:
    return f"{result[metric]:.3f}" if isinstance(result, dict) else "-"


def table(rows: list[dict], *, caption: str) -> str:
    """The Markdown table; a row whose task did not run says why under the table."""
    lines = [caption, "", "| backbone | initialisation | detection AP | AP50 | segmentation mIoU |",
             "| --- | --- | --- | --- | --- |"]
    notes = []
    for row in rows:
        lines.append(f"| {row['backbone']} | {row['init']} | {cell(row['detection'], 'eval/AP')} | "
                     f"{cell(row['detection'], 'eval/AP50')} | {cell(row['segmentation'], 'eval/mIoU')} |")
        notes += [f"- {row['backbone']} / {row['init']} / {task}: {row[task]}" for task in TASKS
                  if isinstance(row[task], str)]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; ``--quick`` / full presets fill whatever is not given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke budget {QUICK}")
    parser.add_argument("--limit", type=int, default=None, help="pretraining images per split")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch of the pretraining runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbones", default="small_resnet,vit_tiny", help="comma-separated rows to run")
    parser.add_argument("--nproc", type=int, default=2, help="processes per run (torchrun when > 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads of single-process steps")
    parser.add_argument("--out", default="", help="directory for runs (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="skip runs that already finished under --out")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="dense_transfer-"))
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    data = root / f"fashion-mnist-{args.limit}"
    start = time.perf_counter()
    preset = QUICK if args.quick else FULL
    budget = ("quick" if args.quick else "full") if all(getattr(args, k) == v for k, v in preset.items()) else "custom"
    write_shards(data, limit=args.limit, log=root / "shards.log")
    rows = rows_for(args, runs=runs, data=data)
    caption = (f"Built-in scenes (1-4 Fashion-MNIST items on 96 px canvases for detection, 64 px for "
               f"segmentation: each dense recipe's YAML defaults), "
               f"{budget} budget: pretraining {args.pretrain_steps} steps x batch "
               f"{args.batch_size} on the first {args.limit:,} Fashion-MNIST training images, fine-tuning "
               f"{args.finetune_steps} steps for every row, {args.nproc} process(es), seed {args.seed}; final "
               f"evaluation on the recipe's test scenes. Total bench time {time.perf_counter() - start:.0f} s.")
    section = f"## {budget.capitalize()} budget\n\n" + table(rows, caption=caption)
    print(section)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# Dense transfer on the built-in scenes\n\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
