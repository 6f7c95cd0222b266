"""Supervised image classification, on WebDataset shards or the built-in data, with any
strategy and launcher.

    python recipes/supervised.py train.max_steps=50
    python recipes/supervised.py data.train_shards=[data/fashion-mnist] loss.label_smoothing=0
    torchrun --nproc_per_node 2 recipes/supervised.py data.train_shards=[data/fashion-mnist] dist.strategy=zero2
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.engine.signals import catch_stop_signals

if __name__ == "__main__":  # first: a stop signal during the imports and start-up below is kept, not fatal
    catch_stop_signals()

from cvdist.cli import run_recipe  # noqa: E402
from cvdist.tasks.supervised import main as run_task  # noqa: E402

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
