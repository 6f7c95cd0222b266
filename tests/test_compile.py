"""``dist.compile=true``: the compiled run's losses equal eager's within float tolerance, its
checkpoint keys are the plain model's, the compilation time is logged, and ZeRO is refused."""

from __future__ import annotations

import pytest
import torch

from cvdist.config import ConfigError, RunConfig, validate
from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import TINY, run_recipe
from tests.helpers.runs import weights


def test_compile_under_zero_is_refused_with_the_fix():
    config = RunConfig()
    config.dist.compile, config.dist.strategy = True, "zero2"
    with pytest.raises(ConfigError, match="dist.compile=true works with dist.strategy none / ddp.*dist.compile=false"):
        validate(config, world_size=1)


@pytest.mark.slow
def test_a_compiled_run_matches_the_eager_run(tmp_path):
    args = [*TINY, f"output_dir={tmp_path}", "train.max_steps=4", "dist.channels_last=false"]
    run_recipe([*args, "name=eager"])
    compiled = run_recipe([*args, "name=compiled", "dist.compile=true"], timeout=600)
    assert "torch.compile (mode default): first forward, compilation included, took" in compiled.stdout
    losses = {name: [row["train/loss"] for row in read_metrics(tmp_path / name) if "train/loss" in row]
              for name in ("eager", "compiled")}
    assert len(losses["eager"]) == 4
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)
    eager, compiled_weights = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert eager.keys() == compiled_weights.keys()  # no "_orig_mod." prefix in the checkpoint
    for name in eager:
        torch.testing.assert_close(compiled_weights[name], eager[name], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_fsdp_compiles_each_block_and_matches_eager_fsdp(tmp_path):
    args = [*TINY, f"output_dir={tmp_path}", "train.max_steps=3", "dist.strategy=fsdp"]
    run_recipe([*args, "name=eager"], nproc=2)
    compiled = run_recipe([*args, "name=compiled", "dist.compile=true"], nproc=2, timeout=600)
    assert "torch.compile of each FSDP block (mode default): first forward, compilation included" in compiled.stdout
    losses = {name: [row["train/loss"] for row in read_metrics(tmp_path / name) if "train/loss" in row]
              for name in ("eager", "compiled")}
    assert len(losses["eager"]) == 3 and losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)
    eager, compiled_weights = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert eager.keys() == compiled_weights.keys()
    for name in eager:
        torch.testing.assert_close(compiled_weights[name], eager[name], atol=1e-4, rtol=1e-4)
