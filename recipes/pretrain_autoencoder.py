"""Autoencoder and multi-task pretraining of a backbone trunk, on WebDataset shards or the
built-in data, with any strategy and launcher. Each evaluation logs the reconstruction loss and the
kNN top-1 of the trunk's features, and writes ``recon_step<N>.png`` (inputs on top,
reconstructions below) to the run directory and W&B.

    python recipes/pretrain_autoencoder.py                                   # conv AE, small_cnn, Fashion-MNIST
    torchrun --nproc_per_node 2 recipes/pretrain_autoencoder.py --config recipes/pretrain_mae.yaml
    python recipes/pretrain_autoencoder.py --config recipes/pretrain_multitask.yaml   # reconstruction + rotation
    python recipes/longtail.py transfer.from_path=runs/pretrain_autoencoder model.name=small_cnn   # fine-tune
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from cvdist.autoencoder_config import AutoencoderRunConfig, validate_autoencoder
from cvdist.autoencoder_training import (ReconstructionEvaluator, build_knn_monitor, build_pretrain_model,
                                         build_train_step)
from cvdist.cli import run_recipe
from cvdist.config import load_recipe_config
from cvdist.data.from_config import build_labelled_data
from cvdist.engine import TrainTask, fit, start_session


def main(argv: Sequence[str]) -> int:
    config = load_recipe_config(argv, default_yaml=Path(__file__).with_suffix(".yaml"),
                                recipe="pretrain_autoencoder", schema=AutoencoderRunConfig)
    validate_autoencoder(config)
    session = start_session(config)
    env = session.env
    data = build_labelled_data(config.data, in_channels=config.model.in_channels,
                               num_classes=config.model.num_classes, rank=env.rank, world_size=env.world_size,
                               micro_batch_size=session.micro_batch_size, seed=config.train.seed,
                               num_epochs=config.train.epochs)  # labels only feed the kNN monitor
    model = build_pretrain_model(config)
    ae = config.ae
    knn = build_knn_monitor(config, eval_batches=data.eval_batches, to_device=session.backend.to_device,
                            rank=env.rank, world_size=env.world_size)
    evaluator = ReconstructionEvaluator(
        eval_batches=data.eval_batches, to_device=session.backend.to_device, device=env.device,
        run_dir=session.run_dir, is_main=env.is_main, num_grid_images=ae.num_grid_images, mean=config.data.mean,
        std=config.data.std, norm_pix=ae.norm_pix_loss, seed=config.train.seed, knn=knn,
        log_image=lambda key, path, step: session.wandb.log_image(key, path, step=step))
    step = build_train_step(config, model, rank=env.rank, world_size=env.world_size,
                            resumed_step=session.resume_meta.step if session.resume_meta else 0)
    result = fit(session, TrainTask(model=model, compute_loss=step, train_batches=data.train, evaluate=evaluator,
                                    on_step_end=evaluator.on_step_end))
    final = result.summary["final"]
    session.print(f"[cvdist] done: step {result.step}, eval reconstruction loss "
                  f"{final.get('eval/loss_reconstruction', float('nan')):.4f}, kNN top-1 "
                  f"{final.get('eval/knn_top1', float('nan')):.4f}, record in {session.run_dir}")
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main))
