"""The compression report: one row per model (teacher, student, student + KD, pruned,
quantized, ...) with accuracy, parameters, non-zero parameters, on-disk size and CPU latency.

How each number is measured:

* **parameters / non-zero**: every weight and bias the model computes with. Float layers count
  their ``parameters()``; quantized layers (which hold int8 weights in packed form, not as
  parameters) count ``weight()`` / ``bias()``. Fused quantized models have folded BatchNorm
  into the convolutions, so they have fewer parameters than their float source: that is real.
* **size (MB)**: the model's ``state_dict`` saved with ``torch.save`` to a temporary file, its
  size in bytes / 1e6. For quantized models that is the int8 state_dict, which loads with
  ``torch.load(weights_only=True)`` into :func:`cvdist.compress.quantization.quantized_skeleton`;
  pruned models keep dense tensors (zeros take the same space; the gain shows once the zeros
  are stored sparsely or compressed, and in the non-zero column).
* **latency (ms / batch)**: the median over ``num_batches`` timed forward passes of one batch
  on the CPU after ``warmup`` untimed ones, with ``torch.set_num_threads(num_threads)`` for the
  measurement (restored afterwards). It depends on the machine and its load; compare rows of
  the same report only.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn

from cvdist.config import ConfigError
from cvdist.io import atomic_write_json, atomic_write_text

REPORT_FILE = "report.md"


@dataclass
class ReportConfig:
    """How the report measures latency (a config section of the distill and compress recipes)."""

    latency_batch_size: int = 64
    """Images per timed batch."""
    latency_batches: int = 20
    """Timed batches; the median is reported."""
    warmup_batches: int = 3
    """Untimed batches before the timed ones."""
    num_threads: int = 1
    """``torch.set_num_threads`` while timing (1 = comparable across machines and free of
    contention with other processes; a deployment may use more)."""
    balanced: Literal["auto", "always", "never"] = "auto"
    """Balanced accuracy and many / medium / few columns: ``auto`` (when the training classes are
    long-tailed, see :func:`is_long_tailed`), ``always`` or ``never``."""


LONG_TAIL_RATIO = 2.0
"""Training data whose largest class has at least this many times the samples of its smallest
(non-empty) class counts as long-tailed."""


def is_long_tailed(class_counts, *, setting: str = "auto") -> bool:
    """Whether the report shows balanced accuracy for data with training ``class_counts``."""
    if setting not in ("auto", "always", "never"):
        raise ValueError(f"report.balanced={setting!r} is not one of 'auto', 'always', 'never'")
    if setting != "auto":
        return setting == "always"
    present = [n for n in (class_counts or []) if n > 0]
    return bool(present) and max(present) >= LONG_TAIL_RATIO * min(present)


@dataclass
class ReportRow:
    """One model of the report."""

    model: str
    """Label, e.g. ``teacher``, ``student_kd``, ``student_kd/pruned``, ``student_kd/int8_static``."""
    top1: float
    """Test top-1 accuracy in [0, 1]."""
    params: int
    nonzero_params: int
    size_mb: float
    latency_ms: float
    """Median CPU time per batch of ``batch_size`` images."""
    balanced_acc: Optional[float] = None
    """Mean per-class recall (reported when the training data is long-tailed)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth a column (e.g. ``sparsity``, ``many`` / ``medium`` / ``few``)."""


def _quantized_weight_tensors(module: nn.Module) -> list[torch.Tensor]:
    tensors = []
    for accessor in ("weight", "bias"):
        value = getattr(module, accessor, None)
        value = value() if callable(value) else None
        if isinstance(value, torch.Tensor):
            tensors.append(value.dequantize() if value.is_quantized else value)
    return tensors


def parameter_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The weights and biases ``model`` computes with, float or int8 (see the module docstring)."""
    tensors, seen = [], set()
    for module in model.modules():
        if callable(getattr(module, "weight", None)) and not isinstance(getattr(module, "weight"), torch.Tensor):
            tensors.extend(_quantized_weight_tensors(module))  # quantized conv / linear: packed weights
            seen.update(id(p) for p in module.parameters())
            continue
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                tensors.append(parameter.detach())
    return tensors


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(parameters, non-zero parameters)`` of ``model``."""
    tensors = parameter_tensors(model)
    return sum(t.numel() for t in tensors), sum(int((t != 0).sum()) for t in tensors)


def size_on_disk_mb(model: nn.Module) -> float:
    """Bytes of ``torch.save(model.state_dict())`` in a temporary file, / 1e6."""
    handle, path = tempfile.mkstemp(suffix=".pt")
    os.close(handle)
    try:
        torch.save(model.state_dict(), path)
        return os.path.getsize(path) / 1e6
    finally:
        os.unlink(path)


def cpu_latency_ms(model: nn.Module, images: torch.Tensor, *, num_batches: int = 20, warmup: int = 3,
                   num_threads: int = 1) -> float:
    """Median wall time (ms) of ``model(images)`` on the CPU over ``num_batches`` timed passes after
    ``warmup`` untimed ones, with ``num_threads`` intra-op threads."""
    if num_batches < 1 or warmup < 0 or num_threads < 1:
        raise ValueError(f"latency needs num_batches >= 1 ({num_batches}), warmup >= 0 ({warmup}) and "
                         f"num_threads >= 1 ({num_threads})")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    images = images.float().cpu()
    times = []
    try:
        with torch.no_grad():
            for index in range(warmup + num_batches):
                start = time.perf_counter()
                model(images)
                if index >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 1000.0 * statistics.median(times)


def measure_row(label: str, model: nn.Module, *, metrics: dict[str, Any], latency_images: torch.Tensor,
                settings: ReportConfig, with_balanced: bool, extra: Optional[dict] = None) -> ReportRow:
    """A :class:`ReportRow` for ``model`` (on the CPU, in eval mode) given its test ``metrics``
    (``top1``, ``balanced_acc``, ``many`` / ``medium`` / ``few``); latency on ``latency_images``."""
    model = model.cpu().eval()
    params, nonzero = count_parameters(model)
    row_extra = dict(extra or {})
    if with_balanced:
        row_extra.update({k: metrics[k] for k in ("many", "medium", "few") if k in metrics})
    return ReportRow(model=label, top1=float(metrics["top1"]), params=params, nonzero_params=nonzero,
                     size_mb=size_on_disk_mb(model),
                     latency_ms=cpu_latency_ms(model, latency_images, num_batches=settings.latency_batches,
                                               warmup=settings.warmup_batches, num_threads=settings.num_threads),
                     balanced_acc=float(metrics["balanced_acc"]) if with_balanced else None, extra=row_extra)


def table_columns(rows: list[ReportRow]) -> list[str]:
    """Column names of the report (balanced accuracy and extras only when some row has them)."""
    columns = ["model", "top1"]
    if any(row.balanced_acc is not None for row in rows):
        columns.append("balanced_acc")
    columns += ["params", "nonzero_params", "size_mb", "latency_ms"]
    for row in rows:
        columns += [key for key in row.extra if key not in columns]
    return columns


def table_rows(rows: list[ReportRow]) -> list[list[Any]]:
    """The rows as lists in :func:`table_columns` order (None where a row lacks a column)."""
    columns = table_columns(rows)
    flat = [{**{k: v for k, v in asdict(row).items() if k != "extra"}, **row.extra} for row in rows]
    return [[entry.get(column) for column in columns] for entry in flat]


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("top1", "balanced_acc", "many", "medium", "few", "sparsity") and isinstance(value, float):
        return "nan" if value != value else f"{100 * value:.2f} %"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(rows: list[ReportRow], *, note: str = "") -> str:
    """The report as a Markdown table (accuracies in %, size in MB, latency in ms per batch)."""
    columns = table_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(columns) - 1)) + "|"]
    for values in table_rows(rows):
        lines.append("| " + " | ".join(_cell(c, v) for c, v in zip(columns, values)) + " |")
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def report_table(rows: list[ReportRow]) -> dict:
    """The rows as ``summary.json`` keeps them: ``{"columns": [...], "rows": [[...], ...]}``."""
    return {"columns": table_columns(rows), "rows": table_rows(rows)}


def write_report(rows: list[ReportRow], directory: str | Path, *, note: str = "",
                 summary_extra: Optional[dict] = None, with_summary: bool = True) -> dict:
    """Write ``report.md`` and, with ``with_summary``, put the rows (``report``) and
    ``summary_extra`` into ``summary.json`` of ``directory`` (kept keys: an existing summary is
    extended, not replaced); returns the summary (``{}`` without it). A training run passes
    ``with_summary=False`` and hands the table to the engine, which writes its summary."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / REPORT_FILE, to_markdown(rows, note=note))
    if not with_summary:
        return {}
    summary_path = directory / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["report"] = report_table(rows)
    summary.update(summary_extra or {})
    atomic_write_json(summary_path, summary)
    return summary


def check_report(report: ReportConfig) -> None:
    """ConfigError for ``report.*`` settings out of range."""
    for key in ("latency_batch_size", "latency_batches", "num_threads"):
        if getattr(report, key) < 1:
            raise ConfigError(f"report.{key}={getattr(report, key)} must be >= 1")
    if report.warmup_batches < 0:
        raise ConfigError(f"report.warmup_batches={report.warmup_batches} must be >= 0")
