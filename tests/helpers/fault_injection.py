"""Run a recipe (recipes/supervised.py, or recipes/$CVDIST_FAULT_RECIPE.py) with a fault injected
at a checkpoint, for the resume tests.

    CVDIST_FAULT=hang_after_checkpoint:STEP  -> after checkpoint STEP is complete, write
                                               $CVDIST_FAULT_MARKER and sleep (test SIGKILLs)
    CVDIST_FAULT=hang_inside_checkpoint:STEP -> while writing checkpoint STEP, after the model
                                               and RNG files but before meta.json and the
                                               rename, write the marker and sleep
    CVDIST_FAULT=signal_after_checkpoint:STEP -> after checkpoint STEP, rank 0 sends itself
                                               SIGUSR1 (as SLURM does before a time limit)
    CVDIST_FAULT=signal_during_startup:0     -> rank 0 sends itself SIGUSR1 as the session starts
                                               (before the process group, data and model exist)
    CVDIST_FAULT=signal_during_resume:0      -> rank 0 sends itself SIGUSR1 while it loads the
                                               checkpoint it resumes from
    CVDIST_FAULT=signal_during_startup:2     -> (any number N > 0) rank 0 sends itself SIGTERM
                                               N times as the session starts
    CVDIST_FAULT=kill_mid_step:STEP          -> the last rank SIGKILLs itself in step STEP + 1,
                                               between its forward and its backward (gradient
                                               all-reduce): a rank dying mid-step
    CVDIST_FAULT=hang_mid_step:STEP          -> the same rank SIGSTOPs itself there: a rank that
                                               hangs without dying

The test kills the process group with SIGKILL, which is what a node failure or an OOM kill
does: no handler runs.
"""

import os
import runpy
import signal
import sys
import time
from pathlib import Path

import cvdist.engine.backends as backends_module
import cvdist.engine.checkpoint as checkpoint_module
import cvdist.engine.loop as loop_module
import cvdist.engine.session as session_module

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
elif kind in ("signal_during_startup", "signal_during_resume"):
    module, name = (session_module, "prepare_launch_env") if kind == "signal_during_startup" else (
        loop_module, "load_rank_state")
    original = getattr(module, name)

    def signal_then_call(*args, **kwargs):
        if fault_step == 0:
            signal_rank0()
        for _ in range(fault_step):  # SIGTERM, as SLURM's scancel and torchrun's teardown send
            if os.environ.get("RANK", "0") == "0":
                os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    setattr(module, name, signal_then_call)
elif kind in ("kill_mid_step", "hang_mid_step"):
    backward_calls = 0
    last_rank = os.environ.get("RANK", "0") == str(int(os.environ.get("WORLD_SIZE", "1")) - 1)

    def fault_in_backward(original):
        def backward(self, loss):
            global backward_calls
            backward_calls += 1  # one micro-batch per step in these tests: call N is in step N
            if last_rank and backward_calls == fault_step + 1:
                os.kill(os.getpid(), signal.SIGKILL if kind == "kill_mid_step" else signal.SIGSTOP)
            return original(self, loss)
        return backward

    for backend in (backends_module.AccelerateBackend, backends_module.DeepSpeedBackend):
        backend.backward_and_maybe_step = fault_in_backward(backend.backward_and_maybe_step)
else:
    raise SystemExit(f"unknown CVDIST_FAULT {kind!r}")

recipe = Path(__file__).resolve().parents[2] / "recipes" / f"{os.environ.get('CVDIST_FAULT_RECIPE', 'supervised')}.py"
sys.argv = [str(recipe), *sys.argv[1:]]
runpy.run_path(str(recipe), run_name="__main__")
