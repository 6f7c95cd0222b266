"""The long-tail recipe: transfer (head replacement, freezing, layer-wise LRs, clear mismatch
errors, torchvision / safetensors files), its config checks, the training parts (long-tail
built-in data, in-memory re-sampling, epoch hook for LDAM-DRW, mixup / CutMix, EMA,
tau-normalisation), and end-to-end runs: from scratch, cRT from that run, and 2 processes."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from cvdist.config import ConfigError, DataConfig, validate
from cvdist.config_loading import load_config
from cvdist.data.builtin_shards import split_holdout_and_longtail
from cvdist.data.longtail_data import build_longtail_data
from cvdist.engine import Progress
from cvdist.engine.export import consolidated_state_dict
from cvdist.engine.transfer import load_backbone, prepare_transfer
from cvdist.eval.longtail_evaluator import apply_tau_norm, read_longtail_eval, search_tau
from cvdist.losses.longtail import build_longtail_loss
from cvdist.models import build_model
from cvdist.models.transfer import find_head_name, freeze_trunk, parameter_groups
from cvdist.optim import build_optimizer
from cvdist.tasks.longtail.config import LongtailRunConfig, validate_longtail
from cvdist.tasks.longtail.step import LongtailTrainStep, WeightEma, mix_batch
from tests.helpers.recipes import LONGTAIL_TINY, REPO, run_recipe

SCRIPT = REPO / "recipes" / "longtail.py"
slow = pytest.mark.slow


def trunk_equal(a: nn.Module | dict, b: nn.Module | dict, head: str) -> bool:
    a = a if isinstance(a, dict) else a.state_dict()
    b = b if isinstance(b, dict) else b.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a if not k.startswith(head + "."))


# --- transfer --------------------------------------------------------------------------------------

def test_head_is_replaced_and_trunk_loaded(tmp_path):
    source = build_model(name="small_cnn", num_classes=10, in_channels=1)
    torch.save(source.state_dict(), tmp_path / "source.pt")
    model = build_model(name="small_cnn", num_classes=4, in_channels=1)
    fresh_head = model[-1].weight.clone()
    head = load_backbone(model, source=tmp_path / "source.pt")
    assert head == find_head_name(model) == "9"
    assert trunk_equal(model, source, head)
    assert model[-1].out_features == 4 and torch.equal(model[-1].weight, fresh_head)


def test_keep_head_loads_the_head_and_refuses_another_class_count(tmp_path):
    source = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    torch.save(source.state_dict(), tmp_path / "source.pt")
    same = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    load_backbone(same, source=tmp_path / "source.pt", keep_head=True)
    assert torch.equal(same[-1].weight, source[-1].weight)
    with pytest.raises(ValueError, match=r"shape mismatch.*4\.weight \(10, 16\) -> \(5, 16\)"):
        load_backbone(build_model(name="tiny_cnn", num_classes=5, in_channels=1), source=tmp_path / "source.pt",
                      keep_head=True)


def test_mismatched_keys_are_listed_without_the_head(tmp_path):
    torch.save(build_model(name="tiny_cnn", num_classes=10, in_channels=3).state_dict(), tmp_path / "rgb.pt")
    with pytest.raises(ValueError) as error:
        load_backbone(build_model(name="tiny_cnn", num_classes=7, in_channels=1), source=tmp_path / "rgb.pt")
    message = str(error.value)
    assert "shape mismatch (source -> model) (1): 0.0.weight (8, 3, 3, 3) -> (8, 1, 3, 3)" in message
    assert "head '4' excluded" in message and "4.weight" not in message
    torch.save(build_model(name="small_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "small.pt")
    with pytest.raises(ValueError, match=r"missing in the source .*unexpected in the source \(\d+\): .*running_mean"):
        load_backbone(build_model(name="tiny_cnn", num_classes=10, in_channels=1), source=tmp_path / "small.pt")


def test_missing_or_foreign_source_is_a_clear_error(tmp_path):
    model = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(model, source=tmp_path / "nope.pth")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown weights format '.bin'"):
        load_backbone(model, source=tmp_path / "weights.bin")
    torch.save({"epoch": 3}, tmp_path / "not_weights.pt")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        load_backbone(model, source=tmp_path / "not_weights.pt")


def test_torchvision_pth_and_safetensors_load(tmp_path):
    from safetensors.torch import save_file

    imagenet = torchvision.models.resnet18(weights=None)  # the layout of torchvision's downloaded .pth
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    model = build_model(name="resnet18", num_classes=5, in_channels=3, small_stem=False)
    assert load_backbone(model, source=tmp_path / "resnet18.pth") == "fc"
    assert trunk_equal(model, imagenet, "fc") and model.fc.out_features == 5
    with pytest.raises(ValueError, match=r"conv1\.weight \(64, 3, 7, 7\) -> \(64, 3, 3, 3\).*small_stem=false"):
        load_backbone(build_model(name="resnet18", num_classes=5, in_channels=3, small_stem=True),
                      source=tmp_path / "resnet18.pth")
    # a DDP-prefixed state_dict wrapped as {"state_dict": ...}, and safetensors
    tiny = build_model(name="tiny_cnn", num_classes=10, in_channels=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    for name in ("wrapped.pt", "tiny.safetensors"):
        target = build_model(name="tiny_cnn", num_classes=3, in_channels=1)
        load_backbone(target, source=tmp_path / name)
        assert trunk_equal(target, tiny, "4")


def test_frozen_trunk_gets_no_gradient_and_keeps_batchnorm_statistics():
    model = build_model(name="small_cnn", num_classes=3, in_channels=1)
    freeze_trunk(model, head_name="9")
    trunk = [p for n, p in model.named_parameters() if not n.startswith("9.")]
    assert trunk and not any(p.requires_grad for p in trunk) and model[-1].weight.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # what the training loop does
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert trunk_equal(model.state_dict(), before, "9"), "BatchNorm running statistics changed"
    assert all(p.grad is None for p in trunk) and model[-1].weight.grad is not None
    assert model.training and model[-1].training  # only the trunk's modules stay in eval mode


def test_layerwise_learning_rates_and_frozen_groups():
    model = build_model(name="tiny_cnn", num_classes=3, in_channels=1)
    groups = parameter_groups(model, head_name="4", lr=0.1, trunk_lr_scale=0.1)
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(0.01)]
    assert [len(g["params"]) for g in groups] == [2, 4]
    optimizer = build_optimizer(groups, name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, betas=[0.9, 0.999],
                                lars_trust_coefficient=0.001)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, pytest.approx(0.01)]
    head, frozen_groups = prepare_transfer(model, from_path="", freeze=True, lr=0.1, log=lambda _: None)
    assert head == "4" and len(frozen_groups) == 1 and len(frozen_groups[0]["params"]) == 2


# --- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["loss.gamma=1.0"], "loss.gamma is not used by loss.name='balanced_softmax'"),
    (["loss.name=nope"], "loss.name='nope' is not allowed"),
    (["longtail.stage=crt"], "longtail.stage=crt needs trained weights"),
    (["longtail.stage=crt", "transfer.from_path=."], "set data.sampling=class_balanced"),
    (["longtail.tau_norm=true", "longtail.holdout_per_class=0"], "longtail.holdout_per_class=N"),
    (["transfer.freeze_trunk=true", "transfer.from_path=.", "transfer.trunk_lr_scale=0.1"], "contradict"),
    (["transfer.from_path=/no/such/weights.pth"], "transfer.from_path='/no/such/weights.pth' does not exist"),
    (["data.imbalance_factor=0.5"], "data.imbalance_factor=0.5 must be >= 1"),
    (["regularization.ema_decay=0.99", "dist.strategy=zero3"], "ZeRO-3"),
])
def test_config_errors_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config = load_config(schema=LongtailRunConfig, overrides=overrides)  # choice fields fail here
        validate_longtail(config)
        validate(config, world_size=1)  # the shared sections (data.imbalance_factor)


# --- training parts --------------------------------------------------------------------------------

def test_holdout_is_balanced_disjoint_and_the_rest_long_tailed():
    labels = torch.arange(1000) % 10
    train, holdout = split_holdout_and_longtail(labels, num_classes=10, holdout_per_class=5, imbalance_factor=10,
                                                seed=0)
    assert not set(train) & set(holdout)
    assert labels[holdout].bincount().tolist() == [5] * 10
    assert labels[train].bincount().tolist() == [95, 73, 56, 44, 34, 26, 20, 15, 12, 9]


def test_builtin_long_tailed_data_class_balanced_sampling(tmp_path):
    # the built-in set goes through the shard pipeline: its re-sampling is the stream's
    data = build_longtail_data(DataConfig(dataset="synthetic", num_train_samples=1000, num_eval_samples=100,
                                          sampling="class_balanced", imbalance_factor=9, cache_dir=str(tmp_path)),
                               num_classes=2, in_channels=1, rank=0, world_size=1, micro_batch_size=10, seed=0,
                               num_epochs=1)
    assert data.class_counts == [500, 55]
    drawn = torch.cat([torch.cat([b["label"] for b in data.train.iterate(epoch=e)]) for e in range(4)])
    assert abs(float((drawn == 1).float().mean()) - 0.5) < 0.06


def test_the_step_sets_the_loss_epoch_from_progress():
    loss = build_longtail_loss(name="ldam", class_counts=[90, 10], drw_epoch=2)
    step = LongtailTrainStep(loss=loss)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    batch = {"image": torch.randn(4, 1, 4, 4), "label": torch.tensor([0, 1, 0, 1])}
    step(model, batch, Progress(step=35, micro_batch=35, epoch=3, total_steps=100))  # e.g. a resumed run in epoch 3
    assert loss.epoch == 3 and loss.active_class_weights is not None
    step(model, batch, Progress(step=1, micro_batch=1, epoch=0, total_steps=100))
    assert loss.epoch == 0 and loss.active_class_weights is None


def test_mixup_and_cutmix():
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 16, 16), torch.arange(8)
    mixed, partner, lam = mix_batch(images, mixup_alpha=0.4, cutmix_alpha=0.0)
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == list(range(8))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[partner])
    ones = torch.ones(8, 1, 16, 16) * torch.arange(8).view(8, 1, 1, 1)
    mixed, partner, lam = mix_batch(ones, mixup_alpha=0.0, cutmix_alpha=1.0)
    original_share = (mixed == ones).float().mean(dim=(1, 2, 3))
    moved = partner != labels
    assert torch.allclose(original_share[moved], torch.full_like(original_share[moved], lam))


def test_ema_folds_each_optimizer_step_once():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = WeightEma(decay=0.5)
    ema.catch_up(model, 0)  # micro-batches 0 and 1 of step 0 (accumulation 2): copy once
    ema.catch_up(model, 0)
    with torch.no_grad():
        model.weight.fill_(1.0)  # the optimiser step
    for _ in range(2):  # evaluation after step 1, then the next micro-batch (Progress.step 1): one fold only
        ema.catch_up(model, 1)
        ema.catch_up(model, 1)
    # warm-up decay min(0.5, 1/10) = 0.1 for the first update
    assert ema.num_updates == 1 and torch.allclose(ema.module.weight, torch.full((1, 2), 0.9))


def test_tau_search_picks_the_tau_that_balances_the_classifier():
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # the head class has the larger norm
        model[1].bias.zero_()
    features = torch.tensor([[1.0, 0.1], [0.6, 1.0]])  # at tau 0 the tail sample is taken for the head
    batches = [{"image": features, "label": torch.tensor([0, 1]), "valid": torch.ones(2, dtype=torch.bool)}]
    tau, scores = search_tau(model, head_name="1", batches=batches, taus=[0.0, 1.0, 2.0], class_counts=[100, 10],
                             to_device=lambda b: b, device=torch.device("cpu"))
    assert scores == {0.0: 0.5, 1.0: 1.0, 2.0: 1.0} and tau == 1.0  # ties go to the smaller tau
    apply_tau_norm(model, head_name="1", tau=1.0)
    assert torch.allclose(model[1].weight.norm(dim=1), torch.ones(2))


# --- end to end ------------------------------------------------------------------------------------

GROUP_KEYS = {f"eval/{m}" for m in ("top1", "balanced_acc", "many", "medium", "few")}


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    """Two epochs of LDAM-DRW (weights from epoch 1) with EMA, mixup and CutMix, from scratch."""
    out = tmp_path_factory.mktemp("longtail")
    run_recipe([*LONGTAIL_TINY, f"output_dir={out}", "name=joint", "train.epochs=2", "loss.name=ldam",
                "loss.drw_epoch=1", "regularization.ema_decay=0.9", "regularization.mixup_alpha=0.2",
                "regularization.cutmix_alpha=1.0"], script=SCRIPT, timeout=240)
    return out


@slow
def test_joint_run_writes_longtail_metrics_and_plots(stage_one):
    run = stage_one / "joint"
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    for suffix in ("", "_posthoc", "_ema", "_taunorm"):
        assert {key + suffix for key in GROUP_KEYS} <= set(final), suffix
    assert all(final[key] == final[key] for key in GROUP_KEYS), "a shot group without classes (NaN)"
    assert final["tau_norm/tau"] in [round(0.1 * i, 1) for i in range(21)]
    rows = read_longtail_eval(run)
    assert [row["step"] for row in rows] == [4, 8, 12, summary["step"]][:len(rows)] and len(rows) >= 3
    assert len(rows[-1]["per_class"]) == 10 and len(rows[-1]["confusion_ema"]) == 10
    assert sum(map(sum, rows[-1]["confusion"])) == 64  # every test image once
    for name in ("per_class_accuracy.png", "per_class_accuracy_taunorm.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@slow
def test_crt_retrains_only_the_classifier_of_the_first_run(stage_one):
    run_recipe([*LONGTAIL_TINY, f"output_dir={stage_one}", "name=crt", "train.max_steps=4",
                "longtail.stage=crt", f"transfer.from_path={stage_one / 'joint'}", "data.sampling=class_balanced",
                "loss.name=ce"], script=SCRIPT, timeout=240)
    before, after = consolidated_state_dict(stage_one / "joint"), consolidated_state_dict(stage_one / "crt")
    assert trunk_equal(before, after, "4")
    assert not torch.equal(before["4.weight"], after["4.weight"])
    summary = json.loads((stage_one / "crt" / "summary.json").read_text())
    assert GROUP_KEYS <= set(summary["final"]) and "tau_norm/tau" in summary["final"]


@slow
def test_two_processes_report_the_same_metrics(stage_one, tmp_path):
    run_recipe([*LONGTAIL_TINY, f"output_dir={tmp_path}", "name=ddp", "train.max_steps=4",
                "regularization.ema_decay=0.9", "loss.name=ldam", "loss.drw_epoch=1"],
               nproc=2, script=SCRIPT, timeout=240)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    reference = json.loads((stage_one / "joint" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "ddp"
    assert set(summary["final"]) == set(reference["final"])
    rows = read_longtail_eval(tmp_path / "ddp")
    assert [row["step"] for row in rows] == [4] and sum(map(sum, rows[0]["confusion"])) == 64


@slow
def test_weights_ema_resumes_exactly(tmp_path):
    from tests.helpers.runs import run_killed_after_checkpoint

    args = [*LONGTAIL_TINY, f"output_dir={tmp_path}", "train.max_steps=8", "checkpoint.every_steps=4",
            "regularization.ema_decay=0.9", "longtail.tau_norm=false", "train.eval_every_steps=0"]
    run_recipe([*args, "name=straight"], script=SCRIPT, timeout=240)
    run_killed_after_checkpoint([*args, "name=resumed"], nproc=1, step=4, marker=tmp_path / "marker",
                                kind="hang_after_checkpoint", CVDIST_FAULT_RECIPE="longtail")
    rank_state = torch.load(tmp_path / "resumed" / "checkpoints" / "step-00000004" / "rank-0.pt", weights_only=True)
    assert rank_state["extra"]["average"] is not None and rank_state["extra"]["folded_step"] >= 3
    output = run_recipe([*args, "name=resumed", "checkpoint.resume=auto"], script=SCRIPT, timeout=240)
    assert "resuming from" in output.stdout
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())["final"]
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())["final"]
    ema_keys = [key for key in straight if key.endswith("_ema")]
    assert ema_keys and {k: resumed[k] for k in ema_keys} == {k: straight[k] for k in ema_keys}
