"""Stop signals at any time: one that arrives during start-up (imports, session, checkpoint
loading) is kept and stops the run cleanly before its first step; one that arrives on a step
with an evaluation due saves without evaluating first. Real signals (os.kill) sent at fixed
points through tests/helpers/fault_injection.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import REPO, TINY, clean_env, run_recipe
from tests.helpers.runs import FAULT_SCRIPT

TRAINING_RECIPES = ["detect", "distill", "longtail", "pretrain_autoencoder", "pretrain_contrastive", "segment",
                    "supervised"]


def test_the_signal_module_imports_nothing_heavy():
    code = "import sys, cvdist.engine.signals; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "[]\n", result.stderr


@pytest.mark.parametrize("recipe", TRAINING_RECIPES)
def test_training_recipes_catch_stop_signals_before_any_other_cvdist_import(recipe):
    tree = ast.parse((REPO / "recipes" / f"{recipe}.py").read_text())
    first_cvdist_import = next(i for i, node in enumerate(tree.body)
                               if isinstance(node, ast.ImportFrom) and node.module.startswith("cvdist"))
    assert tree.body[first_cvdist_import].module == "cvdist.engine.signals"
    guard = tree.body[first_cvdist_import + 1]
    assert isinstance(guard, ast.If) and ast.unparse(guard.test) == "__name__ == '__main__'"
    assert ast.unparse(guard.body[0]) == "catch_stop_signals()"


def test_every_training_recipe_is_listed():
    recipes = {p.stem for p in (REPO / "recipes").glob("*.py")}
    assert recipes - {"compress"} == set(TRAINING_RECIPES)  # compress has no loop to stop: no handler


def faulted_run(tmp_path, name: str, fault: str, *extra: str, nproc: int = 1):
    args = [*TINY, f"output_dir={tmp_path}", f"name={name}", "train.max_steps=6", "checkpoint.every_steps=2", *extra]
    return run_recipe(args, nproc=nproc, script=FAULT_SCRIPT, env=clean_env(CVDIST_FAULT=fault))


@pytest.mark.slow
def test_signal_during_startup_stops_every_rank_before_the_first_step(tmp_path):
    result = faulted_run(tmp_path, "early", "signal_during_startup:0", nproc=2)
    assert "stop signal (SIGUSR1) during start-up: stopping before step 1, nothing new to save" in result.stdout
    summary = json.loads((tmp_path / "early" / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["step"] == 0 and summary["world_size"] == 2
    assert not (tmp_path / "early" / "checkpoints").exists() or not any((tmp_path / "early" / "checkpoints").iterdir())
    assert not [row for row in read_metrics(tmp_path / "early") if "train/loss" in row]


@pytest.mark.slow
def test_signal_while_loading_the_checkpoint_stops_at_the_resumed_step(tmp_path):
    run_recipe([*TINY, f"output_dir={tmp_path}", "name=resumed", "train.max_steps=2"])
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step-00000002"
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    result = faulted_run(tmp_path, "resumed", "signal_during_resume:0", "checkpoint.resume=auto")
    assert "stopping before step 3, nothing new to save" in result.stdout
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["step"] == 2
    assert [p.name for p in checkpoint.parent.iterdir()] == ["step-00000002"]
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()} == before  # untouched
    run_recipe([*TINY, f"output_dir={tmp_path}", "name=resumed", "train.max_steps=4", "checkpoint.resume=auto"])
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["step"] == 4


@pytest.mark.slow
def test_a_stop_on_an_evaluation_step_saves_without_evaluating(tmp_path):
    # The signal comes after checkpoint 2; step 3 has an evaluation due (every 3 steps).
    result = faulted_run(tmp_path, "evalstop", "signal_after_checkpoint:2", "train.eval_every_steps=3")
    assert "stop signal (SIGUSR1): saved step 3, stopping" in result.stdout
    assert "[cvdist] step 3: eval/" not in result.stdout
    rows = read_metrics(tmp_path / "evalstop")
    assert [row["step"] for row in rows if "train/loss" in row] == [1, 2, 3]
    assert not [row for row in rows if any(key.startswith("eval/") for key in row)]
    assert (tmp_path / "evalstop" / "checkpoints" / "step-00000003" / "meta.json").is_file()


@pytest.mark.slow
def test_a_second_signal_during_startup_ends_the_process_at_once(tmp_path):
    result = run_recipe([*TINY, f"output_dir={tmp_path}", "name=twice"], script=FAULT_SCRIPT, check=False,
                        env=clean_env(CVDIST_FAULT="signal_during_startup:2"))
    assert result.returncode == -15, result.stdout[-2000:] + result.stderr[-2000:]  # SIGTERM's default action
    assert "stop signal" not in result.stdout
    assert not (tmp_path / "twice" / "summary.json").exists()


@pytest.mark.slow
def test_one_sigterm_during_startup_stops_cleanly(tmp_path):
    result = faulted_run(tmp_path, "once", "signal_during_startup:1")
    assert "stop signal (SIGTERM) during start-up: stopping before step 1" in result.stdout
    assert json.loads((tmp_path / "once" / "summary.json").read_text())["stopped_early"] is True
