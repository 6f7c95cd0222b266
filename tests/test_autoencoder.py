"""Autoencoder building blocks: MAE masking and loss (hand-checked), the ViT / MAE key layout,
the conv decoder's output size, rotation targets, reconstruction grids, the recipe's config
checks, and the pretraining model's transfer into a classifier."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cvdist.config import ConfigError
from cvdist.config_loading import load_config
from cvdist.data.builtin import make_synthetic
from cvdist.engine import Progress
from cvdist.engine.transfer import load_backbone
from cvdist.eval.knn import KnnEvaluator
from cvdist.losses.reconstruction import masked_mse, rotation_batch
from cvdist.models import build_model
from cvdist.models.decoders import ConvDecoder
from cvdist.models.vit import build_mae, build_vit, num_visible, patch_targets, patchify, random_masking, unpatchify
from cvdist.tasks.autoencoder.config import AutoencoderRunConfig, validate_autoencoder
from cvdist.tasks.autoencoder.step import (MaeStep, MultitaskStep, ReconstructionEvaluator, build_pretrain_model,
                                           build_train_step, save_reconstruction_grid, trunk_features)
from tests.helpers.tensor_batches import sharded_eval_batches


def ae_config(*overrides: str) -> AutoencoderRunConfig:
    return load_config(overrides=["data.dataset=synthetic", *overrides], schema=AutoencoderRunConfig)


# --- MAE masking and loss ------------------------------------------------------------------------

@pytest.mark.parametrize("num_patches, ratio, visible", [(16, 0.75, 4), (49, 0.75, 12), (10, 0.5, 5), (49, 0.9, 4)])
def test_masking_keeps_exactly_the_expected_number_of_visible_patches(num_patches, ratio, visible):
    assert num_visible(num_patches, ratio) == visible
    generator = torch.Generator().manual_seed(3)
    keep, mask = random_masking(6, num_patches, mask_ratio=ratio, device=torch.device("cpu"), generator=generator)
    assert keep.shape == (6, visible)
    assert (mask.sum(dim=1) == num_patches - visible).all()
    for row in range(6):
        assert len(set(keep[row].tolist())) == visible and keep[row].tolist() == sorted(keep[row].tolist())
        assert (mask[row, keep[row]] == 0).all()  # exactly the kept patches are unmasked
    assert len({tuple(k.tolist()) for k in keep}) > 1  # each sample its own mask
    again, _ = random_masking(6, num_patches, mask_ratio=ratio, device=torch.device("cpu"),
                              generator=torch.Generator().manual_seed(3))
    assert torch.equal(keep, again)


def test_masking_refuses_a_ratio_that_keeps_nothing_or_everything():
    for ratio in (0.99, 0.0):
        with pytest.raises(ValueError, match="must keep at least one and mask at least one"):
            random_masking(2, 16, mask_ratio=ratio, device=torch.device("cpu"))


def test_masked_mse_counts_masked_patches_only_hand_checked():
    # 1 sample, 3 patches of 2 pixels; patch 1 is visible and badly predicted: it must not count.
    pred = torch.tensor([[[1.0, 1.0], [100.0, -100.0], [0.0, 2.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # patch 0: (1 + 1) / 2 = 1; patch 2: (0 + 4) / 2 = 2; mean over the 2 masked patches = 1.5
    assert masked_mse(pred, target, mask).item() == pytest.approx(1.5)
    # two samples: the mean is over all masked patches of the batch; "none" is per sample
    pred2 = torch.cat([pred, torch.full((1, 3, 2), 3.0)])
    target2, mask2 = torch.zeros(2, 3, 2), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert masked_mse(pred2, target2, mask2).item() == pytest.approx((1 + 2 + 9) / 3)
    assert masked_mse(pred2, target2, mask2, reduction="none").tolist() == pytest.approx([1.5, 9.0])


def test_mae_encoder_sees_visible_patches_only_and_gradients_reach_masked_predictions_only():
    torch.manual_seed(0)
    mae = build_mae(name="vit_micro", in_channels=1, mask_ratio=0.75, decoder_dim=16, decoder_depth=1,
                    decoder_heads=2)
    seen = []
    mae.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    images = torch.randn(3, 1, 28, 28)
    out = mae(images, generator=torch.Generator().manual_seed(1))
    assert seen == [(3, 12, 32)]  # 49 patches of 4x4, 25 % visible
    assert out["pred"].shape == (3, 49, 16) and out["mask"].sum().item() == 3 * 37
    pred = out["pred"].detach().requires_grad_(True)
    masked_mse(pred, patch_targets(images, patch_size=4, norm_pix=True), out["mask"]).backward()
    touched = pred.grad.abs().sum(dim=-1) > 0
    assert torch.equal(touched, out["mask"].bool())


def test_patchify_roundtrip_and_norm_pix_targets():
    images = torch.randn(2, 3, 32, 32)
    patches = patchify(images, 8)
    assert patches.shape == (2, 16, 192)
    assert torch.equal(patches[0, 1].view(8, 8, 3).permute(2, 0, 1), images[0, :, 0:8, 8:16])
    assert torch.equal(unpatchify(patches, patch_size=8, channels=3), images)
    normed = patch_targets(images, patch_size=8, norm_pix=True)
    assert torch.allclose(normed.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(normed.var(-1), torch.ones(2, 16), atol=1e-3)


def test_mae_weights_load_into_the_vit_classifier_of_the_same_preset(tmp_path):
    mae = build_mae(name="vit_micro", in_channels=3, mask_ratio=0.75, decoder_dim=16, decoder_depth=1,
                    decoder_heads=2)
    torch.save(mae.state_dict(), tmp_path / "mae.pt")
    vit = build_vit(name="vit_micro", num_classes=5, in_channels=3)
    assert load_backbone(vit, source=tmp_path / "mae.pt") == "head"
    assert all(torch.equal(value, mae.state_dict()[key]) for key, value in vit.state_dict().items()
               if not key.startswith("head."))
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 5)  # positions follow the image size


# --- conv autoencoder, rotation, grids -----------------------------------------------------------

@pytest.mark.parametrize("name, channels, size", [("tiny_cnn", 1, 28), ("small_cnn", 3, 32), ("resnet18", 3, 32)])
def test_conv_autoencoder_output_has_the_input_shape(name, channels, size):
    mean = "[" + ",".join(["0.5"] * channels) + "]"
    config = ae_config(f"model.name={name}", f"model.in_channels={channels}", f"data.image_size={size}",
                       f"data.mean={mean}", f"data.std={mean}", "multitask.weights.rotation=1.0")
    model = build_pretrain_model(config).eval()
    images = torch.randn(2, channels, size, size)
    out = model(images)
    assert out["reconstruction"].shape == images.shape
    assert out["rotation"].shape == (2, 4)


def test_conv_decoder_sizes_and_refusal():
    assert ConvDecoder(feature_dim=8, out_channels=3, image_size=64, channels=(32, 16, 8, 4))(
        torch.randn(2, 8)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="not divisible by 2"):
        ConvDecoder(feature_dim=8, out_channels=1, image_size=28, channels=(32, 16, 8, 4))


def test_rotation_targets_hand_checked():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    images = image.repeat(4, 1, 1, 1)
    rotated, labels = rotation_batch(images, rotations=torch.tensor([0, 1, 2, 3]))
    assert labels.tolist() == [0, 1, 2, 3]
    assert rotated[0, 0].tolist() == [[1, 2], [3, 4]]
    assert rotated[1, 0].tolist() == [[2, 4], [1, 3]]  # 90 degrees counter-clockwise
    assert rotated[2, 0].tolist() == [[4, 3], [2, 1]]
    assert rotated[3, 0].tolist() == [[3, 1], [4, 2]]
    drawn, k = rotation_batch(torch.randn(400, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert k.dtype == torch.long and set(k.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="square"):
        rotation_batch(torch.randn(1, 1, 2, 3))


@pytest.mark.parametrize("weights", [{"reconstruction": 1.0, "rotation": 0.5},
                                     {"reconstruction": 1.0, "rotation": 0.5, "contrastive": 0.25}])
def test_multitask_step_returns_the_weighted_sum_and_each_loss(weights):
    config = ae_config("model.name=tiny_cnn", *(f"multitask.weights.{k}={v}" for k, v in weights.items()))
    model = build_pretrain_model(config)
    step = build_train_step(config, model, rank=0, world_size=1)
    assert isinstance(step, MultitaskStep) and step.weights == weights
    loss, extra = step(model, {"image": torch.randn(8, 1, 28, 28)}, Progress(step=0, micro_batch=0, epoch=0,
                                                                            total_steps=1))
    assert set(extra) == {f"train/loss_{name}" for name in weights}
    expected = sum(w * extra[f"train/loss_{name}"] for name, w in weights.items())
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # every head trains (DDP needs it)


def test_contrastive_views_are_seeded_by_batch_index_and_resume_where_they_stopped():
    config = ae_config("model.name=tiny_cnn", "multitask.weights.contrastive=0.5")
    model = build_pretrain_model(config)
    images = torch.randn(4, 1, 28, 28)
    fresh = build_train_step(config, model, rank=0, world_size=1)
    first, second = fresh.contrastive.views(images, index=0), fresh.contrastive.views(images, index=1)
    assert first.shape == (8, 1, 28, 28) and not torch.equal(first, second)
    resumed = build_train_step(config, model, rank=0, world_size=1)  # a new process continuing at batch 1
    assert torch.equal(resumed.contrastive.views(images, index=1), second)
    other_rank = build_train_step(config, model, rank=1, world_size=2)
    assert not torch.equal(other_rank.contrastive.views(images, index=0), first)
    # the step takes the index from the engine's Progress
    progress = Progress(step=0, micro_batch=1, epoch=0, total_steps=2)
    torch.manual_seed(0)
    loss, _ = fresh(model, {"image": images}, progress)
    torch.manual_seed(0)
    again, _ = resumed(model, {"image": images}, progress)
    assert torch.equal(loss, again)


def test_mae_step_is_the_masked_loss_of_the_forward_pass():
    model = build_mae(name="vit_micro", in_channels=1, mask_ratio=0.5, decoder_dim=16, decoder_depth=1,
                      decoder_heads=2)
    images = torch.randn(4, 1, 28, 28)
    torch.manual_seed(5)  # the step masks with the global RNG
    loss, extra = MaeStep(patch_size=4, norm_pix=True)(model, {"image": images},
                                                       Progress(step=0, micro_batch=0, epoch=0, total_steps=1))
    torch.manual_seed(5)
    out = model(images)
    expected = masked_mse(out["pred"], patch_targets(images, patch_size=4, norm_pix=True), out["mask"])
    assert loss.item() == pytest.approx(expected.item()) and set(extra) == {"train/loss_reconstruction"}


def test_reconstruction_grid_png(tmp_path):
    path = save_reconstruction_grid(torch.zeros(5, 1, 28, 28), torch.ones(5, 1, 28, 28), path=tmp_path / "g.png",
                                    mean=[0.5], std=[0.5])
    with Image.open(path) as image:
        assert image.size == (5 * 30 + 2, 2 * 30 + 2)
        assert image.getpixel((2 + 14, 2 + 14))[0] == 128 and image.getpixel((2 + 14, 32 + 14))[0] == 255


def test_evaluator_metrics_knn_and_grid_in_one_process(tmp_path):
    model = build_mae(name="vit_micro", in_channels=1, mask_ratio=0.75, decoder_dim=16, decoder_depth=1,
                      decoder_heads=2).eval()
    images, labels = make_synthetic(num_samples=40, num_classes=2, seed=0)
    batches = lambda: sharded_eval_batches(images=images, labels=labels, rank=0, world_size=1, batch_size=16)  # noqa: E731
    logged = []
    # the bank is the evaluation split itself: each image is its own nearest neighbour (k=1)
    knn = KnnEvaluator(bank_batches=batches, eval_batches=batches, to_device=lambda x: x, num_classes=2, k=1,
                       temperature=0.07)
    evaluator = ReconstructionEvaluator(
        eval_batches=batches, to_device=lambda x: x, device=torch.device("cpu"), run_dir=tmp_path, is_main=True,
        num_grid_images=3, mean=[0.5], std=[0.5], knn=knn,
        log_image=lambda key, path, step: logged.append((key, path.name, step)))
    at_step_7 = Progress(step=7, micro_batch=7, epoch=0, total_steps=10)
    with torch.no_grad():
        first, second = evaluator(model, at_step_7), evaluator(model, at_step_7)
        features = trunk_features(model)(images[:2].float())
    assert first == second  # fixed masks: evaluations compare
    assert first["loss_reconstruction"] > 0 and first["knn_top1"] == 1.0
    assert features.shape == (2, 32)
    assert logged[0] == ("eval/reconstructions", "recon_step7.png", 7)
    with Image.open(tmp_path / "recon_step7.png") as image:
        assert image.size == (3 * 30 + 2, 2 * 30 + 2)


# --- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["ae.kind=vae"], "ae.kind='vae' is not allowed"),
    (["multitask.weights.jigsaw=1.0"], "unknown loss"),
    (["multitask.weights.rotation=-1"], "must be >= 0"),
    (["multitask.weights.reconstruction=0"], "switches every loss off"),
    (["multitask.weights.reconstruction=0", "multitask.weights.rotation=1"], "reconstruction must be > 0"),
    (["multitask.weights.contrastive=0.5", "multitask.temperature=0"], "multitask.temperature=0.0 must be > 0"),
    (["multitask.weights.contrastive=0.5", "multitask.view_scale=[0.5,0.2]"], "multitask.view_scale"),
    (["ae.kind=mae", "multitask.weights.rotation=0.5"], "use ae.kind=conv for multi-task"),
    (["ae.kind=mae", "ae.mask_ratio=1.0"], "ae.mask_ratio=1.0 must lie in"),
    (["ae.kind=mae", "ae.vit=vit_huge"], "ae.vit='vit_huge' is not allowed"),
    (["ae.kind=mae", "data.image_size=30"], "not a multiple of"),
    (["ae.kind=mae", "ae.decoder_dim=30", "ae.decoder_heads=4"], "divisible by ae.decoder_heads"),
    (["ae.decoder_channels=[64,32,16,8]"], "must be divisible by 8"),
    (["ae.knn_k=-1"], "knn_k=0 switches the kNN monitor off"),
])
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_autoencoder(ae_config(*overrides))


# --- transfer layout -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_cnn", "small_cnn", "resnet18"])
def test_pretrain_model_keeps_the_classifier_trunk_keys(tmp_path, name):
    config = ae_config(f"model.name={name}", "multitask.weights.rotation=0.5")
    pretrain = build_pretrain_model(config)
    classifier = build_model(name=name, num_classes=7, in_channels=1)
    torch.save(pretrain.state_dict(), tmp_path / "ae.pt")
    head = load_backbone(classifier, source=tmp_path / "ae.pt")
    trunk = {k: v for k, v in classifier.state_dict().items() if not k.startswith(head + ".")}
    assert trunk and all(torch.equal(v, pretrain.state_dict()[k]) for k, v in trunk.items())
    assert {k for k in pretrain.state_dict() if not k.startswith(head + ".")} == set(trunk)
