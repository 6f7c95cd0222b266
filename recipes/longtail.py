"""Long-tail classification: fine-tune or train from scratch with a long-tail loss, re-sampling,
decoupled classifier re-training (cRT) and tau-normalisation; long-tail metrics at every eval.

    python recipes/longtail.py                                         # Fashion-MNIST-LT (IF 100), balanced softmax
    accelerate launch --config_file launch/accelerate/ddp.yaml --num_processes 2 recipes/longtail.py loss.name=ldam \
        loss.drw_epoch=20 "data.train_shards=[data/fmnist-lt100]"
    python recipes/longtail.py name=crt longtail.stage=crt transfer.from_path=runs/longtail \
        data.sampling=class_balanced loss.name=ce longtail.tau_norm=true   # stage 2 on the stage-1 run
    python recipes/longtail.py transfer.from_path=resnet18.pth model.name=resnet18 model.small_stem=false \
        model.in_channels=3 transfer.trunk_lr_scale=0.1 ...                 # fine-tune torchvision weights
    python recipes/longtail.py multitask.labels.coarse=0.5 "data.multi_scale=[0.75,1.0,1.25]"
        # an auxiliary coarse-label head on the trunk (train/loss_coarse, eval/coarse_top1), multi-scale batches

Writes, besides the usual run record: ``longtail_eval.jsonl`` (per-class accuracy and confusion
matrix of every evaluation) and ``per_class_accuracy.png`` (classes by training frequency), plus
``per_class_accuracy_taunorm.png`` and ``eval/*_taunorm`` metrics with ``longtail.tau_norm``.
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.engine.signals import catch_stop_signals

if __name__ == "__main__":  # first: a stop signal during the imports and start-up below is kept, not fatal
    catch_stop_signals()

from cvdist.cli import run_recipe  # noqa: E402
from cvdist.tasks.longtail import main as run_task  # noqa: E402

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
