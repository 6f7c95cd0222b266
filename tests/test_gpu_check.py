"""bench/gpu_check.py runs here as a CPU dry run (the GPU table itself needs a CUDA machine)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.recipes import REPO, clean_env

pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_probes_the_group_and_reports_each_run():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--quick", "--strategies", "fsdp",
                           "--precisions", "fp32", "--no-compile", "--no-write"], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"backend": "gloo", "world_size": 2, "sum_correct": true' in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| fsdp | fp32 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[5].startswith("ok") and float(cells[2]) > 0 and float(cells[3]) > 0
    first, last = (float(x) for x in cells[4].split(" -> "))
    assert first > 0 and last > 0
