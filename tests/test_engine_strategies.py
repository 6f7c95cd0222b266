"""Multi-process training through the real recipe: DDP equivalence, ZeRO-1/2/3 agreement,
checkpoints, exact resume after SIGKILL, and DeepSpeed's own zero_to_fp32 on our checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from cvdist.engine.export import consolidated_state_dict
from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import clean_env, run_recipe
from tests.helpers.runs import FAULT_SCRIPT, assert_same, run_killed_after_checkpoint, weights

pytestmark = pytest.mark.slow

STEPS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Straight 6-step runs of every strategy, and the single-process baselines."""
    out = tmp_path_factory.mktemp("strategies")
    # One shard (the built-in set's 256 samples) read without a shuffle buffer: one process reads it
    # in order, two processes each keep every other sample, so each 2-process step sees exactly the
    # samples of the 1-process step with twice the batch (see README, "Epoch semantics").
    common = [f"output_dir={out}", f"train.max_steps={STEPS}", "checkpoint.every_steps=3", "checkpoint.keep_last=5",
              "optim.grad_clip_norm=0.1", "data.shuffle_buffer=0", "data.augment=none"]
    from tests.helpers.recipes import TINY

    run_recipe([*TINY, *common, "name=single"], nproc=1)
    run_recipe([*TINY, *common, "name=single-accum", "optim.accum_steps=2"], nproc=1)
    run_recipe([*TINY, *common, "name=single-nchw", "dist.channels_last=false"], nproc=1)
    for strategy in ("ddp", "zero1", "zero2", "zero3", "fsdp"):
        run_recipe([*TINY, *common, f"name={strategy}", f"dist.strategy={strategy}"], nproc=2)
    return out, [*TINY, *common]


def test_ddp_two_processes_equal_one_process_with_twice_the_batch(runs):
    out, _ = runs
    single, ddp = weights(out / "single"), weights(out / "ddp")
    initial = weights(out / "single" / "checkpoints" / "step-00000003")
    assert any(not torch.equal(single[k], initial[k]) for k in single), "training did not change the weights"
    assert_same(ddp, single, atol=1e-6)
    assert_same(weights(out / "single-accum"), single, atol=1e-6)


def test_channels_last_changes_the_layout_not_the_training(runs):
    out, _ = runs
    checkpoint = "checkpoints/step-00000006/model.pt"
    default = torch.load(out / "single" / checkpoint, weights_only=True)
    nchw = torch.load(out / "single-nchw" / checkpoint, weights_only=True)
    conv = [name for name, tensor in default.items() if tensor.dim() == 4 and tensor.shape[1] > 1]
    assert conv, "tiny_cnn has convolutions with several input channels"
    for name in conv:
        assert default[name].is_contiguous(memory_format=torch.channels_last) and not default[name].is_contiguous()
        assert nchw[name].is_contiguous()
    assert_same(weights(out / "single-nchw"), weights(out / "single"), atol=1e-5)


@pytest.mark.parametrize("strategy", ["zero1", "zero2", "zero3"])
def test_zero_trains_and_agrees_with_ddp(runs, strategy):
    out, _ = runs
    rows = [r for r in read_metrics(out / strategy) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    # the optimiser moved the weights between the step-3 checkpoint and the end (the data order is
    # fixed here, so six clipped steps are too few for a reliable drop of the loss itself)
    final, at_step_3 = weights(out / strategy), weights(out / strategy / "checkpoints" / "step-00000003")
    assert any(not torch.equal(final[k], at_step_3[k]) for k in final)
    assert max(r["grad_norm"] for r in rows) > 0.1, "clipping at 0.1 must have been active"
    summary = json.loads((out / strategy / "summary.json").read_text())
    assert summary["strategy"] == strategy and summary["world_size"] == 2
    checkpoint = out / strategy / "checkpoints" / "step-00000006"
    assert (checkpoint / "latest").is_file() and (checkpoint / "zero_to_fp32.py").is_file()
    assert_same(weights(out / strategy), weights(out / "ddp"), atol=1e-5)


@pytest.mark.parametrize("strategy,nproc", [("none", 1), ("ddp", 2), ("zero1", 2), ("zero2", 2), ("zero3", 2),
                                            ("fsdp", 2)])
def test_exact_resume_after_sigkill(runs, tmp_path, strategy, nproc):
    out, args = runs
    straight = out / ("single" if strategy == "none" else strategy)
    args = [*args, f"output_dir={tmp_path}", "name=resumed", f"dist.strategy={strategy}"]
    run_killed_after_checkpoint(args, nproc=nproc, step=3, marker=tmp_path / "marker", kind="hang_after_checkpoint")
    run_dir = tmp_path / "resumed"
    assert not (run_dir / "summary.json").exists()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000003"]

    run_recipe([*args, "checkpoint.resume=auto"], nproc=nproc)
    # fp32 on the CPU with the same reduction order: the continuation is bit-identical.
    assert_same(weights(run_dir), weights(straight), atol=0)
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == list(range(1, STEPS + 1)), "metrics must have each step exactly once"


def test_fsdp_trains_like_ddp_and_writes_sharded_checkpoints(runs):
    out, _ = runs
    rows = [r for r in read_metrics(out / "fsdp") if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert max(r["grad_norm"] for r in rows) > 0.1, "clipping at 0.1 must have been active"
    checkpoint = out / "fsdp" / "checkpoints" / "step-00000006"
    assert (checkpoint / "fsdp" / ".metadata").is_file() and not (checkpoint / "model.pt").exists()
    assert sorted(p.name for p in (checkpoint / "fsdp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert json.loads((out / "fsdp" / "summary.json").read_text())["strategy"] == "fsdp"
    assert_same(weights(out / "fsdp"), weights(out / "ddp"), atol=1e-5)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(runs, tmp_path):
    out, args = runs
    args = [*args, f"output_dir={tmp_path}", "name=torn", "checkpoint.every_steps=2"]
    run_killed_after_checkpoint(args, nproc=1, step=4, marker=tmp_path / "marker", kind="hang_inside_checkpoint")
    checkpoints = tmp_path / "torn" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".tmp-step-00000004", "step-00000002"]

    result = run_recipe([*args, "checkpoint.resume=auto"], nproc=1)
    assert "resuming from" in result.stdout and "step-00000002" in result.stdout
    assert "removed an incomplete checkpoint" in result.stdout
    assert not (checkpoints / ".tmp-step-00000004").exists()
    assert_same(weights(tmp_path / "torn"), weights(out / "single"), atol=0)


def test_stop_signal_on_one_rank_saves_and_stops_all_and_resume_finishes(runs, tmp_path):
    out, args = runs
    args = [*args, f"output_dir={tmp_path}", "name=signalled", "dist.strategy=ddp", "checkpoint.every_steps=2",
            "checkpoint.keep_last=2"]
    result = run_recipe(args, nproc=2, script=FAULT_SCRIPT, env=clean_env(CVDIST_FAULT="signal_after_checkpoint:2"))
    assert "stop signal (SIGUSR1): saved step 3, stopping" in result.stdout
    run_dir = tmp_path / "signalled"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["step"] == 3
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]

    run_recipe([*args, "checkpoint.resume=auto"], nproc=2)
    # Only the last two checkpoints are kept (4 and 6; 2 and 3 were pruned).
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert_same(weights(run_dir), weights(out / "ddp"), atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cvdist_export_cli_writes_weights_that_load_strictly(runs, tmp_path, suffix):
    from cvdist.cli import main
    from cvdist.models import build_model

    out, _ = runs
    target = tmp_path / f"model{suffix}"
    assert main(["export", str(out / "zero3"), "--out", str(target)]) == 0
    if suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(target)
    else:
        state = torch.load(target, weights_only=True)
    model = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    model.load_state_dict(state, strict=True)
    assert_same(state, weights(out / "ddp"), atol=1e-5)
    assert main(["export", str(tmp_path / "nothing-here"), "--out", str(target)]) == 2


def test_deepspeed_zero_to_fp32_loads_into_torchvision_resnet(tmp_path):
    import torchvision

    from tests.helpers.recipes import TINY

    args = [*TINY, f"output_dir={tmp_path}", "name=r18", "model.name=resnet18", "dist.strategy=zero3",
            "train.max_steps=2", "data.num_train_samples=64", "data.num_eval_samples=16", "data.global_batch_size=8"]
    run_recipe(args, nproc=2)
    checkpoint = tmp_path / "r18" / "checkpoints" / "step-00000002"
    output = tmp_path / "fp32"
    subprocess.run([sys.executable, str(checkpoint / "zero_to_fp32.py"), str(checkpoint), str(output),
                    "--tag", "zero"], check=True, capture_output=True, text=True, env=clean_env())
    state = {}
    for file in sorted(output.glob("*.safetensors")) or sorted(output.glob("*.bin")):
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            state.update(load_file(file))
        else:
            state.update(torch.load(file, weights_only=True))
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # the small stem the recipe used
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    ours = consolidated_state_dict(tmp_path / "r18")
    assert_same({k: v.float() for k, v in state.items()}, ours, atol=0)
