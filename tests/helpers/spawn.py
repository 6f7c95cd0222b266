"""Run a function in 2 (or more) spawned processes that form a gloo group, and collect what each
rank returns: the harness of the tests that compare N ranks x B with 1 process x N*B."""

from __future__ import annotations

import multiprocessing as mp
import socket
from typing import Any, Callable


def free_port() -> int:
    """A TCP port nobody listens on right now (for the process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable[..., None], *, world_size: int = 2, timeout: float = 180) -> dict[int, Any]:
    """Start ``worker(rank, world_size, port, queue)`` in ``world_size`` spawned processes (a
    module-level function, so it pickles); each puts ``(rank, result)`` on ``queue``. Returns
    ``{rank: result}`` after every process exited with status 0."""
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, world_size, port, queue)) for rank in range(world_size)]
    for process in processes:
        process.start()
    results = dict(queue.get() for _ in processes)
    for rank, process in enumerate(processes):
        process.join(timeout=timeout)
        assert process.exitcode == 0, f"rank {rank} ended with exit code {process.exitcode} (None: still running)"
    return results
