"""Run a recipe (recipes/supervised.py, or recipes/$CVDIST_FAULT_RECIPE.py) with a fault injected
at a checkpoint, for the resume tests.

    CVDIST_FAULT=hang_after_checkpoint:STEP  -> after checkpoint STEP is complete, write
                                               $CVDIST_FAULT_MARKER and sleep (test SIGKILLs)
    CVDIST_FAULT=hang_inside_checkpoint:STEP -> while writing checkpoint STEP, after the model
                                               and RNG files but before meta.json and the
                                               rename, write the marker and sleep
    CVDIST_FAULT=signal_after_checkpoint:STEP -> after checkpoint STEP, rank 0 sends itself
                                               SIGUSR1 (as SLURM does before a time limit)

The test kills the process group with SIGKILL, which is what a node failure or an OOM kill
does: no handler runs.
"""

import os
import runpy
import signal
import sys
import time
from pathlib import Path

import cvdist.engine.checkpoint as checkpoint_module
import cvdist.engine.loop as loop_module

kind, _, step_text = os.environ["CVDIST_FAULT"].partition(":")
fault_step = int(step_text)
marker = Path(os.environ.get("CVDIST_FAULT_MARKER", "/dev/null"))


def hang() -> None:
    marker.write_text("reached")
    while True:
        time.sleep(1)


def signal_rank0() -> None:
    if os.environ.get("RANK", "0") == "0":
        os.kill(os.getpid(), signal.SIGUSR1)


if kind in ("hang_after_checkpoint", "signal_after_checkpoint"):
    original_save = loop_module.save_checkpoint
    action = hang if kind == "hang_after_checkpoint" else signal_rank0

    def save_then_act(**kwargs):
        result = original_save(**kwargs)
        if kwargs["meta"].step == fault_step:
            action()
        return result

    loop_module.save_checkpoint = save_then_act
elif kind == "hang_inside_checkpoint":
    original_write = checkpoint_module.atomic_write_json

    def write_then_hang(path, value):
        if Path(path).name == "meta.json" and value["step"] == fault_step:
            # Leave a half-written meta.json too, as a kill mid-write would.
            Path(path).write_text('{"step": ')
            hang()
        return original_write(path, value)

    checkpoint_module.atomic_write_json = write_then_hang
else:
    raise SystemExit(f"unknown CVDIST_FAULT {kind!r}")

recipe = Path(__file__).resolve().parents[2] / "recipes" / f"{os.environ.get('CVDIST_FAULT_RECIPE', 'supervised')}.py"
sys.argv = [str(recipe), *sys.argv[1:]]
runpy.run_path(str(recipe), run_name="__main__")
