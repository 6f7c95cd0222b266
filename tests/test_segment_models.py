"""FCN / DeepLabv3 / U-Net / linear heads on cvdist backbones: logits at the input size, a
training step, trunk weights kept from the classifier; the linear head's trunk stays frozen."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cvdist.models import build_model
from cvdist.models.segmentation import SEGMENTATION_HEADS, build_segmenter


@pytest.mark.parametrize("head", SEGMENTATION_HEADS)
@pytest.mark.parametrize("backbone", ["small_resnet", "small_cnn"])
def test_heads_give_input_sized_logits_and_train(head, backbone):
    torch.manual_seed(0)
    classifier = build_model(name=backbone, num_classes=1, in_channels=1)
    model = build_segmenter(head=head, classifier=classifier, num_classes=4, in_channels=1, image_size=64)
    images, labels = torch.rand(2, 1, 64, 64), torch.randint(0, 4, (2, 64, 64))
    logits = model(images)
    assert logits.shape == (2, 4, 64, 64)
    F.cross_entropy(logits, labels).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    first = next(name for name, _ in classifier.named_parameters())
    assert torch.equal(model.body.get_parameter(first), classifier.get_parameter(first))


def test_linear_head_keeps_the_trunk_frozen_in_training_mode():
    torch.manual_seed(0)
    classifier = build_model(name="small_resnet", num_classes=1, in_channels=1)
    model = build_segmenter(head="linear", classifier=classifier, num_classes=3, in_channels=1, image_size=32)
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    model.train()
    F.cross_entropy(model(torch.rand(2, 1, 32, 32)), torch.randint(0, 3, (2, 32, 32))).backward()
    assert not model.body.training and all(p.grad is None for p in model.body.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.body.state_dict().items())  # BN statistics too


@pytest.mark.parametrize("head", SEGMENTATION_HEADS)
def test_vit_patch_grid_feeds_every_head_at_any_image_size(head):
    torch.manual_seed(0)
    vit = build_model(name="vit_micro", num_classes=1, in_channels=1)
    model = build_segmenter(head=head, classifier=vit, num_classes=3, in_channels=1, image_size=32)
    logits = model(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 3, 32, 32)
    F.cross_entropy(logits, torch.randint(0, 3, (2, 32, 32))).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    if head != "linear":  # no unused trainable parameter (the classifier's head is left out): DDP needs none
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():  # evaluation images keep their size: padded to a square for the ViT, cropped back
        assert model(torch.rand(1, 1, 30, 21)).shape == (1, 3, 30, 21)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="segmentation head 'pspnet' unknown"):
        build_segmenter(head="pspnet", classifier=build_model(name="small_cnn", num_classes=1, in_channels=1),
                        num_classes=2, in_channels=1, image_size=64)
