"""The distillation recipe: frozen teacher, student + adapter, config errors, and real
2-process runs under DDP and ZeRO-2 with a teacher trained by recipes/supervised.py, followed by
one compression report over teacher, student + KD (both strategies), pruned and quantized."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from cvdist.commands.compress import add_compress_command
from cvdist.config import ConfigError
from cvdist.config_loading import load_config
from cvdist.engine import Progress
from cvdist.engine.export import consolidated_state_dict
from cvdist.engine.model_sources import ModelSpec, load_trained_model
from cvdist.losses.distill import DistillationLoss
from cvdist.models import build_model
from cvdist.tasks.distill.config import DistillRunConfig, check_hint_layer, validate_distill
from cvdist.tasks.distill.step import DistillStep, DistillStudent, build_student, freeze, state_fingerprint
from tests.helpers.recipes import REPO, TINY, run_recipe

DISTILL = REPO / "recipes" / "distill.py"
SUPERVISED = REPO / "recipes" / "supervised.py"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _config(tmp_path: Path, *overrides: str) -> DistillRunConfig:
    teacher = tmp_path / "teacher.pt"
    if not teacher.exists():
        torch.save(build_model(name="small_cnn", num_classes=10, in_channels=1).state_dict(), teacher)
    return load_config(overrides=[f"teacher.path={teacher}", "teacher.name=small_cnn", *overrides],
                       schema=DistillRunConfig)


def test_teacher_stays_bit_identical_and_gets_no_gradients(tmp_path):
    torch.manual_seed(0)
    config = _config(tmp_path, "kd.feature_weight=1.0", "kd.teacher_hint=4", "kd.student_hint=1")
    teacher = build_model(name="small_cnn", num_classes=10, in_channels=1)
    teacher.train()  # freeze must switch BatchNorm to its running statistics
    freeze(teacher)
    before = state_fingerprint(teacher)
    student, teacher_hint = build_student(config, teacher, probe=torch.zeros(1, 1, 28, 28))
    assert isinstance(student, DistillStudent) and student.adapter is not None
    step = DistillStep(teacher=teacher, loss=DistillationLoss(temperature=4.0, alpha=0.5, feature_weight=1.0),
                       teacher_hint=teacher_hint)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)  # what the engine builds: the student's parameters
    adapter_before = student.adapter.project.weight.detach().clone()
    for _ in range(3):
        batch = {"image": torch.randn(8, 1, 28, 28), "label": torch.randint(0, 10, (8,))}
        loss, parts = step(student, batch, Progress(step=0, micro_batch=0, epoch=0, total_steps=3))
        assert set(parts) == {"train/loss_kd", "train/loss_label", "train/loss_feature"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert state_fingerprint(teacher) == before  # weights and BN running statistics
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert not torch.equal(student.adapter.project.weight, adapter_before)  # the adapter trains with the student


def test_student_alone_skips_the_teacher(tmp_path):
    config = _config(tmp_path, "kd.alpha=0")
    calls = []
    teacher = freeze(build_model(name="small_cnn", num_classes=10, in_channels=1))
    teacher.register_forward_hook(lambda *args: calls.append(1))
    student, hint = build_student(config, teacher, probe=torch.zeros(1, 1, 28, 28))
    step = DistillStep(teacher=teacher, loss=DistillationLoss(temperature=4.0, alpha=0.0), teacher_hint=hint)
    _, parts = step(student, {"image": torch.randn(4, 1, 28, 28), "label": torch.zeros(4, dtype=torch.long)},
                    Progress(step=0, micro_batch=0, epoch=0, total_steps=1))
    assert set(parts) == {"train/loss_label"} and not calls


@pytest.mark.parametrize("overrides, message", [
    (["teacher.path=''"], "teacher.path is empty"),
    (["teacher.path=/no/such/teacher.pt"], "does not exist"),
    (["kd.feature_weight=1.0"], "needs both hint layers"),
    (["kd.teacher_hint=4", "kd.student_hint=1"], "kd.feature_weight=0"),
    (["kd.alpha=1.5"], "kd.alpha"),
    (["kd.temperature=0"], "kd.temperature"),
    (["kd.logit_adjust_tau=-1"], "kd.logit_adjust_tau"),
    (["kd.feature_loss=l1", "kd.feature_weight=1", "kd.teacher_hint=4", "kd.student_hint=1"], "kd.feature_loss"),
    (["loss.name=nope"], "loss.name"),
    (["loss.gamma=3.0"], "loss.gamma is not used"),
])
def test_config_errors_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_distill(_config(tmp_path, *overrides))


def test_unknown_hint_layer_lists_the_available_names(tmp_path):
    config = _config(tmp_path, "kd.feature_weight=1.0", "kd.teacher_hint=layer9", "kd.student_hint=1")
    teacher = freeze(build_model(name="small_cnn", num_classes=10, in_channels=1))
    with pytest.raises(ConfigError, match=r"kd.teacher_hint='layer9' is not a module of the model; available: 0, 0.0"):
        build_student(config, teacher, probe=torch.zeros(1, 1, 28, 28))
    with pytest.raises(ConfigError, match="kd.student_hint='x'.*available: 0, 0.0, 0.1, 1"):
        check_hint_layer(build_model(name="tiny_cnn", num_classes=10, in_channels=1), "x", key="kd.student_hint")


def test_weights_file_teacher_needs_its_architecture(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(build_model(name="small_cnn", num_classes=10, in_channels=1).state_dict(), weights)
    with pytest.raises(ValueError, match="teacher.name"):
        load_trained_model(weights, given=ModelSpec(name="", num_classes=10, in_channels=1), field_prefix="teacher")
    with pytest.raises(ValueError, match="does not match the model"):
        load_trained_model(weights, given=ModelSpec(name="tiny_cnn", num_classes=10, in_channels=1),
                           field_prefix="teacher")


@pytest.mark.slow
def test_distillation_under_ddp_and_zero2_then_one_compression_report(tmp_path):
    runs = tmp_path / "runs"
    common = [*TINY, f"output_dir={runs}", "train.max_steps=6"]
    run_recipe([*common, "name=teacher", "model.name=small_cnn"], script=SUPERVISED)
    teacher_bits = state_fingerprint(load_trained_model(runs / "teacher", given=ModelSpec("", 0, 0),
                                                        field_prefix="teacher")[0])
    teacher = f"teacher.path={runs / 'teacher'}"
    # DDP: logit + feature KD (small_cnn block 4 -> tiny_cnn block 1 through a 1x1-conv adapter)
    run_recipe([*common, "name=kd_ddp", teacher, "kd.feature_weight=0.5", "kd.teacher_hint=4", "kd.student_hint=1",
                "dist.strategy=ddp"], nproc=2, script=DISTILL)
    # ZeRO-2: logit KD, long-tail aware (long-tailed built-in data, balanced-softmax label loss)
    run_recipe([*common, "name=kd_zero2", teacher, "dist.strategy=zero2", "data.imbalance_factor=4",
                "loss.name=balanced_softmax", "kd.logit_adjust_tau=1"], nproc=2, script=DISTILL)
    for name, strategy in (("kd_ddp", "ddp"), ("kd_zero2", "zero2")):
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["strategy"] == strategy and summary["world_size"] == 2 and summary["step"] == 6
        assert summary["teacher/sha256_before"] == summary["teacher/sha256_after"] == teacher_bits
        assert summary["teacher/params_with_grad"] == 0 and summary["teacher/trainable_params"] == 0
        assert [row[0] for row in summary["report"]["rows"]] == ["teacher", "student_kd"]
        metrics = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
        assert all("train/loss_kd" in row for row in metrics if "train/loss" in row)
    ddp_metrics = (runs / "kd_ddp" / "metrics.jsonl").read_text()
    assert "train/loss_feature" in ddp_metrics
    ddp_state = consolidated_state_dict(runs / "kd_ddp")
    assert any(k.startswith("adapter.") for k in ddp_state) and any(k.startswith("student.") for k in ddp_state)
    zero_columns = json.loads((runs / "kd_zero2" / "summary.json").read_text())["report"]["columns"]
    assert "balanced_acc" in zero_columns  # long-tailed training data -> balanced accuracy in the report
    assert "balanced_acc" not in json.loads((runs / "kd_ddp" / "summary.json").read_text())["report"]["columns"]

    # cvdist compress (its handler, as cvdist/cli.py calls it): one table for every model and variant
    parser = argparse.ArgumentParser()
    add_compress_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compress", "--model", f"teacher={runs / 'teacher'}", "--model",
                              f"student_kd_zero2={runs / 'kd_zero2'}", "--model", f"student_kd={runs / 'kd_ddp'}",
                              "data.dataset=synthetic", "data.num_train_samples=256", "data.num_eval_samples=64",
                              "data.global_batch_size=32", "tracking.wandb_mode=disabled", f"output_dir={runs}",
                              "name=report", "prune.sparsity=0.5", "quantize.calibration_batches=2",
                              "report.latency_batches=3", "report.balanced=always"])
    assert args.handler(args) == 0
    report = json.loads((runs / "report" / "summary.json").read_text())["report"]
    assert [row[0] for row in report["rows"]] == ["teacher", "student_kd_zero2", "student_kd", "student_kd/pruned",
                                                  "student_kd/int8_dynamic", "student_kd/int8_static"]
    assert report["columns"] == ["model", "top1", "balanced_acc", "params", "nonzero_params", "size_mb",
                                 "latency_ms", "many", "medium", "few", "sparsity"]
    rows = {row[0]: dict(zip(report["columns"], row)) for row in report["rows"]}
    assert rows["student_kd/pruned"]["nonzero_params"] < 0.6 * rows["student_kd"]["params"]
    assert all(rows[name]["top1"] is not None and rows[name]["latency_ms"] > 0 for name in rows)
    markdown = (runs / "report" / "report.md").read_text()
    assert all(f"| {name} |" in markdown for name in rows)
