"""Detection on cvdist ViTs through ViTDet's simple feature pyramid: levels and strides, each
architecture trains and predicts, odd image sizes, MAE encoders as the backbone, timm ViTs refused."""

from __future__ import annotations

import pytest
import torch

from cvdist.engine.transfer import load_backbone
from cvdist.models import build_model
from cvdist.models.detection import ARCHITECTURES, build_detector
from cvdist.models.vit import build_mae
from cvdist.models.vit_pyramid import SimpleFeaturePyramid, pyramid_strides
from tests.helpers.recipes import REPO, TINY_DETECT, run_recipe

TARGETS = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([0])},
           {"boxes": torch.tensor([[30.0, 20.0, 60.0, 44.0], [2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([2, 1])}]


def _vit_detector(architecture: str, *, classifier=None, num_levels: int = 3):
    classifier = classifier or build_model(name="vit_micro", num_classes=1, in_channels=1)
    return build_detector(architecture=architecture, classifier=classifier, num_categories=3, in_channels=1,
                          image_size=64, image_mean=[0.5], image_std=[0.5], fpn_channels=32, num_levels=num_levels)


def test_pyramid_levels_halve_from_the_patch_grid_and_keep_the_trunk_keys():
    assert pyramid_strides(patch_size=4, num_levels=3) == [2, 4, 8]  # resnet18's strides at 64 px (small stem)
    assert pyramid_strides(patch_size=4, num_levels=4) == [1, 2, 4, 8]
    assert pyramid_strides(patch_size=8, num_levels=3) == [4, 8, 16]
    assert pyramid_strides(patch_size=8, num_levels=1) == [16]
    with pytest.raises(ValueError, match="detect.num_levels=5: a ViT's simple feature pyramid has 1 to 4 levels"):
        pyramid_strides(patch_size=4, num_levels=5)
    with pytest.raises(ValueError, match="patch size 2 needs stride 2/4"):
        pyramid_strides(patch_size=2, num_levels=4)
    vit = build_model(name="vit_micro", num_classes=10, in_channels=1)
    pyramid = SimpleFeaturePyramid(vit, num_levels=4, out_channels=16)
    maps = pyramid(torch.rand(2, 1, 64, 64))
    assert {name: tuple(m.shape) for name, m in maps.items()} == {
        "0": (2, 16, 64, 64), "1": (2, 16, 32, 32), "2": (2, 16, 16, 16), "3": (2, 16, 8, 8)}
    # the classifier's trunk modules themselves, under its own names (minus the head, which the pyramid never uses)
    assert set(pyramid.body.state_dict()) == {k for k in vit.state_dict() if not k.startswith("head.")}
    assert pyramid.body.patch_embed is vit.patch_embed
    # levels carry the ViTDet channels into the FPN: D/4, D/2, D, D (vit_micro: D = 32)
    assert [block[0].in_channels for block in pyramid.fpn.inner_blocks] == [8, 16, 32, 32]


def test_odd_and_non_square_images_are_padded_and_cropped_back():
    pyramid = SimpleFeaturePyramid(build_model(name="vit_micro", num_classes=1, in_channels=1), num_levels=3,
                                   out_channels=8)  # strides 2, 4, 8
    maps = pyramid(torch.rand(1, 1, 36, 50))  # neither a multiple of the patch nor square
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(18, 25), (9, 13), (5, 7)]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_trains_and_predicts_on_a_vit(architecture):
    torch.manual_seed(0)
    model = _vit_detector(architecture)
    images = [torch.rand(1, 64, 64) for _ in range(2)]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    targets = TARGETS
    if architecture == "mask_rcnn":  # box-filling instance masks
        targets = [{**t, "masks": torch.zeros(len(t["boxes"]), 64, 64, dtype=torch.uint8)} for t in TARGETS]
        for target in targets:
            for mask, (x0, y0, x1, y1) in zip(target["masks"], target["boxes"].int().tolist()):
                mask[y0:y1, x0:x1] = 1
    for _ in range(2):
        losses = model(images, targets)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        # every trunk and pyramid weight learns: no unused parameters (DDP would refuse them)
        assert [n for n, p in model.named_parameters() if p.grad is None] == []
        optimizer.step()
    detector = model.model
    sizes = (detector.rpn if architecture.endswith("_rcnn") else detector).anchor_generator.sizes
    assert [s[0] for s in sizes][:3] == [8, 16, 32]  # detect.anchor_base on the stride-2 level, doubling
    model.eval()
    with torch.no_grad():
        out = model(images)
    expected = {"boxes", "scores", "labels"} | ({"masks"} if architecture == "mask_rcnn" else set())
    assert len(out) == 2 and all(set(o) == expected for o in out)
    labels = torch.cat([o["labels"] for o in out])
    assert ((labels >= 0) & (labels < 3)).all()


def test_an_mae_encoder_loads_into_the_vit_detector(tmp_path):
    mae = build_mae(name="vit_micro", in_channels=1, mask_ratio=0.75, decoder_dim=16, decoder_depth=1,
                    decoder_heads=2)
    torch.nn.init.normal_(mae.patch_embed.weight)
    torch.save(mae.state_dict(), tmp_path / "mae.pth")  # encoder + decoder (head.*), as a run saves it
    classifier = build_model(name="vit_micro", num_classes=1, in_channels=1)
    assert load_backbone(classifier, source=tmp_path / "mae.pth", log=lambda _: None) == "head"
    body = _vit_detector("fcos", classifier=classifier).model.backbone.body
    assert torch.equal(body.patch_embed.weight, mae.patch_embed.weight)
    assert torch.equal(body.blocks[1].linear2.weight, mae.blocks[1].linear2.weight)


def test_timm_vits_are_refused_clearly():
    with pytest.raises(ValueError, match="detection takes cvdist's vit_\\* \\(a simple feature pyramid\\), not timm's"):
        build_detector(architecture="fcos", classifier=build_model(name="timm:vit_tiny_patch16_224", num_classes=1,
                                                                   in_channels=1),
                       num_categories=3, in_channels=1, image_size=64, image_mean=[0.5], image_std=[0.5])


@pytest.mark.slow
def test_detect_recipe_trains_a_vit_from_an_mae_run(tmp_path):
    runs = tmp_path / "runs"
    run_recipe(["--config", "recipes/pretrain_mae.yaml", "ae.vit=vit_micro", "ae.decoder_dim=32", "ae.decoder_depth=1",
                "data.dataset=synthetic", "data.num_train_samples=64", "data.num_eval_samples=32",
                "data.global_batch_size=32", "train.max_steps=2", "train.eval_every_steps=0", "ae.num_grid_images=0",
                "schedule.warmup_steps=1", "tracking.wandb_mode=disabled", f"output_dir={runs}"],
               script=REPO / "recipes" / "pretrain_autoencoder.py")
    result = run_recipe([*TINY_DETECT, "model.name=vit_micro", f"detect.backbone_from={runs / 'pretrain_mae'}",
                         "train.max_steps=2", "train.eval_every_steps=2", "detect.num_box_images=0",
                         f"output_dir={runs}"], script=REPO / "recipes" / "detect.py")
    assert f"backbone weights from {runs / 'pretrain_mae'}" in result.stdout
    assert "eval AP" in result.stdout
