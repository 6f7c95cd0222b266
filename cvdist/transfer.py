"""Transfer learning: start from trained weights, replace the head, freeze or slow down the trunk.

Sources: a cvdist run or checkpoint directory (any strategy, ZeRO included: the weights are
consolidated as ``cvdist export`` does), or a weights file on local disk: a ``.pth`` / ``.pt``
``state_dict`` (torchvision's downloads, loaded with ``torch.load(weights_only=True)``, so
nothing is unpickled) or ``.safetensors``.

The *head* is the module that maps features to classes: ``fc`` of torchvision ResNets, the last
``nn.Linear`` of cvdist's small CNNs. Everything else is the *trunk*. The trunk's weights must
match the model exactly (names and shapes); the head is re-initialised for the new number of
classes unless ``keep_head`` asks for the source's head.

Auxiliary heads of multi-task models (``aux_heads.*`` keys, :mod:`cvdist.models.multitask`)
are never transferred: a source's are dropped (e.g. cRT or fine-tuning from a multi-task run),
and a multi-task model's start fresh, as the head does; both are logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cvdist.models.multitask import is_aux_key

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")
_SHOWN_KEYS = 12  # per category in error messages; the rest is counted


def load_source_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` stored at ``path``: a cvdist run / checkpoint directory or a weights file.

    A ``.pth`` / ``.pt`` file may hold the ``state_dict`` itself or wrap it as ``{"state_dict": ...}``
    / ``{"model": ...}``; a ``module.`` prefix on every key (a saved DDP model) is removed."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"transfer source {path} does not exist; give a cvdist run or checkpoint "
                                f"directory or a {' / '.join(WEIGHT_FILE_SUFFIXES)} weights file")
    if path.is_dir():
        from cvdist.engine.export import consolidated_state_dict  # engine code only when a run is the source

        return consolidated_state_dict(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in (".pth", ".pt"):
        raise ValueError(f"transfer source {path}: unknown weights format {path.suffix!r}; use a "
                         f"{' / '.join(WEIGHT_FILE_SUFFIXES)} file or a cvdist run / checkpoint directory")
    from cvdist.engine.safe_load import load_weights_only

    return _plain_state_dict(load_weights_only(path), path)


def _plain_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state_dict (a dict of tensors, possibly under 'state_dict' "
                         "or 'model'); save the weights with torch.save(model.state_dict(), path)")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return dict(loaded)


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


def _is_head_key(key: str, head_name: str) -> bool:
    return key.startswith(head_name + ".")


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")
    return f"{title} ({len(keys)}): {shown}"


def check_compatible(model_state: dict[str, torch.Tensor], source_state: dict[str, torch.Tensor], *,
                     head_name: str, include_head: bool, source: str) -> None:
    """Raise ``ValueError`` listing missing, unexpected and shape-mismatched keys (head keys only
    when ``include_head``)."""
    def relevant(keys):
        return {k for k in keys if include_head or not _is_head_key(k, head_name)}

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


def load_backbone(model: nn.Module, *, source: str | Path, head_name: str = "", keep_head: bool = False,
                  log: Callable[[str], None] = print) -> str:
    """Load ``source``'s weights into ``model``: the trunk always, the head only with ``keep_head``
    (else the model keeps its freshly initialised head for the new classes); auxiliary heads
    never (see the module docstring). Returns the head's module name. Raises
    ``FileNotFoundError`` / ``ValueError`` naming what does not match."""
    head_name = find_head_name(model, head_name=head_name)
    source_state = load_source_state_dict(source)
    dropped = sorted({key.split(".")[1] for key in source_state if is_aux_key(key)})
    if dropped:
        log(f"[cvdist] transfer: ignoring the source's auxiliary heads ({', '.join(dropped)}; aux_heads.* keys), "
            "which multi-task training added")
    source_state = {k: v for k, v in source_state.items() if not is_aux_key(k)}
    model_state = {k: v for k, v in model.state_dict().items() if not is_aux_key(k)}
    check_compatible(model_state, source_state, head_name=head_name, include_head=keep_head, source=str(source))
    chosen = {k: v for k, v in source_state.items() if keep_head or not _is_head_key(k, head_name)}
    missing, unexpected = model.load_state_dict(chosen, strict=False)
    assert not unexpected and all(_is_head_key(k, head_name) or is_aux_key(k) for k in missing), "checked above"
    if any(is_aux_key(k) for k in missing):
        log("[cvdist] transfer: the auxiliary heads (aux_heads.*) start freshly initialised")
    return head_name


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


def prepare_transfer(model: nn.Module, *, from_path: str, head_name: str = "", keep_head: bool = False,
                     freeze: bool = False, trunk_lr_scale: float = 1.0, lr: float,
                     load: bool = True, log: Callable[[str], None] = print) -> tuple[str, list[dict]]:
    """Everything the recipe's ``transfer`` section asks for, in order: load the source (unless
    ``load`` is false, e.g. when a run resumes from its own checkpoint), freeze the trunk, and
    build the optimiser groups. Returns ``(head_name, parameter_groups)``."""
    head_name = find_head_name(model, head_name=head_name)
    if from_path and load:
        load_backbone(model, source=from_path, head_name=head_name, keep_head=keep_head, log=log)
        log(f"[cvdist] loaded {'model' if keep_head else 'trunk'} weights from {from_path} "
            f"({'kept' if keep_head else 'new'} head '{head_name}')")
    if freeze:
        freeze_trunk(model, head_name=head_name)
    return head_name, parameter_groups(model, head_name=head_name, lr=lr, trunk_lr_scale=trunk_lr_scale)
