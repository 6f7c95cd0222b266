"""bench/time_to_accuracy.py --quick end to end: the two cvdist runs and the plain loop, with
``--skip-timm``. timm's ``train.py`` is not in the timm wheel or sdist and cannot be installed on
these machines, so its row is measured by running the benchmark where the script is present
(see bench/README.md), never here. Checks the table's rows and that every number parses; no
timing assertions."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers.recipes import REPO, clean_env

BENCH = REPO / "bench" / "time_to_accuracy.py"
ROW = re.compile(r"^\| (?P<label>[^|]+) \| [^|]+ \| [^|]+ \| (?P<batch>\d+) \| (?P<ips>[\d.]+) \| "
                 r"(?P<time>\d+ s|not reached in [\d.]+ epochs / \d+ s) \| (?P<top1>[\d.]+) % \| "
                 r"(?P<epochs>[\d.]+) \| (?P<wall>\d+) s \|$")


@pytest.mark.slow
def test_quick_bench_prints_a_table_with_every_run(tmp_path):
    args = [sys.executable, str(BENCH), "--quick", "--out", str(tmp_path / "out"), "--workers", "0",
            "--results", str(tmp_path / "results.md"), "--skip-timm"]
    result = subprocess.run(args, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {m["label"].strip(): m for m in map(ROW.match, result.stdout.splitlines()) if m}
    assert set(rows) == {"cvdist (recipe defaults)", "plain PyTorch loop", "cvdist, timm's setting"}
    for row in rows.values():
        assert float(row["ips"]) > 0 and 0.0 <= float(row["top1"]) <= 100.0 and float(row["epochs"]) > 0
    assert "Throughput, same model and batch" not in result.stdout  # that ratio needs timm's row
    assert re.search(r"time to 92 %: cvdist", result.stdout)
    assert not (tmp_path / "results.md").exists()  # --quick never overwrites the results file
