"""Pruning, INT8 quantization and the compression report (building blocks, in-process), and the
``compress`` recipe / ``cvdist compress`` command end to end on tiny trained runs."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cvdist.compress import quantization as quant
from cvdist.compress.pruning import PRUNE_METHODS, prune_model, sparsity_report, step_amounts, zero_channel_fraction
from cvdist.compress.report import (ReportRow, count_parameters, cpu_latency_ms, size_on_disk_mb, table_columns,
                                    to_markdown, write_report)
from cvdist.models import build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the machine's two cores are shared; two intra-op threads under load are ~10x slower
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _learnable_task(seed: int = 0, num: int = 512, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Small grey images whose class (of 4) is the brightest quadrant, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (num,), generator=generator)
    images = torch.randn(num, 1, size, size, generator=generator) * 0.3
    half = size // 2
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[index, :, row * half:(row + 1) * half, col * half:(col + 1) * half] += 1.0
    return images, labels


def _train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        chosen = slice((step * 32) % len(images), (step * 32) % len(images) + 32)
        loss = F.cross_entropy(model(images[chosen]), labels[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((quant.run_quantized(model, images).argmax(1) == labels).float().mean())


@pytest.fixture(scope="module")
def trained_small_cnn():
    torch.manual_seed(0)
    images, labels = _learnable_task()
    return _train(build_model(name="small_cnn", num_classes=4, in_channels=1), images, labels, steps=30)


@pytest.mark.parametrize("method", PRUNE_METHODS)
@pytest.mark.parametrize("steps", [1, 3])
def test_pruning_reaches_the_target_and_is_permanent(method, steps):
    torch.manual_seed(1)
    model = build_model(name="small_cnn", num_classes=10, in_channels=1)
    fine_tune_calls = []

    def fine_tune(pruned: nn.Module, step: int) -> None:
        # masks are still in place between steps: a training step must keep pruned weights at 0
        fine_tune_calls.append(step)
        optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
        pruned(torch.randn(2, 1, 8, 8)).sum().backward()
        optimizer.step()

    prune_model(model, method=method, sparsity=0.6, steps=steps, fine_tune=fine_tune)
    assert fine_tune_calls == list(range(1, steps + 1))
    report = sparsity_report(model, method=method)
    assert abs(report["prunable_sparsity"] - 0.6) <= 0.01
    if method == "l1_unstructured":  # the same fraction in every layer
        assert all(abs(row["sparsity"] - 0.6) <= 0.01 for row in report["layers"])
    if method == "ln_structured":  # whole output channels are zero
        assert all(abs(zero_channel_fraction(m.weight) - 0.6) <= 0.05
                   for m in model.modules() if isinstance(m, nn.Conv2d))
    state = model.state_dict()
    assert not [k for k in state if k.endswith(("_orig", "_mask"))]
    assert not any(m._forward_pre_hooks for m in model.modules())
    fresh = build_model(name="small_cnn", num_classes=10, in_channels=1)
    fresh.load_state_dict(state, strict=True)  # plain weights for the original architecture
    assert sparsity_report(fresh, method=method)["prunable_sparsity"] == report["prunable_sparsity"]


def test_step_amounts_compose_to_the_target():
    amounts = step_amounts(0.9, 3)
    remaining = 1.0
    for amount in amounts:
        remaining *= 1 - amount
    assert 1 - remaining == pytest.approx(0.9)
    with pytest.raises(ValueError, match="target sparsity"):
        step_amounts(1.0, 1)


@pytest.mark.parametrize("name", ["tiny_cnn", "small_cnn", "resnet18"])
def test_static_quantization_runs_and_reloads(name):
    torch.manual_seed(0)
    model = build_model(name=name, num_classes=10, in_channels=1).eval()
    images = torch.randn(4, 1, 28, 28)
    quantized = quant.quantize_static(model, [{"image": images}], num_batches=1)
    assert any(m.__class__.__module__.startswith("torch.ao.nn.quantized") for m in quantized.modules())
    out = quant.run_quantized(quantized, images)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    buffer.seek(0)
    skeleton = quant.quantized_skeleton(model)
    skeleton.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(quant.run_quantized(skeleton, images), out)
    assert isinstance(model[0][0] if name != "resnet18" else model.conv1, nn.Conv2d)  # the float model untouched


def test_quantized_models_are_smaller_and_close_to_fp32(trained_small_cnn):
    images, labels = _learnable_task(seed=1, num=256)
    calibration = [{"image": images[i:i + 64]} for i in range(0, 256, 64)]
    fp32_top1 = _top1(trained_small_cnn, images, labels)
    assert fp32_top1 > 0.9  # the task was learnt, so the comparison below means something
    static = quant.quantize_static(trained_small_cnn, calibration, num_batches=4)
    dynamic = quant.quantize_dynamic_linear(trained_small_cnn)
    assert size_on_disk_mb(static) < 0.5 * size_on_disk_mb(trained_small_cnn)
    assert size_on_disk_mb(dynamic) <= size_on_disk_mb(trained_small_cnn)
    assert abs(_top1(static, images, labels) - fp32_top1) <= 0.03
    assert abs(_top1(dynamic, images, labels) - fp32_top1) <= 0.03
    linear = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
    assert size_on_disk_mb(quant.quantize_dynamic_linear(linear)) < 0.5 * size_on_disk_mb(linear)


def test_quantization_aware_training_trains_and_converts(trained_small_cnn):
    images, labels = _learnable_task(seed=2, num=256)
    seen = []

    def train(prepared: nn.Module) -> None:
        assert any("FakeQuantize" in type(m).__name__ for m in prepared.modules())
        _train(prepared, images, labels, steps=3)
        seen.append(True)

    qat = quant.quantize_aware_training(trained_small_cnn, train)
    assert seen and abs(_top1(qat, images, labels) - _top1(trained_small_cnn, images, labels)) <= 0.05


def test_parameter_counts_of_float_pruned_and_quantized_models(trained_small_cnn):
    model = copy.deepcopy(trained_small_cnn)
    params, nonzero = count_parameters(model)
    assert params == sum(p.numel() for p in model.parameters()) and nonzero <= params
    prune_model(model, method="global_l1", sparsity=0.5)
    pruned_params, pruned_nonzero = count_parameters(model)
    assert pruned_params == params and pruned_nonzero < 0.6 * params
    images = torch.randn(8, 1, 12, 12)
    static = quant.quantize_static(trained_small_cnn, [{"image": images}], num_batches=1)
    folded = params - sum(m.weight.numel() + m.bias.numel() for m in trained_small_cnn.modules()
                          if isinstance(m, nn.BatchNorm2d)) + sum(m.out_channels for m in trained_small_cnn.modules()
                                                                  if isinstance(m, nn.Conv2d) and m.bias is None)
    assert count_parameters(static)[0] == folded  # BN folded into conv weights and (new) conv biases
    assert cpu_latency_ms(static, images, num_batches=2, warmup=1) > 0


def test_report_has_every_row_and_column(tmp_path):
    rows = [ReportRow(model="teacher", top1=0.9, params=100, nonzero_params=100, size_mb=1.0, latency_ms=2.0,
                      balanced_acc=0.85, extra={"many": 0.95, "few": 0.7}),
            ReportRow(model="student/pruned", top1=0.8, params=10, nonzero_params=5, size_mb=0.1, latency_ms=1.0,
                      balanced_acc=0.75, extra={"sparsity": 0.5})]
    (tmp_path / "summary.json").write_text(json.dumps({"final": {"eval/top1": 0.8}}))
    summary = write_report(rows, tmp_path, note="latency: 1 thread", summary_extra={"sparsity": {"x": 1}})
    assert summary["final"] == {"eval/top1": 0.8}  # an existing run summary is extended
    columns = ["model", "top1", "balanced_acc", "params", "nonzero_params", "size_mb", "latency_ms", "many", "few",
               "sparsity"]
    assert table_columns(rows) == columns
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["report"]["columns"] == columns and len(stored["report"]["rows"]) == 2
    assert stored["report"]["rows"][1][columns.index("nonzero_params")] == 5
    markdown = (tmp_path / "report.md").read_text()
    assert markdown == to_markdown(rows, note="latency: 1 thread")
    lines = markdown.splitlines()
    assert lines[0] == "| " + " | ".join(columns) + " |"
    assert "| teacher | 90.00 % | 85.00 % | 100 | 100 | 1.000 | 2.000 | 95.00 % | 70.00 % | - |" in lines


def _compress_config(*overrides: str):
    from cvdist.config_loading import load_config
    from cvdist.tasks.compress.run import CompressRunConfig

    return load_config(overrides=list(overrides), schema=CompressRunConfig)


@pytest.mark.parametrize("overrides, message", [
    ([], "models is empty"),
    (["models.a=x", "compress=[a,b]"], "compress: 'b' is not one of the models' labels: a"),
    (["models.a=x", "prune.method=random"], "prune.method='random' is not allowed"),
    (["models.a=x", "prune.sparsity=1.0"], r"prune.sparsity=1.0 must lie in \[0, 1\)"),
    (["models.a=x", "prune.steps=0"], "prune.steps=0 must be >= 1"),
    (["models.a=x", "prune.method=none", "quantize.after_pruning=true"], "quantize.after_pruning"),
    (["models.a=x", "report.num_threads=0"], "report.num_threads"),
])
def test_compress_config_errors_name_the_key(overrides, message):
    from cvdist.config import ConfigError
    from cvdist.tasks.compress.run import validate_compress

    with pytest.raises(ConfigError, match=message):
        validate_compress(_compress_config(*overrides))


def test_compress_command_parses_models_in_order():
    import argparse

    from cvdist.commands.compress import add_compress_command, config_from_args
    from cvdist.config import ConfigError

    parser = argparse.ArgumentParser()
    add_compress_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compress", "--model", "b=runs/b", "--model", "a=runs/a", "prune.sparsity=0.3"])
    config = config_from_args(args)
    assert list(config.models.items()) == [("b", "runs/b"), ("a", "runs/a")] and config.prune.sparsity == 0.3
    with pytest.raises(ConfigError, match="LABEL=SOURCE"):
        config_from_args(parser.parse_args(["compress", "--model", "runs/a"]))


@pytest.mark.slow
def test_compress_recipe_on_a_weights_file(tmp_path):
    from tests.helpers.recipes import REPO, run_recipe

    torch.manual_seed(0)
    weights = tmp_path / "small.pt"
    torch.save(build_model(name="small_cnn", num_classes=10, in_channels=1).state_dict(), weights)
    common = ["data.dataset=synthetic", "data.num_train_samples=128", "data.num_eval_samples=64",
              "data.global_batch_size=32", "tracking.wandb_mode=disabled", f"output_dir={tmp_path / 'runs'}"]
    script = REPO / "recipes" / "compress.py"
    from cvdist.tasks.compress.run import run_compress

    with pytest.raises(FileNotFoundError, match="models.x='/no/such.pt' does not exist"):
        run_compress(_compress_config(*common, "models.x=/no/such.pt"))
    with pytest.raises(ValueError, match="models.x.name"):
        run_compress(_compress_config(*common, f"models.x={weights}"))
    run_recipe([*common, f"models.small={weights}", "model.name=small_cnn", "model.num_classes=10",
                "model.in_channels=1", "prune.method=ln_structured", "prune.sparsity=0.5", "prune.steps=2",
                "prune.finetune_steps=1", "quantize.qat_steps=1", "quantize.after_pruning=true",
                "quantize.calibration_batches=1", "report.latency_batches=2"], script=script)
    out = tmp_path / "runs" / "compress"
    summary = json.loads((out / "summary.json").read_text())
    assert [row[0] for row in summary["report"]["rows"]] == [
        "small", "small/pruned", "small/pruned+int8_dynamic", "small/pruned+int8_static", "small/pruned+int8_qat"]
    assert abs(summary["sparsity"]["small"]["prunable_sparsity"] - 0.5) <= 0.01
    assert [row["layer"] for row in summary["sparsity"]["small"]["layers"]] == ["0.0", "1.0", "3.0", "4.0", "6.0"]
    pruned = build_model(name="small_cnn", num_classes=10, in_channels=1)
    pruned.load_state_dict(torch.load(out / "models" / "small-pruned.pt", weights_only=True), strict=True)
    skeleton = quant.quantized_skeleton(pruned)
    skeleton.load_state_dict(torch.load(out / "models" / "small-pruned-int8_static.pt", weights_only=True))
    assert quant.run_quantized(skeleton, torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert (out / "report.md").read_text().count("| small") == 5
