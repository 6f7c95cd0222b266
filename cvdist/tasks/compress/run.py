"""The compression run behind ``recipes/compress.py`` and ``cvdist compress``: load trained
models, evaluate them, prune and quantize one of them, evaluate every variant on the same test
split, and write one report (``report.md``, ``summary.json``, W&B table ``report/models``).

It runs in one process on the CPU: INT8 kernels and the latency column are CPU measurements,
and pruning / quantization of a classifier of this size takes seconds to minutes, so there is
nothing to distribute. Fine-tuning between pruning steps and quantization-aware training are a
few plain SGD steps on the training split (:func:`fine_tune`), not an engine run.

Output directory ``output_dir/name``: ``config.yaml`` (resolved), ``report.md``,
``summary.json`` (``report``, ``sparsity`` per compressed model and layer, ``sources``), and
``models/<label>-<variant>.pt``:
each compressed model's state_dict (pruned: plain weights for the original architecture;
int8: loads into :func:`cvdist.compress.quantization.quantized_skeleton`).
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional

import torch
from torch import nn
from torch.nn import functional as F

from cvdist import config as config_module
from cvdist.compress import quantization as quant
from cvdist.compress.pruning import PRUNE_METHODS, format_sparsity, prune_model, sparsity_report
from cvdist.compress.report import (ReportConfig, ReportRow, check_report, is_long_tailed, measure_row, table_columns,
                                    table_rows, write_report)
from cvdist.config import ConfigError, DataConfig, ModelConfig, TrackingConfig
from cvdist.data.longtail_data import build_longtail_data
from cvdist.engine.model_sources import ModelSpec, load_trained_model
from cvdist.eval.longtail import scaled_shot_thresholds
from cvdist.eval.longtail_evaluator import evaluate_variants, fp32_mover
from cvdist.io import atomic_write_text
from cvdist.tasks.common import first_images
from cvdist.tracking.records import check_run_dir_is_free
from cvdist.tracking.wandb_run import WandbRun, resolve_wandb_mode


@dataclass
class PruneConfig:
    """Pruning of the models named by ``compress`` (``cvdist.compress.pruning``)."""

    method: Literal[("none", *PRUNE_METHODS)] = "global_l1"
    """``none``, ``l1_unstructured`` (per layer), ``global_l1`` or ``ln_structured`` (conv channels)."""
    sparsity: float = 0.5
    """Target fraction of zeros among the prunable weights, in [0, 1)."""
    steps: int = 1
    """Iterative pruning: reach the target in this many equal steps."""
    norm: int = 1
    """``ln_structured``: the norm ranking channels (1 = L1, 2 = L2)."""
    finetune_steps: int = 0
    """SGD steps on the training split after each pruning step (0 = none)."""
    finetune_lr: float = 0.01
    """Learning rate of that fine-tuning (SGD, momentum 0.9)."""


@dataclass
class QuantizeConfig:
    """INT8 variants of the models named by ``compress`` (``cvdist.compress.quantization``)."""

    dynamic: bool = True
    """Post-training dynamic quantization of the linear layers."""
    static: bool = True
    """Post-training static quantization (conv nets; fused, calibrated on training batches)."""
    calibration_batches: int = 8
    """Training batches the static observers see."""
    qat_steps: int = 0
    """> 0: also quantization-aware training for this many SGD steps."""
    qat_lr: float = 0.001
    """Learning rate of QAT."""
    after_pruning: bool = False
    """Quantize the pruned model (pruned + int8) instead of the original one. The pruning is
    permanent by then, so QAT's training fills pruned weights in again (the report's non-zero
    column shows it); the post-training variants keep the zeros."""


@dataclass
class CompressRunConfig:
    """The compression run's config (defaults: ``recipes/compress.yaml``)."""

    name: str = "compress"
    """Output directory ``output_dir/name``."""
    output_dir: str = "runs"
    recipe: str = "compress"
    models: dict[str, str] = field(default_factory=dict)
    """Label -> trained model (cvdist run / checkpoint directory or weights file), in report order,
    e.g. ``{teacher: runs/teacher, student: runs/student, student_kd: runs/kd}``."""
    compress: list[str] = field(default_factory=list)
    """Labels of the models to prune and quantize, e.g. ``[teacher, student_kd]`` (empty = the last
    of ``models``)."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="", num_classes=0, in_channels=0))
    """Architecture of weights-file sources (run directories say their own; a value given here must agree)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Test split to evaluate on; training split for calibration and fine-tuning."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    """Seed of data order and fine-tuning."""


def validate_compress(config: CompressRunConfig) -> list[str]:
    """Check the config; returns the labels to compress. ConfigError naming the key and the fix."""
    if not config.models:
        raise ConfigError("models is empty; give at least one trained model, e.g. models.student=runs/student "
                          "(cvdist compress: --model student=runs/student)")
    for label in config.models:
        if not label.replace("-", "_").isidentifier():
            raise ConfigError(f"models: label {label!r} must be a plain name (letters, digits, _ or -)")
    labels = list(config.compress) or [list(config.models)[-1]]
    for label in labels:
        if label not in config.models:
            raise ConfigError(f"compress: {label!r} is not one of the models' labels: {', '.join(config.models)}")
    if not 0 <= config.prune.sparsity < 1:
        raise ConfigError(f"prune.sparsity={config.prune.sparsity} must lie in [0, 1)")
    for key in ("prune.steps", "prune.norm", "quantize.calibration_batches", "data.global_batch_size"):
        if config_module.get_by_path(config, key) < 1:
            raise ConfigError(f"{key}={config_module.get_by_path(config, key)} must be >= 1")
    for key in ("prune.finetune_steps", "quantize.qat_steps"):
        if config_module.get_by_path(config, key) < 0:
            raise ConfigError(f"{key}={config_module.get_by_path(config, key)} must be >= 0")
    if config.quantize.after_pruning and config.prune.method == "none":
        raise ConfigError("quantize.after_pruning=true but prune.method=none; choose a pruning method or set it false")
    if config.data.imbalance_factor < 1:
        raise ConfigError(f"data.imbalance_factor={config.data.imbalance_factor} must be >= 1 (1 = all data)")
    check_report(config.report)
    return labels


def fine_tune(model: nn.Module, batches: Iterator[dict], *, steps: int, lr: float) -> None:
    """``steps`` SGD steps (momentum 0.9) of cross-entropy on ``batches``, in train mode."""
    if steps == 0:
        return
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    model.train()
    for batch in itertools.islice(batches, steps):
        loss = F.cross_entropy(model(batch["image"].float()), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def _endless(train) -> Iterator[dict]:
    for epoch in itertools.count():
        yield from train.iterate(epoch=epoch)


class _Measurer:
    """Evaluates models on the test split and measures their report rows."""

    def __init__(self, data, settings: ReportConfig, thresholds, with_balanced: bool):
        self.data, self.settings, self.thresholds, self.with_balanced = data, settings, thresholds, with_balanced
        self.images = first_images(data.eval_batches(), settings.latency_batch_size)

    def row(self, label: str, model: nn.Module, extra: Optional[dict] = None) -> ReportRow:
        cpu = torch.device("cpu")
        with quant.eager_mode_quantization(), torch.no_grad():  # int8 models run with the x86 engine
            metrics = evaluate_variants([("", model.eval(), False)], self.data.eval_batches(),
                                        class_counts=self.data.class_counts, thresholds=self.thresholds,
                                        posthoc_tau=0.0, to_device=fp32_mover(cpu), device=cpu)[""]
            row = measure_row(label, model, metrics=metrics, latency_images=self.images, settings=self.settings,
                              with_balanced=self.with_balanced, extra=extra)
        print(f"[cvdist] {label}: top-1 {row.top1:.4f}, {row.params:,} params ({row.nonzero_params:,} non-zero), "
              f"{row.size_mb:.3f} MB, {row.latency_ms:.2f} ms/batch", flush=True)
        return row


def _compressed_variants(config: CompressRunConfig, label: str, model: nn.Module, train, measure: _Measurer,
                         out_models) -> tuple[list[ReportRow], dict]:
    """Rows of the pruned and int8 variants of ``model``, their state_dicts saved under
    ``out_models``; returns the rows and the sparsity report (empty without pruning)."""
    rows, sparsity, batches = [], {}, _endless(train)
    prune_cfg, quant_cfg = config.prune, config.quantize
    base = model
    if prune_cfg.method != "none":
        pruned = copy.deepcopy(model)
        prune_model(pruned, method=prune_cfg.method, sparsity=prune_cfg.sparsity, steps=prune_cfg.steps,
                    norm=prune_cfg.norm, fine_tune=lambda m, step: fine_tune(
                        m, batches, steps=prune_cfg.finetune_steps, lr=prune_cfg.finetune_lr))
        sparsity = sparsity_report(pruned, method=prune_cfg.method)
        print(format_sparsity(sparsity), flush=True)
        rows.append(measure.row(f"{label}/pruned", pruned, extra={"sparsity": sparsity["prunable_sparsity"]}))
        torch.save(pruned.state_dict(), out_models / f"{label}-pruned.pt")
        base = pruned if quant_cfg.after_pruning else model
    tag = f"{label}/pruned+" if base is not model else f"{label}/"
    variants = []
    if quant_cfg.dynamic:
        variants.append(("int8_dynamic", lambda: quant.quantize_dynamic_linear(base)))
    if quant_cfg.static:
        variants.append(("int8_static", lambda: quant.quantize_static(base, batches,
                                                                      num_batches=quant_cfg.calibration_batches)))
    if quant_cfg.qat_steps:
        variants.append(("int8_qat", lambda: quant.quantize_aware_training(base, lambda prepared: fine_tune(
            prepared, batches, steps=quant_cfg.qat_steps, lr=quant_cfg.qat_lr))))
    for kind, build in variants:
        quantized = build()
        rows.append(measure.row(tag + kind, quantized))
        torch.save(quantized.state_dict(), out_models / f"{tag.replace('/', '-').replace('+', '-')}{kind}.pt")
    return rows, sparsity


def run_compress(config: CompressRunConfig) -> dict:
    """The whole compression run (see the module docstring); returns the written summary."""
    labels = validate_compress(config)
    run_dir = Path(config.output_dir) / config.name
    check_run_dir_is_free(run_dir, resume="none")
    torch.manual_seed(config.seed)
    given = ModelSpec(name=config.model.name, num_classes=config.model.num_classes,
                      in_channels=config.model.in_channels, small_stem=config.model.small_stem)
    models, specs = {}, {}
    for name, source in config.models.items():
        models[name], specs[name] = load_trained_model(source, given=given, field_prefix=f"models.{name}")
    label, spec = labels[0], specs[labels[0]]
    mismatched = [n for n, s in specs.items() if (s.num_classes, s.in_channels) != (spec.num_classes, spec.in_channels)]
    if mismatched:
        raise ConfigError(f"models.{mismatched[0]} has {specs[mismatched[0]].num_classes} classes / "
                          f"{specs[mismatched[0]].in_channels} channels but models.{label} has {spec.num_classes} / "
                          f"{spec.in_channels}; one report compares models of the same task")
    data = build_longtail_data(config.data, num_classes=spec.num_classes, in_channels=spec.in_channels,
                                     rank=0, world_size=1,
                                     micro_batch_size=config.data.global_batch_size, seed=config.seed, num_epochs=1)
    thresholds = scaled_shot_thresholds(data.class_counts)
    with_balanced = is_long_tailed(data.class_counts, setting=config.report.balanced)
    measure = _Measurer(data, config.report, thresholds, with_balanced)
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_module.to_yaml(config))
    rows = [measure.row(name, model) for name, model in models.items()]
    sparsity = {}
    for label in labels:
        more, sparsity[label] = _compressed_variants(config, label, models[label], data.train, measure,
                                                     run_dir / "models")
        rows += more
    settings = config.report
    note = (f"Test split: {len(data.class_counts)} classes; CPU latency per batch of {len(measure.images)} images: "
            f"median of {settings.latency_batches} after {settings.warmup_batches} warm-up, {settings.num_threads} "
            f"thread(s), torch {torch.__version__}, quantized engine {quant.QUANT_ENGINE}.")
    summary = write_report(rows, run_dir, note=note, summary_extra={
        "sparsity": sparsity, "sources": dict(config.models), "compressed": labels})
    _log_to_wandb(config, run_dir, rows)
    print(f"[cvdist] report: {run_dir / 'report.md'}", flush=True)
    return summary


def _log_to_wandb(config: CompressRunConfig, run_dir, rows: list[ReportRow]) -> None:
    tracking = config.tracking
    run = WandbRun(mode=resolve_wandb_mode(tracking.wandb_mode, os.environ), is_main=True, run_dir=run_dir,
                   name=config.name, project=tracking.project, entity=tracking.entity,
                   group=tracking.group or "compress", job_type=tracking.job_type or "compress",
                   tags=list(tracking.tags), config=config_module.to_dict(config), run_id=None)
    run.log_table("report/models", columns=table_columns(rows), rows=table_rows(rows))
    run.finish()
