"""FSDP checkpoints: sharded (``torch.distributed.checkpoint``) or full (one ``model.pt``).

``dist.fsdp_checkpoint=sharded`` (default): every rank writes its own shards of the model and the
optimiser state into ``<checkpoint>/fsdp/`` with ``torch.distributed.checkpoint`` (DCP) — no rank
ever holds the whole state, and a later run may load it with another number of processes (DCP
re-shards on load). ``full``: the state is gathered and rank 0 writes ``model.pt`` (a plain
state_dict, as under DDP) and ``optimizer.pt`` (keyed by parameter names). Both sit inside the
checkpoint directory that :func:`cvdist.engine.checkpoint.save_checkpoint` renames into place, so
a checkpoint appears whole or not at all.

DCP stores its index (``.metadata``) with ``pickle``; torch's reader unpickles it unrestricted.
cvdist reads it through :class:`SafeMetadataReader`, which allows only DCP's own metadata classes
and plain values (the tensor files themselves DCP already reads with ``weights_only=True``).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemReader

from cvdist.engine.safe_load import UnsafeCheckpointError, load_weights_only

SHARDED_DIR = "fsdp"
_ALLOWED_MODULE_PREFIX = "torch.distributed.checkpoint."
# What DCP's index holds besides its own classes (torch 2.14): sizes, dtypes, the layout lookup
# torch's own weights-only loader also allows, and the path of each shard file.
_ALLOWED_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                    ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
                    ("collections", "OrderedDict"), ("copyreg", "_reconstructor"), ("builtins", "object")}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's metadata: its dataclasses / enums, torch dtypes and sizes, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_ALLOWED_MODULE_PREFIX):
            found = super().find_class(module, name)
            if isinstance(found, type):  # data classes only, never a function
                return found
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a DCP checkpoint index")


class SafeMetadataReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` is read by :class:`_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as handle:
            try:
                metadata = _MetadataUnpickler(handle).load()
            except pickle.UnpicklingError as error:
                raise UnsafeCheckpointError(f"{path} holds objects other than a DCP index, so cvdist will not "
                                            f"load it: {error}") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def is_sharded_checkpoint(directory: Path) -> bool:
    return (Path(directory) / SHARDED_DIR / ".metadata").is_file()


def save_fsdp_state(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, *, format: str,
                    is_main: bool) -> None:
    """Write model and optimiser state under ``directory`` (a collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    if format == "sharded":
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory / SHARDED_DIR)
        return
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    if is_main:
        torch.save(model_state, directory / "model.pt")
        torch.save({"optimizer": optimizer_state}, directory / "optimizer.pt")


def load_fsdp_state(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Restore what :func:`save_fsdp_state` wrote, in either format (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    if is_sharded_checkpoint(directory):
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, storage_reader=SafeMetadataReader(str(directory / SHARDED_DIR)))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        return
    if not (directory / "model.pt").is_file():
        raise FileNotFoundError(f"{directory} holds neither an FSDP sharded checkpoint ({SHARDED_DIR}/) nor model.pt")
    model_state = load_weights_only(directory / "model.pt")
    optimizer_state = load_weights_only(directory / "optimizer.pt")["optimizer"]
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


def sharded_model_state(directory: Path) -> dict[str, torch.Tensor]:
    """The full model state_dict of a sharded checkpoint, read in this one process (no process
    group): what ``cvdist export`` and ``consolidated_state_dict`` return for FSDP runs."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = SafeMetadataReader(str(Path(directory) / SHARDED_DIR))
    entries = reader.read_metadata().state_dict_metadata
    prefix = "model."
    state = {key: torch.empty(entry.size, dtype=entry.properties.dtype) for key, entry in entries.items()
             if key.startswith(prefix) and isinstance(entry, TensorStorageMetadata)}
    with warnings.catch_warnings():  # DCP warns that it loads without a process group: that is the point here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=reader, no_dist=True)
    return {key[len(prefix):]: tensor for key, tensor in state.items()}
