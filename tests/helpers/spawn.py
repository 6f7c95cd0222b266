"""Run a function in 2 (or more) spawned processes that form a gloo group, and collect what each
rank returns: the harness of the tests that compare N ranks x B with 1 process x N*B."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from pathlib import Path
from queue import Empty
from typing import Any, Callable


def free_port() -> int:
    """A TCP port nobody listens on right now (for the process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable[..., None], *, world_size: int = 2, timeout: float = 180) -> dict[int, Any]:
    """Start ``worker(rank, world_size, port, queue)`` in ``world_size`` spawned processes (a
    module-level function, so it pickles); each puts ``(rank, result)`` on ``queue``. Returns
    ``{rank: result}`` after every process exited with status 0; fails at once (not after the
    timeout) when a rank fails before every result is in."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, world_size, port, queue)) for rank in range(world_size)]
    for process in processes:
        process.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(results) < world_size and time.monotonic() < deadline:
        try:
            rank, result = queue.get(timeout=0.5)
            results[rank] = result
        except Empty:
            failed = {rank: p.exitcode for rank, p in enumerate(processes) if p.exitcode not in (None, 0)}
            assert not failed, f"rank: exit code {failed}, with results from ranks {sorted(results)} only"
    for rank, process in enumerate(processes):
        process.join(timeout=max(1.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join(timeout=5)
        assert process.exitcode == 0, f"rank {rank} ended with exit code {process.exitcode} (-9: killed after the timeout)"
    assert len(results) == world_size, f"results from ranks {sorted(results)} only, after {timeout} s"
    return results


def gloo_threads() -> list[str]:
    """Names of this process's threads that belong to a gloo process group (its transport loop and
    work runners): none should be left once the group is destroyed."""
    names = (Path(task, "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())
    return sorted(name for name in names if "gloo" in name)
