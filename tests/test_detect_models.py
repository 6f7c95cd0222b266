"""Detection models on cvdist backbones: feature maps found by torchvision's feature extraction,
Faster R-CNN / RetinaNet / FCOS train and predict category ids, backbones load from a run's weights."""

from __future__ import annotations

import pytest
import torch

from cvdist.engine.transfer import load_backbone
from cvdist.models import build_model
from cvdist.models.detection import ARCHITECTURES, build_detector, pyramid_nodes


def _detector(architecture: str, backbone: str = "small_resnet", size: int = 64):
    classifier = build_model(name=backbone, num_classes=1, in_channels=1)
    return build_detector(architecture=architecture, classifier=classifier, num_categories=3, in_channels=1,
                          image_size=size, image_mean=[0.5], image_std=[0.5],
                          fpn_channels=32 if architecture == "fcos" else 16)


def test_pyramid_levels_are_the_stage_outputs():
    resnet = build_model(name="resnet18", num_classes=1, in_channels=1)  # small stem: layer1 at full size
    assert pyramid_nodes(resnet, in_channels=1, image_size=64) == [
        ("layer2.1.relu_1", 128), ("layer3.1.relu_1", 256), ("layer4.1.relu_1", 512)]
    small = build_model(name="small_resnet", num_classes=1, in_channels=1)  # its 7x7 head pool is not a level
    assert pyramid_nodes(small, in_channels=1, image_size=96) == [("layer1.relu_1", 32), ("layer2.relu_1", 64)]
    timm_nodes = pyramid_nodes(build_model(name="timm:resnet18", num_classes=1, in_channels=1), in_channels=1,
                               image_size=64)
    assert [channels for _, channels in timm_nodes][-3:] == [128, 256, 512]
    with pytest.raises(ValueError, match="detection and segmentation need a CNN backbone"):
        pyramid_nodes(build_model(name="vit_tiny", num_classes=1, in_channels=1), in_channels=1, image_size=32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_trains_and_predicts_category_ids(architecture):
    torch.manual_seed(0)
    model = _detector(architecture, backbone="small_cnn" if architecture == "fcos" else "small_resnet")
    images = [torch.rand(1, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[30.0, 20.0, 60.0, 44.0], [2.0, 2.0, 12.0, 12.0]]),
                "labels": torch.tensor([2, 1])}]
    if architecture == "mask_rcnn":  # box-filling masks
        for target in targets:
            target["masks"] = torch.zeros(len(target["boxes"]), 64, 64, dtype=torch.uint8)
            for mask, (x0, y0, x1, y1) in zip(target["masks"], target["boxes"].int().tolist()):
                mask[y0:y1, x0:x1] = 1
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "body" in n)
    model.eval()
    with torch.no_grad():
        out = model(images)
    expected = {"boxes", "scores", "labels"} | ({"masks"} if architecture == "mask_rcnn" else set())
    assert len(out) == 2 and all(set(o) == expected for o in out)
    if architecture == "mask_rcnn":  # one probability map per detection, at the image size
        assert all(o["masks"].shape == (len(o["boxes"]), 1, 64, 64) for o in out)
    labels = torch.cat([o["labels"] for o in out])
    assert ((labels >= 0) & (labels < 3)).all()


def test_backbone_from_a_runs_weights_and_a_clear_error_when_keys_do_not_match(tmp_path):
    trained = build_model(name="small_resnet", num_classes=10, in_channels=1)
    torch.nn.init.normal_(trained.layer1.conv1.weight)
    torch.save(trained.state_dict(), tmp_path / "trunk.pth")
    classifier = build_model(name="small_resnet", num_classes=1, in_channels=1)
    load_backbone(classifier, source=tmp_path / "trunk.pth", log=lambda _: None)
    detector = build_detector(architecture="fcos", classifier=classifier, num_categories=3, in_channels=1,
                              image_size=64, image_mean=[0.5], image_std=[0.5])
    body = detector.model.backbone.body
    assert torch.equal(body.get_submodule("layer1.conv1").weight, trained.layer1.conv1.weight)
    torch.save(build_model(name="small_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(ValueError, match=r"does not match the model.*missing in the source.*down\.0\.weight"
                                         r".*unexpected in the source.*0\.0\.weight"):
        load_backbone(build_model(name="small_resnet", num_classes=1, in_channels=1), source=tmp_path / "cnn.pth")


@pytest.mark.parametrize("backbone", ["resnet18", "timm:resnet18"])
def test_resnet_and_timm_backbones_train_a_detector(backbone):
    torch.manual_seed(0)
    model = _detector("retinanet", backbone=backbone)
    losses = model([torch.rand(1, 64, 64)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]),
                                              "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(model.model.backbone.fpn.inner_blocks) == 3  # the three deepest stages feed the pyramid
