"""INT8 quantization for CPU inference: post-training dynamic (linear layers), post-training
static (conv nets, calibrated on real batches) and quantization-aware training (QAT).

Which PyTorch API, and why: PyTorch 2.14 keeps *eager-mode* quantization
(``torch.ao.quantization``: ``quantize_dynamic``, ``prepare`` / ``convert``, ``prepare_qat``) and
runs it with the ``x86`` quantized engine (fbgemm + oneDNN kernels) on this CPU; it warns that
``torch.ao.quantization`` is deprecated in favour of torchao. FX graph mode warns the same, and
the PT2E flow (``prepare_pt2e`` / ``convert_pt2e``) is no longer in torch at all: it moved to the
separate ``torchao`` package, whose CPU speed-up comes from lowering through ``torch.compile``
(Inductor). cvdist therefore uses eager mode, the one path that gives real INT8 kernels on a
CPU with torch alone, and silences only its deprecation warnings; moving to torchao's PT2E is
the migration when torch drops eager mode.

Eager mode needs the model's float ops to be quantizable and the quantize / dequantize points
marked: cvdist's ``tiny_cnn`` / ``small_cnn`` (``nn.Sequential`` blocks) are wrapped in
``QuantWrapper`` (QuantStub before, DeQuantStub after) and their Conv-BN-ReLU / Conv-ReLU /
Linear-ReLU runs fused; torchvision ResNets are rebuilt as torchvision's ``QuantizableResNet``
(same weights; its residual add is a ``FloatFunctional``) and fused with its ``fuse_model``.
Weights are quantized per output channel (symmetric int8), activations per tensor (uint8) with
histogram observers: the ``x86`` default qconfig. Models are quantized on copies; the float
model is left as it was.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Callable, Iterable, Iterator

import torch
import torchvision
from torch import nn
from torch.ao import quantization as tq

QUANT_ENGINE = "x86"
_FUSABLE = ((nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv2d, nn.ReLU),
            (nn.Linear, nn.ReLU))


@contextlib.contextmanager
def eager_mode_quantization() -> Iterator[None]:
    """Run quantized models and torch.ao.quantization calls inside this block: the ``x86``
    quantized engine, and eager mode's deprecation notices silenced."""
    # The deprecation notice is printed on every call (see the module docstring for the choice);
    # the observers' reduce_range notice concerns the x86 default qconfig itself.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated.*")
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = QUANT_ENGINE
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous


def quantize_dynamic_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (weights int8,
    activations quantized per batch at run time); other layers stay float."""
    with eager_mode_quantization():
        return tq.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def _quantizable_resnet(model: torchvision.models.ResNet) -> nn.Module:
    from torchvision.models.quantization import resnet as qresnet

    block = {torchvision.models.resnet.BasicBlock: qresnet.QuantizableBasicBlock,
             torchvision.models.resnet.Bottleneck: qresnet.QuantizableBottleneck}[type(model.layer1[0])]
    layers = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    rebuilt = qresnet.QuantizableResNet(block, layers, num_classes=model.fc.out_features)
    rebuilt.conv1, rebuilt.maxpool = copy.deepcopy(model.conv1), copy.deepcopy(model.maxpool)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def _fuse_sequential_runs(model: nn.Module, *, qat: bool) -> None:
    fuse = tq.fuse_modules_qat if qat else tq.fuse_modules
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children, groups, index = list(sequential.named_children()), [], 0
        while index < len(children):
            for pattern in _FUSABLE:
                kinds = [type(module) for _, module in children[index:index + len(pattern)]]
                if kinds == list(pattern):
                    groups.append([name for name, _ in children[index:index + len(pattern)]])
                    index += len(pattern)
                    break
            else:
                index += 1
        if groups:
            fuse(sequential, groups, inplace=True)


def prepare_static(model: nn.Module, *, qat: bool = False) -> nn.Module:
    """A fused copy of ``model`` with quant / dequant stubs and observers (``qat``: fake-quant
    modules for training) in place, ready to calibrate (or train) and :func:`convert`."""
    model = copy.deepcopy(model).cpu()
    model.train(qat)
    with eager_mode_quantization():
        if isinstance(model, torchvision.models.ResNet):
            model = _quantizable_resnet(model).train(qat)
            model.fuse_model(is_qat=qat)
        else:
            _fuse_sequential_runs(model, qat=qat)
            model = tq.QuantWrapper(model).train(qat)
        if qat:
            model.qconfig = tq.get_default_qat_qconfig(QUANT_ENGINE)
            return tq.prepare_qat(model)
        model.qconfig = tq.get_default_qconfig(QUANT_ENGINE)
        return tq.prepare(model)


def calibrate(prepared: nn.Module, batches: Iterable[dict], *, num_batches: int) -> int:
    """Run up to ``num_batches`` batches (``batch["image"]``) through the observers; returns how
    many ran."""
    prepared.eval()
    seen = 0
    with torch.no_grad():
        for batch in batches:
            if seen >= num_batches:
                break
            prepared(batch["image"].float().cpu())
            seen += 1
    if seen == 0:
        raise ValueError("static quantization needs at least one calibration batch; the data gave none")
    return seen


def convert(prepared: nn.Module) -> nn.Module:
    """The int8 model of a calibrated (or QAT-trained) :func:`prepare_static` model."""
    with eager_mode_quantization():
        return tq.convert(prepared.cpu().eval())


def quantize_static(model: nn.Module, calibration_batches: Iterable[dict], *, num_batches: int) -> nn.Module:
    """Post-training static int8 quantization of a conv net: prepare, calibrate on
    ``num_batches`` real batches, convert."""
    prepared = prepare_static(model)
    calibrate(prepared, calibration_batches, num_batches=num_batches)
    return convert(prepared)


def quantize_aware_training(model: nn.Module, train: Callable[[nn.Module], None]) -> nn.Module:
    """QAT: fuse and insert fake-quant modules, let ``train(model)`` fine-tune it (float training
    that sees int8 rounding), convert to int8."""
    prepared = prepare_static(model, qat=True)
    with eager_mode_quantization():
        train(prepared)
    return convert(prepared)


def run_quantized(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Forward ``images`` through a quantized model on the CPU with the engine it was built for."""
    with eager_mode_quantization(), torch.no_grad():
        return model(images.float().cpu())


def quantized_skeleton(model: nn.Module) -> nn.Module:
    """An int8 model with ``model``'s architecture and placeholder scales, into which a saved
    static-quantized ``state_dict`` loads (``load_state_dict``)."""
    prepared = prepare_static(model)
    with warnings.catch_warnings():
        # uncalibrated observers give default scales, which loading the saved state replaces
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams.*")
        return convert(prepared)
