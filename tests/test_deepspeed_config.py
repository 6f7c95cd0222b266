"""The DeepSpeed config cvdist builds, a user's JSON merged into it, and the settings read from
``accelerate launch``'s environment (no processes started here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvdist.config import ConfigError, DistConfig
from cvdist.engine.deepspeed_config import build_deepspeed_config
from cvdist.engine.dist import LaunchError, accelerate_launch_settings, apply_accelerate_launch_settings
from tests.helpers.recipes import clean_env

REPO = Path(__file__).resolve().parents[1]
RUN = dict(precision="fp32", micro_batch_size=8, accum_steps=2, world_size=4, grad_clip_norm=1.0)


def write(tmp_path: Path, content: object) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    return str(path)


def test_cvdist_fields_without_a_user_file():
    config = build_deepspeed_config(stage=2, **RUN)
    assert config["train_batch_size"] == 64 and config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 2 and config["gradient_clipping"] == 1.0
    assert config["zero_optimization"]["stage"] == 2 and config["bf16"] == {"enabled": False}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_shipped_json_files_merge(stage):
    config = build_deepspeed_config(stage=stage, user_config=str(REPO / f"launch/deepspeed/zero{stage}.json"), **RUN)
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_batch_size"] == 64  # "auto" keeps cvdist's value
    assert config["zero_optimization"]["reduce_bucket_size"] == 5e7


def test_user_options_merge_key_by_key(tmp_path):
    user = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}, "overlap_comm": True},
            "activation_checkpointing": {"partition_activations": True}, "train_batch_size": 64}
    config = build_deepspeed_config(stage=3, user_config=write(tmp_path, user), **RUN)
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu"} and zero["overlap_comm"] is True
    assert zero["allgather_bucket_size"] == int(5e7), "cvdist's defaults stay where the file is silent"
    assert config["activation_checkpointing"] == {"partition_activations": True}


@pytest.mark.parametrize("user, message", [
    ({"train_batch_size": 128}, "train_batch_size=128 but this run has 64"),
    ({"gradient_clipping": 0.5}, "gradient_clipping=0.5"),
    ({"optimizer": {"type": "Adam"}}, "sets 'optimizer'"),
    ({"scheduler": {"type": "WarmupLR"}}, "sets 'scheduler'"),
    ({"checkpoint": {"load_universal": True}}, "sets 'checkpoint'; remove it: cvdist writes and loads checkpoints"),
    ({"bf16": {"enabled": True}}, "bf16.enabled=True but dist.precision resolved to fp32"),
    ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage=3 but the run uses ZeRO-2"),
])
def test_conflicts_are_errors(tmp_path, user, message):
    with pytest.raises(ConfigError, match=message):
        build_deepspeed_config(stage=2, user_config=write(tmp_path, user), **RUN)


def test_bad_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_deepspeed_config(stage=2, user_config=str(tmp_path / "missing.json"), **RUN)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_deepspeed_config(stage=2, user_config=str(tmp_path / "bad.json"), **RUN)


def test_accelerate_environment_sets_strategy_json_and_precision():
    json_file = str(REPO / "launch/deepspeed/zero3.json")
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": json_file,
           "ACCELERATE_MIXED_PRECISION": "bf16"}
    assert accelerate_launch_settings(env) == {"strategy": "zero3", "deepspeed_config": json_file, "precision": "bf16"}
    assert accelerate_launch_settings({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}) == {
        "strategy": "zero1"}
    assert accelerate_launch_settings({"ACCELERATE_MIXED_PRECISION": "no"}) == {}
    with pytest.raises(LaunchError, match="ZeRO stage 0"):
        accelerate_launch_settings({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"})

    dist = DistConfig()
    apply_accelerate_launch_settings(dist, env)
    assert (dist.strategy, dist.deepspeed_config, dist.precision) == ("zero3", json_file, "bf16")
    same = DistConfig(strategy="zero3")
    apply_accelerate_launch_settings(same, env)  # agreeing with the launcher is fine
    with pytest.raises(LaunchError, match="accelerate config says strategy 'zero3' but dist.strategy='ddp'"):
        apply_accelerate_launch_settings(DistConfig(strategy="ddp"), env)


def test_accelerate_fsdp_environment_sets_fsdp2_options():
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false",
           "FSDP_OFFLOAD_PARAMS": "true", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
    assert accelerate_launch_settings(env) == {"strategy": "fsdp", "fsdp_reshard_after_forward": False,
                                               "fsdp_cpu_offload": True, "fsdp_checkpoint": "full"}
    with pytest.raises(LaunchError, match="FSDP version 1; cvdist runs FSDP2"):
        accelerate_launch_settings({"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(LaunchError, match="LOCAL_STATE_DICT is not one cvdist writes"):
        accelerate_launch_settings({**env, "FSDP_STATE_DICT_TYPE": "LOCAL_STATE_DICT"})
    dist = DistConfig()
    apply_accelerate_launch_settings(dist, env)
    assert (dist.strategy, dist.fsdp_reshard_after_forward, dist.fsdp_cpu_offload, dist.fsdp_checkpoint) == (
        "fsdp", False, True, "full")
    with pytest.raises(LaunchError, match="accelerate config says fsdp_reshard_after_forward True"):
        apply_accelerate_launch_settings(DistConfig(fsdp_reshard_after_forward=False),
                                         {**env, "FSDP_RESHARD_AFTER_FORWARD": "true"})


def test_deepspeed_on_cpu_starts_without_compiling_its_inference_shm_kernel(tmp_path):
    # The kernel only serves tensor-parallel inference; building it cost the first ZeRO run on a
    # fresh CPU machine 30-100 s (and a C++ compiler). A fresh extensions directory would show a
    # build; DeepSpeed's comm backend must come up without one.
    import subprocess
    import sys

    script = (
        "from cvdist.engine.backends import DeepSpeedBackend\n"
        "import deepspeed.comm.comm as ds_comm\n"
        "backend = DeepSpeedBackend(stage=1, precision='fp32', timeout_s=60)\n"
        "print('shm op:', ds_comm.cdb.shm_comm_op, 'world:', backend.env.world_size)\n"
    )
    env = clean_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shm op: None world: 1" in result.stdout
    assert not (tmp_path / "extensions").exists() or not any((tmp_path / "extensions").rglob("*.so"))
