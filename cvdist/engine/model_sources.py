"""Trained classifiers from where cvdist keeps them: a run directory, a checkpoint directory
(any strategy, ZeRO included) or a weights file, rebuilt with the right architecture.

A run knows its architecture (the ``model`` section of its ``config.yaml``), so only a plain
weights file needs one from the caller. The weights are read by
:func:`cvdist.engine.transfer.load_source_state_dict` (ZeRO shards consolidated, ``weights_only``
loading) and must match the architecture exactly. Layouts that recipes add around a classifier
are undone here: a distillation run stores its student under ``student.*`` beside the hint
adapter (``adapter.*``, dropped); a multi-task run's auxiliary heads (``aux_heads.*``) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from torch import nn

from cvdist.engine.transfer import load_source_state_dict
from cvdist.models import build_model
from cvdist.models.multitask import is_aux_key
from cvdist.models.transfer import check_compatible

STUDENT_PREFIX, ADAPTER_PREFIX = "student.", "adapter."


@dataclass
class ModelSpec:
    """What :func:`cvdist.models.build_model` needs."""

    name: str
    num_classes: int
    in_channels: int
    small_stem: bool = True


def run_config_of(source: str | Path) -> Optional[dict]:
    """The resolved config (a dict) of the cvdist run that ``source`` (a run or checkpoint
    directory) belongs to; None for a weights file."""
    path = Path(source)
    if not path.is_dir():
        return None
    from cvdist.engine.export import resolve_checkpoint_dir  # engine code only when a run is the source

    checkpoint = resolve_checkpoint_dir(path)
    for candidate in (checkpoint.parent.parent, checkpoint.parent, path):
        if (candidate / "config.yaml").is_file():
            # (resolve=False: cvdist writes plain values; never resolve ${oc.env:...} from another's file)
            return OmegaConf.to_container(OmegaConf.load(candidate / "config.yaml"), resolve=False)
    raise FileNotFoundError(f"{source}: found checkpoint {checkpoint} but no config.yaml of its run (looked in "
                            f"{checkpoint.parent.parent}); give a weights file and the architecture instead")


def resolve_spec(source: str | Path, *, given: ModelSpec, field_prefix: str) -> tuple[ModelSpec, str]:
    """The architecture of ``source`` and the recipe that trained it (``""`` for a weights file).
    Fields of ``given`` left empty (``""`` / 0) come from the run; a given value that contradicts
    the run raises ``ValueError`` naming ``field_prefix.<field>``."""
    config = run_config_of(source)
    if config is None:
        if not given.name or given.num_classes <= 0 or given.in_channels <= 0:
            raise ValueError(f"{field_prefix}: {source} is a weights file, which does not say its architecture; set "
                             f"{field_prefix}.name, .num_classes and .in_channels (or give a cvdist run directory)")
        return given, ""
    stored = config.get("model", {})
    values = {}
    for key in ("name", "num_classes", "in_channels", "small_stem"):
        mine = getattr(given, key)
        if key != "small_stem" and mine not in ("", 0) and mine != stored.get(key):
            raise ValueError(f"{field_prefix}.{key}={mine!r} but the run at {source} trained model.{key}="
                             f"{stored.get(key)!r}; leave {field_prefix}.{key} empty to take the run's")
        values[key] = stored.get(key, mine)
    return ModelSpec(**values), str(config.get("recipe", ""))


def classifier_state(state: dict, *, recipe: str) -> dict:
    """The plain classifier's entries of a run's ``state`` (see the module docstring)."""
    if recipe == "distill" or (state and all(k.startswith((STUDENT_PREFIX, ADAPTER_PREFIX)) for k in state)):
        state = {k[len(STUDENT_PREFIX):]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
    return {k: v for k, v in state.items() if not is_aux_key(k)}


def load_trained_model(source: str | Path, *, given: ModelSpec, field_prefix: str) -> tuple[nn.Module, ModelSpec]:
    """``(model in eval mode on the CPU, its spec)`` for ``source``; ``FileNotFoundError`` /
    ``ValueError`` naming ``field_prefix`` for a missing source or weights that do not fit."""
    if not Path(source).exists():
        raise FileNotFoundError(f"{field_prefix}={str(source)!r} does not exist; give a cvdist run or checkpoint "
                                "directory or a .pth / .pt / .safetensors weights file")
    spec, recipe = resolve_spec(source, given=given, field_prefix=field_prefix)
    model = build_model(name=spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                        small_stem=spec.small_stem)
    state = classifier_state(load_source_state_dict(source), recipe=recipe)
    check_compatible(model.state_dict(), state, head_name="", include_head=True, source=f"{field_prefix}={source}")
    model.load_state_dict(state, strict=True)
    return model.eval(), spec
