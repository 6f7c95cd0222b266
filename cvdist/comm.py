"""Collectives on the current process group that are no-ops in a single process.

Building blocks (data, eval) use these instead of reaching for a global group themselves; the
group is created by ``cvdist.engine.dist`` only.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum scalar values over all ranks (every rank must pass the same keys)."""
    if not values or not is_distributed():
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    torch_dist.all_reduce(tensor)
    return {k: float(v) for k, v in zip(keys, tensor.tolist())}


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar values over all ranks (every rank must pass the same keys)."""
    world_size = torch_dist.get_world_size() if is_distributed() else 1
    return {k: v / world_size for k, v in all_reduce_sum(values, device).items()}


def broadcast_text(text: str, device: torch.device) -> str:
    """Rank 0's ``text`` on every rank (e.g. a path that only rank 0 may choose: ranks on a
    network file system can see different directory listings). Bytes in a tensor, no pickling."""
    if not is_distributed():
        return text
    data = text.encode("utf-8") if torch_dist.get_rank() == 0 else b""
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    torch_dist.broadcast(length, src=0)
    buffer = torch.zeros(int(length.item()), dtype=torch.uint8, device=device)
    if data:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    torch_dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode("utf-8")


def all_gather_rows(rows: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's ``rows`` (``[n_rank, ...]``, same trailing shape and dtype everywhere, ``n_rank``
    free), in rank order, on every rank; ``[rows]`` in a single process. No pickling."""
    if not is_distributed():
        return [rows]
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(counts, torch.tensor([rows.shape[0]], dtype=torch.int64, device=device))
    longest = max(int(c.item()) for c in counts)
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[:rows.shape[0]] = rows.to(device)
    gathered = [torch.empty_like(padded) for _ in counts]
    torch_dist.all_gather(gathered, padded)
    return [part[:int(count.item())].cpu() for part, count in zip(gathered, counts)]
