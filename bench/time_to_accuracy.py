"""Benchmark: training images/s and time to 92 % test top-1 on balanced Fashion-MNIST for cvdist,
a hand-written PyTorch loop and timm's ``train.py``, one after another on this machine. Not a
test: it prints a Markdown table and writes it to ``bench/results/time_to_accuracy.md``.

    python bench/time_to_accuracy.py              # full budget (~35 min on 2 cores)
    python bench/time_to_accuracy.py --quick      # smoke run: 512 images per split, < 2 min
    python bench/time_to_accuracy.py --skip-timm  # without timm's train.py (~20 min)

Four runs, each ONE training process with ``OMP_NUM_THREADS=--threads`` (default 2 = all cores
here) and the same number of DataLoader workers where a data path has them (``--workers``):

1. **cvdist** (time to accuracy): ``recipes/supervised.py`` with its YAML defaults (model,
   optimiser, one-cycle schedule, label smoothing, batch, epochs), reading the PNG shards
   ``cvdist shards fashion-mnist`` writes (its normal file data path).
2. **plain loop** (``bench/_plain_loop.py``): torchvision ``FashionMNIST`` from the IDX files +
   ``DataLoader``, a 5-conv BN CNN with a linear head (the issue's reference loop), Adam 1e-3,
   cross-entropy, batch 256; stops at the target.
3. **timm** ``train.py`` (``--timm-train-script``) as a subprocess: ResNet-18 at 28 px from an
   ImageFolder of the same PNG files as the shards (the bench writes it from the shards' members).
4. **cvdist, timm's setting**: the supervised recipe with ``model.name=timm:resnet18`` and the
   same batch, image size, channels, augmentation (flip) and workers as run 3, on the shards:
   the throughput comparison with timm.

timm's ``train.py`` reads images as RGB (it has no option for grey input), so runs 3 and 4 both
use 3-channel ResNet-18s on the grey PNGs converted to RGB: the same model and the same work.
The stored ``train.py`` has no ``--device`` option and calls ``torch.cuda.synchronize()`` in
``validate()`` (its default device argument is ``cuda``); the bench sets ``device: cpu`` through
its ``--config`` YAML and starts it through a three-line launcher that makes that call a no-op
when CUDA is absent. The script itself is run unmodified.

Measurements (all from the runs' own output, read line by line as it is printed):
* **images/s**: training images / training seconds, evaluation and checkpoints excluded, data
  loading included: cvdist's logged ``samples_per_s`` windows (``metrics.jsonl``), timm's
  per-update times (``--log-interval 1``), the plain loop's timed training part of each epoch.
* **time to 92 %**: wall time from starting the process (interpreter start, imports, data set
  up, training and every evaluation before it included) to the moment the first evaluation
  with test top-1 >= the target is printed. Every run evaluates the full test set once per epoch.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cvdist.data.shard_sources import read_intact_shard
from cvdist.data.stream import DataError

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "supervised.py"
PLAIN = REPO / "bench" / "_plain_loop.py"
RESULTS = REPO / "bench" / "results" / "time_to_accuracy.md"
IDX_ROOT = "/usr/share/datasets/fashion-mnist"
TIMM_URL = "https://raw.githubusercontent.com/huggingface/pytorch-image-models/v{version}/train.py"
# timm's train.py calls torch.cuda.synchronize() in validate() whatever the device; a no-op without CUDA.
TIMM_LAUNCHER = ("import runpy, sys, torch\n"
                 "if not torch.cuda.is_available(): torch.cuda.synchronize = lambda *args, **kwargs: None\n"
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')\n")


def default_timm_script() -> Path:
    """``$CVDIST_CACHE_DIR/timm-train/train.py``, else ``~/.cache/cvdist/timm-train/train.py``."""
    roots = [os.environ.get("CVDIST_CACHE_DIR"), str(Path.home() / ".cache" / "cvdist")]
    candidates = [Path(root) / "timm-train" / "train.py" for root in roots if root]
    return next((path for path in candidates if path.is_file()), candidates[0])


def fetch_timm_script(path: Path) -> Path:
    """``path`` if it exists, else timm's train.py of the installed timm version downloaded there."""
    if path.is_file():
        return path
    import urllib.request

    import timm

    url = TIMM_URL.format(version=timm.__version__)
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            text = response.read()
    except Exception as error:  # no network, 404, ...
        raise SystemExit(f"timm's train.py is not at {path} and downloading {url} failed ({error}). Put a copy "
                         "there (it is not in the timm wheel) and pass --timm-train-script PATH, or run with "
                         "--skip-timm") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    return path


# --- data ----------------------------------------------------------------------------------------

def prepare_data(data: Path, *, limit: int) -> dict[str, Path]:
    """PNG shards, an ImageFolder of the same PNGs, and the IDX files where torchvision looks."""
    shards, folder, idx = data / "shards", data / "folder", data / "idx"
    if not (shards / "manifest.json").is_file():
        argv = [sys.executable, "-m", "cvdist.cli", "shards", "fashion-mnist", "--root", IDX_ROOT,
                "--out", str(shards), "--quiet", *(["--limit", str(limit)] if limit else [])]
        subprocess.run(argv, cwd=REPO, env=child_env(2), check=True, stdout=subprocess.DEVNULL)
    if not (folder / ".complete").is_file():
        write_image_folder(shards, folder)
    raw = idx / "FashionMNIST" / "raw"
    if not raw.is_dir():
        raw.mkdir(parents=True)
        for gz in Path(IDX_ROOT).glob("*-ubyte.gz"):
            with gzip.open(gz) as source, open(raw / gz.name[:-3], "wb") as target:
                shutil.copyfileobj(source, target)
    return {"shards": shards, "folder": folder, "idx": idx}


def write_image_folder(shards: Path, folder: Path) -> None:
    """``folder/<split>/<class:02d>/<key>.png`` from the shards' ``.png`` + ``.cls`` members (same bytes)."""
    manifest = json.loads((shards / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            for sample in read_intact_shard(str(shards / shard["file"])):  # cvdist's reader: damage is one line
                target = folder / split / f"{int(sample['cls']):02d}" / f"{Path(sample['__key__']).name}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(sample["png"])
    (folder / ".complete").write_text("ok\n")


def num_samples(shards: Path, split: str) -> int:
    return json.loads((shards / "manifest.json").read_text())["splits"][split]["num_samples"]


# --- running and reading the runs ------------------------------------------------------------------

def child_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    return env


def run_streaming(argv: list[str], *, threads: int, log: Path, cwd: Path) -> tuple[list[tuple[float, str]], float]:
    """Run ``argv``; return its output lines with the seconds since start at which each arrived,
    and its wall time. Raises with the log's tail if it fails."""
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(argv, cwd=cwd, env=child_env(threads), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            seconds = time.perf_counter() - start
            handle.write(f"{seconds:9.2f} | {line}")
            lines.append((seconds, line.rstrip("\n")))
        code = process.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"failed ({code}): {' '.join(argv)}\n" + "\n".join(text for _, text in lines[-40:]))
    return lines, wall


@dataclass
class Result:
    """One run's measurements."""

    label: str
    model: str
    data_path: str
    batch_size: int
    train_images: int = 0
    train_s: float = 0.0
    evals: list[tuple[float, float, float]] = field(default_factory=list)
    """(seconds since the process started, epochs trained, test top-1) per evaluation."""
    wall_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_s if self.train_s else float("nan")

    def time_to(self, target: float) -> Optional[float]:
        return next((seconds for seconds, _, top1 in self.evals if top1 >= target), None)

    @property
    def final_top1(self) -> float:
        return self.evals[-1][2] if self.evals else float("nan")

    @property
    def epochs(self) -> float:
        return self.evals[-1][1] if self.evals else 0.0


CVDIST_EVAL = re.compile(r"\[cvdist\] step (\d+): .*eval/top1=([\d.]+)")
PLAIN_EPOCH = re.compile(r"\[plain\] epoch (\d+) train_images (\d+) train_s ([\d.]+) top1 ([\d.]+)")
TIMM_TRAIN = re.compile(r"Train: \d+ \[\s*\d+/\d+.*?Time: ([\d.]+)s,\s*([\d.]+)/s")
TIMM_TEST = re.compile(r"Test: \[\s*(\d+)/(\d+)\].*Acc@1:\s*[\d.]+\s*\(\s*([\d.]+)\)")


def run_cvdist(result: Result, *, overrides: list[str], run_dir: Path, steps_per_epoch: int, threads: int,
               log: Path) -> Result:
    """``recipes/supervised.py`` with ``overrides``; images/s from its metrics.jsonl windows."""
    argv = [sys.executable, str(RECIPE), f"output_dir={run_dir.parent}", f"name={run_dir.name}",
            "tracking.wandb_mode=disabled", f"train.eval_every_steps={steps_per_epoch}", *overrides]
    lines, result.wall_s = run_streaming(argv, threads=threads, log=log, cwd=REPO)
    for seconds, text in lines:
        match = CVDIST_EVAL.search(text)
        if match:
            result.evals.append((seconds, int(match[1]) / steps_per_epoch, float(match[2])))
    previous = 0
    for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if "samples_per_s" in row:
            images = (row["step"] - previous) * result.batch_size
            result.train_images += images
            result.train_s += images / row["samples_per_s"]
            previous = row["step"]
    return result


def run_plain(result: Result, *, idx_root: Path, epochs: int, limit: int, target: float, threads: int,
              log: Path) -> Result:
    argv = [sys.executable, str(PLAIN), "--root", str(idx_root), "--epochs", str(epochs),
            "--batch-size", str(result.batch_size), "--limit", str(limit), "--stop-at", str(target)]
    lines, result.wall_s = run_streaming(argv, threads=threads, log=log, cwd=REPO)
    for seconds, text in lines:
        match = PLAIN_EPOCH.search(text)
        if match:
            result.train_images += int(match[2])
            result.train_s += float(match[3])
            result.evals.append((seconds, float(match[1]), float(match[4])))
    return result


def run_timm(result: Result, *, script: Path, folder: Path, epochs: int, workers: int, lr: float, threads: int,
             out: Path, log: Path) -> Result:
    """timm's train.py: ResNet-18, 3 x 28 x 28, flip only (RandomResizedCrop at scale 1, ratio 1,
    no colour jitter), eval without the 0.875 centre crop, SGD + cosine, no warmup."""
    config = out / "timm-cpu.yaml"
    config.write_text("device: cpu\n")  # train.py has no --device option; init_distributed_device reads args.device
    argv = [sys.executable, "-c", TIMM_LAUNCHER, str(script), "--config", str(config),
            "--data-dir", str(folder), "--train-split", "train", "--val-split", "test",
            "--model", "resnet18", "--num-classes", "10", "--in-chans", "3", "--input-size", "3", "28", "28",
            "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--crop-pct", "1.0",
            "-b", str(result.batch_size), "--epochs", str(epochs), "--opt", "sgd", "--lr", str(lr),
            "--sched", "cosine", "--warmup-epochs", "0", "--scale", "1", "1", "--ratio", "1", "1",
            "--color-jitter", "0", "--hflip", "0.5", "-j", str(workers), "--log-interval", "1", "--seed", "0",
            "--output", str(out), "--experiment", "timm", "--checkpoint-hist", "1"]
    lines, result.wall_s = run_streaming(argv, threads=threads, log=log, cwd=out)
    for seconds, text in lines:
        train, test = TIMM_TRAIN.search(text), TIMM_TEST.search(text)
        if train:
            update_s, rate = float(train[1]), float(train[2])
            result.train_s += update_s
            result.train_images += round(rate * update_s)
        elif test and test[1] == test[2]:  # the last batch's line carries the running average
            result.evals.append((seconds, len(result.evals) + 1.0, float(test[3]) / 100))
    return result


# --- the table -------------------------------------------------------------------------------------

def _fmt_time(result: Result, target: float) -> str:
    seconds = result.time_to(target)
    if seconds is not None:
        return f"{seconds:.0f} s"
    return f"not reached in {result.epochs:g} epochs / {result.wall_s:.0f} s"


def table(results: list[Result], *, target: float) -> str:
    lines = [f"| run | model | data path | batch | images/s (training) | time to {100 * target:g} % | "
             "final top-1 | epochs | wall time |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r.label} | {r.model} | {r.data_path} | {r.batch_size} | {r.images_per_s:.0f} | "
                     f"{_fmt_time(r, target)} | {100 * r.final_top1:.2f} % | {r.epochs:g} | {r.wall_s:.0f} s |")
    return "\n".join(lines)


def verdicts(by_key: dict[str, Result], *, target: float) -> list[str]:
    """The two target ratios, stated plainly (met / not met / could not be measured)."""
    out = []
    twin, timm_run = by_key.get("twin"), by_key.get("timm")
    if twin and timm_run:
        ratio = twin.images_per_s / timm_run.images_per_s
        out.append(f"- Throughput, same model and batch: cvdist {twin.images_per_s:.0f} / timm "
                   f"{timm_run.images_per_s:.0f} images/s = **{ratio:.2f}x** (target >= 1.0x: "
                   f"{'met' if ratio >= 1.0 else 'NOT met'}).")
    cv, plain = by_key.get("cvdist"), by_key.get("plain")
    if cv and plain:
        cv_t, plain_t = cv.time_to(target), plain.time_to(target)
        name = f"time to {100 * target:g} %"
        if cv_t is None:
            out.append(f"- {name}: cvdist did not reach it in {cv.epochs:g} epochs ({cv.wall_s:.0f} s): target NOT met.")
        elif plain_t is None:
            bound = cv_t / plain.wall_s
            out.append(f"- {name}: cvdist {cv_t:.0f} s; the plain loop did not reach it in {plain.epochs:g} epochs "
                       f"({plain.wall_s:.0f} s), so the ratio is < {bound:.2f}x (target <= 0.5x: "
                       f"{'met' if bound <= 0.5 else 'not shown'}).")
        else:
            ratio = cv_t / plain_t
            out.append(f"- {name}: cvdist {cv_t:.0f} s / plain loop {plain_t:.0f} s = **{ratio:.2f}x** "
                       f"(target <= 0.5x: {'met' if ratio <= 0.5 else 'NOT met'}).")
    return out


def uptime() -> str:
    try:
        return "load average " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


QUICK = {"limit": 512, "batch": 64, "cvdist_epochs": 2, "plain_epochs": 2, "timm_epochs": 1}


def twin_result(args: argparse.Namespace) -> Result:
    batch = QUICK["batch"] if args.quick else args.timm_batch
    return Result("cvdist, timm's setting", "timm:resnet18, 3 x 28 px", "WebDataset PNG shards", batch)


def twin_overrides(args: argparse.Namespace) -> list[str]:
    """cvdist in timm's setting: the same model, batch, optimiser, schedule, smoothing and flip."""
    return ["model.name=timm:resnet18", "model.in_channels=3", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]",
            "data.augment=flip", f"data.global_batch_size={twin_result(args).batch_size}",
            f"data.num_workers={args.workers}",
            f"train.epochs={QUICK['timm_epochs'] if args.quick else args.twin_epochs}", "optim.name=sgd",
            f"optim.lr={args.timm_lr}", "schedule.name=cosine", "schedule.warmup_steps=0", "loss.label_smoothing=0.1"]


def timm_run(args: argparse.Namespace, paths: dict[str, Path], out: Path, *, key: str) -> Result:
    script = fetch_timm_script(Path(args.timm_train_script))
    print(f"[bench] timm train.py ({script}) ...", flush=True)
    timm_out = out / key
    timm_out.mkdir(parents=True, exist_ok=True)
    result = Result("timm train.py", "resnet18, 3 x 28 px", "ImageFolder of the same PNGs", twin_result(args).batch_size)
    return run_timm(result, script=script, folder=paths["folder"],
                    epochs=QUICK["timm_epochs"] if args.quick else args.timm_epochs, workers=args.workers,
                    lr=args.timm_lr, threads=args.threads, out=timm_out, log=out / f"{key}.log")


def run_throughput_only(args: argparse.Namespace, out: Path) -> str:
    """timm train.py and cvdist in its setting, alternated ``--rounds`` times, ``--timm-epochs`` /
 one epoch each on the first ``--limit`` images: images/s of each round and the ratio
    of the medians (the throughput target without the long accuracy runs). One epoch per run."""
    args = argparse.Namespace(**{**vars(args), "timm_epochs": 1, "twin_epochs": 1})  # the caller's args untouched
    paths = prepare_data(Path(args.data) if args.data else out / f"data-{args.limit}", limit=args.limit)
    shards = paths["shards"]
    steps_per_epoch = max(1, num_samples(shards, "train") // twin_result(args).batch_size)
    rates: dict[str, list[float]] = {"timm": [], "cvdist": []}
    for round_index in range(args.rounds):
        rates["timm"].append(timm_run(args, paths, out, key=f"timm-{round_index}").images_per_s)
        print(f"[bench] cvdist in timm's setting (round {round_index + 1}) ...", flush=True)
        twin = run_cvdist(twin_result(args), overrides=[f"data.train_shards=[{shards}]", *twin_overrides(args)],
                          run_dir=out / "runs" / f"twin-{round_index}", steps_per_epoch=steps_per_epoch,
                          threads=args.threads, log=out / f"twin-{round_index}.log")
        rates["cvdist"].append(twin.images_per_s)
        print(f"[bench] round {round_index + 1}: timm {rates['timm'][-1]:.0f}, cvdist {rates['cvdist'][-1]:.0f} "
              "images/s", flush=True)
    timm_median, cvdist_median = statistics.median(rates["timm"]), statistics.median(rates["cvdist"])
    ratio = cvdist_median / timm_median
    return (f"Throughput only (timm:resnet18 / resnet18 at 3 x 28 px, batch {twin_result(args).batch_size}, first "
            f"{args.limit} training images, {args.rounds} alternated rounds): timm train.py "
            f"{', '.join(f'{r:.0f}' for r in rates['timm'])} images/s, cvdist "
            f"{', '.join(f'{r:.0f}' for r in rates['cvdist'])}; medians {cvdist_median:.0f} / {timm_median:.0f} = "
            f"**{ratio:.2f}x** (target >= 1.0x: {'met' if ratio >= 1.0 else 'NOT met'}).")


def run_all(args: argparse.Namespace, out: Path) -> tuple[list[Result], dict[str, Result]]:
    """The four runs, in table order; returns them and a dict by key."""
    limit = QUICK["limit"] if args.quick else 0
    paths = prepare_data(Path(args.data) if args.data else out / "data", limit=limit)
    shards = paths["shards"]
    n_train = num_samples(shards, "train")
    quick_batch = [f"data.global_batch_size={QUICK['batch']}", f"train.epochs={QUICK['cvdist_epochs']}"]
    by_key: dict[str, Result] = {}

    def cvdist_run(key: str, result: Result, overrides: list[str]) -> None:
        print(f"[bench] {result.label} ...", flush=True)
        by_key[key] = run_cvdist(result, overrides=[f"data.train_shards=[{shards}]", *overrides],
                                 run_dir=out / "runs" / key, steps_per_epoch=max(1, n_train // result.batch_size),
                                 threads=args.threads, log=out / f"{key}.log")

    defaults = recipe_defaults()
    batch = QUICK["batch"] if args.quick else defaults["batch"]
    cvdist_run("cvdist", Result("cvdist (recipe defaults)", defaults["model"], "WebDataset PNG shards", batch),
               [f"data.num_workers={args.workers}", *(quick_batch if args.quick else [])])
    plain_batch = QUICK["batch"] if args.quick else 256
    print("[bench] plain loop ...", flush=True)
    by_key["plain"] = run_plain(
        Result("plain PyTorch loop", "5-conv BN CNN, linear head", "torchvision FashionMNIST (IDX in memory)",
               plain_batch),
        idx_root=paths["idx"], epochs=QUICK["plain_epochs"] if args.quick else args.plain_epochs, limit=limit,
        target=args.target, threads=args.threads, log=out / "plain.log")
    if not args.skip_timm:
        by_key["timm"] = timm_run(args, paths, out, key="timm")
    cvdist_run("twin", twin_result(args), twin_overrides(args))
    order = ("cvdist", "plain", "timm", "twin")
    return [by_key[k] for k in order if k in by_key], by_key


def recipe_defaults() -> dict:
    """Model and batch of ``recipes/supervised.yaml`` (what the cvdist row runs)."""
    from cvdist.config_loading import load_recipe_config
    from cvdist.tasks.supervised.config import SupervisedRunConfig

    config = load_recipe_config([], default_yaml=RECIPE.with_suffix(".yaml"), recipe="supervised",
                                schema=SupervisedRunConfig)
    return {"model": config.model.name, "batch": config.data.global_batch_size, "config": config}


def budget_text(args: argparse.Namespace) -> str:
    c = recipe_defaults()["config"]
    if args.quick:
        return (f"Quick smoke run: the first {QUICK['limit']} images of each split, batch {QUICK['batch']}, "
                f"{QUICK['cvdist_epochs']} / {QUICK['plain_epochs']} / {QUICK['timm_epochs']} epochs.")
    return (f"Budget: cvdist = `recipes/supervised.yaml` defaults: `{c.model.name}`, {c.train.epochs} epochs, batch "
            f"{c.data.global_batch_size}, {c.optim.name} lr {c.optim.lr:g} momentum {c.optim.momentum:g} wd "
            f"{c.optim.weight_decay:g}, {c.schedule.name} schedule (pct_start {c.schedule.pct_start:g}), label "
            f"smoothing {c.loss.label_smoothing:g}, augmentation `{c.data.augment}`; plain loop: at most "
            f"{args.plain_epochs} epochs, stopping at the target; timm train.py: {args.timm_epochs} epochs, SGD lr "
            f"{args.timm_lr:g} cosine, label smoothing 0.1 (its default); cvdist in timm's setting: "
            f"{args.twin_epochs} epoch(s), same optimiser, schedule and smoothing. One training process per run, "
            f"OMP_NUM_THREADS={args.threads}, {args.workers} DataLoader worker(s) for cvdist and timm "
            "(the plain loop: 0, DataLoader's default); full 60,000 / 10,000 images, test set evaluated every epoch.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 512 images per split, tiny budgets")
    parser.add_argument("--target", type=float, default=0.92, help="test top-1 to reach (default 0.92)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of cvdist and timm (default 1)")
    parser.add_argument("--plain-epochs", type=int, default=10, help="plain loop's epoch cap (default 10)")
    parser.add_argument("--timm-epochs", type=int, default=3, help="timm train.py epochs (default 3)")
    parser.add_argument("--twin-epochs", type=int, default=1, help="cvdist epochs in timm's setting (default 1)")
    parser.add_argument("--timm-batch", type=int, default=256, help="batch of timm and its cvdist twin (default 256)")
    parser.add_argument("--timm-lr", type=float, default=0.1, help="SGD LR of timm and its cvdist twin (default 0.1)")
    parser.add_argument("--timm-train-script", default=str(default_timm_script()),
                        help="timm's train.py (not in the timm wheel; default %(default)s, downloaded for the "
                             "installed timm version when missing)")
    parser.add_argument("--skip-timm", action="store_true", help="leave timm's train.py out")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only timm train.py vs cvdist in its setting, alternated --rounds times on --limit images")
    parser.add_argument("--rounds", type=int, default=2, help="--throughput-only: alternated rounds (default 2)")
    parser.add_argument("--limit", type=int, default=12000, help="--throughput-only: images per split (default 12000)")
    parser.add_argument("--data", default="", help="data directory to write / reuse (default: inside --out)")
    parser.add_argument("--out", default="", help="run directory root (default: a temporary directory)")
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file to write (default %(default)s; "
                        "not written for --quick)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cvdist-bench-tta-"))
    out.mkdir(parents=True, exist_ok=True)
    load_before, started = uptime(), time.perf_counter()
    if args.throughput_only:
        print(f"{run_throughput_only(args, out)}\nMachine: {os.cpu_count()} cores; {load_before} before, "
              f"{uptime()} after; {(time.perf_counter() - started) / 60:.1f} min. Logs in {out}.")
        return 0
    results, by_key = run_all(args, out)
    text = "\n".join([
        f"### Fashion-MNIST (balanced): training images/s and time to {100 * args.target:g} % test top-1", "",
        table(results, target=args.target), "", *verdicts(by_key, target=args.target), "", budget_text(args), "",
        f"Machine: {os.cpu_count()} cores; {load_before} before, {uptime()} after; whole benchmark "
        f"{(time.perf_counter() - started) / 60:.1f} min. Logs and runs in {out}.", ""])
    print(text)
    if not args.quick:
        results_path = Path(args.results)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(text)
        print(f"[bench] written to {results_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as error:  # a damaged shard: one line, no traceback
        sys.exit(f"time_to_accuracy: error: {error}")
