"""The two ways a model is wrapped for training: Accelerate (none / DDP) and DeepSpeed (ZeRO-1/2/3).

Why ZeRO goes through ``deepspeed.initialize`` directly and not through Accelerate's DeepSpeed
plugin: on a machine without GPUs (checked with accelerate 1.15.0, see the platform notes) the
plugin builds a DeepSpeedEngine while every Accelerator reports ``num_processes == 1`` and
``is_main_process`` on every rank, so data is not sharded and every rank writes; with
``Accelerator(cpu=True)`` the DeepSpeed config is dropped silently and plain DDP runs. DeepSpeed
used directly trains ZeRO-1/2/3 correctly on CPU (gloo) and GPU (NCCL), so it is the one path
for ZeRO everywhere, and rank / world size always come from ``torch.distributed``.

Both backends implement :class:`Backend`, the small interface the training loop uses.
"""

from __future__ import annotations

import contextlib
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, ContextManager, Iterator, Optional, Protocol

import torch
from torch import nn

from cvdist.config import ConfigError
from cvdist.engine.deepspeed_config import build_deepspeed_config
from cvdist.engine.dist import (DistEnv, collective_backend, current_env, launched_world_size, move_batch,
                                local_device, set_single_process_rendezvous)
from cvdist.engine.safe_load import load_weights_only, weights_only_torch_load

ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}

# DeepSpeed 0.19 calls a torch.distributed function that torch 2.14 deprecates, once per step.
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)


def resolve_precision(requested: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for this device.

    bf16 runs on the CPU too (autocast: convolutions and matmuls in bf16, parameters and optimiser
    state in fp32; under ZeRO, DeepSpeed's bf16 mode with fp32 master weights). ``auto`` picks fp32
    on the CPU: bench/cpu_steps.py measured bf16 training steps at 0.22x (small_cnn) and 0.41x
    (small_resnet) of fp32 on this project's AVX2-only AMD EPYC machines, which have no native bf16
    arithmetic. fp16 needs a GPU (CPU autocast has no fp16 kernels worth using)."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("dist.precision=fp16 needs a GPU and this process runs on the CPU; "
                          "use dist.precision=bf16 (autocast on the CPU) or fp32")
    return requested


def resolve_strategy(requested: str, world_size: int) -> str:
    if requested == "auto":
        return "ddp" if world_size > 1 else "none"
    return requested


def _memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` with its 4-d (conv) weights in channels-last layout when asked; values unchanged.
    Done before wrapping: DDP keeps the parameters' layout."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


class Backend(Protocol):
    """What the training loop needs from a strategy. One optimiser step is, per micro-batch,
    ``accumulation_context`` + ``backward_and_maybe_step``, then one ``finish_step``."""

    precision: str
    """The resolved precision: ``fp32``, ``bf16`` or ``fp16``."""
    env: DistEnv
    client_optimizer: Optional[torch.optim.Optimizer]
    """The optimiser cvdist built (the loop sets its learning rates)."""

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip_norm: float,
                micro_batch_size: int, accum_steps: int) -> nn.Module:
        """Wrap ``model`` and ``optimizer`` for this strategy; returns the model to call."""

    def to_device(self, batch: Any) -> Any:
        """``batch`` (tensors in any nesting) on this rank's device, in the strategy's input dtype."""

    def accumulation_context(self, *, is_last_micro_batch: bool) -> ContextManager[None]:
        """The context of one micro-batch's forward and backward (DDP skips its all-reduce on all
        but the last micro-batch of an optimiser step)."""

    def backward_and_maybe_step(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss (scaled by 1 / accumulation steps). DeepSpeed also
        steps its optimiser here when the micro-batch ends an accumulation group (its engine
        counts micro-batches itself); Accelerate never steps here."""

    def finish_step(self) -> Optional[float]:
        """End the optimiser step after its last micro-batch: clip, step and zero the gradients
        where ``backward_and_maybe_step`` did not; returns the gradient norm when known."""

    def plain_model(self) -> nn.Module:
        """The unwrapped model (the user's ``nn.Module``)."""

    def save(self, directory: Path) -> None:
        """Write model and optimiser state under ``directory`` (a collective)."""

    def load(self, directory: Path) -> None:
        """Restore what :meth:`save` wrote."""

    def close(self) -> None:
        """Release the strategy's resources at the end of the run."""


class AccelerateBackend:
    """One process or DDP through ``accelerate.Accelerator``."""

    def __init__(self, *, precision: str, channels_last: bool = True, timeout_s: float = 600):
        from accelerate import Accelerator  # engine-only dependency
        from accelerate.utils import InitProcessGroupKwargs

        expected = launched_world_size()
        device_hint = local_device()
        self.precision = resolve_precision(precision, device_hint)
        # cpu=True is required on GPU-less machines: without it each torchrun process runs
        # alone (DistributedType.NO) instead of joining a gloo group (platform notes).
        self.accelerator = Accelerator(
            cpu=device_hint.type == "cpu",
            mixed_precision="no" if self.precision == "fp32" else self.precision,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))],
        )
        self.env: DistEnv = current_env(expected_world_size=expected)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.client_optimizer: torch.optim.Optimizer | None = None
        self.grad_clip_norm = 0.0
        self.channels_last = channels_last

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip_norm: float,
                micro_batch_size: int, accum_steps: int) -> nn.Module:
        self.client_optimizer = optimizer
        self.model, self.optimizer = self.accelerator.prepare(_memory_format(model, self.channels_last), optimizer)
        self.grad_clip_norm = grad_clip_norm
        self.accum_steps = accum_steps
        return self.model

    def to_device(self, batch: Any) -> Any:
        return move_batch(batch, device=self.env.device, channels_last=self.channels_last)

    @contextlib.contextmanager
    def accumulation_context(self, *, is_last_micro_batch: bool) -> Iterator[None]:
        # Skip the gradient all-reduce on all but the last micro-batch of an optimiser step.
        if is_last_micro_batch:
            yield
        else:
            with self.accelerator.no_sync(self.model):
                yield

    def backward_and_maybe_step(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss / self.accum_steps)  # never steps: finish_step does

    def finish_step(self) -> float | None:
        grad_norm = None
        if self.grad_clip_norm > 0:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def plain_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def save(self, directory: Path) -> None:
        """Model and optimiser state (rank 0 writes; DDP keeps them identical on all ranks)."""
        if self.env.is_main:
            torch.save(self.plain_model().state_dict(), directory / "model.pt")
            state = {"optimizer": self.optimizer.state_dict()}
            if self.accelerator.scaler is not None:
                state["grad_scaler"] = self.accelerator.scaler.state_dict()
            torch.save(state, directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        self.plain_model().load_state_dict(load_weights_only(directory / "model.pt", self.env.device))
        state = load_weights_only(directory / "optimizer.pt", self.env.device)
        self.optimizer.load_state_dict(state["optimizer"])
        if "grad_scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])

    def close(self) -> None:
        self.accelerator.end_training()


def skip_inference_shm_kernel() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce when its comm backend starts.

    On a machine without GPUs DeepSpeed's CPU accelerator JIT-builds the C++ op
    ``deepspeed_shm_comm`` in ``init_distributed`` (measured: ~30 s on an idle 2-core machine,
    100+ s under load, and a C++ compiler required), yet only ``inference_all_reduce`` (its
    tensor-parallel inference) calls it: ZeRO training's collectives go through
    ``torch.distributed``. Marked incompatible, it is not built and DeepSpeed uses the process
    group for everything. GPU accelerators have no such op; nothing changes there.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedBackend:
    """ZeRO stage 1, 2 or 3 through ``deepspeed.initialize`` (see the module doc for why)."""

    def __init__(self, *, stage: int, precision: str, user_config: str = "", timeout_s: float = 600):
        import deepspeed  # engine-only dependency

        expected = launched_world_size()
        device = local_device()
        self.precision = resolve_precision(precision, device)
        self.stage, self.user_config = stage, user_config
        set_single_process_rendezvous()  # DeepSpeed needs a process group even for one process
        skip_inference_shm_kernel()
        deepspeed.init_distributed(dist_backend=collective_backend(device), timeout=timedelta(seconds=timeout_s))
        self.env: DistEnv = current_env(expected_world_size=expected)
        self.engine = None
        self.client_optimizer: torch.optim.Optimizer | None = None

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip_norm: float,
                micro_batch_size: int, accum_steps: int) -> nn.Module:
        import deepspeed

        config = build_deepspeed_config(stage=self.stage, precision=self.precision, micro_batch_size=micro_batch_size,
                                        accum_steps=accum_steps, world_size=self.env.world_size,
                                        grad_clip_norm=grad_clip_norm, user_config=self.user_config)
        self.client_optimizer = optimizer
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return self.engine

    def to_device(self, batch: Any) -> Any:
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return move_batch(batch, device=self.env.device, float_dtype=half)

    @contextlib.contextmanager
    def accumulation_context(self, *, is_last_micro_batch: bool) -> Iterator[None]:
        yield  # DeepSpeed tracks the accumulation boundary itself

    def backward_and_maybe_step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scales by 1/gradient_accumulation_steps
        # engine.step() must follow every micro-batch's backward: it counts micro-batches and
        # steps the optimiser (clipping included) only at the accumulation boundary.
        self.engine.step()

    def finish_step(self) -> float | None:  # the optimiser stepped in backward_and_maybe_step
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def plain_model(self) -> nn.Module:
        return self.engine.module

    def save(self, directory: Path) -> None:
        """DeepSpeed's own checkpoint layout (every rank writes its shard) under ``directory``."""
        self.engine.save_checkpoint(str(directory), tag="zero", client_state={})

    def load(self, directory: Path) -> None:
        # DeepSpeed loads with weights_only=False (its checkpoint engine, and the universal and
        # MoE paths call torch.load directly): every torch.load it makes here is weights-only.
        with weights_only_torch_load():
            load_path, _ = self.engine.load_checkpoint(
                str(directory), tag="zero", load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")

    def close(self) -> None:
        pass


def build_backend(*, strategy: str, precision: str, deepspeed_config: str = "",
                  channels_last: bool = True, timeout_s: float = 600, fsdp_options: Optional[dict] = None) -> Backend:
    """The backend for ``dist.strategy`` (``auto`` already resolved or not); ``deepspeed_config``
    is a user's DeepSpeed JSON merged into cvdist's (ZeRO strategies only); ``channels_last``
    puts conv weights and 4-d image batches in channels-last layout (none / DDP only);
    ``timeout_s`` bounds every collective of the process group (``dist.timeout_s``);
    ``fsdp_options``: :class:`~cvdist.engine.fsdp.FsdpBackend`'s keyword arguments (``fsdp`` only)."""
    resolved = resolve_strategy(strategy, launched_world_size())
    if resolved == "fsdp":
        from cvdist.engine.fsdp import FsdpBackend

        return FsdpBackend(precision=precision, timeout_s=timeout_s, **(fsdp_options or {}))
    if resolved in ZERO_STAGES:
        # DeepSpeed needs contiguous (NCHW) parameters: it views them as bytes to broadcast them
        # and packs them into flat buffers, so ZeRO runs keep the default layout.
        return DeepSpeedBackend(stage=ZERO_STAGES[resolved], precision=precision, user_config=deepspeed_config,
                                timeout_s=timeout_s)
    return AccelerateBackend(precision=precision, channels_last=channels_last, timeout_s=timeout_s)
