"""Fine-tuning a pretrained trunk inside a dense model (detection, segmentation): freeze its first
stages, freeze its BatchNorm statistics, or give its layers decaying learning rates.

Every function takes the *trunk* module (a detector's ``model.backbone.body``, the feature
extractor over a cvdist classifier, or the classifier itself) and splits it into its *units*,
in forward order: the top-level children that hold parameters (a top-level ``stages`` /
``blocks`` / ``layers`` container counts as its children). The *stem* is the leading units
that are single layers (torchvision ResNets' ``conv1``, ``bn1``) or a unit named ``stem``
(``small_resnet``, timm's stems); when neither exists (``small_cnn``: numbered conv blocks) the
first unit is the stem. The remaining units are the *stages*, e.g. ``layer1`` .. ``layer4`` of
a ResNet; in ``small_resnet`` the downsampling block ``down`` between its two residual blocks is
a stage of its own; in a cvdist ViT's trunk (``cvdist.models.vit_pyramid``) the stem is the patch
embedding and the stages are the blocks, then the final norm.

- :func:`freeze_stages`: the stem and the first N stages stop training (``requires_grad``
  False; N = 1 is detectron2's ``FREEZE_AT=2``). Their BatchNorm layers still update their running
  statistics in train mode unless :func:`freeze_batchnorm` is applied too.
- :func:`freeze_batchnorm`: every ``nn.BatchNorm2d`` becomes torchvision's ``FrozenBatchNorm2d``
  with the loaded statistics and affine parameters as buffers (dense models train on a few
  images per GPU, too few for batch statistics). Subclasses that also hold an activation (timm's
  ``BatchNormAct2d``) are left as they are.
- :func:`layer_decay_groups`: optimiser parameter groups with ``lr * decay ** depth``: depth 0
  for everything outside the trunk (pyramid, heads), 1 for the last stage, one more per unit
  towards the input, the stem deepest (all its units share one depth).
"""

from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

_CONTAINERS = ("stages", "blocks", "layers")


def trunk_units(trunk: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(stem units, stages)`` of ``trunk`` (see the module doc); ValueError when it has no stage."""
    units: list[tuple[str, nn.Module]] = []
    for name, child in trunk.named_children():
        if name in _CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            units += [(f"{name}.{index}", grand) for index, grand in child.named_children()]
        elif any(True for _ in child.parameters()):
            units.append((name, child))
    num_stem = 0
    while num_stem < len(units) and (units[num_stem][0] == "stem" or _is_layer(units[num_stem][1])):
        num_stem += 1
    num_stem = max(num_stem, 1)
    if len(units) <= num_stem:
        raise ValueError(f"the backbone {type(trunk).__name__} has no stages after its stem; frozen stages and "
                         "layer decay need a staged CNN trunk")
    return [unit for _, unit in units[:num_stem]], [unit for _, unit in units[num_stem:]]


def _is_layer(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


def freeze_stages(trunk: nn.Module, *, num_stages: int) -> int:
    """Stop training the stem and the first ``num_stages`` stages (0 = nothing); returns the
    number of parameters frozen. ValueError naming the limit when ``num_stages`` is too large."""
    stem, stages = trunk_units(trunk)
    if not 0 <= num_stages <= len(stages):
        raise ValueError(f"frozen_stages={num_stages}: the backbone has {len(stages)} stages after its stem; "
                         f"use 0..{len(stages)}")
    if num_stages == 0:
        return 0
    frozen = 0
    for unit in stem + stages[:num_stages]:
        for parameter in unit.parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` under ``module`` by a
    ``FrozenBatchNorm2d`` holding its current statistics, weight and bias; returns how many."""
    replaced = 0
    for name, child in list(module.named_children()):
        if type(child) in (nn.BatchNorm2d, nn.SyncBatchNorm):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            if child.affine:
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
            if child.track_running_stats:  # (without running statistics: 0 mean, 1 variance, as initialised)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
            replaced += 1
        else:
            replaced += freeze_batchnorm(child)
    return replaced


def layer_decay_groups(model: nn.Module, *, trunk: nn.Module, lr: float, decay: float) -> list[dict]:
    """Parameter groups of ``model`` (whose trunk is ``trunk``) with layer-wise decayed learning
    rates (see the module doc); frozen parameters are left out. Each group has ``params``, ``lr``
    and ``depth``."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay={decay} must lie in (0, 1] (1 = off)")
    stem, stages = trunk_units(trunk)
    depth_of = {}
    for depth, unit in enumerate(reversed(stages), start=1):
        depth_of.update({id(p): depth for p in unit.parameters()})
    depth_of.update({id(p): len(stages) + 1 for unit in stem for p in unit.parameters()})
    groups: dict[int, list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault(depth_of.get(id(parameter), 0), []).append(parameter)
    return [{"params": params, "lr": lr * decay ** depth, "depth": depth} for depth, params in sorted(groups.items())]
