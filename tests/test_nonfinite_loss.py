"""A NaN / inf training loss: the run stops at that step with a one-line error before any
checkpoint of the bad state exists (``keep_last`` keeps the last good one), or, with
``train.max_nonfinite_steps=N``, skips up to N steps without an update; a NaN on one rank stops
or skips every rank at the same step (none, DDP, ZeRO)."""

from __future__ import annotations

import json
import math
import re
import subprocess

import pytest
import torch

from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import REPO, clean_env, recipe_command

# Runs in its own process(es): the engine sets up process-group state once per process.
SCRIPT = r'''
import json, os, sys
import torch
from torch.nn import functional as F
from cvdist.cli import run_recipe
from cvdist.config_loading import load_config
from cvdist.engine import TrainTask, fit, start_session
from tests.helpers.tensor_batches import TensorBatches

out_dir, strategy, nan_steps, max_skips = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
nan_steps = {int(s) for s in nan_steps.split(",")}

def main(argv):
    config = load_config(overrides=[
        f"output_dir={out_dir}", "name=run", "tracking.wandb_mode=disabled", "data.global_batch_size=8",
        "optim.accum_steps=2", "optim.lr=0.1", "train.max_steps=6", "checkpoint.every_steps=2",
        "checkpoint.keep_last=1", "tracking.log_every_steps=1", f"dist.strategy={strategy}",
        f"train.max_nonfinite_steps={max_skips}"])
    session = start_session(config)
    env = session.env
    images = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    batches = TensorBatches(images=images, labels=torch.arange(64) % 2, rank=env.rank, world_size=env.world_size,
                            batch_size=session.micro_batch_size, seed=0, horizontal_flip=False, mean=0.5, std=0.5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))

    def compute_loss(model, batch, progress):
        loss = F.cross_entropy(model(batch["image"].float()), batch["label"])
        # The last rank alone sees a NaN, on the first micro-batch of each listed (1-based) step.
        if progress.step + 1 in nan_steps and env.rank == env.world_size - 1 and progress.micro_batch % 2 == 0:
            loss = loss * float("nan")
        return loss, {}

    def on_step_end(progress):
        if not strategy.startswith("zero"):
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            with open(f"{out_dir}/weights-rank{env.rank}.jsonl", "a") as handle:
                handle.write(json.dumps({"step": progress.step, "weights": flat.tolist()}) + "\n")

    fit(session, TrainTask(model=model, compute_loss=compute_loss, train_batches=batches, on_step_end=on_step_end))
    session.close()

sys.exit(run_recipe(main))
'''


def run_script(tmp_path, *, nproc: int, strategy: str, nan_steps: str, max_skips: int):
    script = tmp_path / "nonfinite_script.py"
    script.write_text(SCRIPT)
    command = recipe_command(nproc=nproc, script=script) + [str(tmp_path / "runs"), strategy, nan_steps, str(max_skips)]
    return subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)


def weights_by_step(out_dir) -> dict[tuple[int, int], list[float]]:
    """``(rank, step) -> weights after that step``, as each rank wrote them."""
    found = {}
    for path in out_dir.glob("weights-rank*.jsonl"):
        rank = int(path.stem[len("weights-rank"):])
        for line in path.read_text().splitlines():
            row = json.loads(line)
            found[(rank, row["step"])] = row["weights"]
    return found


def assert_stopped_at(result, *, step: int, newest: str, nproc: int) -> None:
    assert result.returncode != 0, result.stdout[-2000:]
    # Every rank stops with the same message (two ranks' stderr lines may interleave).
    errors = re.findall(r"cvdist: error: non-finite training loss \(nan\) at step (\d+) .*?newest good checkpoint: "
                        r"(\S+)\);.*?optim\.lr.*?train\.max_nonfinite_steps=N", result.stderr)
    assert errors == [(str(step), newest)] * nproc, result.stderr[-3000:]


def assert_checkpoints_are(run, names: list[str]) -> None:
    found = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert found == names


@pytest.mark.parametrize("nproc,strategy", [(1, "none"), pytest.param(2, "ddp", marks=pytest.mark.slow)])
def test_nan_stops_before_the_bad_state_is_saved(tmp_path, nproc, strategy):
    result = run_script(tmp_path, nproc=nproc, strategy=strategy, nan_steps="5", max_skips=0)
    assert_stopped_at(result, step=5, newest="step-00000004", nproc=nproc)
    run = tmp_path / "runs" / "run"
    assert_checkpoints_are(run, ["step-00000004"])  # keep_last=1 kept the last good one
    saved = torch.load(run / "checkpoints" / "step-00000004" / "model.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert max(step for _, step in weights_by_step(tmp_path / "runs")) == 4  # no step 5 was ever completed


@pytest.mark.parametrize("nproc,strategy", [(1, "none"), pytest.param(2, "ddp", marks=pytest.mark.slow)])
def test_skips_up_to_the_limit_without_an_update_then_stops(tmp_path, nproc, strategy):
    result = run_script(tmp_path, nproc=nproc, strategy=strategy, nan_steps="3,5", max_skips=1)
    assert_stopped_at(result, step=5, newest="step-00000004", nproc=nproc)
    assert "after 1 skipped step(s)" in result.stderr
    weights = weights_by_step(tmp_path / "runs")
    for rank in range(nproc):
        assert weights[(rank, 3)] == weights[(rank, 2)]  # the skipped step changed nothing (SGD momentum 0.9)
        assert weights[(rank, 4)] != weights[(rank, 3)]  # and training went on
        assert weights[(rank, 4)] == weights[(0, 4)]  # ranks agree
    rows = read_metrics(tmp_path / "runs" / "run")
    assert [row.get("train/nonfinite_skipped", 0) for row in rows] == [0, 0, 1, 1]
    assert "train/loss" not in rows[2]  # the skipped step has no loss to log: the NaN is not averaged in
    assert all(math.isfinite(row["train/loss"]) for row in rows if row["step"] != 3)


@pytest.mark.slow
def test_a_run_within_the_limit_finishes_and_reports_the_count(tmp_path):
    result = run_script(tmp_path, nproc=2, strategy="ddp", nan_steps="1,6", max_skips=2)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["final"]["train/nonfinite_skipped"] == 2 and summary["step"] == 6


@pytest.mark.slow
def test_zero_stops_every_rank_at_the_same_step(tmp_path):
    result = run_script(tmp_path, nproc=2, strategy="zero2", nan_steps="3", max_skips=0)
    assert_stopped_at(result, step=3, newest="step-00000002", nproc=2)
    assert_checkpoints_are(tmp_path / "runs" / "run", ["step-00000002"])
