"""One clear line when another rank dies or hangs in the middle of training.

A collective with a dead peer fails on the survivors with the transport's own words (gloo:
``Read error [127.0.0.1]:41532: Connection reset by peer``, or ``Timed out waiting 600000ms``
after ``dist.timeout_s`` when the peer hangs), which name an address, not a rank. So the survivor
takes a roll call through the job's key-value store (torchrun's agent store, or rank 0's):
every surviving rank checks in, and the ranks that have not checked in within a bounded wait are
the lost ones. The store outlives a dead worker under torchrun; when it is gone too, the host
that held it (rank 0's, or the first node's agent) is what was lost, and the message says so.

With NCCL, torch's watchdog ends a process whose collective exceeded ``dist.timeout_s`` on its
own (it prints the timed-out collective); a dead peer's connection error still arrives here.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Optional

import torch.distributed as torch_dist

from cvdist.engine.checkpoint import latest_checkpoint

ROLL_CALL_MAX_S = 15.0
"""The longest a survivor waits for the others to check in (at most ``dist.timeout_s``): a
rank still blocked in a collective answers once its own collective fails, within the timeout."""

# Words of the transports' errors (gloo's and NCCL's name their source file or library).
_TRANSPORT_WORDS = ("gloo", "nccl", "connection reset by peer", "connection closed by peer")


class LostRankError(RuntimeError):
    """Another rank of the job died or stopped answering during training."""


def is_collective_failure(error: BaseException) -> bool:
    """True for the errors a collective raises when a peer is gone (torch's ``DistError`` family,
    or a ``RuntimeError`` in the transport's words)."""
    if isinstance(error, torch_dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(word in str(error).lower() for word in _TRANSPORT_WORDS)


def unanswered_ranks(*, rank: int, world_size: int, wait_s: float) -> Optional[list[int]]:
    """Check in through the default group's store and return the ranks that did not within
    ``wait_s`` seconds; None when the store itself cannot be reached."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # torchrun restarts reuse the store
    key = f"cvdist/roll-call/{attempt}/{{}}".format
    try:
        store = torch_dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=wait_s))
        store.set(key(rank), "alive")
    except Exception:  # the store's host is gone (or never was): nothing to ask
        return None
    deadline = time.monotonic() + wait_s
    missing = []
    for other in range(world_size):
        if other == rank:
            continue
        try:
            store.wait([key(other)], timedelta(seconds=max(deadline - time.monotonic(), 0.05)))
        except Exception:  # not checked in before the deadline, or the store went away meanwhile
            missing.append(other)
    return missing


def describe_loss(error: BaseException, *, rank: int, world_size: int, timeout_s: float,
                  checkpoint_root: Path) -> str:
    """The one-line message for a collective failure ``error`` seen by ``rank``."""
    wait_s = min(float(timeout_s), ROLL_CALL_MAX_S)
    missing = unanswered_ranks(rank=rank, world_size=world_size, wait_s=wait_s)
    if missing is None:
        who = "lost the job's store (hosted by rank 0, or by the torchrun agent of the first node): that host is gone"
    elif missing:
        who = (f"lost rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {world_size} "
               f"(no answer within {wait_s:g} s: the process died or hangs)")
    else:
        who = "a collective failed although every rank answered"
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    newest = latest_checkpoint(checkpoint_root)
    resume = (f"the newest complete checkpoint is {newest}; continue with checkpoint.resume=auto" if newest
              else "no checkpoint was written yet")
    return f"rank {rank} {who}; {resume} (dist.timeout_s={timeout_s:g}; {cause})"


@contextlib.contextmanager
def report_lost_ranks(*, rank: int, world_size: int, timeout_s: float, checkpoint_root: Path) -> Iterator[None]:
    """Turn a collective failure inside the block into a :class:`LostRankError` with the
    message of :func:`describe_loss`; other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        if world_size < 2 or isinstance(error, LostRankError) or not is_collective_failure(error):
            raise
        message = describe_loss(error, rank=rank, world_size=world_size, timeout_s=timeout_s,
                                checkpoint_root=checkpoint_root)
        raise LostRankError(message) from error
