"""Auxiliary classification heads on a classifier's shared trunk (multi-task learning).

:class:`AuxHeadsModel` wraps a model from :func:`cvdist.models.build_model` (an ``nn.Sequential``
CNN with the head last, or a torchvision ResNet with ``fc``) and adds one linear head per extra
label. It is one module, so DDP / DeepSpeed wrap the auxiliary heads with the rest and all-reduce
their gradients, and its ``state_dict`` keys are the base model's plus ``aux_heads.<name>.*``:
checkpoints and ``cvdist export`` of a multi-task run load into the same wrapper, and
``cvdist.models.transfer`` drops the ``aux_heads.*`` keys when a plain model starts from them.

How: the base model's children are registered as the wrapper's own children (the same module
objects, so no key gets a prefix) and the base model's ``forward`` runs unchanged; a forward
pre-hook on the head captures its input (the pooled features), which the auxiliary heads take.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

AUX_PREFIX = "aux_heads."
"""State-dict key prefix of the auxiliary heads."""


def is_aux_key(key: str) -> bool:
    """Whether ``key`` (a state-dict key or module name) belongs to an auxiliary head."""
    return key.startswith(AUX_PREFIX) or key == AUX_PREFIX[:-1]


class AuxHeadsModel(nn.Module):
    """``base`` plus a linear head per entry of ``aux_classes`` (label name -> number of classes)
    on the input of ``base``'s head ``head_name`` (an ``nn.Linear``).

    ``forward(x)`` returns the base model's logits; ``forward(x, with_aux=True)`` returns
    ``(logits, {name: aux_logits})``. DDP and DeepSpeed engines pass the keyword through."""

    def __init__(self, base: nn.Module, *, head_name: str, aux_classes: Mapping[str, int]):
        super().__init__()
        if not aux_classes:
            raise ValueError("aux_classes is empty; use the base model itself")
        own = [name for name, _ in base.named_parameters(recurse=False)] + \
              [name for name, _ in base.named_buffers(recurse=False)]
        if own:
            raise ValueError(f"{type(base).__name__} holds parameters outside its children ({', '.join(own)}); "
                             "AuxHeadsModel can only wrap models whose weights live in submodules")
        head = base.get_submodule(head_name)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"the head '{head_name}' is a {type(head).__name__}; auxiliary heads need a linear "
                             "head whose input are the trunk's features")
        for name, child in base.named_children():
            self.add_module(name, child)
        self.aux_heads = nn.ModuleDict({name: nn.Linear(head.in_features, int(num_classes))
                                        for name, num_classes in aux_classes.items()})
        self._base = (base,)  # a tuple, so the base is not registered a second time (its keys stay unprefixed)
        self.head_name = head_name
        self._features: Optional[torch.Tensor] = None
        head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple) -> None:
        self._features = inputs[0]

    def train(self, mode: bool = True) -> "AuxHeadsModel":
        super().train(mode)
        self._base[0].training = mode  # the children are shared; keep the base's own flag in step
        return self

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        logits = self._base[0](x)
        # never keep the features past the call: a stored graph tensor would pin memory and break deepcopy
        features, self._features = self._features, None
        if not with_aux:
            return logits
        return logits, {name: head(features) for name, head in self.aux_heads.items()}


def add_aux_heads(model: nn.Module, *, head_name: str, aux_classes: Mapping[str, int]) -> nn.Module:
    """``model`` wrapped in :class:`AuxHeadsModel`, or ``model`` itself when ``aux_classes`` is empty."""
    if not aux_classes:
        return model
    return AuxHeadsModel(model, head_name=head_name, aux_classes=aux_classes)
