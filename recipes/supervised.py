"""Supervised image classification on the built-in data, with any strategy and launcher.

    python recipes/supervised.py train.max_steps=50
    torchrun --nproc_per_node 2 recipes/supervised.py dist.strategy=zero2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from torch.nn import functional as F

from cvdist.cli import run_recipe
from cvdist.config import load_recipe_config
from cvdist.data.builtin import load_fashion_mnist, make_synthetic
from cvdist.data.tensor_batches import TensorBatches
from cvdist.engine import TrainTask, fit, start_session
from cvdist.eval.classification import evaluate_classifier, sharded_eval_batches
from cvdist.models import build_model


def load_data(config):
    """(train images, train labels, test images, test labels) of the configured built-in set."""
    data = config.data
    if data.dataset == "synthetic":
        train = make_synthetic(num_samples=data.num_train_samples or 2048, num_classes=config.model.num_classes,
                               channels=config.model.in_channels, seed=config.train.seed)
        test = make_synthetic(num_samples=data.num_eval_samples or 512, num_classes=config.model.num_classes,
                              channels=config.model.in_channels, seed=config.train.seed + 1)
    else:
        train = load_fashion_mnist(root=data.root, split="train", num_samples=data.num_train_samples)
        test = load_fashion_mnist(root=data.root, split="test", num_samples=data.num_eval_samples)
    return (*train, *test)


def main(argv: Sequence[str]) -> int:
    config = load_recipe_config(argv, default_yaml=Path(__file__).with_suffix(".yaml"), recipe="supervised")
    session = start_session(config)
    train_images, train_labels, test_images, test_labels = load_data(config)
    env = session.env
    batches = TensorBatches(images=train_images, labels=train_labels, rank=env.rank, world_size=env.world_size,
                            batch_size=session.micro_batch_size, seed=config.train.seed)
    model = build_model(name=config.model.name, num_classes=config.model.num_classes,
                        in_channels=config.model.in_channels, small_stem=config.model.small_stem)

    def compute_loss(model, batch):
        images, labels = batch
        return F.cross_entropy(model(images).float(), labels), {}

    def evaluate(model):
        eval_batches = sharded_eval_batches(images=test_images, labels=test_labels, rank=env.rank,
                                            world_size=env.world_size, batch_size=256)
        return evaluate_classifier(model, eval_batches, to_device=session.backend.to_device, device=env.device)

    result = fit(session, TrainTask(model=model, compute_loss=compute_loss, train_batches=batches, evaluate=evaluate))
    final = result.summary["final"]
    session.print(f"[cvdist] done: step {result.step}, eval top-1 {final.get('eval/top1', float('nan')):.4f}, "
                  f"record in {session.run_dir}")
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main))
