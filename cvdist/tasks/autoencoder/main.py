"""``main`` of the autoencoder task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/pretrain_autoencoder.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cvdist.config_loading import load_recipe_config
from cvdist.engine import TrainTask, fit, start_session
from cvdist.tasks.autoencoder.config import AutoencoderRunConfig, validate_autoencoder
from cvdist.tasks.autoencoder.step import (ReconstructionEvaluator, build_knn_monitor, build_pretrain_model,
                                           build_train_step)
from cvdist.tasks.common import build_run_data


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml,
                                recipe="pretrain_autoencoder", schema=AutoencoderRunConfig)
    validate_autoencoder(config)
    session = start_session(config)
    env = session.env
    data = build_run_data(config, session)  # labels only feed the kNN monitor
    model = build_pretrain_model(config)
    ae = config.ae
    knn = build_knn_monitor(config, eval_batches=data.eval_batches, to_device=session.backend.to_device,
                            rank=env.rank, world_size=env.world_size)
    evaluator = ReconstructionEvaluator(
        eval_batches=data.eval_batches, to_device=session.backend.to_device, device=env.device,
        run_dir=session.run_dir, is_main=env.is_main, num_grid_images=ae.num_grid_images, mean=config.data.mean,
        std=config.data.std, norm_pix=ae.norm_pix_loss, seed=config.train.seed, knn=knn,
        log_image=lambda key, path, step: session.wandb.log_image(key, path, step=step))
    step = build_train_step(config, model, rank=env.rank, world_size=env.world_size)
    result = fit(session, TrainTask(model=model, compute_loss=step, train_batches=data.train, evaluate=evaluator))
    final = result.summary["final"]
    session.print(f"[cvdist] done: step {result.step}, eval reconstruction loss "
                  f"{final.get('eval/loss_reconstruction', float('nan')):.4f}, kNN top-1 "
                  f"{final.get('eval/knn_top1', float('nan')):.4f}, record in {session.run_dir}")
    session.close()
    return 0
