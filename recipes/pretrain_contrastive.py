"""Contrastive self-supervised pretraining (SimCLR, MoCo v3 or triplet) with negatives from all
ranks, on WebDataset shards or the built-in data, with any strategy and launcher. Each
evaluation logs ``eval/knn_top1`` (weighted cosine kNN on frozen trunk features).

    python recipes/pretrain_contrastive.py                                   # SimCLR, small_cnn, Fashion-MNIST
    torchrun --nproc_per_node 2 recipes/pretrain_contrastive.py ssl.method=moco_v3 dist.strategy=zero2
    python recipes/longtail.py transfer.from_path=runs/pretrain_contrastive model.name=small_cnn   # fine-tune
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.engine.signals import catch_stop_signals

if __name__ == "__main__":  # first: a stop signal during the imports and start-up below is kept, not fatal
    catch_stop_signals()

from cvdist.cli import run_recipe  # noqa: E402
from cvdist.tasks.contrastive import main as run_task  # noqa: E402

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
