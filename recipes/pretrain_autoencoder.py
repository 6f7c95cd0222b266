"""Autoencoder and multi-task pretraining of a backbone trunk, on WebDataset shards or the
built-in data, with any strategy and launcher. Each evaluation logs the reconstruction loss and the
kNN top-1 of the trunk's features, and writes ``recon_step<N>.png`` (inputs on top,
reconstructions below) to the run directory and W&B.

    python recipes/pretrain_autoencoder.py                                   # conv AE, small_cnn, Fashion-MNIST
    torchrun --nproc_per_node 2 recipes/pretrain_autoencoder.py --config recipes/pretrain_mae.yaml
    python recipes/pretrain_autoencoder.py --config recipes/pretrain_multitask.yaml   # reconstruction + rotation
    python recipes/longtail.py transfer.from_path=runs/pretrain_autoencoder model.name=small_cnn   # fine-tune
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.engine.signals import catch_stop_signals

if __name__ == "__main__":  # first: a stop signal during the imports and start-up below is kept, not fatal
    catch_stop_signals()

from cvdist.cli import run_recipe  # noqa: E402
from cvdist.tasks.autoencoder import main as run_task  # noqa: E402

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
