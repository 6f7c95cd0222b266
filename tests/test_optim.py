"""Optimisers and learning-rate schedules."""

import math

import pytest
import torch

from cvdist.optim import LARS, build_optimizer, lr_multiplier


def test_warmup_then_cosine_to_floor():
    values = [lr_multiplier(s, total_steps=110, name="cosine", warmup_steps=10, min_lr_ratio=0.1) for s in range(110)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert values[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_step_schedule():
    lr = [lr_multiplier(s, total_steps=100, name="step", milestones=[30, 60], gamma=0.1) for s in (0, 29, 30, 59, 60, 99)]
    assert lr == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_onecycle_matches_torch():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=100, pct_start=0.3,
                                                    anneal_strategy="cos", cycle_momentum=False,
                                                    three_phase=False)
    for step in range(100):
        ours = lr_multiplier(step, total_steps=100, name="onecycle", pct_start=0.3)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6, abs=1e-9), step
        optimizer.step()
        scheduler.step()


def test_lars_scales_update_by_trust_ratio():
    weight = torch.nn.Parameter(torch.full((4, 4), 2.0))
    bias = torch.nn.Parameter(torch.zeros(4))
    optimizer = LARS([weight, bias], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.01)
    weight.grad = torch.full((4, 4), 0.5)
    bias.grad = torch.full((4,), 0.5)
    optimizer.step()
    trust = 0.01 * math.sqrt(16 * 4.0) / math.sqrt(16 * 0.25)
    assert torch.allclose(weight, torch.full((4, 4), 2.0 - trust * 0.5))
    assert torch.allclose(bias, torch.full((4,), -0.5))  # 1-d tensors: plain SGD


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_every_optimizer_reduces_a_loss(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = build_optimizer(model.parameters(), name=name, lr=0.05 if name != "lars" else 1.0, momentum=0.9,
                                weight_decay=0.0, betas=[0.9, 0.999], lars_trust_coefficient=0.02)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    first = None
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first


def test_warmup_longer_than_the_run_is_warned_about(tmp_path):
    from tests.helpers.recipes import TINY
    from tests.helpers.recipes import run_recipe as run_recipe_process

    result = run_recipe_process([*TINY, f"output_dir={tmp_path}", "train.max_steps=2", "schedule.warmup_steps=5"])
    assert "schedule.warmup_steps=5 >= the run's 2 steps" in result.stdout


def test_linear_lr_scaling_rule():
    from cvdist.optim import scaled_lr

    assert scaled_lr(0.3, global_batch_size=4096, rule="linear") == pytest.approx(4.8)
    assert scaled_lr(0.3, global_batch_size=4096, rule="none") == 0.3
    with pytest.raises(ValueError, match="'sqrt' is not one of"):
        scaled_lr(0.3, global_batch_size=4096, rule="sqrt")
