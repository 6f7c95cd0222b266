"""Image classifiers: small CNNs for tests and demos, torchvision ResNets for real work."""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn

from cvdist.models.small_resnet import build_small_resnet
from cvdist.models.vit import VIT_PRESETS, build_vit


def _conv_block(in_channels: int, out_channels: int, *, norm: bool, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def build_tiny_cnn(*, num_classes: int, in_channels: int) -> nn.Module:
    """Two convs, no normalisation (~5 k params): deterministic and fast, for tests."""
    return nn.Sequential(
        _conv_block(in_channels, 8, norm=False, stride=2),
        _conv_block(8, 16, norm=False, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def build_small_cnn(*, num_classes: int, in_channels: int, width: int = 32) -> nn.Module:
    """Five BN convs with two poolings: the default for 28-32 px demos (width 32: ~0.14 M params;
    width 16, ``mini_cnn``: ~36 k params, a distillation student 4x smaller)."""
    return nn.Sequential(
        _conv_block(in_channels, width, norm=True),
        _conv_block(width, width, norm=True),
        nn.MaxPool2d(2),
        _conv_block(width, 2 * width, norm=True),
        _conv_block(2 * width, 2 * width, norm=True),
        nn.MaxPool2d(2),
        _conv_block(2 * width, 4 * width, norm=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


def build_resnet(*, depth: int, num_classes: int, in_channels: int, small_stem: bool) -> nn.Module:
    """A torchvision ResNet-18/34/50, its stem adapted to ``in_channels`` and, with
    ``small_stem``, to 28-64 px images (3x3 stride-1 conv, no max-pool, as for CIFAR)."""
    constructors: dict[int, Callable[..., nn.Module]] = {
        18: torchvision.models.resnet18,
        34: torchvision.models.resnet34,
        50: torchvision.models.resnet50,
    }
    model = constructors[depth](weights=None, num_classes=num_classes)
    if small_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


MODEL_NAMES = ("tiny_cnn", "mini_cnn", "small_cnn", "small_resnet", "resnet18", "resnet34", "resnet50", *VIT_PRESETS)


def build_model(*, name: str, num_classes: int, in_channels: int, small_stem: bool = True) -> nn.Module:
    """The classifier ``name`` (one of MODEL_NAMES, or ``timm:<name>`` for any timm model) with a
    ``num_classes`` head."""
    if name == "tiny_cnn":
        return build_tiny_cnn(num_classes=num_classes, in_channels=in_channels)
    if name in ("small_cnn", "mini_cnn"):
        return build_small_cnn(num_classes=num_classes, in_channels=in_channels, width=32 if name == "small_cnn" else 16)
    if name == "small_resnet":  # CPU-sized residual net for 28-32 px images (cvdist.models.small_resnet)
        return build_small_resnet(num_classes=num_classes, in_channels=in_channels)
    if name.startswith("resnet") and name in MODEL_NAMES:
        return build_resnet(depth=int(name[6:]), num_classes=num_classes, in_channels=in_channels,
                            small_stem=small_stem)
    if name in VIT_PRESETS:  # e.g. the encoder of a masked-autoencoder run (recipes/pretrain_mae.yaml)
        return build_vit(name=name, num_classes=num_classes, in_channels=in_channels)
    if name.startswith(TIMM_PREFIX):
        return build_timm_model(name[len(TIMM_PREFIX):], num_classes=num_classes, in_channels=in_channels)
    raise ValueError(f"model.name={name!r} is not one of {', '.join(MODEL_NAMES)} or timm:<name>")


TIMM_PREFIX = "timm:"


def build_timm_model(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """timm's ``name`` with a ``num_classes`` head and ``in_channels`` input channels, randomly
    initialised: nothing is downloaded at run time (pretrained weights come from a local file
    through ``transfer.from_path``). Needs the ``timm`` package (``pip install -e '.[timm]'``)."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"model.name={TIMM_PREFIX}{name} needs the timm package: pip install timm "
                         "(or pip install -e '.[timm]')") from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except RuntimeError as error:  # timm: "Unknown model (...)"
        raise ValueError(f"model.name={TIMM_PREFIX}{name}: timm has no such model ({error}); "
                         "list them with python -c 'import timm; print(timm.list_models())'") from None
