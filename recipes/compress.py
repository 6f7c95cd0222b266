"""Compression: prune and quantize a trained model and report what each step costs in accuracy
and gains in size and CPU latency, beside any other trained models (teacher, student, ...).

    python recipes/compress.py models.student_kd=runs/distill                       # global L1 50 %, int8
    python recipes/compress.py models.teacher=runs/teacher models.student=runs/student \
        models.student_kd=runs/distill prune.method=ln_structured prune.sparsity=0.3 \
        prune.steps=3 prune.finetune_steps=50 quantize.qat_steps=100
    cvdist compress --model teacher=runs/teacher --model student_kd=runs/distill prune.sparsity=0.7 \
        "compress=[teacher,student_kd]"                                           # compress both

Every model and variant is evaluated on the same test split (``data``: the built-in data or
shards) in one CPU process. INT8 uses PyTorch's eager-mode ``torch.ao.quantization`` with the
x86 engine (see ``cvdist/compress/quantization.py`` for why not FX / PT2E). Writes
``runs/<name>/report.md``, ``summary.json`` (the table, per-layer sparsity) and ``models/*.pt``,
and logs the table to W&B (``report/models``).
"""

import sys
from functools import partial
from pathlib import Path

from cvdist.cli import run_recipe
from cvdist.tasks.compress import main as run_task

main = partial(run_task, default_yaml=Path(__file__).with_suffix(".yaml"))

if __name__ == "__main__":
    sys.exit(run_recipe(main))
