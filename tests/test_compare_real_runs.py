"""`cvdist compare` over three real short runs: two configs, two seeds of one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from cvdist.cli import main
from tests.helpers.recipes import run_recipe

pytestmark = pytest.mark.slow


def test_compare_three_real_runs(tiny_args, tmp_path, capsys):
    out = Path(tiny_args[-1].split("=", 1)[1])
    for name, extra in (("lr05-s0", ["optim.lr=0.05", "train.seed=0"]), ("lr05-s1", ["optim.lr=0.05", "train.seed=1"]),
                        ("lr20-s0", ["optim.lr=0.2", "train.seed=0"])):
        run_recipe([*tiny_args, f"name={name}", "train.max_steps=4", *extra])
    report = tmp_path / "report"
    assert main(["compare", str(out), "--out", str(report), "--metrics", "eval/top1,train/loss"]) == 0
    printed = capsys.readouterr().out
    assert "optim.lr" in printed and "train.seed" not in printed.split("\n")[0]
    with open(report / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2  # the two seeds of lr=0.05 are one row
    by_lr = {float(row["optim.lr"]): row for row in rows}
    assert set(by_lr) == {0.05, 0.2}
    assert int(by_lr[0.05]["n"]) == 2 and int(by_lr[0.2]["n"]) == 1
    for name in ("eval_top1.png", "train_loss.png"):
        with Image.open(report / name) as image:
            assert image.size[0] > 100
    assert main(["compare", str(out), "--metrics", "eval/nothing"]) == 2
    assert "eval/nothing" in capsys.readouterr().err
