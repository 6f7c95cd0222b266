"""``main`` of the detection task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/detect.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cvdist.config_loading import load_recipe_config
from cvdist.data.dense_data import build_dense_data
from cvdist.engine import TrainTask, fit, start_session
from cvdist.eval.detection_plot import save_detection_grid
from cvdist.tasks.common import backbone_loader
from cvdist.tasks.detect.config import DetectRunConfig, validate_detect
from cvdist.tasks.detect.step import (build_detection_model, detection_loss, detection_parameter_groups,
                                      evaluate_detector)


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml, recipe="detect", schema=DetectRunConfig)
    validate_detect(config)
    session = start_session(config)
    env, det, data_config = session.env, config.detect, config.data
    with_masks = det.architecture == "mask_rcnn"  # only then are instance maps decoded (they cost time)
    data = build_dense_data(data_config, scenes=config.scenes.options(), num_categories=config.model.num_classes,
                            rank=env.rank, world_size=env.world_size, micro_batch_size=session.micro_batch_size,
                            seed=config.train.seed, num_epochs=config.train.epochs,
                            hflip=0.5 if data_config.hflip is None else data_config.hflip,
                            scale_range=tuple(det.scale_jitter), with_masks=with_masks,
                            repeat_factor_threshold=det.repeat_factor_threshold)
    if data.category_repeat_factors:
        session.print(f"[cvdist] repeat-factor sampling (t={det.repeat_factor_threshold:g}): category repeat factors "
                      + ", ".join(f"{r:.2f}" for r in data.category_repeat_factors))
    model = build_detection_model(
        name=config.model.name, architecture=det.architecture, num_categories=config.model.num_classes,
        in_channels=config.model.in_channels, small_stem=config.model.small_stem, image_size=data_config.image_size,
        mean=data_config.mean, std=data_config.std, fpn_channels=det.fpn_channels, num_levels=det.num_levels,
        anchor_base=det.anchor_base, load_trunk=backbone_loader(session, det.backbone_from),
        frozen_stages=det.frozen_stages, frozen_bn=det.frozen_bn)

    def evaluate(model, progress):
        def show(images, targets, predictions):  # rank 0's first images: boxes_step<N>.png, also to W&B
            path = session.run_dir / f"boxes_step{progress.step}.png"
            save_detection_grid(images, targets, predictions, path=path, category_names=data.category_names)
            session.wandb.log_image("eval/boxes", path, step=progress.step)

        return evaluate_detector(model, data.eval_batches(), to_device=session.backend.to_device, device=env.device,
                                 category_names=data.category_names, train_instance_counts=data.train_instance_counts,
                                 rare_max=det.rare_max, common_max=det.common_max,
                                 num_shown=det.num_box_images if env.is_main else 0, with_masks=with_masks,
                                 show=show)

    groups = detection_parameter_groups(model, lr=config.optim.lr, layer_decay=det.layer_decay)
    result = fit(session, TrainTask(model=model, compute_loss=detection_loss, train_batches=data.train,
                                    evaluate=evaluate, parameter_groups=groups))
    final = result.summary["final"]
    session.print(f"[cvdist] done: step {result.step}, eval AP {final.get('eval/AP', float('nan')):.4f}, "
                  f"AP50 {final.get('eval/AP50', float('nan')):.4f}"
                  + (f", mask AP {final.get('eval/mask_AP', float('nan')):.4f}" if with_masks else "")
                  + f", record in {session.run_dir}")
    session.close()
    return 0
