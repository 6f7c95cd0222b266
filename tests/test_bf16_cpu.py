"""bf16 on the CPU: autocast really computes convolutions in bf16 while parameters and optimiser
state stay fp32 (none / DDP), and a recipe run under it finishes with finite losses."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from cvdist.engine.backends import build_backend
from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import TINY, run_recipe


def test_autocast_runs_the_conv_in_bf16_and_keeps_fp32_parameters_and_optimiser_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    conv_outputs: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, inputs, output: conv_outputs.append(output.dtype))
    backend = build_backend(strategy="none", precision="bf16")
    assert backend.precision == "bf16"
    prepared = backend.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3), grad_clip_norm=1.0,
                               micro_batch_size=4, accum_steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(prepared(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3]))
    backend.backward_and_maybe_step(loss)
    backend.finish_step()
    assert conv_outputs == [torch.bfloat16]
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())  # the loss is computed in fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = backend.client_optimizer.state_dict()["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it did step
    backend.close()


def test_fp16_stays_gpu_only():
    import pytest

    from cvdist.config import ConfigError

    with pytest.raises(ConfigError, match="dist.precision=fp16 needs a GPU.*dist.precision=bf16"):
        build_backend(strategy="none", precision="fp16")


def test_a_bf16_recipe_run_on_the_cpu_finishes_with_finite_losses(tmp_path):
    result = run_recipe([*TINY, f"output_dir={tmp_path}", "name=bf16", "train.max_steps=4", "dist.precision=bf16"])
    assert "precision bf16" in result.stdout
    losses = [row["train/loss"] for row in read_metrics(tmp_path / "bf16") if "train/loss" in row]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert json.loads((tmp_path / "bf16" / "summary.json").read_text())["step"] == 4
