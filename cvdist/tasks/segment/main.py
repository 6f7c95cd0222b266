"""``main`` of the segmentation task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/segment.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cvdist.config_loading import load_recipe_config
from cvdist.data.dense_data import build_dense_data
from cvdist.engine import TrainTask, fit, start_session
from cvdist.eval.segmentation_plot import save_segmentation_grid
from cvdist.tasks.common import backbone_loader
from cvdist.tasks.segment.config import IGNORE_INDEX, SegmentRunConfig, validate_segment
from cvdist.tasks.segment.step import build_segmentation_model, evaluate_segmenter, segmentation_loss


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml, recipe="segment", schema=SegmentRunConfig)
    validate_segment(config)
    session = start_session(config)
    env, seg, data_config = session.env, config.segment, config.data
    data = build_dense_data(data_config, scenes=config.scenes.options(), num_categories=config.model.num_classes,
                            rank=env.rank, world_size=env.world_size, micro_batch_size=session.micro_batch_size,
                            seed=config.train.seed, num_epochs=config.train.epochs,
                            hflip=0.5 if data_config.hflip is None else data_config.hflip,
                            scale_range=tuple(seg.scale_jitter), with_semantic=True, mask_fill=IGNORE_INDEX)
    model = build_segmentation_model(
        name=config.model.name, head=seg.head, num_categories=config.model.num_classes,
        in_channels=config.model.in_channels, small_stem=config.model.small_stem, image_size=data_config.image_size,
        mean=data_config.mean, std=data_config.std, decoder_channels=seg.decoder_channels,
        load_trunk=backbone_loader(session, seg.backbone_from))
    if seg.head == "linear" and not seg.backbone_from:
        session.print("[cvdist] warning: segment.head=linear on a random, frozen trunk (a baseline); set "
                      "segment.backbone_from to probe trained features")

    def evaluate(model, progress):
        def show(images, truths, predictions):  # rank 0's first images: masks_step<N>.png, also to W&B
            path = session.run_dir / f"masks_step{progress.step}.png"
            save_segmentation_grid(images, truths, predictions, path=path, ignore_index=IGNORE_INDEX)
            session.wandb.log_image("eval/masks", path, step=progress.step)

        return evaluate_segmenter(model, data.eval_batches(), to_device=session.backend.to_device, device=env.device,
                                  category_names=data.category_names,
                                  num_shown=seg.num_mask_images if env.is_main else 0, show=show)

    trainable = [p for p in model.parameters() if p.requires_grad]  # the linear head's trunk is frozen
    result = fit(session, TrainTask(model=model, compute_loss=segmentation_loss, train_batches=data.train,
                                    evaluate=evaluate, parameter_groups=[{"params": trainable}]))
    final = result.summary["final"]
    session.print(f"[cvdist] done: step {result.step}, eval mIoU {final.get('eval/mIoU', float('nan')):.4f}, "
                  f"pixel accuracy {final.get('eval/pixel_acc', float('nan')):.4f}, record in {session.run_dir}")
    session.close()
    return 0
