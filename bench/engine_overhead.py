"""Benchmark: cvdist engine overhead against a plain DDP loop, and per-rank model-state memory of
DDP against ZeRO-1/2/3. Not a test: it prints numbers and ratios.

    python bench/engine_overhead.py [--quick]      # both parts; starts torchrun itself
    torchrun --standalone --nproc_per_node 2 bench/engine_overhead.py [--quick]   # part 1 only

Part 1 trains small_cnn on synthetic 28x28 data with a hand-written DDP loop and with
``cvdist.engine.fit``, alternately in one torchrun launch, and compares steps/s.
Part 2 builds ViT-B-sized models under each strategy (one torchrun launch per strategy: a
process joins a process group once), takes two AdamW steps and counts the bytes of the tensors
each rank holds, next to the ZeRO paper's formulas.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.nn import functional as F

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
PER_RANK_BATCH = 64


def report(line: str = "") -> None:
    """Print a result line on rank 0; the driver shows only these ``[bench]`` lines of a worker."""
    if "LOCAL_RANK" not in os.environ:  # the driver itself
        print(line, flush=True)
    elif os.environ.get("RANK") == "0":
        print(f"[bench] {line}", flush=True)


# Part 1: steps/s of a plain DDP loop and of cvdist's fit(), same model, data and batch.

class StepClock:
    """The loss function of both loops; it stamps the start of each step's forward. Timing from the
    first step after warmup to the last step's forward puts every per-step cost of either loop
    in (cvdist: LR schedule, metric sums, the per-step stop-signal all-reduce, logging every 50
    steps) and one-time costs out (setup, DDP's first broadcast, cvdist's final checkpoint)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def compute_loss(self, model, batch, progress=None):
        self.stamps.append(time.perf_counter())
        return F.cross_entropy(model(batch["image"]), batch["label"]), {}

    def steps_per_s(self, *, warmup: int) -> float:
        timed = self.stamps[warmup:]
        return (len(timed) - 1) / (timed[-1] - timed[0])

    def median_step_s(self, *, warmup: int) -> float:
        """Robust to bursts of load from other jobs, but blind to a slow step every 50 (logging)."""
        timed = self.stamps[warmup:]
        return statistics.median(b - a for a, b in zip(timed, timed[1:]))


def build_cnn() -> torch.nn.Module:
    from cvdist.models import build_model

    torch.manual_seed(0)  # identical initial weights in both loops and on both ranks
    return build_model(name="small_cnn", num_classes=10, in_channels=1)


def run_plain(batches, clock: StepClock, *, num_steps: int, lr: float) -> None:
    """The baseline: torch DDP on the existing default process group, torch SGD, cross-entropy."""
    model = torch.nn.parallel.DistributedDataParallel(build_cnn())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    stream = itertools.chain.from_iterable(batches.iterate(epoch=e) for e in itertools.count())
    model.train()
    for _, batch in zip(range(num_steps), stream):
        loss, _ = clock.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def cvdist_overrides(*, name: str, output_dir: Path, world_size: int, num_steps: int, lr: float) -> list[str]:
    """The config that makes fit() do what run_plain does: same optimiser, constant LR, fp32 DDP."""
    return [
        f"name={name}", f"output_dir={output_dir}", "model.name=small_cnn", "data.dataset=synthetic",
        f"data.global_batch_size={PER_RANK_BATCH * world_size}", "optim.name=sgd", f"optim.lr={lr}",
        "optim.momentum=0.9", "optim.weight_decay=5e-4", "schedule.name=constant", "dist.strategy=ddp",
        "dist.precision=fp32", "tracking.wandb_mode=disabled", "tracking.log_every_steps=50",
        f"train.max_steps={num_steps}", "checkpoint.every_steps=0", "checkpoint.keep_last=1",
    ]


def overhead_worker(args: argparse.Namespace) -> None:
    """Alternate plain and cvdist rounds (ABBA order against drift); report medians and the ratio."""
    from cvdist.config_loading import load_config
    from cvdist.data.builtin import make_synthetic
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the in-memory batch source lives with the tests
    from tests.helpers.tensor_batches import TensorBatches
    from cvdist.engine import TrainTask, fit, start_session

    torch.set_num_threads(1)
    # Many short rounds rather than a few long ones: load from other jobs comes in bursts.
    rounds, warmup, steps = (2, 2, 6) if args.quick else (8, 3, 40)
    num_steps, lr = warmup + steps, 0.05
    world_size = int(os.environ["WORLD_SIZE"])
    # Same path on every rank without a process group yet: torchrun gives all workers one run id.
    workdir = Path(tempfile.gettempdir()) / f"cvdist-engine-overhead-{os.environ.get('TORCHELASTIC_RUN_ID', 'x')}"
    images, labels = make_synthetic(num_samples=4096, num_classes=10, seed=0)
    rates, walls, step_times = defaultdict(list), defaultdict(list), defaultdict(list)
    load_at_start = os.getloadavg()[0]
    session = None
    for round_index in range(rounds):
        # Every fit() writes a run directory, so each round gets its own run name. The first
        # start_session creates the process group that the plain loop also uses. Later ones find
        # it made and do not synchronise: without the barrier, rank 0's fit() can create the run
        # directory before rank 1's start_session has checked that it is free.
        session = start_session(load_config(overrides=cvdist_overrides(
            name=f"round-{round_index}", output_dir=workdir, world_size=world_size, num_steps=num_steps, lr=lr)))
        torch_dist.barrier()
        batches = TensorBatches(images=images, labels=labels, rank=session.env.rank,
                                world_size=session.env.world_size, batch_size=PER_RANK_BATCH, seed=0)
        order = ("plain", "cvdist") if round_index % 2 == 0 else ("cvdist", "plain")
        for kind in order:
            clock = StepClock()
            start = time.perf_counter()
            if kind == "plain":
                run_plain(batches, clock, num_steps=num_steps, lr=lr)
            else:  # steps, SGD and LR come from the session's config
                fit(session, TrainTask(model=build_cnn(), compute_loss=clock.compute_loss, train_batches=batches))
            walls[kind].append(time.perf_counter() - start)
            rates[kind].append(clock.steps_per_s(warmup=warmup))
            step_times[kind].append(clock.median_step_s(warmup=warmup))
        session.wandb.finish()
    torch_dist.barrier()
    if session.env.is_main:
        shutil.rmtree(workdir, ignore_errors=True)
    print_overhead(rates, walls, step_times, rounds=rounds, warmup=warmup, steps=steps, world_size=world_size)
    report(f"  load average (1 min) at start / end: {load_at_start:.2f} / {os.getloadavg()[0]:.2f} on "
           f"{os.cpu_count()} cores (2 are busy with this benchmark itself)")
    session.close()  # destroys the process group: only once, at the very end


def print_overhead(rates, walls, step_times, *, rounds: int, warmup: int, steps: int, world_size: int) -> None:
    plain, cvdist = statistics.median(rates["plain"]), statistics.median(rates["cvdist"])
    paired = [c / p for c, p in zip(rates["cvdist"], rates["plain"])]
    report(f"Part 1: engine overhead. small_cnn, synthetic 28x28, {world_size} processes (gloo, 1 thread each), "
           f"batch {PER_RANK_BATCH}/rank, SGD;")
    report(f"  {rounds} rounds of one plain and one cvdist run (order alternating), {warmup} warmup + {steps} timed"
           " steps each. Timed in both loops:")
    report("  forward start of the first timed step to forward start of the last step, so all per-step engine")
    report("  work is included; one-time setup and cvdist's final checkpoint are not.")
    for name, key in (("plain DDP loop", "plain"), ("cvdist fit()", "cvdist")):
        per_round = ", ".join(f"{r:.2f}" for r in rates[key])
        report(f"  {name:15s} median {statistics.median(rates[key]):5.2f} steps/s   rounds: {per_round}")
    verdict = "within" if cvdist / plain >= 0.95 else "NOT within"
    report(f"  ratio cvdist/plain: {cvdist / plain:.3f} of the medians ({verdict} the 5% target)")
    report(f"  per-round ratios: {', '.join(f'{r:.2f}' for r in paired)}; median {statistics.median(paired):.3f}")
    plain_step, cvdist_step = statistics.median(step_times["plain"]), statistics.median(step_times["cvdist"])
    report(f"  median step time (robust to load bursts): {plain_step * 1e3:.0f} ms plain, {cvdist_step * 1e3:.0f} ms "
           f"cvdist, speed ratio {plain_step / cvdist_step:.3f}")
    plain_wall, cvdist_wall = statistics.median(walls["plain"]), statistics.median(walls["cvdist"])
    report(f"  end to end, setup and cvdist's final checkpoint included: median {plain_wall:.2f} s plain, "
           f"{cvdist_wall:.2f} s cvdist per run (speed ratio {plain_wall / cvdist_wall:.3f})")


# Part 2: bytes per parameter of model states that each rank holds, per strategy.

def rss_kib(field: str = "VmRSS") -> int:
    """Resident memory of this process in KiB (``VmHWM``: its high-water mark)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith(field + ":")).split()[1])


def build_vit(quick: bool) -> torch.nn.Module:
    """ViT-B/16's transformer (768 wide, 12 layers, 12 heads, MLP 3072, 1000 classes, ~86 M
    parameters) on 32 px images: the same parameters as at 224 px, a far cheaper step."""
    from torchvision.models import VisionTransformer

    dims = dict(num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768) if quick else \
        dict(num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    return VisionTransformer(image_size=32, patch_size=16, num_classes=1000, **dims)


def iter_tensors(obj, path: str, depth: int = 0):
    """``(path, tensor)`` for tensors reachable through containers / dataclasses (and their .grad)."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
        if obj.is_leaf and obj.grad is not None:
            yield path + ".grad", obj.grad
        return
    if isinstance(obj, dict) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        items = obj.items() if isinstance(obj, dict) else vars(obj).items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return  # other objects (modules, process groups, timers) hold nothing of interest here
    for key, value in items if depth < 6 else ():
        yield from iter_tensors(value, f"{path}[{key}]", depth + 1)


_PATH_WORDS = (("ipg", "comm buffers"), ("bucket", "comm buffers"), ("grad", "grads"), ("fp32", "fp32 master"))


def classify(path: str) -> str:
    """Category of a tensor that DeepSpeed's ZeRO optimiser holds, from its attribute path."""
    return next((category for word, category in _PATH_WORDS if word in path.lower()), "other")


class Ledger:
    """Bytes of distinct tensor storages by category and source; a storage (flat buffers have many
    views) counts once, for its first claimant."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.sources: dict[str, dict[str, int]] = {}

    def add(self, category: str, tensor: torch.Tensor, source: str) -> None:
        if hasattr(tensor, "to_local"):  # FSDP's DTensor: what this rank holds is its local shard
            tensor = tensor.to_local()
        storage = tensor.untyped_storage()
        if storage.nbytes() > 0 and storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            by_source = self.sources.setdefault(category, {})
            by_source[source] = by_source.get(source, 0) + storage.nbytes()


class MemoryProbe:
    """Counts what a rank holds at the two moments where model states peak in a step: after the
    backward pass (before the optimiser step is called) and when the inner AdamW starts
    stepping (for ZeRO: after gradients were reduced into this rank's partition)."""

    def __init__(self, *, model, optimizer, backend):
        self.model, self.optimizer, self.backend = model, optimizer, backend
        self.engine = getattr(backend, "engine", None)  # DeepSpeed only
        self.ddp_buckets: list[torch.Tensor] = []
        self.samples: list[dict] = []
        self.active = False

    def sample(self, point: str) -> None:
        if not self.active:
            return
        ledger = Ledger()
        for param in self.model.parameters():
            ledger.add("params", param.data, "module parameters")
            if getattr(param, "ds_tensor", None) is not None:  # ZeRO-3: this rank's partition
                ledger.add("params", param.ds_tensor, "ds_tensor partitions")
        for value in (v for state in self.optimizer.state.values() for v in state.values()):
            if isinstance(value, torch.Tensor):
                ledger.add("optimizer state", value, "AdamW exp_avg/exp_avg_sq/step")
        for param in self.model.parameters():
            if param.grad is not None:
                ledger.add("grads", param.grad, "param.grad")
        for bucket in self.ddp_buckets:
            ledger.add("comm buffers", bucket, "DDP reducer buckets")
        if self.engine is not None:
            for attribute, value in vars(self.engine.optimizer).items():
                attribute = attribute.replace("_DeepSpeedZeroOptimizer_Stage3__", "")
                if attribute != "optimizer":  # the inner AdamW, counted above
                    for path, tensor in iter_tensors(value, attribute):
                        suffix = ".grad" if path.endswith(".grad") else ""
                        ledger.add(classify(path), tensor, f"ZeRO {attribute}{suffix}")
        self.samples.append({"point": point, "sources": ledger.sources})

    def install(self, wrapped) -> None:
        """Hooks at the two sampling moments; the training calls stay those of the backend."""
        self.optimizer.register_step_pre_hook(lambda *_: self.sample("inner AdamW step"))
        if self.engine is not None:
            # DeepSpeedBackend.backward runs engine.backward then engine.step: sample in between.
            original_step = self.engine.step
            self.engine.step = lambda *a, **k: (self.sample("after backward"), original_step(*a, **k))[1]
        elif hasattr(wrapped, "register_comm_hook"):  # DDP (FSDP reduce-scatters into its own buffers)
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def record_bucket(state, bucket):  # DDP keeps these flat buffers beside param.grad
                if self.active:  # DDP rebuilds its buckets after step 1: keep only live ones
                    self.ddp_buckets.append(bucket.buffer())
                return allreduce_hook(state, bucket)
            wrapped.register_comm_hook(None, record_bucket)


def measure(strategy: str, *, quick: bool) -> tuple[dict, object]:
    """Build ``strategy`` the way start_session does, take two AdamW steps, count bytes per rank."""
    from cvdist.engine.backends import build_backend
    from cvdist.engine.session import seed_everything
    from cvdist.optim import build_optimizer

    backend = build_backend(strategy=strategy, precision="fp32")
    rss_before_model = rss_kib()
    seed_everything(0)  # identical weights on every rank, as start_session does
    model = build_vit(quick)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model.parameters(), name="adamw", lr=1e-4, momentum=0.0, weight_decay=0.05,
                                betas=[0.9, 0.999], lars_trust_coefficient=0.001)
    wrapped = backend.prepare(model, optimizer, grad_clip_norm=0.0, micro_batch_size=2, accum_steps=1)
    probe = MemoryProbe(model=model, optimizer=optimizer, backend=backend)
    probe.install(wrapped)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for iteration in range(2):
        probe.active = iteration == 1  # AdamW's state exists only from the first step on
        if iteration == 1:
            Path("/proc/self/clear_refs").write_text("5")  # restart VmHWM: the peak of step 2 alone
        loss = F.cross_entropy(wrapped(images), labels)
        backend.backward_and_maybe_step(loss)
        if probe.engine is None:
            probe.sample("after backward")
        backend.finish_step()
    peak_rss = (rss_kib("VmHWM") - rss_before_model) * 1024
    per_rank = [None] * backend.env.world_size
    torch_dist.all_gather_object(per_rank, {"samples": probe.samples, "step_peak_rss": peak_rss})
    result = {"strategy": strategy, "num_params": num_params, "world_size": backend.env.world_size,
              "per_rank": per_rank}
    return result, backend


def memory_worker(args: argparse.Namespace) -> None:
    """Measure each of ``args.strategies`` in turn; rank 0 writes the results as JSON."""
    torch.set_num_threads(1)
    results, backend = [], None
    for strategy in args.strategies.split(","):
        result, backend = measure(strategy, quick=args.quick)
        results.append(result)
    if backend.env.is_main:
        Path(args.json_out).write_text(json.dumps(results))
    backend.close()  # Accelerate's close destroys the process group: only after the last one


MODEL_STATES = ("params", "grads", "fp32 master", "optimizer state")


def formulas(strategy: str, n: int) -> tuple[float, float]:
    """ZeRO paper bytes/param: (fp32 Adam without a master copy, mixed-precision Adam)."""
    fp32 = {"ddp": 16, "zero1": 8 + 8 / n, "zero2": 4 + 12 / n, "zero3": 16 / n, "fsdp": 16 / n}[strategy]
    mixed = {"ddp": 16, "zero1": 4 + 12 / n, "zero2": 2 + 14 / n, "zero3": 16 / n, "fsdp": 16 / n}[strategy]
    return fp32, mixed


def category_bytes(sample: dict, category: str) -> int:
    return sum(sample["sources"].get(category, {}).values())


def model_state_bytes(sample: dict) -> int:
    return sum(category_bytes(sample, category) for category in MODEL_STATES)


def explain(strategy: str, per: dict, sources: dict) -> list[str]:
    """Why a measured layout differs from the formula, read off what was counted."""
    notes = []
    if per["fp32 master"] > 0:
        why = ("stage3.py means to reuse the fp32 partition as master for an fp32 model but compares "
               "a torch.device with a device-name string (never equal), so it clones" if strategy == "zero3" else
               "stage_1_and_2.py clones the partition to fp32 even when the model is fp32")
        notes.append(f"{strategy}: fp32 master copy {per['fp32 master']:.2f} B/param (4/N): {why}.")
    if "ZeRO fp32_partitioned_groups_flat.grad" in sources.get("grads", {}):
        notes.append(f"{strategy}: at the AdamW step it holds its grad partition buffer and an fp32 copy of it "
                     "as the master's .grad (2 x 4/N).")
    if strategy == "zero1" and per["grads"] < 3:  # partitioned, not the full 4 B/param
        notes.append("zero1: its total matches 8+8/N only by coincidence (master 4/N in place of full grads "
                     "4-4/N): DeepSpeed 0.19 reduce-scatters through its IPG bucket at the accumulation boundary "
                     "in stage 1 too, so with accum_steps=1 it keeps only its gradient partition, like stage 2; "
                     "the stages differ only between accumulation micro-steps.")
    if per["other"] > 0.01:
        notes.append(f"{strategy}: {per['other']:.2f} B/param in other ZeRO tensors: {sources.get('other')}")
    return notes


def print_memory(results: list[dict], *, quick: bool) -> None:
    """One row per strategy: the larger sample of the worse rank, its breakdown, the formulas."""
    n, num_params = results[0]["world_size"], results[0]["num_params"]
    report(f"Part 2: model-state memory per rank, {n} processes, fp32 AdamW on CPU, "
           f"{'small ViT' if quick else 'ViT-B/16 dims at 32 px'}: {num_params / 1e6:.1f} M params. Bytes/param")
    report("  of the distinct tensor storages a rank holds, at the larger of two moments of step 2 (after")
    report("  backward; when AdamW starts its update), worse rank; formulas: ZeRO paper, Adam, no master copy.")
    report(f"  {'strategy':8s} {'moment':16s} {'params':>6s} {'grads':>6s} {'master':>6s} {'optim':>6s} {'total':>6s}"
           f" | {'formula':>7s} {'in 10%':>6s} | {'mixed':>5s} | {'comm buf':>8s} {'peak RSS':>8s}")
    notes = []
    for result in results:
        strategy = result["strategy"]
        peak = max((sample for rank in result["per_rank"] for sample in rank["samples"]), key=model_state_bytes)
        per = {c: category_bytes(peak, c) / num_params for c in (*MODEL_STATES, "comm buffers", "other")}
        total = model_state_bytes(peak) / num_params
        rss = max(rank["step_peak_rss"] for rank in result["per_rank"]) / num_params
        fp32, mixed = formulas(strategy, n)
        within = "yes" if abs(total - fp32) <= 0.1 * fp32 else "NO"
        report(f"  {strategy:8s} {peak['point']:16s} {per['params']:6.2f} {per['grads']:6.2f} "
               f"{per['fp32 master']:6.2f} {per['optimizer state']:6.2f} {total:6.2f} | {fp32:7.2f} {within:>6s}"
               f" | {mixed:5.2f} | {per['comm buffers']:8.2f} {rss:8.2f}")
        notes += explain(strategy, per, peak["sources"])
    report("  master: DeepSpeed's fp32 copy of the partition. comm buf (not in total): DDP reducer buckets or")
    report("  DeepSpeed IPG buckets at allocated size (cvdist sets reduce/allgather buckets to 5e7 elements, 200 MB")
    report("  fp32, instead of DeepSpeed's 5e8); untouched pages stay unresident on a CPU, on a GPU it is")
    report("  allocated memory. peak RSS: resident high-water mark during step 2 minus resident")
    report("  memory before the model was built.")
    if quick:
        notes.append("--quick ran every strategy in one process, so peak RSS is not comparable between rows.")
    for note in notes:
        report("  note: " + note)


# Driver: one torchrun launch for part 1, one per strategy for part 2.

def launch(script_args: list[str], *, nproc: int) -> None:
    """Run this script under torchrun; show its [bench] lines, or its whole output if it fails."""
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={nproc}",
               str(Path(__file__).resolve()), *script_args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        print(done.stdout[-20000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    for line in done.stdout.splitlines():
        if line.startswith("[bench] "):
            print(line[len("[bench] "):], flush=True)


def drive(args: argparse.Namespace) -> None:
    quick = ["--quick"] if args.quick else []
    start = time.perf_counter()
    if args.part in ("all", "overhead"):
        launch(["--part", "overhead", *quick], nproc=args.nproc)
    if args.part in ("all", "memory"):
        # One launch per strategy so that each starts from a fresh process (the peak RSS column);
        # --quick measures all in one launch, as a smoke test of the code, to save start-up time.
        chosen = args.strategies.split(",")
        groups = [",".join(chosen)] if args.quick else chosen
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for index, strategies in enumerate(groups):
                out = Path(tmp) / f"memory-{index}.json"
                launch(["--part", "memory", "--strategies", strategies, "--json-out", str(out), *quick],
                       nproc=args.nproc)
                results += json.loads(out.read_text())
        print_memory(results, quick=args.quick)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, a small ViT")
    parser.add_argument("--part", choices=("all", "overhead", "memory"), default="all")
    parser.add_argument("--nproc", type=int, default=2, help="processes per torchrun launch (driver only)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="memory part: comma-separated strategies to measure (all by default)")
    parser.add_argument("--json-out", help="memory part under torchrun: where rank 0 writes its result")
    args = parser.parse_args()
    if "LOCAL_RANK" not in os.environ:
        drive(args)
    elif args.part == "memory":
        if not args.json_out or not set(args.strategies.split(",")) <= set(STRATEGIES):
            parser.error(f"--part memory under torchrun needs --json-out and --strategies from {STRATEGIES}")
        memory_worker(args)
    else:  # under torchrun, "all" means part 1: part 2 needs a fresh launch per strategy
        overhead_worker(args)


if __name__ == "__main__":
    main()
