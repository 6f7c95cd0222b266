"""GPU check: every strategy and precision for a few steps, one compiled run, and the collective
backend, in one short script that prints a table. Not a test (CI has no GPU).

    python bench/gpu_check.py                       # on a CUDA machine: all GPUs of the node (2 at most by default)
    python bench/gpu_check.py --nproc 4 --steps 30
    python bench/gpu_check.py --quick               # a CPU dry run of the script itself (gloo, fp32 / bf16)

On CUDA it runs the supervised recipe (resnet18 at 64 px on synthetic images by default) under
``torchrun`` with each ``dist.strategy`` (ddp, zero1, zero2, zero3, fsdp) x ``dist.precision``
(bf16, fp16), then DDP + bf16 with ``dist.compile=true``, and first an all-reduce probe on the
process group the recipes will use (NCCL on GPUs, gloo on CPUs) that checks the sum and times a
256 MiB all-reduce. On a machine without CUDA the same runs use gloo with fp32 / bf16 (fp16 needs
a GPU). Each row: step throughput (median samples/s of the logged rows after the first), peak memory
of rank 0 (torch's max allocated on a GPU, the resident high-water mark on a CPU), the loss at the
first and the last step, and the run's status — a refusal (e.g. fp16 under fsdp) is its one-line
reason, not a crash. The table goes to ``bench/results/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
RESULTS = REPO / "bench" / "results" / "gpu_check.md"


def torchrun(nproc: int) -> list[str]:
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={nproc}"]


def probe_worker() -> None:
    """Under torchrun: all-reduce ones (checks the sum) and time a 256 MiB all-reduce; rank 0 prints JSON."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    ones = torch.ones(1024, device=device)
    dist.all_reduce(ones)
    correct = bool((ones == dist.get_world_size()).all())
    big = torch.ones(64 * 2**20, device=device)  # 256 MiB of fp32
    dist.all_reduce(big)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    dist.all_reduce(big)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if dist.get_rank() == 0:
        print("PROBE " + json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                                     "sum_correct": correct, "allreduce_256MiB_s": round(seconds, 4)}), flush=True)
    dist.destroy_process_group()


def probe(nproc: int) -> dict:
    done = subprocess.run([*torchrun(nproc), str(Path(__file__).resolve()), "--probe-worker"], cwd=REPO,
                          capture_output=True, text=True, env=_env())
    line = next((l for l in done.stdout.splitlines() if l.startswith("PROBE ")), None)
    if done.returncode != 0 or line is None:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(line[len("PROBE "):])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(REPO)
    return env


def train(name: str, overrides: list[str], *, args: argparse.Namespace, out: Path) -> dict:
    """One recipe run; its row (or the reason it did not run)."""
    command = [*torchrun(args.nproc), str(REPO / "recipes" / "supervised.py"), *args.base, f"output_dir={out}",
               f"name={name}", *overrides]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_env())
    (out / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        errors = [l for l in (done.stdout + done.stderr).splitlines() if "error" in l.lower()]
        return {"status": (errors[0] if errors else f"exit {done.returncode}")[:160]}
    rows = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "train/loss" in r]
    summary = json.loads((out / name / "summary.json").read_text())
    rates = [r["samples_per_s"] for r in rows[1:]] or [rows[-1]["samples_per_s"]]
    compile_line = next((l for l in done.stdout.splitlines() if "torch.compile" in l), "")
    return {"status": "ok", "samples_per_s": statistics.median(rates), "peak_mb": summary.get("peak_memory_mb"),
            "first_loss": rows[0]["train/loss"], "last_loss": rows[-1]["train/loss"],
            "note": compile_line.split("] ", 1)[-1][:80]}


def table(rows: list[tuple[str, str, dict]], probe_result: dict, *, header: str) -> str:
    lines = [header, "", f"Collective probe: {json.dumps(probe_result)}", "",
             "| strategy | precision | samples/s | peak MB (rank 0) | loss first -> last | status |",
             "| --- | --- | --- | --- | --- | --- |"]
    for strategy, precision, row in rows:
        if row["status"] == "ok":
            lines.append(f"| {strategy} | {precision} | {row['samples_per_s']:.0f} | {row['peak_mb']} | "
                         f"{row['first_loss']:.3f} -> {row['last_loss']:.3f} | ok {row['note']} |")
        else:
            lines.append(f"| {strategy} | {precision} | - | - | - | {row['status']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=0, help="processes (default: GPUs of the node, at most 2; 2 on CPU)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--precisions", default="", help="default: bf16,fp16 on CUDA, fp32,bf16 on CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled run")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps: a dry run of the script")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--probe-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    args.device = torch.cuda.get_device_name(0) if cuda else "CPU (gloo dry run)"
    args.nproc = args.nproc or (min(torch.cuda.device_count(), 2) if cuda else 2)
    args.precisions = args.precisions or ("bf16,fp16" if cuda else "fp32,bf16")
    steps = 3 if args.quick else args.steps
    model = ["model.name=tiny_cnn", "data.image_size=28", "model.in_channels=1"] if args.quick else \
        ["model.name=resnet18", "data.image_size=64", "model.in_channels=3", "data.mean=[0.5,0.5,0.5]",
         "data.std=[0.25,0.25,0.25]"]
    args.model_desc = (f"{'tiny_cnn at 28 px' if args.quick else 'resnet18 at 64 px'}, synthetic images, "
                       f"global batch {32 * args.nproc}, {steps} steps")
    args.base = ["data.dataset=synthetic", f"data.num_train_samples={64 * args.nproc * (steps + 1)}",
                 "data.num_eval_samples=64", f"data.global_batch_size={32 * args.nproc}", f"train.max_steps={steps}",
                 "tracking.wandb_mode=disabled", "tracking.log_every_steps=1", "checkpoint.every_steps=0",
                 "train.eval_every_steps=0", *model]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe_worker:
        probe_worker()
        return 0
    out = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    start = time.perf_counter()
    probe_result = probe(args.nproc)
    print(f"[gpu_check] collective probe: {probe_result}", flush=True)
    rows = []
    for strategy in args.strategies.split(","):
        for precision in args.precisions.split(","):
            row = train(f"{strategy}-{precision}", [f"dist.strategy={strategy}", f"dist.precision={precision}"],
                        args=args, out=out)
            print(f"[gpu_check] {strategy} {precision}: {row}", flush=True)
            rows.append((strategy, precision, row))
    if not args.no_compile:
        precision = args.precisions.split(",")[0]
        row = train("ddp-compiled", ["dist.strategy=ddp", f"dist.precision={precision}", "dist.compile=true"],
                    args=args, out=out)
        rows.append(("ddp + compile", precision, row))
    header = (f"{time.strftime('%Y-%m-%d')}, {args.device}, {args.nproc} processes, {args.model_desc}; "
              f"total {time.perf_counter() - start:.0f} s.")
    text = table(rows, probe_result, header=header)
    print(text)
    if not args.no_write:
        RESULTS.write_text("# GPU check (bench/gpu_check.py)\n\n" + text)
    return 0 if probe_result.get("sum_correct") and all(r["status"] == "ok" or "not supported" in r["status"]
                                                         for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
