"""`cvdist demo --quick`: the README's main job as CI runs it — shards, a long-tailed subset,
contrastive pretraining, four long-tail runs (one from the pretrained backbone), distillation and
the comparison, each a real `torchrun` of the recipe with 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.helpers.recipes import REPO, clean_env

pytestmark = pytest.mark.slow

RUNS = ("pretrain-simclr", "lt-ce", "lt-balanced-softmax", "lt-ldam-drw", "lt-pretrained-balanced-softmax",
        "distill-student")


def run_demo(tmp_path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cvdist.cli", "demo", "--quick", "--runs", str(tmp_path / "runs"),
               "--data", str(tmp_path / "data")]
    return subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=1200)


def test_quick_demo_runs_the_whole_chain(tmp_path):
    result = run_demo(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    runs = tmp_path / "runs"
    for name in RUNS:
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["world_size"] == 2 and not summary["stopped_early"], name
    # lineage: the fine-tuned run starts from the pretrained checkpoint, the student from the teacher
    fine_tuned = json.loads((runs / "lt-pretrained-balanced-softmax" / "inputs.json").read_text())
    assert fine_tuned[0]["path"].startswith(str(runs / "pretrain-simclr" / "checkpoints"))
    assert fine_tuned[0]["wandb_run_id"] == json.loads((runs / "pretrain-simclr" / "summary.json").read_text())[
        "wandb_run_id"]
    student = json.loads((runs / "distill-student" / "inputs.json").read_text())
    assert student[0]["path"].startswith(str(runs / "lt-pretrained-balanced-softmax" / "checkpoints"))

    table = (runs / "compare" / "table.md").read_text()
    assert all(f"| {name} |" in table for name in RUNS[1:]), table
    header = table.splitlines()[0]
    assert "loss.name" in header and "transfer.from_path" in header and "eval/balanced_acc final" in header
    assert "kd.alpha" not in header, "one recipe's own options are not differing keys"
    for png in ("eval_top1.png", "eval_balanced_acc.png", "longtail.png"):
        with Image.open(runs / "compare" / png) as image:
            assert image.size[0] > 100
    assert "[cvdist demo] done" in output

    # a second invocation finds every step done and only compares again
    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already done, skipped") == 8
