"""The distillation recipe's config (``recipes/distill.py``): RunConfig plus ``teacher``, ``kd``,
``loss`` (the label loss, any long-tail loss) and ``longtail`` (long-tailed built-in data and
its metrics), and its validation.

``model`` is the student. The teacher comes from ``teacher.path``: a cvdist run or checkpoint
directory (its architecture is read from the run) or a weights file (then ``teacher.name``,
``teacher.num_classes`` and ``teacher.in_channels`` say the architecture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch import nn

from cvdist.compress.report import ReportConfig, check_report
from cvdist.config import ConfigError, ModelConfig, RunConfig, ScheduleConfig, get_by_path, section
from cvdist.losses.distill import FEATURE_LOSSES
from cvdist.tasks.common import LossConfig, check_loss_options


@dataclass
class TeacherConfig(ModelConfig):
    """Where the teacher comes from (it is never trained) and, for a weights file, its architecture:
    the ``model`` fields (declared once, in ``ModelConfig``). Empty / 0 fields take the run's values;
    a weights file needs ``name`` (``num_classes`` / ``in_channels`` 0 = the student's)."""

    path: str = ""
    """A cvdist run or checkpoint directory (DDP or ZeRO), or a ``.pth`` / ``.pt`` / ``.safetensors``
    state_dict (e.g. torchvision weights)."""


@dataclass
class KdConfig:
    """Knowledge distillation (``cvdist.losses.distill``)."""

    temperature: float = 4.0
    """Softmax temperature T of the soft labels (the soft term is scaled by T^2)."""
    alpha: float = 0.9
    """Weight of the soft-label term; the label loss gets ``1 - alpha`` (0 = the student trained alone)."""
    feature_weight: float = 0.0
    """Weight of the feature (hint) term; 0 = logit KD only."""
    teacher_hint: str = ""
    """Module name of the teacher's hint layer (its output is matched), e.g. ``4`` of small_cnn or ``layer3``."""
    student_hint: str = ""
    """Module name of the student's hint layer; an adapter maps its output to the teacher hint's shape."""
    feature_loss: Literal[FEATURE_LOSSES] = "mse"
    """``mse`` or ``cosine`` (1 - cosine similarity of the flattened features)."""
    logit_adjust_tau: float = 0.0
    """Long-tail aware soft term: both logits + tau * log(training prior) before the softmax
    (balanced softmax for distillation, ``cvdist.losses.distill``); 0 = plain Hinton KD, 1 = the
    usual choice with a long-tail label loss such as balanced_softmax."""


@dataclass
class DistillLongtailConfig:
    """The many / medium / few split of the long-tail metrics (the built-in data's long-tail cut is
    ``data.imbalance_factor``)."""

    shot_many: float = 100.0
    """Many-shot: more training samples than this (scaled for small sets)."""
    shot_few: float = 20.0
    """Few-shot: fewer training samples than this (scaled likewise)."""


@dataclass
class DistillRunConfig(RunConfig):
    """RunConfig (``model`` = the student) plus ``teacher``, ``kd``, ``loss``, ``longtail``, ``report``."""

    recipe: str = "distill"
    name: str = "distill"
    schedule: ScheduleConfig = section(ScheduleConfig, warmup_steps=50)
    teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(name="", num_classes=0, in_channels=0))
    kd: KdConfig = field(default_factory=KdConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(name="ce"))
    """The label loss (weighted ``1 - kd.alpha``): ``ce`` or any long-tail loss of the long-tail recipe."""
    longtail: DistillLongtailConfig = field(default_factory=DistillLongtailConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    """Latency measurement and balanced-accuracy columns of the final report."""


def validate_distill(config: DistillRunConfig) -> None:
    """Check the distillation sections; ConfigError naming the key and the fix. The hint layer
    names are checked against the built models by :func:`check_hint_layer`."""
    teacher, kd = config.teacher, config.kd
    if not teacher.path:
        raise ConfigError("teacher.path is empty; give the teacher's cvdist run or checkpoint directory or a "
                          "weights file, e.g. teacher.path=runs/teacher")
    if not Path(teacher.path).exists():
        raise ConfigError(f"teacher.path={teacher.path!r} does not exist; give a cvdist run or checkpoint "
                          "directory or a .pth / .pt / .safetensors weights file")
    check_loss_options(config.loss)
    if kd.temperature <= 0:
        raise ConfigError(f"kd.temperature={kd.temperature} must be > 0 (Hinton et al. use 1-20; 4 is common)")
    if not 0 <= kd.alpha <= 1:
        raise ConfigError(f"kd.alpha={kd.alpha} must lie in [0, 1] (1 = soft labels only, 0 = no logit KD)")
    if kd.logit_adjust_tau < 0:
        raise ConfigError(f"kd.logit_adjust_tau={kd.logit_adjust_tau} must be >= 0 (0 = off, 1 = balanced softmax)")
    if kd.feature_weight < 0:
        raise ConfigError(f"kd.feature_weight={kd.feature_weight} must be >= 0 (0 = no feature KD)")
    hints = bool(kd.teacher_hint), bool(kd.student_hint)
    if kd.feature_weight > 0 and not all(hints):
        raise ConfigError("kd.feature_weight > 0 needs both hint layers: set kd.teacher_hint and kd.student_hint "
                          "to module names (a wrong name lists the available ones)")
    if any(hints) and kd.feature_weight == 0:
        raise ConfigError("kd.teacher_hint / kd.student_hint are set but kd.feature_weight=0, so they would be "
                          "ignored; set kd.feature_weight > 0 (e.g. 1.0) or remove the hints")
    if not 0 <= config.longtail.shot_few <= config.longtail.shot_many:
        raise ConfigError("longtail.shot_few and longtail.shot_many need 0 <= shot_few <= shot_many")
    check_report(config.report)
    for key in ("teacher.num_classes", "teacher.in_channels"):
        if get_by_path(config, key) < 0:
            raise ConfigError(f"{key}={get_by_path(config, key)} must be >= 0 (0 = from the run or the student)")


def check_hint_layer(model: nn.Module, name: str, *, key: str) -> nn.Module:
    """The submodule ``name`` of ``model``; ConfigError for ``key`` listing the available names."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        available = [n for n in modules if n]
        raise ConfigError(f"{key}={name!r} is not a module of the model; available: {', '.join(available)}")
    return modules[name]
