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
import ctypes
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

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
PER_RANK_BATCH = 64


def report(line: str = "") -> None:
    """Print a result line on rank 0; the driver shows only these ``[bench]`` lines of a worker."""
    if "LOCAL_RANK" not in os.environ:  # the driver itself
        print(line, flush=True)
    elif os.environ.get("RANK") == "0":
        print(f"[bench] {line}", flush=True)


# ----------------------------------------------------------------------------------------------
# Part 1: steps/s of a plain DDP loop and of cvdist's fit(), same model, data and batch.
# ----------------------------------------------------------------------------------------------

class StepClock:
    """The loss function of both loops; it stamps the time at which each step's forward starts.

    Both loops are timed over the same stamps, from the forward of the first step after the
    warmup to the forward of the last step, so every per-step cost of either loop is inside the
    timed span (cvdist: LR schedule, metric accumulation, the per-step stop-signal all-reduce,
    logging every 50 steps) and one-time costs (setup, DDP's initial broadcast, cvdist's
    final checkpoint) are outside it.
    """

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def compute_loss(self, model, batch):
        self.stamps.append(time.perf_counter())
        images, labels = batch
        return F.cross_entropy(model(images), labels), {}

    def steps_per_s(self, *, warmup: int) -> float:
        timed = self.stamps[warmup:]
        return (len(timed) - 1) / (timed[-1] - timed[0])


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


def run_cvdist(session, batches, clock: StepClock) -> None:
    """The same training through the engine (max_steps, SGD and LR come from the session's config)."""
    from cvdist.engine import TrainTask, fit

    fit(session, TrainTask(model=build_cnn(), compute_loss=clock.compute_loss, train_batches=batches))


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
    from cvdist.config import load_config
    from cvdist.data.builtin import make_synthetic
    from cvdist.data.tensor_batches import TensorBatches
    from cvdist.engine import start_session

    torch.set_num_threads(1)
    rounds, warmup, steps = (2, 2, 10) if args.quick else (6, 5, 120)
    num_steps, lr = warmup + steps, 0.05
    world_size = int(os.environ["WORLD_SIZE"])
    # Same path on every rank without a process group yet: torchrun gives all workers one run id.
    workdir = Path(tempfile.gettempdir()) / f"cvdist-bench-{os.environ.get('TORCHELASTIC_RUN_ID', 'x')}"
    images, labels = make_synthetic(num_samples=4096, num_classes=10, seed=0)
    rates, walls = defaultdict(list), defaultdict(list)
    session = None
    for round_index in range(rounds):
        # Every fit() writes a run directory, so each round gets its own run name. The first
        # start_session creates the process group that the plain loop also uses.
        config = load_config(overrides=cvdist_overrides(
            name=f"round-{round_index}", output_dir=workdir, world_size=world_size, num_steps=num_steps, lr=lr))
        session = start_session(config)
        batches = TensorBatches(images=images, labels=labels, rank=session.env.rank,
                                world_size=session.env.world_size, batch_size=PER_RANK_BATCH, seed=0)
        order = ("plain", "cvdist") if round_index % 2 == 0 else ("cvdist", "plain")
        for kind in order:
            clock = StepClock()
            start = time.perf_counter()
            if kind == "plain":
                run_plain(batches, clock, num_steps=num_steps, lr=lr)
            else:
                run_cvdist(session, batches, clock)
            walls[kind].append(time.perf_counter() - start)
            rates[kind].append(clock.steps_per_s(warmup=warmup))
        session.wandb.finish()
    torch_dist.barrier()
    if session.env.is_main:
        shutil.rmtree(workdir, ignore_errors=True)
    print_overhead(rates, walls, rounds=rounds, warmup=warmup, steps=steps, world_size=world_size)
    session.close()  # destroys the process group: only once, at the very end


def print_overhead(rates, walls, *, rounds: int, warmup: int, steps: int, world_size: int) -> None:
    plain, cvdist = statistics.median(rates["plain"]), statistics.median(rates["cvdist"])
    ratio = cvdist / plain
    report(f"Part 1: engine overhead. small_cnn, synthetic 28x28, {world_size} processes (gloo, 1 thread each),")
    report(f"  batch {PER_RANK_BATCH}/rank, SGD; {rounds} rounds alternating plain/cvdist; each run "
           f"{warmup} warmup + {steps} timed steps.")
    report("  Timed: forward start of the first timed step to forward start of the last step, in both loops")
    report("  (all per-step engine work included; setup and cvdist's single final checkpoint excluded).")
    for kind, median in (("plain DDP loop", plain), ("cvdist fit()", cvdist)):
        key = "plain" if kind.startswith("plain") else "cvdist"
        per_round = ", ".join(f"{r:.2f}" for r in rates[key])
        report(f"  {kind:15s} median {median:6.2f} steps/s   rounds: {per_round}")
    verdict = "within" if ratio >= 0.95 else "NOT within"
    report(f"  ratio cvdist/plain = {ratio:.3f}  ({verdict} the 5% target)")
    end_to_end = statistics.median(walls["plain"]) / statistics.median(walls["cvdist"])
    report(f"  end to end incl. setup and cvdist's final checkpoint: median {statistics.median(walls['plain']):.2f} s"
           f" plain, {statistics.median(walls['cvdist']):.2f} s cvdist, throughput ratio {end_to_end:.3f}")


# ----------------------------------------------------------------------------------------------
# Part 2: bytes per parameter of model states that each rank holds, per strategy.
# ----------------------------------------------------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_in_use() -> int:
    """Bytes malloc'd and not freed in this process (glibc; counts untouched torch.empty too)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


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
    if depth > 5:
        return
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = vars(obj).items()
    else:
        return
    for key, value in items:
        yield from iter_tensors(value, f"{path}[{key}]", depth + 1)


def classify(path: str) -> str:
    """Category of a tensor that DeepSpeed's ZeRO optimiser holds, from its attribute path."""
    lowered = path.lower()
    if "ipg" in lowered or "bucket" in lowered:
        return "comm buffers"
    if "grad" in lowered:
        return "grads"
    if "fp32" in lowered:
        return "fp32 master"
    return "other"


class Ledger:
    """Bytes of distinct tensor storages by category; a storage counts once, for its first claimant."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = defaultdict(int)
        self.sources: dict[str, dict[str, int]] = defaultdict(dict)

    def add(self, category: str, tensor: torch.Tensor, source: str) -> None:
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0 or storage.data_ptr() in self.seen:
            return
        self.seen.add(storage.data_ptr())
        self.bytes[category] += storage.nbytes()
        by_source = self.sources[category]
        by_source[source] = by_source.get(source, 0) + storage.nbytes()


class MemoryProbe:
    """Counts what a rank holds at the two moments where model states peak in a step: after the
    backward pass (before the optimiser step is called) and when the inner AdamW starts
    stepping (for ZeRO: after gradients were reduced into this rank's partition)."""

    def __init__(self, *, model, optimizer, backend, heap_baseline: int):
        self.model, self.optimizer, self.backend = model, optimizer, backend
        self.heap_baseline = heap_baseline
        self.ddp_buckets: list[torch.Tensor] = []
        self.samples: list[dict] = []
        self.active = False

    def sample(self, point: str) -> None:
        if not self.active:
            return
        ledger = Ledger()
        for name, param in self.model.named_parameters():
            ledger.add("params", param.data, "module parameters")
            if getattr(param, "ds_tensor", None) is not None:  # ZeRO-3: this rank's partition
                ledger.add("params", param.ds_tensor, "ds_tensor partitions")
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    ledger.add("optimizer state", value, "AdamW exp_avg/exp_avg_sq/step")
        for param in self.model.parameters():
            if param.grad is not None:
                ledger.add("grads", param.grad, "param.grad")
        for bucket in self.ddp_buckets:
            ledger.add("comm buffers", bucket, "DDP reducer buckets")
        engine = getattr(self.backend, "engine", None)
        if engine is not None:
            for attribute, value in vars(engine.optimizer).items():
                attribute = attribute.replace("_DeepSpeedZeroOptimizer_Stage3__", "")
                if attribute != "optimizer":  # the inner AdamW, counted above
                    for path, tensor in iter_tensors(value, attribute):
                        ledger.add(classify(path), tensor, f"ZeRO {attribute}" + (".grad" if path.endswith(".grad") else ""))
        self.samples.append({"point": point, "bytes": dict(ledger.bytes),
                             "sources": dict(ledger.sources),
                             "heap": heap_in_use() - self.heap_baseline})

    def install(self, wrapped) -> None:
        """Hooks at the two sampling moments; the training calls stay those of the backend."""
        self.optimizer.register_step_pre_hook(lambda *_: self.sample("inner AdamW step"))
        engine = getattr(self.backend, "engine", None)
        if engine is not None:
            # DeepSpeedBackend.backward runs engine.backward then engine.step: sample in between.
            original_step = engine.step
            engine.step = lambda *a, **k: (self.sample("after backward"), original_step(*a, **k))[1]
        else:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def record_bucket(state, bucket):  # DDP keeps these flat buffers beside param.grad
                if self.active:  # DDP rebuilds its buckets after step 1: keep only live ones
                    self.ddp_buckets.append(bucket.buffer())
                return allreduce_hook(state, bucket)
            wrapped.register_comm_hook(None, record_bucket)


def memory_worker(args: argparse.Namespace) -> None:
    """Build ``args.strategy`` the way start_session does, take two AdamW steps, count bytes."""
    from cvdist.engine.backends import build_backend
    from cvdist.engine.session import seed_everything
    from cvdist.optim import build_optimizer

    torch.set_num_threads(1)
    backend = build_backend(strategy=args.strategy, precision="fp32")
    heap_baseline = heap_in_use()
    seed_everything(0)  # identical weights on every rank, as start_session does
    model = build_vit(args.quick)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model.parameters(), name="adamw", lr=1e-4, momentum=0.0, weight_decay=0.05,
                                betas=[0.9, 0.999], lars_trust_coefficient=0.001)
    wrapped = backend.prepare(model, optimizer, grad_clip_norm=0.0, micro_batch_size=2, accum_steps=1)
    probe = MemoryProbe(model=model, optimizer=optimizer, backend=backend, heap_baseline=heap_baseline)
    probe.install(wrapped)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for iteration in range(2):
        probe.active = iteration == 1  # AdamW's state exists only from the first step on
        loss = F.cross_entropy(wrapped(images), labels)
        backend.backward(loss)
        if getattr(backend, "engine", None) is None:
            probe.sample("after backward")
        backend.optimizer_step()
    per_rank = [None] * backend.env.world_size
    torch_dist.all_gather_object(per_rank, probe.samples)
    if backend.env.is_main:
        result = {"strategy": args.strategy, "num_params": num_params, "world_size": backend.env.world_size,
                  "per_rank": per_rank}
        Path(args.json_out).write_text(json.dumps(result))
    backend.close()


MODEL_STATES = ("params", "grads", "fp32 master", "optimizer state")


def formulas(strategy: str, n: int) -> tuple[float, float]:
    """ZeRO paper bytes/param: (fp32 Adam without a master copy, mixed-precision Adam)."""
    fp32 = {"ddp": 16, "zero1": 8 + 8 / n, "zero2": 4 + 12 / n, "zero3": 16 / n}[strategy]
    mixed = {"ddp": 16, "zero1": 4 + 12 / n, "zero2": 2 + 14 / n, "zero3": 16 / n}[strategy]
    return fp32, mixed


def print_memory(results: list[dict], *, quick: bool) -> None:
    """One row per strategy: the peak sample of the worst rank, its breakdown, the formulas."""
    n, num_params = results[0]["world_size"], results[0]["num_params"]
    report(f"Part 2: model-state memory per rank, {n} processes, fp32 AdamW on CPU, "
           f"{'small ViT' if quick else 'ViT-B/16 dims at 32 px'}: {num_params / 1e6:.1f} M params.")
    report("  Bytes/param counted from the distinct tensor storages the rank holds, at the larger of two")
    report("  moments of step 2: after backward, and when AdamW starts its update.")
    header = (f"  {'strategy':8s} {'moment':17s} {'params':>6s} {'grads':>6s} {'master':>6s} {'optim':>6s} "
              f"{'total':>6s} | {'fp32 formula':>12s} {'in 10%':>6s} | {'mixed':>5s} | {'comm buf':>8s} {'heap':>6s}")
    report(header)
    notes = []
    for result in results:
        peaks = [max(samples, key=lambda s: sum(s["bytes"].get(c, 0) for c in MODEL_STATES))
                 for samples in result["per_rank"]]
        peak = max(peaks, key=lambda s: sum(s["bytes"].get(c, 0) for c in MODEL_STATES))
        per = {c: peak["bytes"].get(c, 0) / num_params for c in (*MODEL_STATES, "comm buffers", "other")}
        total = sum(per[c] for c in MODEL_STATES)
        fp32, mixed = formulas(result["strategy"], n)
        within = abs(total - fp32) <= 0.1 * fp32
        report(f"  {result['strategy']:8s} {peak['point']:17s} {per['params']:6.2f} {per['grads']:6.2f} "
               f"{per['fp32 master']:6.2f} {per['optimizer state']:6.2f} {total:6.2f} | {fp32:12.2f} "
               f"{'yes' if within else 'NO':>6s} | {mixed:5.2f} | {per['comm buffers']:8.2f} "
               f"{peak['heap'] / num_params:6.2f}")
        if not within and per["fp32 master"] > 0 and abs(total - per["fp32 master"] - fp32) <= 0.1 * fp32:
            notes.append(f"{result['strategy']}: {total:.2f} vs {fp32:.2f} because DeepSpeed keeps an fp32 master "
                         f"partition ({per['fp32 master']:.2f} B/param = 4/N) cloned from the fp32 weights "
                         "(stage_1_and_2.py); without it the count is "
                         f"{total - per['fp32 master']:.2f}.")
        elif not within:
            notes.append(f"{result['strategy']}: {total:.2f} vs {fp32:.2f}; held by: {peak['sources']}")
        if per["other"] > 0.01:
            notes.append(f"{result['strategy']}: {per['other']:.2f} B/param in other ZeRO tensors: "
                         f"{peak['sources'].get('other')}")
    report("  master = DeepSpeed's fp32 copy of the rank's partition; comm buf = DDP reducer buckets or")
    report("  DeepSpeed IPG buckets (allocated size; not model states, so not in total); heap = all malloc'd")
    report("  bytes in use at that moment minus before the model was built (incl. activations, buffers).")
    for note in notes:
        report("  note: " + note)


# ----------------------------------------------------------------------------------------------
# Driver: one torchrun launch for part 1, one per strategy for part 2.
# ----------------------------------------------------------------------------------------------

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
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for strategy in STRATEGIES:
                out = Path(tmp) / f"{strategy}.json"
                launch(["--part", "memory", "--strategy", strategy, "--json-out", str(out), *quick], nproc=args.nproc)
                results.append(json.loads(out.read_text()))
        print_memory(results, quick=args.quick)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, a small ViT")
    parser.add_argument("--part", choices=("all", "overhead", "memory"), default="all")
    parser.add_argument("--nproc", type=int, default=2, help="processes per torchrun launch (driver only)")
    parser.add_argument("--strategy", choices=STRATEGIES, help="memory part under torchrun: which strategy")
    parser.add_argument("--json-out", help="memory part under torchrun: where rank 0 writes its result")
    args = parser.parse_args()
    if "LOCAL_RANK" not in os.environ:
        drive(args)
    elif args.part == "memory":
        if not (args.strategy and args.json_out):
            parser.error("--part memory under torchrun needs --strategy and --json-out")
        memory_worker(args)
    else:  # under torchrun, "all" means part 1: part 2 needs a fresh launch per strategy
        overhead_worker(args)


if __name__ == "__main__":
    main()
