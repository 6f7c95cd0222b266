"""Backbone trunks: a model that maps images ``(B, C, H, W)`` to pooled features ``(B, D)``.

    trunk, feature_dim = build_backbone("resnet18", in_channels=1, small_stem=True)

* ``tiny_cnn``, ``small_cnn``, ``small_resnet``, ``resnet18/34/50``: the classifier of
  :func:`cvdist.models.build_model` with its head (the last ``nn.Linear``; ``fc`` of ResNets)
  replaced by ``nn.Identity`` *in the same slot*, so the trunk's ``state_dict`` keys are exactly
  the classifier's minus the head's: pretrained trunks load into the classifier (and transfer
  with :mod:`cvdist.models.transfer`) without renaming. ResNets take ``small_stem`` (3x3 stride-1 conv,
  no max-pool, for 28-64 px images); grey images use ``in_channels=1`` in the first conv (no
  channel copying).
* ``timm:<name>`` (e.g. ``timm:resnet18``, ``timm:vit_tiny_patch16_224``): any timm model,
  built by ``build_model`` (``in_chans=in_channels``, no weights downloaded) with its classifier
  (the last ``nn.Linear``) replaced the same way. Needs ``pip install timm``.
"""

from __future__ import annotations

from torch import nn

from cvdist.models.classifiers import MODEL_NAMES, TIMM_PREFIX, build_model


def last_linear_name(model: nn.Module) -> str:
    """The module name of ``model``'s last ``nn.Linear`` (a classifier's head)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to remove")
    return names[-1]


def remove_head(model: nn.Module) -> tuple[str, int]:
    """Replace ``model``'s head (its last ``nn.Linear``) by ``nn.Identity`` in place, so that
    ``model(x)`` returns the pooled features. Returns ``(head_name, feature_dim)``."""
    head_name = last_linear_name(model)
    head = model.get_submodule(head_name)
    parent_name, _, child = head_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return head_name, head.in_features


def build_backbone(name: str, *, in_channels: int, small_stem: bool = True) -> tuple[nn.Module, int]:
    """The trunk ``name`` (one of MODEL_NAMES or ``timm:<name>``) and its feature dimension."""
    if name not in MODEL_NAMES and not name.startswith(TIMM_PREFIX):
        raise ValueError(f"backbone {name!r} is not one of {', '.join(MODEL_NAMES)} or timm:<name>")
    model = build_model(name=name, num_classes=1, in_channels=in_channels, small_stem=small_stem)
    _, feature_dim = remove_head(model)
    return model, feature_dim
