"""``dist.activation_checkpointing=true``: the blocks of the built-in CNNs, ResNets and ViTs (and
timm models) recompute their activations in the backward pass, with gradients, BatchNorm
buffers and state_dict keys equal to the plain model's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cvdist.models import build_model
from cvdist.models.checkpointing import checkpoint_blocks, checkpointable_blocks
from tests.helpers.recipes import TINY, run_recipe
from tests.helpers.runs import assert_same, weights

# (model name, input channels, image side, blocks expected)
MODELS = [("tiny_cnn", 1, 16, 2), ("small_cnn", 1, 16, 5), ("small_resnet", 1, 28, 2), ("resnet18", 3, 16, 8),
          ("vit_micro", 1, 16, 2)]


def _step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name, channels, side, expected_blocks", MODELS)
def test_gradients_and_buffers_equal_the_plain_model(name, channels, side, expected_blocks):
    torch.manual_seed(0)
    plain = build_model(name=name, num_classes=5, in_channels=channels)
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_blocks(checkpointed) == expected_blocks
    images, labels = torch.randn(8, channels, side, side), torch.randint(0, 5, (8,))
    # the recomputation really happens: a block's first layer runs twice per step
    first_layer = next(m for m in checkpointable_blocks(checkpointed)[0].modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)))
    calls = []
    first_layer.register_forward_hook(lambda *_: calls.append(1))
    expected, got = _step(plain, images, labels), _step(checkpointed, images, labels)
    assert len(calls) == 2
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    # BatchNorm running statistics updated once, as without checkpointing; names unchanged
    assert_same(checkpointed.state_dict(), plain.state_dict(), atol=0)
    checkpointed.eval()
    with torch.no_grad():  # evaluation runs the blocks directly
        torch.testing.assert_close(checkpointed(images), plain.eval()(images))


def test_timm_models_use_timms_own_checkpointing():
    torch.manual_seed(0)
    plain = build_model(name="timm:resnet10t", num_classes=5, in_channels=3)
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_blocks(checkpointed) >= 1 and checkpointed.grad_checkpointing
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    expected, got = _step(plain, images, labels), _step(checkpointed, images, labels)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_model_without_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="has no block cvdist knows how to checkpoint"):
        checkpoint_blocks(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_a_recipe_run_with_checkpointing_ends_with_the_plain_runs_weights(tmp_path):
    args = [*TINY, "model.name=small_cnn", "train.max_steps=4", f"output_dir={tmp_path}", "data.augment=none"]
    run_recipe([*args, "name=plain"])
    result = run_recipe([*args, "name=ckpt", "dist.activation_checkpointing=true"])
    assert "activation checkpointing: 5 blocks" in result.stdout
    assert_same(weights(tmp_path / "ckpt"), weights(tmp_path / "plain"), atol=1e-5)


@pytest.mark.slow
def test_checkpointing_under_zero3_ends_with_the_plain_ddp_weights(tmp_path):
    """ZeRO-3 (parameters gathered again for each block's recomputation) is the hardest case; a
    checkpointed DDP run was tested here too until the suite outgrew its time budget (the
    one-process recipe test above covers the checkpointing itself)."""
    args = [*TINY, "train.max_steps=4", f"output_dir={tmp_path}", "data.augment=none"]
    run_recipe([*args, "name=plain", "dist.strategy=ddp"], nproc=2)
    result = run_recipe([*args, "name=zero3", "dist.strategy=zero3", "dist.activation_checkpointing=true"], nproc=2)
    assert "activation checkpointing: 2 blocks" in result.stdout
    assert_same(weights(tmp_path / "zero3"), weights(tmp_path / "plain"), atol=1e-5)
