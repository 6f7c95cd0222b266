"""Multi-task and multi-scale training in the long-tail recipe: the auxiliary-heads wrapper (same
state-dict keys as the base model plus ``aux_heads.*``, gradients into the trunk, variable input
sizes), transfer to and from multi-task weights, coarse labels in the built-in and shard data,
the training step's per-loss metrics, multi-scale in-memory batches (per-step sizes, 2 x B ==
1 x 2B, resume), and end-to-end runs: 2 processes with both, cRT and export from that run, and
Fashion-MNIST shards with their stored coarse label."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from cvdist.config import ConfigError, DataConfig
from cvdist.config_loading import load_config
from cvdist.data.converters import FASHION_MNIST_COARSE, build_fashion_mnist_source
from cvdist.data.longtail_data import LongtailData, build_longtail_data, shard_aux_classes
from cvdist.data.shard_writer import write_dataset_shards
from cvdist.data.transforms import MultiScaleBatch
from cvdist.engine import Progress
from cvdist.engine.export import consolidated_state_dict, export_checkpoint
from cvdist.engine.transfer import load_backbone
from cvdist.losses.longtail import build_longtail_loss
from cvdist.models import build_model
from cvdist.models.multitask import AuxHeadsModel
from cvdist.models.transfer import find_head_name, split_parameters
from cvdist.tasks.longtail.config import LongtailRunConfig, validate_longtail
from cvdist.tasks.longtail.step import LongtailTrainStep
from tests.helpers.recipes import REPO, TINY, run_recipe

SCRIPT = REPO / "recipes" / "longtail.py"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
slow = pytest.mark.slow


def wrapped(name: str = "small_cnn", **aux: int) -> tuple[nn.Module, AuxHeadsModel]:
    base = build_model(name=name, num_classes=10, in_channels=1)
    return base, AuxHeadsModel(base, head_name=find_head_name(base), aux_classes=aux or {"coarse": 4})


# --- the wrapper -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,head", [("small_cnn", "9"), ("resnet18", "fc")])
def test_wrapper_keeps_the_base_keys_and_outputs(name, head):
    torch.manual_seed(0)
    base, model = wrapped(name, coarse=4, parity=2)
    keys = set(model.state_dict())
    added = {f"aux_heads.{n}.{p}" for n in ("coarse", "parity") for p in ("weight", "bias")}
    assert keys - set(base.state_dict()) == added
    assert set(base.state_dict()) <= keys and find_head_name(model) == head
    model.eval()
    for size in (20, 28, 36):  # multi-scale sizes: adaptive pooling makes the head size-independent
        x = torch.randn(3, 1, size, size)
        logits, aux = model(x, with_aux=True)
        assert torch.equal(logits, base(x)) and torch.equal(model(x), logits)
        assert aux["coarse"].shape == (3, 4) and aux["parity"].shape == (3, 2)
    features = (base[:-1] if name == "small_cnn" else nn.Sequential(*list(base.children())[:-1], nn.Flatten()))(x)
    assert torch.allclose(aux["coarse"], model.aux_heads.coarse(features), atol=1e-6)


def test_aux_loss_trains_the_trunk_and_the_copy_is_independent():
    _, model = wrapped("tiny_cnn")
    model.train()
    _, aux = model(torch.randn(4, 1, 28, 28), with_aux=True)
    nn.functional.cross_entropy(aux["coarse"], torch.tensor([0, 1, 2, 3])).backward()
    assert model.get_submodule("0.0").weight.grad.abs().sum() > 0 and model.get_submodule("4").weight.grad is None
    ema = copy.deepcopy(model).eval()  # what WeightEma does
    with torch.no_grad():
        model.aux_heads.coarse.weight.zero_()
        model.get_submodule("0.0").weight.zero_()
    assert ema.aux_heads.coarse.weight.abs().sum() > 0 and ema.get_submodule("0.0").weight.abs().sum() > 0
    assert not ema.training and not ema._base[0].training
    assert torch.equal(ema(torch.ones(1, 1, 28, 28)), ema._base[0](torch.ones(1, 1, 28, 28)))


def test_transfer_drops_source_aux_heads_and_starts_model_aux_heads_fresh(tmp_path):
    _, multi = wrapped("tiny_cnn")
    torch.save(multi.state_dict(), tmp_path / "multi.pt")
    messages: list[str] = []
    plain = build_model(name="tiny_cnn", num_classes=3, in_channels=1)
    assert load_backbone(plain, source=tmp_path / "multi.pt", log=messages.append) == "4"
    assert torch.equal(plain[0][0].weight, multi.get_submodule("0.0").weight)
    assert any("ignoring the source's auxiliary heads (coarse" in m for m in messages)
    torch.save(build_model(name="tiny_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "plain.pt")
    _, target = wrapped("tiny_cnn")
    fresh = target.aux_heads.coarse.weight.clone()
    messages.clear()
    load_backbone(target, source=tmp_path / "plain.pt", log=messages.append)
    assert torch.equal(target.aux_heads.coarse.weight, fresh) and any("start freshly" in m for m in messages)
    trunk, head = split_parameters(target, head_name="4")
    assert len(head) == 4 and len(trunk) == 4  # head + aux head train at the head's learning rate


def test_train_step_logs_each_loss_and_weights_the_sum():
    torch.manual_seed(0)
    _, model = wrapped("tiny_cnn")
    loss = build_longtail_loss(name="ce", class_counts=[5] * 10)
    step = LongtailTrainStep(loss=loss, aux_weights={"coarse": 0.5})
    progress = Progress(step=0, micro_batch=0, epoch=0, total_steps=1)
    batch = {"image": torch.randn(6, 1, 28, 28), "label": torch.arange(6), "coarse": torch.tensor([0, 1, 2, 3, 0, 1])}
    total, extra = step(model, batch, progress)
    assert set(extra) == {"train/loss_main", "train/loss_coarse"}
    assert torch.allclose(total, extra["train/loss_main"] + 0.5 * extra["train/loss_coarse"])
    mixing = LongtailTrainStep(loss=loss, mixup_alpha=0.4, aux_weights={"coarse": 1.0})
    assert set(mixing(model, batch, progress)[1]) == {"train/loss_main", "train/loss_coarse"}


@pytest.mark.parametrize("overrides,message", [
    (["multitask.labels.coarse=0"], "multitask.labels.coarse=0.0 must be a loss weight > 0"),
    (["multitask.labels.coarse=1", "longtail.stage=crt", "transfer.from_path=.", "data.sampling=class_balanced"],
     "which longtail.stage=crt freezes"),
    (["multitask.labels.coarse=1", "transfer.freeze_trunk=true", "transfer.from_path=."],
     "which transfer.freeze_trunk=true freezes"),
])
def test_multitask_config_errors(overrides, message):
    config = load_config(schema=LongtailRunConfig, overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        validate_longtail(config)


# --- data ------------------------------------------------------------------------------------------

def builtin(dataset: str, cache_dir, **data: object):
    config = DataConfig(dataset=dataset, num_train_samples=600, num_eval_samples=50, root=FASHION_MNIST,
                        imbalance_factor=10, cache_dir=str(cache_dir), **data)
    return build_longtail_data(config, num_classes=10, in_channels=1, holdout_per_class=5,
                               need_holdout=True, rank=0, world_size=1, micro_batch_size=16, seed=0, num_epochs=1,
                               aux_labels=("coarse",))


@pytest.mark.parametrize("dataset", ["synthetic", "fashion_mnist"])
def test_builtin_batches_carry_the_coarse_label(dataset, tmp_path):
    data = builtin(dataset, tmp_path)
    table = torch.tensor(FASHION_MNIST_COARSE) if dataset == "fashion_mnist" else torch.arange(10) % 2
    assert data.aux_classes == {"coarse": 4 if dataset == "fashion_mnist" else 2}
    for batch in [next(data.train.iterate(epoch=0)), next(data.eval_batches()), next(data.holdout_batches())]:
        assert torch.equal(batch["coarse"], table[batch["label"]])


def test_unknown_builtin_or_manifest_label_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"multitask.labels.fine: .* has no extra label 'fine' \(its manifest lists: "
                                         r"coarse\)"):
        build_longtail_data(DataConfig(dataset="synthetic", num_train_samples=600, cache_dir=str(tmp_path / "c")),
                            num_classes=10, in_channels=1, rank=0, world_size=1, micro_batch_size=16, seed=0,
                            num_epochs=1, aux_labels=("fine",))
    shards = fmnist_shards(tmp_path)
    data = DataConfig(train_shards=[str(shards)])
    assert shard_aux_classes(data, ["coarse"], num_classes=10) == {"coarse": 4}
    with pytest.raises(ValueError, match=r"has no extra label 'colour' \(its manifest lists: coarse\)"):
        shard_aux_classes(data, ["colour"], num_classes=10)


def multi_scale_data(*, rank: int, world_size: int, batch_size: int, cache_dir) -> LongtailData:
    config = DataConfig(dataset="synthetic", num_train_samples=192, num_eval_samples=32, shuffle_buffer=0,
                        multi_scale=[0.75, 1.0, 1.25], cache_dir=str(cache_dir))
    return build_longtail_data(config, num_classes=10, in_channels=1, rank=rank, world_size=world_size,
                               micro_batch_size=batch_size, seed=3, num_epochs=2, aux_labels=("coarse",))


def test_multi_scale_builtin_batches_are_seeded_per_step_and_rank_independent(tmp_path):
    schedule = MultiScaleBatch(scales=[0.75, 1.0, 1.25], base_size=28, seed=3)
    whole = multi_scale_data(rank=0, world_size=1, batch_size=16, cache_dir=tmp_path).train
    halves = [multi_scale_data(rank=r, world_size=2, batch_size=8, cache_dir=tmp_path).train for r in range(2)]
    sizes = []
    for epoch in range(2):
        batches = list(whole.iterate(epoch=epoch))
        sizes += [b["image"].shape[-1] for b in batches]
        assert sizes[-len(batches):] == [schedule.size_for(epoch, i) for i in range(len(batches))]
        for index, (a, b) in enumerate(zip(*(h.iterate(epoch=epoch) for h in halves))):
            assert a["image"].shape[-1] == b["image"].shape[-1] == batches[index]["image"].shape[-1]
            assert torch.equal(a["coarse"], a["label"] % 2) and torch.equal(b["coarse"], b["label"] % 2)
        stopped = multi_scale_data(rank=0, world_size=1, batch_size=16, cache_dir=tmp_path).train
        for _ in zip(range(3), stopped.iterate(epoch=epoch)):
            pass
        fresh = multi_scale_data(rank=0, world_size=1, batch_size=16, cache_dir=tmp_path).train
        fresh.load_state(stopped.state())  # what a checkpoint after batch 3 holds
        resumed = list(fresh.iterate(epoch=epoch, start_batch=3))
        assert len(resumed) == len(batches) - 3
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(resumed, batches[3:]))
    assert set(sizes) == {20, 28, 36}  # all three scales occur over the 24 steps
    assert all(torch.equal(b["coarse"], b["label"] % 2) for b in whole.iterate(epoch=0))


# --- end to end ------------------------------------------------------------------------------------

def fmnist_shards(tmp_path):
    out = tmp_path / "fmnist"
    if not out.exists():
        write_dataset_shards(source=build_fashion_mnist_source(root=FASHION_MNIST, limit=300), out_dir=out,
                             samples_per_shard=100)
    return out


MULTITASK_TINY = [
    *[arg for arg in TINY if not arg.startswith("data.num_train_samples")], "data.num_train_samples=600",
    "data.imbalance_factor=10", "longtail.holdout_per_class=5", "longtail.shot_many=200", "longtail.shot_few=80",
    "multitask.labels.coarse=0.5",
]


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory):
    """2 processes, built-in synthetic data, coarse head, multi-scale batches, EMA, tau-norm."""
    out = tmp_path_factory.mktemp("multitask")
    run_recipe([*MULTITASK_TINY, f"output_dir={out}", "name=mt", "train.max_steps=2", "data.multi_scale=[0.75,1.25]",
                "longtail.tau_norm=true", "regularization.ema_decay=0.9"], nproc=2, script=SCRIPT, timeout=240)
    return out


@slow
def test_two_process_multitask_multiscale_run(multitask_run):
    run = multitask_run / "mt"
    final = json.loads((run / "summary.json").read_text())["final"]
    expected = {"train/loss_main", "train/loss_coarse", "eval/coarse_top1", "eval/top1_ema", "eval/top1_taunorm"}
    assert expected <= set(final)
    assert 0 <= final["eval/coarse_top1"] <= 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "train/loss_coarse" in row] == [1, 2]
    state = consolidated_state_dict(run)
    assert {"aux_heads.coarse.weight", "aux_heads.coarse.bias"} <= set(state)
    assert state["aux_heads.coarse.weight"].shape == (2, 16)  # synthetic: parity, 2 classes
    exported = export_checkpoint(run, run / "export.safetensors")  # `cvdist export`
    _, model = wrapped("tiny_cnn", coarse=2)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(exported)))  # strict: the keys are the wrapper's


@slow
def test_crt_from_a_multitask_run_ignores_the_aux_heads(multitask_run):
    result = run_recipe([*[a for a in MULTITASK_TINY if not a.startswith("multitask")], f"output_dir={multitask_run}",
                         "name=crt", "train.max_steps=2", "longtail.stage=crt", "data.sampling=class_balanced",
                         f"transfer.from_path={multitask_run / 'mt'}", "loss.name=ce"], script=SCRIPT, timeout=240)
    assert "ignoring the source's auxiliary heads (coarse" in result.stdout + result.stderr
    state = consolidated_state_dict(multitask_run / "crt")
    assert not any(key.startswith("aux_heads.") for key in state)
    assert torch.equal(state["0.0.weight"], consolidated_state_dict(multitask_run / "mt")["0.0.weight"])


@slow
def test_shard_run_trains_on_the_stored_coarse_label(tmp_path):
    shards = fmnist_shards(tmp_path)
    run_recipe([*TINY, f"output_dir={tmp_path}", "name=shards", f"data.train_shards=[{shards}]", "train.max_steps=2",
                "multitask.labels.coarse=1.0", "data.multi_scale=[0.75,1.0]", "longtail.shot_many=25",
                "longtail.shot_few=5"], script=SCRIPT, timeout=240)
    final = json.loads((tmp_path / "shards" / "summary.json").read_text())["final"]
    assert {"train/loss_coarse", "eval/coarse_top1"} <= set(final)
    assert consolidated_state_dict(tmp_path / "shards")["aux_heads.coarse.weight"].shape == (4, 16)
