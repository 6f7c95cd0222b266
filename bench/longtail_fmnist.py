"""Benchmark: long-tail methods on Fashion-MNIST-LT with the real recipe. Not a test: it prints
a Markdown table and writes it to ``bench/results/longtail_fmnist.md``.

    python bench/longtail_fmnist.py                        # IF 100, default budget (~20 min on 2 cores)
    python bench/longtail_fmnist.py --imbalance 100 10     # both imbalance factors
    python bench/longtail_fmnist.py --epochs 2 --quick     # smoke run

Every method trains the same backbone (``small_cnn``) for the same budget (``--epochs`` epochs of
the long-tailed training set, batch 128, SGD + cosine) from the same seed, as a subprocess of
``recipes/longtail.py`` on the built-in data (the recipe's defaults: the first 10 000 training
images, 20 per class held out for tau-normalisation, the rest cut to the imbalance profile; the
full balanced test set). Rows that are evaluation-time options or a second stage reuse the CE
run: post-hoc logit adjustment (``longtail.posthoc_tau=1``), tau-normalisation
(``longtail.tau_norm=true``, tau chosen on the held-out split) and cRT (``longtail.stage=crt``:
``--crt-epochs`` epochs of class-balanced classifier re-training on the frozen CE trunk).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "longtail.py"
RESULTS = REPO / "bench" / "results" / "longtail_fmnist.md"
COLUMNS = ("top1", "balanced_acc", "many", "medium", "few")

# name -> (table label, recipe overrides); ``{drw}`` is the DRW epoch (2/3 of the budget, as
# LDAM-DRW's 160 of 200 epochs).
METHODS: dict[str, tuple[str, list[str]]] = {
    "ce": ("CE", ["loss.name=ce", "longtail.posthoc_tau=1.0", "longtail.tau_norm=true"]),
    "weighted_ce": ("class-weighted CE (inverse frequency)", ["loss.name=weighted_ce"]),
    "class_balanced": ("class-balanced CE (beta 0.9999)", ["loss.name=class_balanced"]),
    "focal": ("focal (gamma 2)", ["loss.name=focal"]),
    "ldam": ("LDAM-DRW", ["loss.name=ldam", "loss.drw_epoch={drw}"]),
    "balanced_softmax": ("balanced softmax", ["loss.name=balanced_softmax"]),
    "logit_adjusted": ("logit-adjusted loss (tau 1)", ["loss.name=logit_adjusted"]),
}


def run_recipe(args: list[str], *, threads: int, log: Path) -> None:
    """One recipe subprocess; raises with the log's tail if it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    with open(log, "w") as handle:
        code = subprocess.call([sys.executable, str(RECIPE), *args], cwd=REPO, env=env, stdout=handle,
                               stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"recipe failed ({code}): {' '.join(args)}\n" + log.read_text()[-3000:])


def final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["final"]


def run_factor(imbalance: float, *, out: Path, epochs: int, crt_epochs: int, jobs: int, seed: int,
               extra: list[str], reuse: bool) -> list[tuple[str, dict]]:
    """All methods at one imbalance factor; ``[(row label, {column: value})]`` in table order."""
    root = out / f"if{imbalance:g}"
    common = [f"output_dir={root}", "tracking.wandb_mode=disabled", f"data.imbalance_factor={imbalance}",
              f"train.seed={seed}", "train.eval_every_steps=0", "checkpoint.every_steps=0",
              "tracking.log_every_steps=50", *extra]
    threads = max(1, (os.cpu_count() or 2) // jobs)
    started = time.perf_counter()

    def train(name: str, overrides: list[str]) -> str:
        args = [*common, f"name={name}", *[o.format(drw=max(1, round(epochs * 2 / 3))) for o in overrides]]
        if reuse and (root / name / "summary.json").is_file():
            print(f"[bench] IF {imbalance:g}: {name}: reusing the finished run in {root / name}", flush=True)
            return name
        run_recipe(args, threads=threads, log=root / f"{name}.log")
        print(f"[bench] IF {imbalance:g}: {name} done after {time.perf_counter() - started:.0f} s", flush=True)
        return name

    def crt(ce: Future) -> str:
        ce.result()
        return train("crt", ["longtail.stage=crt", f"transfer.from_path={root / 'ce'}", "data.sampling=class_balanced",
                             "loss.name=ce", f"train.epochs={crt_epochs}", "schedule.warmup_steps=0"])

    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(train, name, [f"train.epochs={epochs}", *overrides])
                   for name, (_, overrides) in METHODS.items()}
        futures["crt"] = pool.submit(crt, futures["ce"])
        for future in futures.values():
            future.result()
    rows = []
    for name, (label, _) in METHODS.items():
        metrics = final_metrics(root / name)
        rows.append((label, {c: metrics[f"eval/{c}"] for c in COLUMNS}))
        if name == "ce":
            rows.append(("CE + post-hoc logit adjustment (tau 1)", {c: metrics[f"eval/{c}_posthoc"] for c in COLUMNS}))
            tau = metrics["tau_norm/tau"]
            rows.append((f"CE + tau-normalisation (tau {tau:g} on held-out)",
                         {c: metrics[f"eval/{c}_taunorm"] for c in COLUMNS}))
    crt_metrics = final_metrics(root / "crt")
    rows.append((f"cRT (CE trunk, {crt_epochs} class-balanced epochs)", {c: crt_metrics[f"eval/{c}"] for c in COLUMNS}))
    return rows


def table(imbalance: float, rows: list[tuple[str, dict]], counts: list[int]) -> str:
    lines = [f"### Fashion-MNIST-LT, imbalance factor {imbalance:g} (training class counts {counts})", "",
             "| method | top-1 (balanced test set) | balanced acc | many | medium | few |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, values in rows:
        # a shot group without classes (e.g. no class under 20 images at IF 10) has no accuracy
        lines.append(f"| {label} | " + " | ".join("-" if values[c] != values[c] else f"{100 * values[c]:.1f}"
                                                 for c in COLUMNS) + " |")
    return "\n".join(lines)


def class_counts(run_log: Path) -> list[int]:
    for line in run_log.read_text().splitlines():
        if "training class counts" in line:
            return json.loads(line.split("training class counts", 1)[1].split(";")[0])
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imbalance", type=float, nargs="+", default=[100.0], help="imbalance factors (default 100)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs of every method (default 12)")
    parser.add_argument("--crt-epochs", type=int, default=4, help="cRT stage-2 epochs (default 4)")
    parser.add_argument("--jobs", type=int, default=2, help="recipe runs at a time, each with cores/jobs threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="run directory root (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2000 training images, 1000 test images")
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file to write (default %(default)s)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip runs already finished under --out (same settings assumed): resume a benchmark")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cvdist-bench-longtail-"))
    extra = ["data.num_train_samples=2000", "data.num_eval_samples=1000"] if args.quick else []
    started = time.perf_counter()
    sections = []
    for imbalance in args.imbalance:
        rows = run_factor(imbalance, out=out, epochs=args.epochs, crt_epochs=args.crt_epochs, jobs=args.jobs,
                          seed=args.seed, extra=extra, reuse=args.reuse)
        sections.append(table(imbalance, rows, class_counts(out / f"if{imbalance:g}" / "ce.log")))
    budget = (f"Budget per method: small_cnn, {args.epochs} epochs, batch 128, SGD momentum 0.9, lr 0.1, cosine, "
              f"weight decay 5e-4, seed {args.seed}; cRT: {args.crt_epochs} epochs on the frozen CE trunk. "
              f"{'Quick subset. ' if args.quick else ''}"
              + ("Finished runs reused (--reuse)." if args.reuse else
                 f"Wall time of the whole benchmark: {(time.perf_counter() - started) / 60:.1f} min "
                 f"({args.jobs} runs at a time)."))
    text = "\n\n".join([*sections, budget]) + "\n"
    print(text)
    if not args.quick:
        results = Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(text)
        print(f"[bench] written to {results}; runs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
