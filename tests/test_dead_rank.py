"""A rank that dies (SIGKILL) or hangs (SIGSTOP) mid-step under torchrun: the job ends, non-zero,
with one line naming the lost rank, within a bound set by ``dist.timeout_s`` (small here; the
subprocess timeout is only a hang guard), and the last checkpoint stays complete and loadable."""

from __future__ import annotations

import pytest
import torch

from cvdist.engine.checkpoint import complete_checkpoints, read_meta
from cvdist.engine.lost_ranks import is_collective_failure
from cvdist.models import build_model
from tests.helpers.recipes import TINY, clean_env, run_recipe
from tests.helpers.runs import FAULT_SCRIPT, weights

pytestmark = pytest.mark.slow

TIMEOUT_S = 5


def run_with_lost_rank(tmp_path, *, strategy: str, fault: str):
    args = [*TINY, f"output_dir={tmp_path}", "name=lost", "train.max_steps=200", "checkpoint.every_steps=3",
            f"dist.strategy={strategy}", f"dist.timeout_s={TIMEOUT_S}"]
    result = run_recipe(args, nproc=2, script=FAULT_SCRIPT, env=clean_env(CVDIST_FAULT=f"{fault}:3"), check=False,
                        timeout=400)
    return result, result.stdout + result.stderr, tmp_path / "lost"


def assert_checkpoint_intact(run_dir, *, step: int) -> None:
    checkpoints = complete_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in checkpoints] == [f"step-{step:08d}"], "the last checkpoint is the one before the fault"
    assert read_meta(checkpoints[-1]).step == step and (checkpoints[-1] / "rank-1.pt").is_file()
    model = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    model.load_state_dict(weights(run_dir), strict=True)  # complete: every tensor of the model
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_a_rank_killed_mid_step_is_named_and_the_checkpoint_is_intact(tmp_path, strategy):
    result, output, run_dir = run_with_lost_rank(tmp_path, strategy=strategy, fault="kill_mid_step")
    assert result.returncode != 0, output[-3000:]
    expected = (f"cvdist: error: rank 0 lost rank 1 of 2 (no answer within {TIMEOUT_S} s: the process died or "
                f"hangs); the newest complete checkpoint is {run_dir}/checkpoints/step-00000003; continue with "
                f"checkpoint.resume=auto (dist.timeout_s={TIMEOUT_S}; ")
    assert expected in output, output[-4000:]
    assert "local_rank: 1" in output and "exitcode: -9" in output  # torchrun's own report of the dead worker
    assert not (run_dir / "summary.json").exists()
    assert_checkpoint_intact(run_dir, step=3)


def test_a_hung_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    # SIGSTOP: the process lives on, so torchrun does not notice; only dist.timeout_s ends the wait.
    result, output, run_dir = run_with_lost_rank(tmp_path, strategy="ddp", fault="hang_mid_step")
    assert result.returncode != 0, output[-3000:]
    assert f"cvdist: error: rank 0 lost rank 1 of 2 (no answer within {TIMEOUT_S} s" in output, output[-4000:]
    assert f"Timed out waiting {TIMEOUT_S * 1000}ms" in output  # gloo's own words, after dist.timeout_s
    assert_checkpoint_intact(run_dir, step=3)


def test_only_transport_errors_count_as_a_lost_rank():
    assert is_collective_failure(RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                                              "[127.0.0.1]:17832: Connection reset by peer"))
    assert is_collective_failure(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    assert not is_collective_failure(RuntimeError("DataLoader worker (pid 12) exited unexpectedly"))
    assert not is_collective_failure(ValueError("gloo"))
