"""Semantic segmentation (U-Net / FCN / DeepLabv3 / linear head on a cvdist backbone), on dense
shards or the built-in scenes, with any strategy and launcher; mIoU at each evaluation.

    python recipes/segment.py train.max_steps=50
    python recipes/segment.py segment.head=linear segment.backbone_from=runs/pretrain_contrastive
    torchrun --nproc_per_node 2 recipes/segment.py data.train_shards=[data/voc-shards] model.num_classes=20
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.engine.signals import catch_stop_signals

if __name__ == "__main__":  # first: a stop signal during the imports and start-up below is kept, not fatal
    catch_stop_signals()

from cvdist.cli import run_recipe  # noqa: E402
from cvdist.tasks.segment import main as run_task  # noqa: E402

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
