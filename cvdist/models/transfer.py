"""Head surgery for transfer learning: find the classifier head, check that a source's weights
fit the model, split trunk and head parameters, freeze the trunk, and build layer-wise
learning-rate groups. Loading the source's weights from a run or a file is
:mod:`cvdist.engine.transfer`.

The *head* is the module that maps features to classes: ``fc`` of torchvision ResNets, the last
``nn.Linear`` of cvdist's small CNNs. Everything else is the *trunk*. Auxiliary heads of
multi-task models (``aux_heads.*`` keys, :mod:`cvdist.models.multitask`) count as head.
"""

from __future__ import annotations

import torch
from torch import nn

from cvdist.models.multitask import is_aux_key

_SHOWN_KEYS = 12  # per category in error messages; the rest is counted


def find_head_name(model: nn.Module, *, head_name: str = "") -> str:
    """The module name of ``model``'s classifier head: ``head_name`` if given (checked), else the
    last ``nn.Linear`` (``fc`` for torchvision ResNets, ``"4"`` for cvdist's tiny CNN) outside
    the auxiliary heads of a multi-task model."""
    modules = {name: module for name, module in model.named_modules() if not is_aux_key(name)}
    if head_name:
        if head_name not in modules:
            linear = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
            raise ValueError(f"transfer.head_name={head_name!r} is not a module of the model; its linear "
                             f"layers are {', '.join(linear) or '(none)'}")
        return head_name
    linear = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError("the model has no nn.Linear layer to use as its head; set transfer.head_name")
    return linear[-1]


def is_head_key(key: str, head_name: str) -> bool:
    return key.startswith(head_name + ".")


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")
    return f"{title} ({len(keys)}): {shown}"


def check_compatible(model_state: dict[str, torch.Tensor], source_state: dict[str, torch.Tensor], *,
                     head_name: str, include_head: bool, source: str) -> None:
    """Raise ``ValueError`` listing missing, unexpected and shape-mismatched keys (head keys only
    when ``include_head``)."""
    def relevant(keys):
        return {k for k in keys if include_head or not is_head_key(k, head_name)}

    wanted, given = relevant(model_state), relevant(source_state)
    missing, unexpected = sorted(wanted - given), sorted(given - wanted)
    mismatched = sorted(f"{k} {tuple(source_state[k].shape)} -> {tuple(model_state[k].shape)}"
                        for k in wanted & given if source_state[k].shape != model_state[k].shape)
    if not (missing or unexpected or mismatched):
        return
    parts = [_listing(title, keys) for title, keys in (
        ("missing in the source", missing), ("unexpected in the source", unexpected),
        ("shape mismatch (source -> model)", mismatched)) if keys]
    scope = "" if include_head else f" (head '{head_name}' excluded)"
    hint = ("; for torchvision ImageNet weights use model.small_stem=false and model.in_channels=3"
            if any(k.startswith("conv1.") for k in missing + unexpected + mismatched) else "")
    raise ValueError(f"transfer source {source} does not match the model{scope}: " + "; ".join(parts) + hint)


def split_parameters(model: nn.Module, *, head_name: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(trunk, head)`` parameters of ``model``; auxiliary heads count as head (new layers
    train at the head's learning rate)."""
    head_ids = {id(p) for p in model.get_submodule(head_name).parameters()}
    head_ids |= {id(p) for name, p in model.named_parameters() if is_aux_key(name)}
    trunk = [p for p in model.parameters() if id(p) not in head_ids]
    head = [p for p in model.parameters() if id(p) in head_ids]
    return trunk, head


def _stay_in_eval_mode(module: nn.Module, inputs: object) -> None:
    # model.train() (which the training loop calls) would switch BatchNorm back to batch
    # statistics and let it update its running statistics: a frozen trunk must compute the
    # same features in training as in evaluation.
    module.training = False


def freeze_trunk(model: nn.Module, *, head_name: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Freeze everything but the head: no gradients for trunk parameters, and every trunk module
    (BatchNorm, dropout) runs in eval mode even while the model trains. Returns the hook handles."""
    trunk, _ = split_parameters(model, head_name=head_name)
    for parameter in trunk:
        parameter.requires_grad_(False)
    head = model.get_submodule(head_name)
    head_modules = {id(m) for m in head.modules()}
    handles = []
    for name, module in model.named_modules():
        if name and id(module) not in head_modules and not any(True for _ in module.children()):
            module.eval()
            handles.append(module.register_forward_pre_hook(_stay_in_eval_mode))
    return handles


def parameter_groups(model: nn.Module, *, head_name: str, lr: float, trunk_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser groups: the head at ``lr`` first (the group whose LR the loop logs), then the
    trainable trunk parameters at ``lr * trunk_lr_scale`` (left out when the trunk is frozen)."""
    trunk, head = split_parameters(model, head_name=head_name)
    groups = [{"params": [p for p in head if p.requires_grad], "lr": lr}]
    trainable_trunk = [p for p in trunk if p.requires_grad]
    if trainable_trunk:
        groups.append({"params": trainable_trunk, "lr": lr * trunk_lr_scale})
    return groups


