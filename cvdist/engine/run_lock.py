"""The run-directory lock: one job at a time writes a run directory.

``<run>/.lock`` names its holder (host, pid, SLURM job id, start and heartbeat times). It is
created complete or not at all (written to a private file, then ``os.link``-ed into place, which
fails if the name exists, also on NFS), so two starters can never both win. A lock is stale, and
is taken over, when its holder is our own requeued SLURM job (same job id), when it ran on this
machine and its process is gone, or when its heartbeat (refreshed at every log row and
checkpoint) is older than ``checkpoint.lock_stale_after_s``. A takeover renames the stale file
away first and checks it took the file it judged, so a fresh lock written meanwhile is put back.
Only rank 0 holds the lock; it is released at exit. Read-only commands (``cvdist eval``,
``compare``, ``export``) never take it.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from cvdist.io import atomic_write_text, fsync_directory

LOCK_FILE = ".lock"


class RunLockedError(ValueError):
    """Another live job holds the run directory."""


def _machine_id() -> str:
    """Which pid namespace on which boot: pids are only comparable within one (containers on
    different machines may share a hostname such as ``localhost``)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{boot}:{namespace}"


def _holder(environ: Mapping[str, str], now: float) -> dict[str, Any]:
    return {"host": socket.gethostname(), "machine": _machine_id(), "pid": os.getpid(),
            "slurm_job_id": environ.get("SLURM_JOB_ID", ""), "started": now, "heartbeat": now,
            "token": uuid.uuid4().hex}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(holder: dict[str, Any], mine: dict[str, Any], *, now: float, stale_after_s: float) -> Optional[str]:
    """Why the lock ``holder`` may be taken over by ``mine``, or None while its job may be alive."""
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == mine["slurm_job_id"]:
        return f"it belongs to this SLURM job ({mine['slurm_job_id']}), requeued"
    if holder.get("machine") == mine["machine"] and (holder.get("pid") == mine["pid"]
                                                     or not _pid_alive(int(holder.get("pid", 0)))):
        return f"its process {holder.get('pid')} on {holder.get('host')} is gone"
    age = now - float(holder.get("heartbeat", 0))
    if age > stale_after_s:
        return f"its last heartbeat is {age:.0f} s old (checkpoint.lock_stale_after_s={stale_after_s:g})"
    return None


def describe(holder: dict[str, Any]) -> str:
    """``host H, pid P, SLURM job J, since T`` for messages."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("started", 0))))
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"host {holder.get('host')}, pid {holder.get('pid')}{job}, since {since}"


class RunLock:
    """The lock on one run directory, held by this process (see the module doc)."""

    def __init__(self, run_dir: Path, holder: dict[str, Any], *, made_dir: bool):
        self.run_dir, self.path, self.holder, self.made_dir = run_dir, run_dir / LOCK_FILE, holder, made_dir
        self.lost = False
        atexit.register(self.release)

    @classmethod
    def acquire(cls, run_dir: Path, *, stale_after_s: float, environ: Mapping[str, str] = os.environ) -> "RunLock":
        """Take the lock of ``run_dir`` (created if missing) or raise :class:`RunLockedError`."""
        made_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        for _ in range(3):  # a takeover, then a retry; a third loss means someone else is starting
            mine = _holder(environ, time.time())
            if _create_exclusive(path, mine):
                return cls(run_dir, mine, made_dir=made_dir)
            seen = _read(path)
            if seen is None:
                continue  # released (or taken over) between our two calls
            text, holder = seen
            reason = stale_reason(holder, mine, now=time.time(), stale_after_s=stale_after_s)
            if reason is None:
                raise RunLockedError(
                    f"run directory {run_dir} is in use by another job ({describe(holder)}); wait for it to end, "
                    f"stop it, or choose another name=... (a lock left by a dead job is taken over by itself)")
            if _take_over(path, text):
                print(f"[cvdist] took over the lock of {run_dir} from {describe(holder)}: {reason}", flush=True)
        raise RunLockedError(f"run directory {run_dir}: another job is taking its lock at the same time; "
                             "start only one job per run name")

    def owned(self) -> bool:
        seen = _read(self.path)
        return seen is not None and seen[1].get("token") == self.holder["token"]

    def refresh(self) -> None:
        """Renew the heartbeat (rank 0, at log rows and checkpoints) while the lock is still ours;
        warn once if another job took it over (our heartbeat had gone stale)."""
        if self.owned():
            self.holder["heartbeat"] = time.time()
            atomic_write_text(self.path, json.dumps(self.holder))
        elif not self.lost:
            self.lost = True
            print(f"[cvdist] warning: the lock of {self.run_dir} is no longer this job's (taken over after no "
                  "heartbeat for checkpoint.lock_stale_after_s); another job may be writing this run", flush=True)

    def release(self) -> None:
        """Remove the lock if it is still ours; a run directory this lock created and nothing else
        used is removed too (a start-up error leaves no empty run behind)."""
        atexit.unregister(self.release)
        if self.owned():
            self.path.unlink()
            if self.made_dir and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()


def _create_exclusive(path: Path, holder: dict[str, Any]) -> bool:
    private = path.with_name(f".lock.new-{holder['token']}")
    private.write_text(json.dumps(holder))
    try:
        os.link(private, path)  # atomic, fails when the name exists
        fsync_directory(path.parent)
        return True
    except FileExistsError:
        return False
    finally:
        private.unlink()


def _read(path: Path) -> Optional[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        holder = {}  # not written by cvdist's link-into-place: no holder to respect but its age
    return text, holder if isinstance(holder, dict) else {}


def _take_over(path: Path, seen_text: str) -> bool:
    """Move the stale lock away; True if the file moved is the one judged stale."""
    moved = path.with_name(f".lock.stale-{uuid.uuid4().hex}")
    try:
        path.rename(moved)
    except FileNotFoundError:
        return False
    if moved.read_text() != seen_text:  # a fresh lock replaced it meanwhile: put it back
        try:
            os.link(moved, path)
        except FileExistsError:
            pass
        moved.unlink()
        return False
    moved.unlink()
    return True
