"""kNN monitor, linear probe, two-view batch augmentation, `cvdist eval` and the ssl config checks."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from cvdist.commands.eval import add_eval_command
from cvdist.config import ConfigError
from cvdist.config_loading import load_config
from cvdist.data.batch_views import ViewAugmentation, two_views
from cvdist.eval.knn import gather_features, knn_predict, knn_top1
from cvdist.eval.linear_probe import linear_probe_top1
from cvdist.models import build_model
from cvdist.tasks.contrastive.config import ContrastiveRunConfig, validate_contrastive


def _unit(degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def test_knn_votes_are_weighted_by_similarity_and_temperature():
    # one bank image of class 0 right next to the query, two of class 1 further away
    bank, labels = _unit([1, 40, 45]), torch.tensor([0, 1, 1])
    query = _unit([0])
    # sharp votes: exp(cos/0.01) of the close neighbour outweighs the two far ones
    assert knn_predict(query, bank, labels, num_classes=2, k=3, temperature=0.01).tolist() == [0]
    # flat votes: the majority wins
    assert knn_predict(query, bank, labels, num_classes=2, k=3, temperature=100.0).tolist() == [1]
    # k=1: the nearest neighbour only; k larger than the bank is clipped
    assert knn_predict(query, bank, labels, num_classes=2, k=1, temperature=100.0).tolist() == [0]
    assert knn_predict(query, bank, labels, num_classes=2, k=500, temperature=0.01).tolist() == [0]


def test_knn_top1_on_toy_clusters_and_padding_is_dropped():
    generator = torch.Generator().manual_seed(0)
    centres = _unit([0, 90, 180, 270]) * 5
    labels = torch.arange(200) % 4
    bank = centres[labels] + 0.3 * torch.randn(200, 2, generator=generator)
    queries = centres[labels[:40]] + 0.3 * torch.randn(40, 2, generator=generator)
    assert knn_top1(queries, labels[:40], bank, labels, num_classes=4, k=20) == 1.0
    # the bank's labels rotated by one class: every prediction is the neighbouring cluster's label
    assert knn_top1(queries, labels[:40], bank, (labels + 1) % 4, num_classes=4, k=20) == 0.0
    valid = torch.tensor([True, False, True])
    features, kept = gather_features(torch.eye(3), torch.tensor([5, 6, 7]), valid)
    assert kept.tolist() == [5, 7] and features.shape == (2, 3)


def test_linear_probe_beats_chance_on_separable_features():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(5, 32, generator=generator)
    labels = torch.arange(600) % 5
    features = directions[labels] + 0.5 * torch.randn(600, 32, generator=generator)
    top1 = linear_probe_top1(features[:500], labels[:500], features[500:], labels[500:], num_classes=5, epochs=20)
    assert top1 > 0.9  # chance is 0.2
    noise = torch.randn(600, 32, generator=generator)
    assert linear_probe_top1(noise[:500], labels[:500], noise[500:], labels[500:], num_classes=5, epochs=20) < 0.5


def test_two_views_are_reproducible_per_rank_and_batch():
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    aug = ViewAugmentation(brightness=0.4, contrast=0.4)
    common = dict(seed=3, mean=[0.5], std=[0.5])
    a1, b1 = two_views(images, aug, rank=0, index=7, **common)
    a2, b2 = two_views(images, aug, rank=0, index=7, **common)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and a1.shape == images.shape
    assert not torch.allclose(a1, b1)  # two different views
    other_rank, _ = two_views(images, aug, rank=1, index=7, **common)
    other_batch, _ = two_views(images, aug, rank=0, index=8, **common)
    assert not torch.allclose(a1, other_rank) and not torch.allclose(a1, other_batch)
    # normalised pixels stay within the image range [-1, 1] after jitter
    assert a1.min() >= -1 - 1e-5 and a1.max() <= 1 + 1e-5


def test_full_crop_without_flip_is_the_identity_and_flip_mirrors():
    images = torch.rand(4, 1, 8, 8)
    still = ViewAugmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    view, _ = two_views(images, still, seed=0, rank=0, index=0, mean=[0.5], std=[0.5])
    torch.testing.assert_close(view, images, atol=1e-5, rtol=0)
    flipping = ViewAugmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    for index in range(4):
        view, _ = two_views(images, flipping, seed=0, rank=0, index=index, mean=[0.5], std=[0.5])
        for got, image in zip(view, images):
            assert torch.allclose(got, image, atol=1e-5) or torch.allclose(got, image.flip(2), atol=1e-5)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_eval_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_eval_command_on_a_weights_file(tmp_path, capsys):
    torch.manual_seed(0)
    classifier = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    weights = tmp_path / "w.pt"
    torch.save(classifier.state_dict(), weights)
    common = [str(weights), "--dataset", "synthetic", "--num-train", "256", "--num-eval", "64", "--k", "20"]
    args = _parse([*common, "--model", "tiny_cnn", "--knn", "--linear-probe", "--probe-epochs", "10",
                   "--out", str(tmp_path / "m.json")])
    assert args.handler(args) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["model"] == "tiny_cnn" and 0.5 < report["knn_top1"] <= 1 and 0.5 < report["linear_probe_top1"] <= 1
    with pytest.raises(ConfigError, match="--model"):
        args = _parse([*common, "--knn"])
        args.handler(args)
    with pytest.raises(ConfigError, match="--knn"):
        args = _parse([*common, "--model", "tiny_cnn"])
        args.handler(args)


@pytest.mark.parametrize("override, message", [
    ("ssl.method=swav", "ssl.method"),
    ("ssl.temperature=0", "ssl.temperature"),
    ("ssl.momentum=1.0", "ssl.momentum"),
    ("ssl.view_scale=[0.5,0.2]", "ssl.view_scale"),
    ("ssl.view_brightness=1.5", "ssl.view_brightness"),
    ("data.augment=flip", "data.augment"),
    ("ssl.knn_k=-1", "ssl.knn_k"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):  # choice fields fail as the config loads, the rest here
        config = load_config(yaml_paths=["recipes/pretrain_contrastive.yaml"], overrides=[override],
                             schema=ContrastiveRunConfig)
        validate_contrastive(config)


def test_probe_without_the_knn_bank_is_refused():
    config = load_config(yaml_paths=["recipes/pretrain_contrastive.yaml"], overrides=["ssl.knn_k=0", "ssl.probe_epochs=3"],
                         schema=ContrastiveRunConfig)
    with pytest.raises(ConfigError, match="ssl.probe_epochs=3 needs the kNN monitor"):
        validate_contrastive(config)
