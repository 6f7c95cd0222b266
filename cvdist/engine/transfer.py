"""Transfer learning: start from trained weights, replace the head, freeze or slow down the trunk
(the head surgery itself is :mod:`cvdist.models.transfer`; this module reads the weights).

Sources: a cvdist run or checkpoint directory (any strategy, ZeRO included: the weights are
consolidated as ``cvdist export`` does), or a weights file on local disk: a ``.pth`` / ``.pt``
``state_dict`` (torchvision's downloads, loaded with ``torch.load(weights_only=True)``, so
nothing is unpickled) or ``.safetensors``.

The trunk's weights must match the model exactly (names and shapes); the head is re-initialised
for the new number of classes unless ``keep_head`` asks for the source's head.

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
from cvdist.models.transfer import check_compatible, find_head_name, freeze_trunk, is_head_key, parameter_groups

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")


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
    chosen = {k: v for k, v in source_state.items() if keep_head or not is_head_key(k, head_name)}
    missing, unexpected = model.load_state_dict(chosen, strict=False)
    assert not unexpected and all(is_head_key(k, head_name) or is_aux_key(k) for k in missing), "checked above"
    if any(is_aux_key(k) for k in missing):
        log("[cvdist] transfer: the auxiliary heads (aux_heads.*) start freshly initialised")
    return head_name


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
