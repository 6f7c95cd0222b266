"""``main`` of the supervised task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/supervised.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch.nn import functional as F

from cvdist.config_loading import load_recipe_config
from cvdist.engine import TrainTask, fit, start_session
from cvdist.eval.classification import evaluate_classifier
from cvdist.models import build_model
from cvdist.tasks.common import build_run_data
from cvdist.tasks.supervised.config import SupervisedRunConfig, validate_supervised


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml, recipe="supervised",
                                schema=SupervisedRunConfig)
    validate_supervised(config)
    session = start_session(config)
    env = session.env
    data = build_run_data(config, session)
    model = build_model(name=config.model.name, num_classes=config.model.num_classes,
                        in_channels=config.model.in_channels, small_stem=config.model.small_stem)

    smoothing = config.loss.label_smoothing

    def compute_loss(model, batch, progress):
        return F.cross_entropy(model(batch["image"]).float(), batch["label"], label_smoothing=smoothing), {}

    def evaluate(model, progress):
        return evaluate_classifier(model, data.eval_batches(), to_device=session.backend.to_device, device=env.device)

    result = fit(session, TrainTask(model=model, compute_loss=compute_loss, train_batches=data.train, evaluate=evaluate))
    final = result.summary["final"]
    session.print(f"[cvdist] done: step {result.step}, eval top-1 {final.get('eval/top1', float('nan')):.4f}, "
                  f"record in {session.run_dir}")
    session.close()
    return 0
