"""``cvdist demo``: the whole toolkit on the built-in data, as one short chain of real runs.

1. Fashion-MNIST as WebDataset shards, and a long-tailed training subset (imbalance factor 100);
2. contrastive pretraining (SimCLR-style, negatives from both processes) on the balanced shards,
   labels unused;
3. long-tail fine-tuning on the long-tailed shards: from scratch with plain cross-entropy, with
   balanced softmax and with LDAM-DRW, and from the pretrained backbone with balanced softmax;
4. distillation of the long-tail model fine-tuned from pretraining into a 4x smaller student
   (``mini_cnn``);
5. ``cvdist compare`` over those runs: a table (terminal, Markdown, CSV) and PNG plots.

Every training step runs the real recipe under ``torchrun`` with ``--nproc`` CPU (or GPU)
processes, exactly as a user would. A step whose run has already finished is skipped, so an
interrupted demo continues where it stopped (each run also resumes from its own checkpoint).
``--quick`` is the same chain on 2 000 images with a few dozen steps per run (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Budget:
    """How much of the data and how many steps each run gets."""

    limit: Optional[int]
    """Fashion-MNIST images per split written to shards (None: all 60 000 / 10 000)."""
    pretrain_steps: int
    """Contrastive pretraining steps of 256 images (two views each)."""
    longtail_epochs: int
    distill_epochs: int
    max_steps: int = 0
    """> 0: stop the fine-tuning and distillation runs after this many steps (the quick form)."""
    eval_samples: int = 0
    """> 0: evaluate on this many test images only."""
    eval_every_steps: int = 0
    """Evaluate the fine-tuning runs this often too (0: at the end only)."""
    shot_many: int = 100
    shot_few: int = 20
    """Many-shot: more than ``shot_many`` training images; few-shot: fewer than ``shot_few``."""


# FULL: Fashion-MNIST-LT has ~15 000 training images at IF 100; 3 epochs per run.
# IF 100 on 6 000 images per class: 6000 ... 60 per class, so many > 1000 (4 classes), few < 200 (3).
FULL = Budget(limit=None, pretrain_steps=80, longtail_epochs=3, distill_epochs=3, eval_every_steps=115,
              shot_many=1000, shot_few=200)
QUICK = Budget(limit=2000, pretrain_steps=12, longtail_epochs=1, distill_epochs=1, max_steps=12, eval_samples=500)


@dataclass
class Step:
    """One command of the chain; ``run`` names the run directory it creates (if any)."""

    title: str
    argv: list[str]
    run: Optional[str] = None
    env: dict[str, str] = field(default_factory=dict)


def _torchrun(nproc: int, recipe: str) -> list[str]:
    return [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}",
            str(REPO / "recipes" / f"{recipe}.py")]


def build_steps(*, budget: Budget, nproc: int, data_dir: Path, runs_dir: Path, root: str) -> list[Step]:
    """The chain for ``budget``; run directories under ``runs_dir``, shards under ``data_dir``."""
    shards, longtail = data_dir / "fashion-mnist", data_dir / "fmnist-lt100"
    cvdist = [sys.executable, "-m", "cvdist.cli"]
    limit = ["--limit", str(budget.limit)] if budget.limit else []
    common = [f"output_dir={runs_dir}", "checkpoint.resume=auto", "tracking.group=demo"]
    if budget.eval_samples:
        common.append(f"data.num_eval_samples={budget.eval_samples}")
    # warm up over a tenth of each run (the recipes' YAMLs assume longer runs)
    pretrain = [*common, f"train.max_steps={budget.pretrain_steps}", "train.eval_every_steps=0",
                f"schedule.warmup_steps={max(1, budget.pretrain_steps // 10)}"]
    if budget.max_steps:
        common += [f"train.max_steps={budget.max_steps}", f"schedule.warmup_steps={max(1, budget.max_steps // 10)}"]
    lt_data = [f"data.train_shards=[{longtail}]", f"longtail.shot_many={budget.shot_many}",
               f"longtail.shot_few={budget.shot_few}"]
    lt_train = [*common, *lt_data, f"train.epochs={budget.longtail_epochs}",
                f"train.eval_every_steps={budget.eval_every_steps}"]
    pretrained = runs_dir / "pretrain-simclr"
    steps = [
        Step("write Fashion-MNIST shards", [*cvdist, "shards", "fashion-mnist", "--root", root, "--out", str(shards),
                                            "--samples-per-shard", "1000", *limit]),
        Step("write the long-tailed subset (IF 100)", [*cvdist, "shards", "longtail", "--source", str(shards),
                                                       "--imbalance-factor", "100", "--seed", "0", "--out",
                                                       str(longtail)]),
        Step("contrastive pretraining", [*_torchrun(nproc, "pretrain_contrastive"), *pretrain, "name=pretrain-simclr",
                                         f"data.train_shards=[{shards}]"],
             run="pretrain-simclr"),
        Step("long-tail: cross-entropy from scratch", [*_torchrun(nproc, "longtail"), *lt_train, "name=lt-ce",
                                                       "loss.name=ce", "longtail.posthoc_tau=1.0"], run="lt-ce"),
        Step("long-tail: balanced softmax from scratch", [*_torchrun(nproc, "longtail"), *lt_train,
                                                          "name=lt-balanced-softmax"], run="lt-balanced-softmax"),
        Step("long-tail: LDAM-DRW from scratch", [*_torchrun(nproc, "longtail"), *lt_train, "name=lt-ldam-drw",
                                                  "loss.name=ldam", f"loss.drw_epoch={max(1, budget.longtail_epochs * 3 // 4)}"],
             run="lt-ldam-drw"),
        Step("long-tail: balanced softmax from the pretrained backbone",
             [*_torchrun(nproc, "longtail"), *lt_train, "name=lt-pretrained-balanced-softmax",
              f"transfer.from_path={pretrained}"], run="lt-pretrained-balanced-softmax"),
        Step("distillation into a smaller student",
             [*_torchrun(nproc, "distill"), *common, *lt_data, "name=distill-student",
              f"teacher.path={runs_dir / 'lt-pretrained-balanced-softmax'}", f"train.epochs={budget.distill_epochs}",
              "model.name=mini_cnn", "loss.name=balanced_softmax"],
             run="distill-student"),
    ]
    compared = [str(runs_dir / s.run) for s in steps if s.run and s.run != "pretrain-simclr"]
    steps.append(Step("compare the runs", [*cvdist, "compare", *compared, "--metrics",
                                           "eval/top1,eval/balanced_acc,eval/many,eval/medium,eval/few",
                                           "--sort", "eval/balanced_acc", "--out", str(runs_dir / "compare"),
                                           # built-in-data options, not used with shards: noise in the table
                                           "--ignore", "data.num_train_samples", "--ignore",
                                           "data.imbalance_factor"]))
    return steps


def _finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    done = json.loads(summary.read_text())
    return not done.get("stopped_early") and done.get("step") == done.get("total_steps")


def _shards_written(step: Step) -> bool:
    out = Path(step.argv[step.argv.index("--out") + 1]) if "--out" in step.argv else None
    return out is not None and "shards" in step.argv and (out / "manifest.json").is_file()


def run_steps(steps: Sequence[Step], *, log=print) -> None:
    """Run each step in order (skipping finished ones); stop at the first failure."""
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_SILENT": "true"}
    for number, step in enumerate(steps, 1):
        header = f"[cvdist demo] {number}/{len(steps)} {step.title}"
        run_dir = _run_dir(step)
        if (run_dir is not None and _finished(run_dir)) or _shards_written(step):
            log(f"{header}: already done, skipped")
            continue
        log(f"{header} ({time.perf_counter() - started:.0f} s so far)\n  $ {shlex.join(step.argv)}")
        result = subprocess.run(step.argv, cwd=REPO, env={**env, **step.env})
        if result.returncode != 0:
            raise SystemExit(f"[cvdist demo] step {number} ({step.title}) failed with exit code "
                             f"{result.returncode}; fix the cause and run the demo again (finished steps are kept)")
    log(f"[cvdist demo] done in {time.perf_counter() - started:.0f} s")


def _run_dir(step: Step) -> Optional[Path]:
    if step.run is None:
        return None
    output_dir = next(a.split("=", 1)[1] for a in step.argv if a.startswith("output_dir="))
    return Path(output_dir) / step.run


def add_demo_command(commands) -> None:
    """Register ``cvdist demo`` on the ``cvdist`` command's subparsers."""
    parser = commands.add_parser("demo", help="run the whole toolkit on Fashion-MNIST: shards, pretraining, "
                                              "long-tail fine-tuning, distillation, comparison")
    parser.add_argument("--quick", action="store_true", help="2 000 images and a few steps per run (minutes)")
    parser.add_argument("--nproc", type=int, default=2, help="processes per run (default 2)")
    parser.add_argument("--runs", default="runs/demo", help="run directories go here (default runs/demo)")
    parser.add_argument("--data", default="data", help="shards go here (default data)")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist",
                        help="Fashion-MNIST IDX files (Debian's dataset-fashion-mnist package)")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    budget = QUICK if args.quick else FULL
    data_dir = Path(args.data) / ("quick" if args.quick else "")
    steps = build_steps(budget=budget, nproc=args.nproc, data_dir=data_dir.resolve(), runs_dir=Path(args.runs).resolve(),
                        root=args.root)
    run_steps(steps)
    return 0
