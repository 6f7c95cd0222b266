"""``main`` of the contrastive task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/pretrain_contrastive.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cvdist.config_loading import load_recipe_config
from cvdist.data.from_config import build_bank_batches
from cvdist.engine import TrainTask, fit, start_session
from cvdist.eval.knn import KnnEvaluator
from cvdist.optim import scaled_lr
from cvdist.tasks.common import build_run_data
from cvdist.tasks.contrastive.config import ContrastiveRunConfig, validate_contrastive
from cvdist.tasks.contrastive.step import ContrastiveStep, build_contrastive_model


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml,
                                recipe="pretrain_contrastive", schema=ContrastiveRunConfig)
    validate_contrastive(config)
    session = start_session(config)
    env, ssl = session.env, config.ssl
    data = build_run_data(config, session)  # labels only feed the kNN monitor
    model = build_contrastive_model(config)
    step = ContrastiveStep(model=model, ssl=ssl, data=config.data, seed=config.train.seed, rank=env.rank,
                           world_size=env.world_size)
    evaluate = None  # ssl.knn_k=0: no monitor
    if ssl.knn_k:
        knn = KnnEvaluator(
            bank_batches=build_bank_batches(config.data, in_channels=config.model.in_channels,
                                            num_classes=config.model.num_classes, bank_size=ssl.knn_bank_size,
                                            rank=env.rank, world_size=env.world_size, seed=config.train.seed),
            eval_batches=data.eval_batches, to_device=session.backend.to_device,
            num_classes=config.model.num_classes, k=ssl.knn_k, temperature=ssl.knn_temperature,
            probe_epochs=ssl.probe_epochs, seed=config.train.seed)
        evaluate = lambda model, progress: knn(model)  # noqa: E731  (the monitor needs no progress)
    trainable = [p for p in model.parameters() if p.requires_grad]  # not the momentum encoder
    # the group's own LR: the schedule scales it, and optim.lr stays the base LR in the saved config
    lr = scaled_lr(config.optim.lr, global_batch_size=config.data.global_batch_size, rule=ssl.lr_scaling)
    result = fit(session, TrainTask(model=model, compute_loss=step, train_batches=data.train, evaluate=evaluate,
                                    parameter_groups=[{"params": trainable, "lr": lr}], on_step_end=step.on_step_end))
    final = result.summary["final"]
    session.print(f"[cvdist] done: step {result.step}, eval kNN top-1 {final.get('eval/knn_top1', float('nan')):.4f}, "
                  f"record in {session.run_dir}")
    session.close()
    return 0
