"""Checkpoints never look complete halfway while deleted; resuming from an explicit older
checkpoint moves the newer ones aside so that a later ``resume=auto`` cannot pick a stale one;
rank 0 alone picks the checkpoint to resume and the other ranks follow it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvdist.engine import checkpoint as checkpoint_module
from cvdist.engine.checkpoint import (SUPERSEDED, complete_checkpoints, discard_checkpoint, latest_checkpoint,
                                      remove_partial_checkpoints, set_aside_newer)
from tests.helpers.recipes import REPO, TINY, clean_env, recipe_command, run_recipe
from tests.helpers.runs import assert_same, weights


def fake_checkpoint(root, step: int):
    directory = root / f"step-{step:08d}"
    directory.mkdir(parents=True)
    (directory / "meta.json").write_text(json.dumps({
        "step": step, "epoch": 0, "batch_in_epoch": step, "strategy": "none", "world_size": 1, "wandb_run_id": None}))
    return directory


def test_a_checkpoint_killed_mid_delete_is_not_complete(tmp_path, monkeypatch):
    keep, doomed = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt("killed while deleting")

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        discard_checkpoint(doomed)
    monkeypatch.undo()
    assert complete_checkpoints(tmp_path) == [keep]  # the half-deleted one is invisible at once
    assert [p.name for p in remove_partial_checkpoints(tmp_path)] == [f".del-step-00000004-{os.getpid()}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]


def test_newer_checkpoints_are_set_aside_and_ignored(tmp_path):
    old, _, _ = (fake_checkpoint(tmp_path, step) for step in (2, 4, 6))
    fake_checkpoint(tmp_path / SUPERSEDED, 4)  # set aside by an earlier resume: kept as well
    moved = set_aside_newer(tmp_path, resumed=old, step=2)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in moved) == ["superseded/step-00000004-1",
                                                                         "superseded/step-00000006"]
    assert latest_checkpoint(tmp_path) == old
    other_run = fake_checkpoint(tmp_path / "elsewhere", 2)  # same step, another run's checkpoint
    assert set_aside_newer(tmp_path, resumed=other_run, step=2) == [tmp_path / SUPERSEDED / "step-00000002"]


@settings(max_examples=60, deadline=None)
@given(steps=st.sets(st.integers(1, 50), min_size=1, max_size=8), data=st.data())
def test_after_setting_aside_auto_picks_the_resumed_one_and_nothing_is_lost(tmp_path_factory, steps, data):
    root = tmp_path_factory.mktemp("aside")
    resumed_step = data.draw(st.sampled_from(sorted(steps)))
    for step in steps:
        fake_checkpoint(root, step)
    resumed = root / f"step-{resumed_step:08d}"
    moved = set_aside_newer(root, resumed=resumed, step=resumed_step)
    assert latest_checkpoint(root) == resumed
    assert len(moved) == sum(step > resumed_step for step in steps)
    assert len(complete_checkpoints(root)) + len(list((root / SUPERSEDED).glob("step-*"))) == len(steps)


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_then_auto_continues_that_line(tmp_path):
    common = [*TINY, f"output_dir={tmp_path}", "name=run", "checkpoint.every_steps=2", "checkpoint.keep_last=5",
              "data.shuffle_buffer=0", "schedule.name=constant"]  # the LR does not depend on train.max_steps
    run_recipe([*common, "train.max_steps=6"])
    run = tmp_path / "run"
    straight = weights(run / "checkpoints" / "step-00000006")
    older = run / "checkpoints" / "step-00000002"
    resumed = run_recipe([*common, "train.max_steps=4", f"checkpoint.resume={older}"])
    assert f"moved the newer checkpoint aside to {run / 'checkpoints' / SUPERSEDED / 'step-00000006'}" in resumed.stdout
    assert sorted(p.name for p in (run / "checkpoints" / SUPERSEDED).iterdir()) == ["step-00000004", "step-00000006"]
    assert latest_checkpoint(run / "checkpoints").name == "step-00000004"  # the resumed line's own step 4
    run_recipe([*common, "train.max_steps=6", "checkpoint.resume=auto"])
    # resume=auto took the new step 4, not the stale step 6: the result equals the straight run
    assert_same(weights(run / "checkpoints" / "step-00000006"), straight, atol=0)


# Rank 1 must not look for checkpoints itself: its listing is made to disagree (as on a network FS).
PATCHED = r'''
import os, runpy, sys
import cvdist.engine.session as session_module
if os.environ["RANK"] != "0":
    def wrong_listing(root):
        raise AssertionError("rank 1 listed the checkpoints")
    session_module.latest_checkpoint = wrong_listing
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.mark.slow
def test_rank0_alone_picks_the_checkpoint(tmp_path):
    common = [*TINY, f"output_dir={tmp_path}", "name=run", "checkpoint.every_steps=2", "dist.strategy=ddp"]
    run_recipe([*common, "train.max_steps=2"], nproc=2)
    script = tmp_path / "patched.py"
    script.write_text(PATCHED)
    command = recipe_command(nproc=2, script=script) + [str(REPO / "recipes" / "supervised.py"), *common,
                                                        "train.max_steps=4", "checkpoint.resume=auto"]
    result = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir()
