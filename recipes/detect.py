"""Object detection (Faster R-CNN / Mask R-CNN / RetinaNet / FCOS on a cvdist backbone), on dense
shards or the built-in scenes, with any strategy and launcher; COCO box AP (and mask AP for Mask
R-CNN) at each evaluation.

    python recipes/detect.py train.max_steps=50
    python recipes/detect.py detect.architecture=faster_rcnn detect.backbone_from=runs/supervised
    python recipes/detect.py detect.architecture=mask_rcnn detect.frozen_stages=1 detect.frozen_bn=true
    torchrun --nproc_per_node 2 recipes/detect.py data.train_shards=[data/scenes]
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.engine.signals import catch_stop_signals

if __name__ == "__main__":  # first: a stop signal during the imports and start-up below is kept, not fatal
    catch_stop_signals()

from cvdist.cli import run_recipe  # noqa: E402
from cvdist.tasks.detect import main as run_task  # noqa: E402

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
