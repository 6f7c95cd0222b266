"""The supervised recipe's config (``recipes/supervised.py``): RunConfig plus ``loss``.

``loss.label_smoothing`` has the same key and meaning as in the long-tail recipe's ``loss``
section, so a setting moves between the two recipes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvdist.config import ConfigError, ModelConfig, RunConfig, ScheduleConfig, TrainConfig, section


@dataclass
class SupervisedLossConfig:
    """The training loss: cross-entropy, optionally with label smoothing."""

    label_smoothing: float = 0.0
    """Label smoothing in [0, 1): the target puts ``1 - s`` on the true class and spreads ``s``
    evenly over all classes (``torch.nn.functional.cross_entropy``'s ``label_smoothing``).
    Evaluation loss and accuracy are unaffected."""


@dataclass
class SupervisedRunConfig(RunConfig):
    """RunConfig plus the ``loss`` section."""

    recipe: str = "supervised"
    name: str = "supervised"
    model: ModelConfig = section(ModelConfig, name="small_resnet")
    schedule: ScheduleConfig = section(ScheduleConfig, name="onecycle", pct_start=0.25)
    train: TrainConfig = section(TrainConfig, epochs=6)
    loss: SupervisedLossConfig = section(SupervisedLossConfig, label_smoothing=0.1)


def validate_supervised(config: SupervisedRunConfig) -> None:
    """Check the supervised recipe's own section; raise ConfigError naming the key and the fix.
    :func:`cvdist.engine.start_session` checks the common sections."""
    smoothing = config.loss.label_smoothing
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"loss.label_smoothing={smoothing} must lie in [0, 1) (0 = plain cross-entropy, "
                          "e.g. 0.1)")
