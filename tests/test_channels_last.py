"""``dist.channels_last``: which tensors the backends put in channels-last layout."""

from __future__ import annotations

import torch
from torch import nn

from cvdist.engine.backends import _memory_format
from cvdist.engine.dist import move_batch


def test_move_puts_only_4d_float_batches_in_channels_last():
    batch = {"image": torch.rand(4, 3, 8, 8), "label": torch.arange(4),
             "mask": torch.ones(4, 2, 2, 2, dtype=torch.bool), "views": [torch.rand(4, 3, 8, 8)], "tokens": torch.rand(4, 5, 6)}
    moved = move_batch(batch, device=torch.device("cpu"), channels_last=True)
    assert moved["image"].is_contiguous(memory_format=torch.channels_last) and not moved["image"].is_contiguous()
    assert moved["views"][0].is_contiguous(memory_format=torch.channels_last)
    assert moved["label"].is_contiguous() and moved["mask"].is_contiguous() and moved["tokens"].is_contiguous()
    assert torch.equal(moved["image"], batch["image"]), "only the layout changes"
    kept = move_batch(batch, device=torch.device("cpu"), channels_last=False)
    assert kept["image"].is_contiguous()


def test_memory_format_converts_conv_weights_and_keeps_values():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 8, 8))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    converted = _memory_format(model, True)
    weight = converted[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    for name, tensor in converted.state_dict().items():
        assert torch.equal(tensor, before[name])
    assert _memory_format(nn.Conv2d(3, 8, 3), False).weight.is_contiguous()
