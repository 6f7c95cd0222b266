"""Fine-tuning options for dense models' backbones (cvdist.models.finetune): frozen stages stay
put while the rest trains, FrozenBatchNorm keeps the loaded statistics in train mode, layer-wise
LR decay gives each group lr * decay ** depth, and the detect recipe wires them in."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from cvdist.models import build_model
from cvdist.models.finetune import freeze_batchnorm, freeze_stages, layer_decay_groups, trunk_units
from cvdist.tasks.detect.step import build_detection_model, detection_parameter_groups, detector_trunk


def _detector(**options):
    torch.manual_seed(0)
    return build_detection_model(name="resnet18", architecture="faster_rcnn", num_categories=3, in_channels=1,
                                 small_stem=True, image_size=32, mean=[0.5], std=[0.5], fpn_channels=16,
                                 num_levels=3, anchor_base=4, load_trunk=lambda _: None, **options)


def _train(model, groups=None, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(groups or [p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        images = [torch.rand(1, 32, 32) for _ in range(2)]
        targets = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 24.0]]), "labels": torch.tensor([1])}] * 2
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_stem_and_stages_of_each_backbone_kind():
    names = {}
    for backbone in ("small_cnn", "small_resnet", "resnet18"):
        model = build_model(name=backbone, num_classes=1, in_channels=1)
        lookup = {id(m): n for n, m in model.named_modules()}
        stem, stages = trunk_units(model)
        names[backbone] = ([lookup[id(m)] for m in stem], [lookup[id(m)] for m in stages])
    assert names["resnet18"] == (["conv1", "bn1"], ["layer1", "layer2", "layer3", "layer4", "fc"])
    assert names["small_resnet"] == (["stem"], ["layer1", "down", "layer2", "fc"])
    assert names["small_cnn"][0] == ["0"]
    # on the detector's trunk (the feature extractor) the head is gone
    trunk = detector_trunk(_detector())
    assert [n for n, _ in trunk.named_children() if any(True for _ in _.parameters())] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


def test_frozen_stages_do_not_change_while_the_rest_trains():
    model = _detector(frozen_stages=2)
    trunk = detector_trunk(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in before if n.startswith(("model.backbone.body.conv1", "model.backbone.body.bn1",
                                                        "model.backbone.body.layer1", "model.backbone.body.layer2"))}
    _train(model, steps=2)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) == (name in frozen), name
    with pytest.raises(ValueError, match=r"frozen_stages=5: the backbone has 4 stages after its stem; use 0..4"):
        freeze_stages(trunk, num_stages=5)
    assert freeze_stages(trunk, num_stages=0) == 0


def test_frozen_batchnorm_keeps_the_loaded_statistics_in_train_mode():
    classifier = build_model(name="small_resnet", num_classes=1, in_channels=1)
    bn = classifier.stem[1]
    bn.running_mean.uniform_(-1, 1)  # "pretrained" statistics
    bn.running_var.uniform_(0.5, 2)
    loaded = (bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone())
    assert freeze_batchnorm(classifier) == sum(isinstance(m, torch.nn.BatchNorm2d)
                                               for m in build_model(name="small_resnet", num_classes=1,
                                                                    in_channels=1).modules())
    frozen = classifier.stem[1]
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert all(torch.equal(a, b) for a, b in zip((frozen.running_mean, frozen.running_var, frozen.weight), loaded))
    model = _detector(frozen_bn=True)
    buffers = {n: b.clone() for n, b in model.named_buffers() if "body" in n}
    assert buffers and not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector_trunk(model).modules())
    _train(model, steps=1)  # train mode: a BatchNorm would update its running statistics in one step
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers() if "body" in n)


def test_layer_decay_group_learning_rates_follow_the_formula():
    model = _detector(frozen_stages=1)
    groups = detection_parameter_groups(model, lr=0.1, layer_decay=0.5)
    # depth 0: pyramid and heads; 1: layer4, 2: layer3, 3: layer2 (layer1 and the stem are frozen)
    assert [(g["depth"], g["lr"]) for g in groups] == [(0, 0.1), (1, 0.05), (2, 0.025), (3, 0.0125)]
    trunk = detector_trunk(model)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in trunk.layer4.parameters()}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    unfrozen = _detector()
    stem_group = layer_decay_groups(unfrozen, trunk=detector_trunk(unfrozen), lr=1.0, decay=0.8)[-1]
    assert stem_group["depth"] == 5 and stem_group["lr"] == pytest.approx(0.8 ** 5)  # conv1 + bn1 share it
    assert detection_parameter_groups(model, lr=0.1, layer_decay=1.0) is None
    _train(model, groups=groups, steps=1)  # the groups drive an optimiser
