"""Knowledge distillation: a trained teacher teaches a student (logit KD, feature KD or both),
on WebDataset shards or the built-in data, under any strategy (one process, DDP, ZeRO-1/2/3).

    python recipes/distill.py teacher.path=runs/teacher                   # small_cnn teacher -> tiny_cnn student
    torchrun --nproc_per_node 2 recipes/distill.py teacher.path=runs/teacher dist.strategy=zero2
    python recipes/distill.py teacher.path=runs/teacher kd.feature_weight=1 kd.teacher_hint=4 kd.student_hint=1
    python recipes/distill.py teacher.path=runs/teacher name=student kd.alpha=0  # the student alone, same budget
    python recipes/distill.py teacher.path=runs/lt-teacher data.imbalance_factor=100 \
        loss.name=balanced_softmax kd.logit_adjust_tau=1                     # long-tail aware KD

The teacher (``teacher.path``: a cvdist run / checkpoint directory, ZeRO included, or a weights
file) is **replicated**: every process holds a full, frozen fp32 copy (eval mode, no gradients),
kept outside the model handed to the engine, so the optimiser never sees it and ZeRO shards only
the student (and the hint adapter). This costs one teacher of memory per process and needs no
communication for the teacher's forward pass; the test checks that its weights are bit-identical
after training (``teacher/sha256_*`` in ``summary.json``).

Writes, besides the usual run record, ``report.md`` and ``summary.json["report"]``: test top-1
(and balanced / many / medium / few accuracy when the training data is long-tailed), parameters,
size on disk and CPU latency of the teacher and the trained student (also the W&B table
``report/models``). ``cvdist compress --model teacher=... --model student_kd=runs/<this run>``
adds pruned and quantized rows to the same table.
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.engine.signals import catch_stop_signals

if __name__ == "__main__":  # first: a stop signal during the imports and start-up below is kept, not fatal
    catch_stop_signals()

from cvdist.cli import run_recipe  # noqa: E402
from cvdist.tasks.distill import main as run_task  # noqa: E402

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
