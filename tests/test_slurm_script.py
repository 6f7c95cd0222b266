"""slurm/_common.sh without a cluster: every recipe has a script; overrides that break requeues
and non-digit numbers are refused before anything runs; the requeue decision (progress, cap),
called function by function from slurm/_lib.sh on run directories made here. The same script on
a real SLURM cluster: tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.recipes import REPO, clean_env

LIB = REPO / "slurm" / "_lib.sh"
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.py"))
SOURCE_LINE = 'source "${CVDIST_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"'


def test_every_recipe_has_a_slurm_script_that_sources_the_common_body():
    assert "compress" in RECIPES and "supervised" in RECIPES
    scripts = {p.stem for p in (REPO / "slurm").glob("*.sh") if not p.name.startswith("_")}
    assert scripts == set(RECIPES), "one slurm/<recipe>.sh per recipes/<recipe>.py and no other"
    for recipe in RECIPES:
        text = (REPO / "slurm" / f"{recipe}.sh").read_text()
        lines = text.splitlines()
        assert lines[0] == "#!/bin/bash" and f"RECIPE={recipe}" in lines, recipe
        assert lines[-1] == SOURCE_LINE and lines.index(f"RECIPE={recipe}") < len(lines) - 1, recipe
        if "RECIPE_LAUNCH=one_process" in lines:  # nothing to resume: no stop signal, no requeue
            assert "#SBATCH --no-requeue" in lines and "--signal" not in text, recipe
        else:
            assert "#SBATCH --requeue" in lines and "#SBATCH --signal=B:USR1@300" in lines, recipe


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    """slurm/supervised.sh as the batch shell would run it, with a job id but no cluster: only
    what happens before the first SLURM command can be checked this way."""
    environ = clean_env(**{"SLURM_JOB_ID": "7", "CVDIST_ROOT": str(REPO), "CVDIST_VENV": "none", **env})
    return subprocess.run(["bash", str(REPO / "slurm" / "supervised.sh"), *args], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("override", ["checkpoint.resume=none", "checkpoint.resume=runs/x/checkpoints/step-00000100",
                                      "checkpoint={resume: none}", "name=other", "output_dir=/tmp/x"])
def test_overrides_that_break_requeues_are_refused(override):
    result = run_script("optim.lr=0.1", override)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    key = override.split("=")[0].split(".")[0]
    assert result.stderr.startswith(f"cvdist-slurm: error: '{override}'") and len(result.stderr.splitlines()) == 1
    assert ("checkpoint.resume=auto" in result.stderr) if key == "checkpoint" else ("CVDIST_" in result.stderr)


NUMBERS = ["SLURM_JOB_ID", "SLURM_NNODES", "SLURM_CPUS_PER_TASK", "SLURM_RESTART_COUNT", "CVDIST_PROCS_PER_NODE",
           "CVDIST_MASTER_PORT", "CVDIST_MAX_RESTARTS", "CVDIST_MAX_REQUEUES"]


@pytest.mark.parametrize("name", NUMBERS)
def test_a_non_digit_number_is_refused_and_never_evaluated(name, tmp_path):
    marker = tmp_path / "ran"
    # In bash arithmetic this array subscript runs the command substitution.
    value = f"x[$(touch {marker})]"
    result = run_script(**{name: value})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"cvdist-slurm: error: {name}='{value}' is not a whole number; set it to digits only, " \
                            f"e.g. {name}=1\n"
    assert not marker.exists(), "the value was evaluated"


@pytest.mark.parametrize("env,message", [
    ({"CVDIST_REQUEUE": "yes"}, "CVDIST_REQUEUE='yes' must be 1 (requeue after a stop on SIGUSR1) or 0"),
    ({"CVDIST_PROCS_PER_NODE": "0"}, "CVDIST_PROCS_PER_NODE=0: at least 1 process per node"),
    ({"CVDIST_MASTER_PORT": "70000"}, "CVDIST_MASTER_PORT=70000 is not a TCP port (1-65535)"),
])
def test_out_of_range_settings_are_refused(env, message):
    result = run_script(**env)
    assert result.returncode == 2 and result.stderr == f"cvdist-slurm: error: {message}\n"


def bash_lib(command: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``command`` in bash after sourcing slurm/_lib.sh (functions only) under the same
    ``set -euo pipefail`` as _common.sh."""
    return subprocess.run(["bash", "-c", f'set -euo pipefail; source "{LIB}"; {command}'],
                          env=clean_env(CVDIST_PYTHON=sys.executable, **env), capture_output=True, text=True,
                          timeout=60)


_ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@settings(max_examples=60, deadline=None)
@given(value=_ENV_TEXT)
def test_cvdist_number_accepts_exactly_digits(value):
    result = bash_lib("cvdist_number CVDIST_MAX_REQUEUES 20", CVDIST_MAX_REQUEUES=value)
    if value == "":
        assert (result.returncode, result.stdout) == (0, "20\n")  # unset or empty: the default
    elif value.isascii() and value.isdigit() and len(value) <= 9:
        assert (result.returncode, result.stdout) == (0, f"{int(value)}\n")  # leading zeros are decimal
    else:
        assert result.returncode == 2 and result.stdout == "" and "is not a whole number" in result.stderr


def make_checkpoint(run_dir: Path, step: int, *, complete: bool = True) -> None:
    directory = run_dir / "checkpoints" / f"step-{step:08d}"
    directory.mkdir(parents=True)
    if complete:
        (directory / "meta.json").write_text(json.dumps({"step": step}))


def test_checkpoint_step_is_the_newest_complete_checkpoint(tmp_path):
    assert bash_lib(f'cvdist_checkpoint_step "{tmp_path}"').stdout == "-1\n"
    make_checkpoint(tmp_path, 8)
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200, complete=False)  # an unfinished save is not progress
    (tmp_path / "checkpoints" / ".tmp-step-00000300").mkdir()
    assert bash_lib(f'cvdist_checkpoint_step "{tmp_path}"').stdout == "100\n"


def should_requeue(run_dir: Path, *, started_at: int, step_before: int, requeues: int, cap: int):
    return bash_lib(f'cvdist_should_requeue "{run_dir}" {started_at} {step_before} {requeues} {cap}')


def stopped_run(tmp_path: Path, *, steps: list[int], stopped_early: bool = True) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    for step in steps:
        make_checkpoint(run_dir, step)
    (run_dir / "summary.json").write_text(json.dumps({"step": max(steps, default=0), "stopped_early": stopped_early}))
    return run_dir


def test_requeue_when_the_attempt_advanced_and_the_cap_is_not_reached(tmp_path):
    run_dir = stopped_run(tmp_path, steps=[100, 150])
    result = should_requeue(run_dir, started_at=0, step_before=100, requeues=3, cap=4)
    assert result.returncode == 0 and "advanced from step 100 to 150" in result.stdout
    assert should_requeue(run_dir, started_at=0, step_before=-1, requeues=0, cap=20).returncode == 0


@pytest.mark.parametrize("step_before", [150, 200])
def test_no_requeue_without_progress(tmp_path, step_before):
    run_dir = stopped_run(tmp_path, steps=[100, 150])
    result = should_requeue(run_dir, started_at=0, step_before=step_before, requeues=0, cap=20)
    assert result.returncode == 1
    assert "not requeueing: no progress in this attempt (newest checkpoint: step 150" in result.stdout
    assert "CVDIST_RUN_NAME=run" in result.stdout


def test_no_requeue_without_any_checkpoint(tmp_path):
    run_dir = stopped_run(tmp_path, steps=[])  # a stop during start-up: stopped early, nothing saved
    result = should_requeue(run_dir, started_at=0, step_before=-1, requeues=0, cap=20)
    assert result.returncode == 1 and "no progress" in result.stdout


@pytest.mark.parametrize("requeues,cap", [(2, 2), (5, 2), (0, 0)])
def test_no_requeue_at_the_cap(tmp_path, requeues, cap):
    run_dir = stopped_run(tmp_path, steps=[100, 150])
    result = should_requeue(run_dir, started_at=0, step_before=100, requeues=requeues, cap=cap)
    assert result.returncode == 1
    assert f"not requeueing: requeued {requeues} time(s), CVDIST_MAX_REQUEUES={cap}" in result.stdout


def test_no_requeue_when_the_run_finished_or_the_summary_is_stale(tmp_path):
    finished = stopped_run(tmp_path, steps=[100, 150], stopped_early=False)
    assert should_requeue(finished, started_at=0, step_before=100, requeues=0, cap=20).returncode == 1
    stale = stopped_run(tmp_path / "stale", steps=[100, 150])
    old = time.time() - 3600
    os.utime(stale / "summary.json", (old, old))  # written by an earlier attempt, not this one
    result = should_requeue(stale, started_at=int(old) + 60, step_before=100, requeues=0, cap=20)
    assert result.returncode == 1 and "did not stop early" in result.stdout
