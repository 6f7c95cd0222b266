"""dist.strategy=fsdp (FSDP2) beyond the strategy comparison in test_engine_strategies: full
checkpoints, export into torchvision's ResNet-18, resume on another process count, bf16, the
safe reader of DCP's index, which modules become FSDP units, and the option checks."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
import torchvision

from cvdist.config import ConfigError
from cvdist.engine.export import consolidated_state_dict
from cvdist.engine.fsdp import shard_units
from cvdist.engine.fsdp_checkpoint import SafeMetadataReader
from cvdist.engine.safe_load import UnsafeCheckpointError
from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import TINY, run_recipe
from tests.helpers.runs import assert_same, run_killed_after_checkpoint, weights

SMALL = [*TINY, "train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=5",
         "data.shuffle_buffer=0", "data.augment=none", "dist.strategy=fsdp"]


def _torchvision_resnet18() -> torch.nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # the small stem the recipe builds
    model.maxpool = torch.nn.Identity()
    return model


@pytest.mark.slow
def test_fsdp_resnet18_full_and_sharded_checkpoints_export_strictly_into_torchvision(tmp_path):
    from cvdist.cli import main

    args = [*SMALL, f"output_dir={tmp_path}", "model.name=resnet18", "train.max_steps=2", "data.num_train_samples=64",
            "data.num_eval_samples=16", "data.global_batch_size=8", "checkpoint.every_steps=2"]
    run_recipe([*args, "name=sharded"], nproc=2)
    run_recipe([*args, "name=full", "dist.fsdp_checkpoint=full"], nproc=2)
    full_checkpoint = tmp_path / "full" / "checkpoints" / "step-00000002"
    assert (full_checkpoint / "model.pt").is_file() and not (full_checkpoint / "fsdp").exists()
    target = tmp_path / "r18.safetensors"
    assert main(["export", str(tmp_path / "sharded"), "--out", str(target)]) == 0
    from safetensors.torch import load_file

    exported = load_file(target)
    model = _torchvision_resnet18()
    model.load_state_dict(exported, strict=True)
    # the same two steps, gathered by rank 0 or merged from the shards afterwards
    assert_same(exported, consolidated_state_dict(tmp_path / "full"), atol=0)


@pytest.mark.slow
def test_fsdp_full_checkpoint_resumes_bit_exactly_and_sharded_resumes_on_one_process(tmp_path):
    straight = tmp_path / "straight"
    run_recipe([*SMALL, f"output_dir={tmp_path}", "name=straight"], nproc=2)
    # the elastic case stops mid-epoch (256 samples = 8 steps of 32): DCP re-shards the model and
    # optimiser state, the data re-plans the epoch's remaining samples (cvdist/data/elastic.py)
    # the full-checkpoint run also offloads its shards and optimiser step to host memory (FSDP2's
    # CPUOffloadPolicy): on a CPU machine the same arithmetic, so still bit-equal to the straight run
    for name, extra, resume_nproc in (("full", ["dist.fsdp_checkpoint=full", "dist.fsdp_cpu_offload=true"], 2),
                                      ("elastic", [], 1)):
        args = [*SMALL, f"output_dir={tmp_path}", f"name={name}", *extra]
        run_killed_after_checkpoint(args, nproc=2, step=2, marker=tmp_path / f"marker-{name}",
                                    kind="hang_after_checkpoint")
        result = run_recipe([*args, "checkpoint.resume=auto"], nproc=resume_nproc)
        steps = [r["step"] for r in read_metrics(tmp_path / name) if "train/loss" in r]
        assert steps == [1, 2, 3, 4]
        if resume_nproc == 2:
            assert_same(weights(tmp_path / name), weights(straight), atol=0)
        else:  # DCP re-sharded the 2-rank state onto one process; RNG streams restart
            assert "data layout changed (2 process(es) -> 1" in result.stdout
            resumed = weights(tmp_path / name)
            assert resumed.keys() == weights(straight).keys()
            assert all(torch.isfinite(t).all() for t in resumed.values())
            at_step_2 = weights(tmp_path / name / "checkpoints" / "step-00000002")
            assert any(not torch.equal(resumed[k], at_step_2[k]) for k in resumed), "steps 3-4 trained nothing"


@pytest.mark.slow
def test_fsdp_bf16_and_kept_parameters_train_with_finite_losses(tmp_path):
    run_recipe([*SMALL, f"output_dir={tmp_path}", "name=bf16", "dist.precision=bf16",
                "dist.fsdp_reshard_after_forward=false", "optim.accum_steps=2"], nproc=2)
    rows = [r for r in read_metrics(tmp_path / "bf16") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r["train/loss"]) for r in rows)
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["strategy"] == "fsdp"
    assert all(t.dtype == torch.float32 for t in weights(tmp_path / "bf16").values() if t.is_floating_point())


def test_fsdp_refuses_fp16_with_the_fix():
    from cvdist.engine.fsdp import FsdpBackend

    with pytest.raises(ConfigError, match="fp16 is not supported under dist.strategy=fsdp.*use dist.precision=bf16"):
        FsdpBackend(precision="fp16")


def test_dcp_index_with_foreign_objects_is_refused(tmp_path):
    (tmp_path / ".metadata").write_bytes(pickle.dumps(print))  # a function, as a tampered index would carry
    with pytest.raises(UnsafeCheckpointError, match="builtins.print is not allowed"):
        SafeMetadataReader(str(tmp_path)).read_metadata()


def test_attention_and_torchvision_vit_layers_stay_whole_units():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=3)
    units = shard_units(vit)
    layers = list(vit.encoder.layers)
    assert units[:2] == layers and units[-1] is vit
    assert not any(unit is layer.self_attention.out_proj for layer in layers for unit in units)


def test_shard_units_are_blocks_then_children_then_the_model():
    from cvdist.models import build_model

    model = build_model(name="resnet18", num_classes=10, in_channels=1)
    units = shard_units(model)
    blocks = [u for u in units if isinstance(u, torchvision.models.resnet.BasicBlock)]
    assert len(blocks) == 8 and units[-1] is model
    assert {id(u) for u in units[8:-1]} == {id(model.conv1), id(model.bn1), id(model.fc)}  # layers outside blocks
    assert len({id(u) for u in units}) == len(units)
    for index, unit in enumerate(units):  # fully_shard needs the units inside a module first
        assert not any(inner is not unit and any(inner is later for later in units[index + 1:])
                       for inner in unit.modules())


@pytest.mark.parametrize("override", ["dist.fsdp_checkpoint=full", "dist.fsdp_cpu_offload=true",
                                      "dist.fsdp_reshard_after_forward=false"])
def test_fsdp_options_without_fsdp_are_refused(override):
    from cvdist.config import validate
    from cvdist.config_loading import load_config

    config = load_config(overrides=[override, "dist.strategy=ddp"])
    with pytest.raises(ConfigError, match=f"dist.{override.split('=')[0][5:]} is an FSDP option"):
        validate(config, world_size=2)


SSL = ["data.dataset=synthetic", "data.num_train_samples=128", "data.num_eval_samples=32", "data.global_batch_size=16",
       "tracking.wandb_mode=disabled", "schedule.warmup_steps=1", "train.max_steps=3", "checkpoint.every_steps=3",
       "data.shuffle_buffer=0", "model.name=tiny_cnn", "ssl.projection_hidden_dim=32", "ssl.projection_dim=16",
       "ssl.prediction_hidden_dim=16", "ssl.method=moco_v3"]


@pytest.mark.slow
def test_fsdp_momentum_encoder_run_equals_ddp_and_traced_and_vit_models_train(tmp_path):
    from tests.helpers.recipes import REPO, TINY_SEGMENT

    contrastive = REPO / "recipes" / "pretrain_contrastive.py"
    for strategy in ("ddp", "fsdp"):  # MoCo v3: the EMA update runs on the DTensor shards under FSDP
        run_recipe([*SSL, f"output_dir={tmp_path}", f"name=moco-{strategy}", f"dist.strategy={strategy}"], nproc=2,
                   script=contrastive)
    fsdp = weights(tmp_path / "moco-fsdp")
    assert any("momentum_trunk" in key for key in fsdp)
    assert_same(fsdp, weights(tmp_path / "moco-ddp"), atol=1e-5)
    # a U-Net on a torch.fx feature extractor (its blocks are traced: their layers become the units)
    run_recipe([*TINY_SEGMENT, f"output_dir={tmp_path}", "name=segment", "dist.strategy=fsdp", "train.max_steps=2"],
               nproc=2, script=REPO / "recipes" / "segment.py")
    # MAE's ViT (transformer layers as units, the class token and decoder layers outside them)
    run_recipe([*SSL[:9], f"output_dir={tmp_path}", "name=mae", "dist.strategy=fsdp", "--config",
                str(REPO / "recipes" / "pretrain_mae.yaml"), "ae.vit=vit_tiny"], nproc=2,
               script=REPO / "recipes" / "pretrain_autoencoder.py")
    for name in ("segment", "mae"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["strategy"] == "fsdp" and summary["world_size"] == 2
        assert all(math.isfinite(r["train/loss"]) for r in read_metrics(tmp_path / name) if "train/loss" in r)
