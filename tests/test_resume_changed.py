"""Resuming with a changed model or optimiser is a one-line error naming what changed and the
fix, for checkpoints that record what they hold (meta.json) and for older ones that do not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvdist.config import ConfigError
from cvdist.engine.resume_check import check_same_training

from tests.helpers.recipes import REPO, clean_env

# argv: run directory parent, model variant, then config overrides.
SCRIPT = r'''
import sys
import torch
from torch.nn import functional as F
from cvdist.cli import run_recipe
from cvdist.config_loading import load_config
from cvdist.engine import TrainTask, fit, start_session
from tests.helpers.tensor_batches import TensorBatches

out_dir, variant, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]

def main(argv):
    config = load_config(overrides=[f"output_dir={out_dir}", "name=run", "tracking.wandb_mode=disabled",
                                    "data.global_batch_size=4", "train.max_steps=2", *overrides])
    session = start_session(config)
    images = torch.randint(0, 255, (16, 1, 4, 4), dtype=torch.uint8)
    batches = TensorBatches(images=images, labels=torch.arange(16) % 2, rank=0, world_size=1, batch_size=4, seed=0,
                            horizontal_flip=False, mean=0.5, std=0.5)
    width = 3 if variant == "wider" else 2
    layers = [torch.nn.Flatten(), torch.nn.Linear(16, width)] + ([torch.nn.Linear(width, 2)] if variant == "deeper" else [])
    model = torch.nn.Sequential(*layers)
    groups = None
    if variant == "two_groups":
        groups = [{"params": [model[1].weight]}, {"params": [model[1].bias], "lr": 0.01}]
    loss = lambda model, batch, progress: (F.cross_entropy(model(batch["image"].float())[:, :2], batch["label"]), {})
    fit(session, TrainTask(model=model, compute_loss=loss, train_batches=batches, parameter_groups=groups))
    session.close()
    print("FINISHED")

sys.exit(run_recipe(main))
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step SGD run with a checkpoint; each test works on a copy."""
    root = tmp_path_factory.mktemp("resume_changed")
    script = root / "script.py"
    script.write_text(SCRIPT)
    result = _run(script, root / "runs", "base", [])
    assert result.returncode == 0, result.stderr[-3000:]
    return script, root / "runs"


def _run(script, out_dir, variant, overrides):
    return subprocess.run([sys.executable, str(script), str(out_dir), variant, *overrides], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=300)


def _resume(trained, tmp_path, variant, overrides=(), *, strip_meta=False):
    script, runs = trained
    shutil.copytree(runs, tmp_path / "runs")
    meta_file = tmp_path / "runs" / "run" / "checkpoints" / "step-00000002" / "meta.json"
    if strip_meta:  # a checkpoint written before meta.json recorded shapes and optimiser
        meta = json.loads(meta_file.read_text())
        for key in ("model_name", "optimizer_name", "param_group_sizes", "parameter_shapes", "nonfinite_skipped"):
            meta.pop(key)
        meta_file.write_text(json.dumps(meta))
    return _run(script, tmp_path / "runs", variant, ["checkpoint.resume=auto", "train.max_steps=3", *overrides])


def _error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("cvdist: error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "start a new run (another name=...;" in lines[0]
    return lines[0]


@pytest.mark.parametrize("variant,overrides,expected", [
    ("base", ["optim.name=adamw"], "optim.name changed ('sgd' in the checkpoint, 'adamw' now)"),
    ("base", ["model.name=resnet18"], "model.name changed ('tiny_cnn' in the checkpoint, 'resnet18' now)"),
    ("wider", [], "parameter shapes changed: 1.weight [2, 16] -> [3, 16], 1.bias [2] -> [3]"),
    ("deeper", [], "only in the checkpoint: none; only in this model: 2.bias, 2.weight"),
    ("two_groups", [], "parameter groups changed (sizes [2] in the checkpoint, [1, 1] now)"),
])
def test_changed_model_or_optimiser_is_named(trained, tmp_path, variant, overrides, expected):
    assert expected in _error_line(_resume(trained, tmp_path, variant, overrides))


@pytest.mark.parametrize("variant,overrides,expected", [
    ("base", ["optim.name=adamw"], "(KeyError: 'step')"),
    ("wider", [], "(RuntimeError: Error(s) in loading state_dict for Sequential:"),
])
def test_old_checkpoints_without_the_record_still_give_one_line(trained, tmp_path, variant, overrides, expected):
    line = _error_line(_resume(trained, tmp_path, variant, overrides, strip_meta=True))
    assert "its model / optimiser state does not fit this run " + expected in line


def test_old_checkpoints_without_the_record_still_resume(trained, tmp_path):
    result = _resume(trained, tmp_path, "base", strip_meta=True)
    assert result.returncode == 0 and "FINISHED" in result.stdout, result.stderr[-3000:]


_shapes = st.dictionaries(st.sampled_from(["a.weight", "a.bias", "b.weight", "bn.running_mean"]),
                          st.lists(st.integers(1, 4), min_size=1, max_size=3), min_size=1)
_facts = st.fixed_dictionaries({"model_name": st.sampled_from(["tiny_cnn", "resnet18"]),
                                "optimizer_name": st.sampled_from(["sgd", "adamw"]),
                                "param_group_sizes": st.lists(st.integers(1, 3), min_size=1, max_size=2),
                                "parameter_shapes": _shapes})


@given(saved=_facts, current=_facts)
def test_the_check_refuses_exactly_the_changed_runs(saved, current, tmp_path_factory):
    """Any difference is an error naming a changed field; identical facts always pass."""
    if saved == current:
        check_same_training(saved, current, path=tmp_path_factory.getbasetemp())
        return
    with pytest.raises(ConfigError) as error:
        check_same_training(saved, current, path=tmp_path_factory.getbasetemp())
    message = str(error.value)
    assert "\n" not in message and ("changed" in message)
