"""Runs that are killed, resumed and compared: fault injection at a checkpoint, SIGKILL of a whole
process tree, and weight comparison of finished runs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import torch

from cvdist.engine.export import consolidated_state_dict
from tests.helpers.recipes import REPO, clean_env, recipe_command

FAULT_SCRIPT = REPO / "tests" / "helpers" / "fault_injection.py"


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final weights of a run, whatever its strategy."""
    return consolidated_state_dict(run_dir)


def assert_same(a: dict, b: dict, *, atol: float) -> None:
    """Two state dicts hold the same keys and values (bitwise for ``atol=0``)."""
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0:
            assert torch.equal(a[name], b[name]), f"{name} differs bitwise"
        else:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=f"{name} differs")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun puts workers in their own group)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=60)


def run_killed_after_checkpoint(args: list[str], *, nproc: int, step: int, marker: Path, kind: str,
                                **extra_env: str) -> None:
    """Start the recipe with a fault at checkpoint ``step``, wait for it, SIGKILL everything."""
    env = clean_env(CVDIST_FAULT=f"{kind}:{step}", CVDIST_FAULT_MARKER=str(marker), **extra_env)
    process = subprocess.Popen(recipe_command(nproc=nproc, script=FAULT_SCRIPT) + args, cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended before the fault:\n{process.stdout.read()[-5000:]}")
        if time.time() > deadline:
            kill_tree(process.pid)
            raise AssertionError("fault point not reached in time")
        time.sleep(0.2)
    kill_tree(process.pid)  # every rank and the launcher; no handler runs
    process.wait(timeout=60)
    process.stdout.close()

