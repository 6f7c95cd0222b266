"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``): ``dist.strategy=fsdp``.

Why ``fully_shard`` directly and not Accelerate's FSDP plugin: the plugin's FSDP2 path goes through
``Accelerator.prepare``, which on GPU-less machines needs ``Accelerator(cpu=True)``, and with
``cpu=True`` Accelerate drops its distributed plugins (the DeepSpeed config is dropped silently in
the same way, see :mod:`cvdist.engine.backends`). FSDP2 itself trains on CPU with gloo (platform
notes), so cvdist applies it itself, like ZeRO through ``deepspeed.initialize``: one path on CPUs
and GPUs, rank and world size from ``torch.distributed``.

What is sharded: every repeated block (the blocks activation checkpointing finds: residual blocks,
transformer layers, conv blocks; timm models' ``blocks``), then every direct child of the model
that holds parameters (so a recipe may call e.g. ``model.trunk`` alone, as the SSL kNN monitor
does), then the model itself. Each unit's parameters become ``DTensor`` shards along dim 0; a unit
gathers them for its forward and backward and frees them afterwards
(``dist.fsdp_reshard_after_forward``, ZeRO-3's behaviour) or keeps them until the backward
(ZeRO-2's). Gradients are reduce-scattered, so each rank keeps 1/N of the gradients and of the
optimiser state. Checkpoints: :mod:`cvdist.engine.fsdp_checkpoint`.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as torch_dist
from torch import nn

from cvdist.config import ConfigError
from cvdist.engine.dist import (DistEnv, collective_backend, current_env, launched_world_size, move_batch,
                                local_device, set_single_process_rendezvous)
from cvdist.engine.fsdp_checkpoint import load_fsdp_state, save_fsdp_state


_NOT_UNITS = (nn.ModuleList, nn.ModuleDict, torch.fx.GraphModule)
"""Containers without a forward of their own, and traced graphs (FSDP's class swap breaks
``GraphModule.__call__``): never FSDP units themselves; their parameter-holding layers are."""


def _whole_modules() -> tuple[type[nn.Module], ...]:
    from torchvision.models.vision_transformer import EncoderBlock

    return (nn.MultiheadAttention, EncoderBlock)


_WHOLE = _whole_modules()
"""Units kept whole: attention reads its ``out_proj`` weights without calling ``out_proj``, and
torchvision's ViT layers are the blocks of that model."""


def _holds_parameters(module: nn.Module) -> bool:
    return any(param is not None for param in module._parameters.values())


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules ``fully_shard`` is applied to, every one after the units inside it, the model last.

    The bulk of the parameters sits in the repeated blocks, one unit each. Every other layer that
    holds parameters itself (stem, norms, heads, a ViT's class token) is a unit of its own: recipes
    call submodules directly (the SSL projector inside ``SSLModel.forward``) and traced feature
    extractors (``torch.fx``) call a block's layers one by one, and a unit's parameters are
    gathered only when its own forward runs. Blocks inside a traced graph are therefore not units."""
    from cvdist.models.checkpointing import checkpointable_blocks

    traced = {id(sub) for module in model.modules() if isinstance(module, torch.fx.GraphModule)
              for sub in module.modules()}
    blocks = list(getattr(model, "blocks", [])) if hasattr(model, "set_grad_checkpointing") else []
    blocks = [*(blocks or checkpointable_blocks(model)), *(m for m in model.modules() if isinstance(m, _WHOLE))]
    inner = {id(sub) for block in blocks for sub in block.modules() if sub is not block}
    blocks = [block for block in blocks if id(block) not in traced and id(block) not in inner]  # outermost
    in_blocks = {id(sub) for block in blocks for sub in block.modules()}
    # reversed pre-order: every module comes after the modules inside it
    layers = [module for module in reversed(list(model.modules())) if module is not model
              and id(module) not in in_blocks and not isinstance(module, _NOT_UNITS) and _holds_parameters(module)]
    if isinstance(model, _NOT_UNITS):
        raise ValueError(f"dist.strategy=fsdp cannot shard a {type(model).__name__} at the top; wrap it in a module")
    return [*blocks, *layers, model]


def _init_process_group(device: torch.device, timeout_s: float) -> None:
    """FSDP needs a process group even for one process: make a 1-process one then."""
    if torch_dist.is_initialized():
        return
    set_single_process_rendezvous()
    torch_dist.init_process_group(backend=collective_backend(device), timeout=timedelta(seconds=timeout_s))


def _replace_optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module, names: dict[int, str]) -> None:
    """Point ``optimizer``'s groups at the sharded parameters that replaced the originals.

    ``fully_shard`` registers new (DTensor) parameters; the optimiser was built over the old ones
    (with cvdist's groups: layer decay, no weight decay on norms, ...). It has no state yet, so
    swapping the references keeps every group's settings."""
    if optimizer.state:
        raise RuntimeError("the optimiser must be fresh when FSDP shards the model (it has state already)")
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(param)]] for param in group["params"]]


def _compile_blocks(units: list[nn.Module], model: nn.Module, *, mode: str) -> None:
    """``nn.Module.compile`` (in place: parameter names and checkpoint keys unchanged) of every unit
    that is a block, i.e. holds other parameter-holding layers (not the model itself)."""
    for unit in units:
        if unit is not model and any(sub is not unit and sub._parameters for sub in unit.modules()):
            unit.compile(mode=None if mode == "default" else mode)


class FsdpBackend:
    """FSDP2 over all processes (one 1-d device mesh); the :class:`~cvdist.engine.backends.Backend` interface."""

    def __init__(self, *, precision: str, reshard_after_forward: bool = True, cpu_offload: bool = False,
                 checkpoint_format: str = "sharded", compile_mode: Optional[str] = None, timeout_s: float = 600):
        from cvdist.engine.backends import resolve_precision

        if precision == "fp16":  # FSDP2 has no loss scaler cvdist drives; bf16 needs none
            raise ConfigError("dist.precision=fp16 is not supported under dist.strategy=fsdp (cvdist runs FSDP without "
                              "loss scaling); use dist.precision=bf16, or fp16 with dist.strategy=ddp / zero1-3")
        expected = launched_world_size()
        device = local_device()
        self.precision = resolve_precision(precision, device)
        _init_process_group(device, timeout_s)
        self.env: DistEnv = current_env(expected_world_size=expected)
        self.reshard_after_forward, self.cpu_offload = reshard_after_forward, cpu_offload
        self.checkpoint_format = checkpoint_format
        self.compile_mode = compile_mode
        self.compiles_blocks = compile_mode is not None
        """``dist.compile`` under FSDP: each block is compiled before it is sharded (as torchtitan
        does), instead of the whole model afterwards, which would trace FSDP's hooks."""
        self.model: nn.Module | None = None
        self.client_optimizer: Optional[torch.optim.Optimizer] = None

    def _policies(self) -> dict[str, Any]:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        policies: dict[str, Any] = {"reshard_after_forward": self.reshard_after_forward}
        if self.precision != "fp32":
            # Parameters gathered in half precision for the compute; gradients reduced and the
            # optimiser stepping in fp32; outputs back in fp32 so that losses are computed in fp32.
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
            policies["mp_policy"] = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32,
                                                         output_dtype=torch.float32)
        if self.cpu_offload:
            policies["offload_policy"] = CPUOffloadPolicy(pin_memory=self.env.device.type == "cuda")
        return policies

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip_norm: float,
                micro_batch_size: int, accum_steps: int) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        names = {id(param): name for name, param in model.named_parameters()}
        model.to(self.env.device)
        mesh = init_device_mesh(self.env.device.type, (self.env.world_size,))
        policies = self._policies()
        units = shard_units(model)
        if self.compile_mode is not None:
            _compile_blocks(units, model, mode=self.compile_mode)
        for unit in units:
            fully_shard(unit, mesh=mesh, **policies)
        _replace_optimizer_params(optimizer, model, names)
        self.model, self.client_optimizer = model, optimizer
        self.grad_clip_norm, self.accum_steps = grad_clip_norm, accum_steps
        return model

    def to_device(self, batch: Any) -> Any:
        return move_batch(batch, device=self.env.device)

    @contextlib.contextmanager
    def accumulation_context(self, *, is_last_micro_batch: bool) -> Iterator[None]:
        # Reduce-scatter gradients only on the last micro-batch of an optimiser step; before it
        # each rank accumulates its unsharded gradients locally (FSDP's no_sync).
        self.model.set_requires_gradient_sync(is_last_micro_batch)
        self._broadcast_buffers()
        yield

    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm running statistics) to every rank before each training
        forward, as DDP does (``broadcast_buffers=True``): FSDP shards parameters only, so without
        this each rank's statistics would drift apart on its own batches and a checkpoint would
        hold whichever rank's copy it happened to save."""
        if self.env.world_size > 1:
            broadcast_coalesced(list(self.model.buffers()), src=0)

    def backward_and_maybe_step(self, loss: torch.Tensor) -> None:
        (loss / self.accum_steps).backward()

    def finish_step(self) -> Optional[float]:
        grad_norm = None
        if self.grad_clip_norm > 0:
            # On DTensor gradients, clip_grad_norm_ reduces the norm over all shards (a collective).
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.client_optimizer.step()
        self.client_optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def plain_model(self) -> nn.Module:
        """The model itself (``fully_shard`` changes it in place; its parameters are DTensor shards)."""
        return self.model

    def save(self, directory: Path) -> None:
        self._broadcast_buffers()  # rank 0's statistics, as a DDP checkpoint holds (rank 0 writes there)
        save_fsdp_state(self.model, self.client_optimizer, directory, format=self.checkpoint_format,
                        is_main=self.env.is_main)

    def load(self, directory: Path) -> None:
        load_fsdp_state(self.model, self.client_optimizer, directory)

    def close(self) -> None:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()



def broadcast_coalesced(tensors: list[torch.Tensor], *, src: int) -> None:
    """Broadcast ``tensors`` from rank ``src`` in place with one collective per dtype (a ResNet-50
    has ~160 BatchNorm buffers: one broadcast each cost more than the data), as DDP coalesces
    its buffer broadcast."""
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([tensor.detach().reshape(-1) for tensor in group])
        torch_dist.broadcast(flat, src=src)
        offset = 0
        with torch.no_grad():
            for tensor in group:
                tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()
