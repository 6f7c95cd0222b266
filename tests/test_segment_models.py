"""FCN / DeepLabv3 heads on cvdist backbones: logits at the input size, a training step, trunk
weights kept from the classifier."""

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


def test_unknown_head_and_vit_are_refused():
    with pytest.raises(ValueError, match="segmentation head 'unet' unknown"):
        build_segmenter(head="unet", classifier=build_model(name="small_cnn", num_classes=1, in_channels=1),
                        num_classes=2, in_channels=1, image_size=64)
    with pytest.raises(ValueError, match="segmentation need a CNN backbone"):
        build_segmenter(head="fcn", classifier=build_model(name="vit_tiny", num_classes=1, in_channels=1),
                        num_classes=2, in_channels=1, image_size=32)
