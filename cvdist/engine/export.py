"""Consolidated fp32 weights from any cvdist checkpoint (DDP, ZeRO-1/2/3 or FSDP).

The result is a plain ``state_dict`` that loads with ``strict=True`` into the model the recipe
built (e.g. the torchvision ResNet), written as safetensors or ``.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cvdist.engine.checkpoint import latest_checkpoint
from cvdist.engine.fsdp_checkpoint import is_sharded_checkpoint, sharded_model_state
from cvdist.engine.safe_load import load_weights_only, weights_only_torch_load


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint, a ``checkpoints/`` folder or a run directory."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    for root in (path, path / "checkpoints"):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path} is neither a cvdist checkpoint nor a run directory with one "
                            "(looked for meta.json and checkpoints/step-*)")


def consolidated_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the model in ``checkpoint_dir`` (all ZeRO / FSDP shards merged)."""
    checkpoint_dir = resolve_checkpoint_dir(checkpoint_dir)
    if is_sharded_checkpoint(checkpoint_dir):
        state = sharded_model_state(checkpoint_dir)
    elif (checkpoint_dir / "model.pt").is_file():
        state = load_weights_only(checkpoint_dir / "model.pt")
    elif (checkpoint_dir / "latest").is_file():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with weights_only_torch_load():
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag="zero")
    else:
        raise FileNotFoundError(f"{checkpoint_dir} has neither model.pt, an FSDP fsdp/ folder nor a DeepSpeed "
                                "'latest' file")
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def save_state_dict(state: dict[str, torch.Tensor], out_path: str | Path) -> Path:
    """Write ``state`` as ``.safetensors`` or ``.pt`` (by suffix), atomically."""
    out_path = Path(out_path)
    if out_path.suffix not in (".safetensors", ".pt", ".pth"):
        raise ValueError(f"output {out_path} must end in .safetensors, .pt or .pth")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    # Tensors that share storage (tied weights) must be separate for safetensors.
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}
    if out_path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(temporary))
    else:
        torch.save(tensors, temporary)
    os.chmod(temporary, 0o644)  # safetensors creates files readable by the owner only
    os.replace(temporary, out_path)
    return out_path


def export_checkpoint(checkpoint: str | Path, out_path: str | Path) -> Path:
    """``cvdist export``: consolidate ``checkpoint`` and write it to ``out_path``."""
    return save_state_dict(consolidated_state_dict(checkpoint), out_path)
