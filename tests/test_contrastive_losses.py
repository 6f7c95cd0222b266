"""Contrastive losses (hand-computed NT-Xent; 2 gloo processes x B == 1 process x 2B for loss and
gradients), the momentum encoder, and the backbones' key layout."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cvdist.losses.contrastive import info_nce_loss, moco_v3_loss, nt_xent_loss, triplet_margin_loss
from cvdist.models import build_backbone, build_model
from cvdist.models.backbones import remove_head
from cvdist.models.heads import PredictionHead, ProjectionMLP, SSLHeads, SSLModel, momentum_at, update_momentum_encoder
from tests.helpers.spawn import run_ranks


def test_nt_xent_matches_a_hand_computed_value():
    # two images, two views each, unit vectors in 2-D
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[0.8, 0.6], [0.6, 0.8]], dtype=torch.float64)
    t = 0.5
    sims = {  # anchor -> (positive similarity, [similarities to its 2 negatives])
        "a0": (0.8, [0.0, 0.6]), "a1": (0.8, [0.0, 0.6]),  # a0.a1, a0.b1 / a1.a0, a1.b0
        "b0": (0.8, [0.6, 0.96]), "b1": (0.8, [0.6, 0.96]),  # b0.a1, b0.b1 / b1.a0, b1.b0
    }
    expected = 0.0
    for positive, negatives in sims.values():
        expected += -math.log(math.exp(positive / t) / (math.exp(positive / t) + sum(math.exp(n / t) for n in negatives)))
    expected /= 4
    assert nt_xent_loss(z_a, z_b, temperature=t).item() == pytest.approx(expected, abs=1e-12)
    # a scale-free loss: normalisation happens inside
    assert nt_xent_loss(3 * z_a, z_b, temperature=t).item() == pytest.approx(expected, abs=1e-12)


def test_triplet_loss_is_zero_when_views_agree_and_negatives_are_far():
    z = torch.eye(4, dtype=torch.float64)
    assert triplet_margin_loss(z, z, margin=0.5).item() == 0.0
    # swapping the positives makes every anchor closer to a negative: loss = margin + d(a,p) - d(a,n)
    swapped = z[[1, 0, 3, 2]]
    assert triplet_margin_loss(z, swapped, margin=0.5).item() == pytest.approx(0.5 + math.sqrt(2) - 0.0)


def _losses(x_a, x_b, weight, *, rank, world_size):
    """Every loss on embeddings ``x @ weight`` (a linear 'encoder' whose gradient we compare)."""
    z_a, z_b = x_a @ weight, x_b @ weight
    z_a.retain_grad()
    common = dict(rank=rank, world_size=world_size)
    return z_a, {
        "nt_xent": nt_xent_loss(z_a, z_b, temperature=0.3, **common),
        "moco_v3": moco_v3_loss(z_a, z_b, (x_a @ weight.T).detach(), (x_b @ weight.T).detach(), temperature=0.2, **common),
        "info_nce": info_nce_loss(z_a, z_b, temperature=0.2, **common),
        "triplet": triplet_margin_loss(z_a, z_b, margin=0.5, **common),
    }


def _data(rows=8, dim=5):
    generator = torch.Generator().manual_seed(0)
    x_a, x_b = (torch.randn(rows, dim, generator=generator, dtype=torch.float64) for _ in range(2))
    weight = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return x_a, x_b, weight


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        x_a, x_b, weight = _data()
        rows = x_a.shape[0] // world_size
        mine = slice(rank * rows, (rank + 1) * rows)
        results = {}
        for name in ("nt_xent", "moco_v3", "info_nce", "triplet"):
            w = weight.clone().requires_grad_(True)
            z_a, losses = _losses(x_a[mine], x_b[mine], w, rank=rank, world_size=world_size)
            losses[name].backward()
            loss, grad = losses[name].detach().clone(), w.grad.clone()
            dist.all_reduce(loss)
            dist.all_reduce(grad)  # DDP averages the ranks' gradients
            # plain lists: tensors in a queue are shared through file descriptors that die with the process
            results[name] = [(t / world_size).tolist() for t in (loss, grad, z_a.grad)]
        queue.put((rank, results))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_with_the_concatenated_batch():
    gathered = run_ranks(_worker, world_size=2)
    x_a, x_b, weight = _data()
    for name in ("nt_xent", "moco_v3", "info_nce", "triplet"):
        w = weight.clone().requires_grad_(True)
        z_a, losses = _losses(x_a, x_b, w, rank=0, world_size=1)
        losses[name].backward()
        for rank in range(2):
            loss, grad, z_grad = (torch.tensor(v, dtype=torch.float64) for v in gathered[rank][name])
            assert loss.item() == pytest.approx(losses[name].item(), abs=1e-6), name
            torch.testing.assert_close(grad, w.grad, atol=1e-6, rtol=0, msg=name)
            torch.testing.assert_close(z_grad, z_a.grad[rank * 4:(rank + 1) * 4], atol=1e-6, rtol=0, msg=name)


def _tiny_ssl_model(momentum: bool) -> SSLModel:
    trunk = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    head_name, dim = remove_head(trunk)
    projector = ProjectionMLP(dim, hidden_dim=16, out_dim=8, last_bn=True)
    heads = SSLHeads(trunk, projector=projector, predictor=PredictionHead(8, hidden_dim=16), momentum=momentum)
    return SSLModel(trunk, head_name=head_name, heads=heads)


def test_momentum_encoder_follows_its_formula_and_gets_no_gradient():
    torch.manual_seed(0)
    model = _tiny_ssl_model(momentum=True)
    heads = model.heads
    images = torch.randn(4, 1, 28, 28)
    out = model(images, images.flip(3))
    loss = moco_v3_loss(out["p_a"], out["p_b"], out["k_a"], out["k_b"], temperature=0.2)
    loss.backward()
    momentum_params = [*heads.momentum_trunk.parameters(), *heads.momentum_projector.parameters()]
    assert momentum_params and all(p.grad is None and not p.requires_grad for p in momentum_params)
    assert all(p.grad is not None for p in model.trunk.parameters())
    with torch.no_grad():  # pretend an optimiser step moved the online weights
        for p in [*model.trunk.parameters(), *heads.projector.parameters()]:
            p.add_(1.0)
    before = [p.clone() for p in momentum_params]
    online = [*model.trunk.parameters(), *heads.projector.parameters()]
    update_momentum_encoder(model, momentum=0.9)
    for old, new, source in zip(before, momentum_params, online):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * source)
    assert momentum_at(0, total_steps=10, base=0.99) == pytest.approx(0.99)
    assert momentum_at(5, total_steps=10, base=0.99) == pytest.approx(0.995)
    assert momentum_at(10, total_steps=10, base=0.99) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["tiny_cnn", "small_cnn", "resnet18"])
def test_backbone_and_ssl_model_keep_the_classifier_key_layout(name):
    classifier = build_model(name=name, num_classes=10, in_channels=1)
    trunk, dim = build_backbone(name, in_channels=1, small_stem=True)
    head = [n for n, m in classifier.named_modules() if isinstance(m, nn.Linear)][-1]
    trunk_keys = {k for k in classifier.state_dict() if not k.startswith(head + ".")}
    assert set(trunk.state_dict()) == trunk_keys
    assert trunk(torch.randn(2, 1, 28, 28)).shape == (2, dim)
    if name == "resnet18":  # small stem on grey input: 3x3 conv with one input channel, no max-pool
        assert trunk.conv1.weight.shape == (64, 1, 3, 3) and isinstance(trunk.maxpool, nn.Identity)
    model = _tiny_ssl_model(momentum=True) if name == "tiny_cnn" else None
    if model is not None:
        extra = {k for k in model.state_dict() if k not in trunk_keys}
        assert extra and all(k.startswith(head + ".") for k in extra)  # transfer drops these with the head


def test_timm_models_by_name(monkeypatch):
    from cvdist.models import build_model

    classifier = build_model(name="timm:resnet10t", num_classes=7, in_channels=1)
    assert classifier(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    trunk, dim = build_backbone("timm:resnet10t", in_channels=1)
    assert trunk(torch.randn(2, 1, 32, 32)).shape == (2, dim)
    # the trunk's keys are the classifier's minus its head: pretrained trunks transfer unchanged
    assert set(trunk.state_dict()) == {k for k in classifier.state_dict() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match="timm has no such model"):
        build_model(name="timm:no_such_net", num_classes=2, in_channels=1)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install timm"):
        build_backbone("timm:resnet18", in_channels=1)
    with pytest.raises(ValueError, match="not one of"):
        build_backbone("resnet99", in_channels=1)
