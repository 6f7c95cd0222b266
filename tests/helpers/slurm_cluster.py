"""A real two-node SLURM cluster on this machine, for the sbatch / requeue tests.

``slurm_cluster`` (session-scoped fixture) starts munged, slurmctld and two slurmd daemons
(nodes ``n1`` and ``n2``, both on 127.0.0.1 with their own ports) from Debian's SLURM 22.05
packages, all state under one temporary directory, and yields a :class:`SlurmCluster`. The
binaries must be installed (``.ci/install-slurm.sh``, which ``make test`` runs); a missing
binary is a test failure with that hint, not a skip, so CI cannot silently lose these tests.

Teardown stops everything even when a test failed: ``scontrol shutdown``, the daemons it
started, ``munged``, and any job process left behind (found by this cluster's ``SLURM_CONF``
in its environment). For manual experiments, ``python -m tests.helpers.slurm_cluster`` starts one and
prints the ``SLURM_CONF`` to export, until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import pytest

NODES = ("n1", "n2")
CPUS_PER_NODE = 2
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
INSTALL_HINT = "run .ci/install-slurm.sh (apt-get install slurm-wlm slurmctld slurmd slurm-client munge)"
# Job states after which a job will not run again (a requeued job passes through REQUEUED/PENDING).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


class SlurmError(RuntimeError):
    """The test cluster did not start, or a SLURM command failed."""


def _binary(name: str) -> Optional[str]:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)


def missing_binaries() -> list[str]:
    return [name for name in DAEMONS if _binary(name) is None]


def _free_port_block(count: int, *, start: int = 16800, stop: int = 30000) -> int:
    """First port of ``count`` consecutive free TCP ports (several sessions may share a host)."""
    for base in range(start + (os.getpid() % 500) * 7, stop, count + 1):
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise SlurmError("no free port block for the test cluster")


def parse_fields(text: str) -> dict[str, str]:
    """``scontrol show -o`` output (``Key=Value Key=Value ...``) as a dict (values without spaces)."""
    fields = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


class SlurmCluster:
    """A running test cluster; every command runs with this cluster's ``SLURM_CONF``."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.log_dir = root / "log"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._daemons: list[subprocess.Popen] = []

    # -- commands -------------------------------------------------------------------------
    def command(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``scontrol``, ``squeue``, ...) against this cluster."""
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, script: Path | str, args: Sequence[str] = (), *, env: Optional[Mapping[str, str]] = None,
               options: Sequence[str] = (), cwd: Optional[Path] = None) -> int:
        """Submit ``script`` with ``args`` (after the script, passed to it) and ``options``
        (sbatch options, which override the script's ``#SBATCH`` lines); returns the job id."""
        job_env = {**(env if env is not None else os.environ), "SLURM_CONF": str(self.conf)}
        result = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], env=job_env, cwd=cwd,
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise SlurmError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` fields (JobState, ExitCode, Restarts, Reason, ...); kept in
        memory for ``MinJobAge`` after the end, as there is no accounting database."""
        return parse_fields(self.command("scontrol", "show", "job", "-o", str(job_id)).stdout)

    def is_active(self, job_id: int) -> bool:
        """Pending, running, completing or requeued (``squeue`` lists only active jobs)."""
        result = self.command("squeue", "-h", "-j", str(job_id), "-o", "%T", check=False)
        return bool(result.stdout.strip())

    def signal(self, job_id: int, name: str, *, batch_only: bool = False) -> None:
        """``scancel --signal=NAME`` to the job steps, or to the batch shell only."""
        self.command("scancel", f"--signal={name}", *(["--batch"] if batch_only else []), str(job_id))

    def wait(self, job_id: int, *, timeout: float = 180, poll: float = 1.0) -> dict[str, str]:
        """Poll until the job has ended for good (requeues included); return its final fields.

        ``sbatch --wait`` polls with a growing interval (42 s for a 15 s job here); one
        ``squeue`` a second is faster. Raises TimeoutError (after cancelling the job) on timeout.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A requeued job is held for cred_expire + 1 s (11 s here): slurmd refuses a launch
            # with the same job id while the old attempt's credential is revoked. Starting it
            # earlier (scontrol update StartTime=now) made the requeued attempt fail at once.
            if not self.is_active(job_id):
                fields = self.job(job_id)
                if fields.get("JobState") in FINAL_STATES:
                    return fields
            time.sleep(poll)
        self.command("scancel", str(job_id), check=False)
        raise TimeoutError(f"job {job_id} still active after {timeout:.0f} s: {self.job(job_id)}")

    # -- life cycle -----------------------------------------------------------------------
    def start(self, *, timeout: float = 30) -> None:
        missing = missing_binaries()
        if missing:
            raise SlurmError(f"SLURM binaries missing: {', '.join(missing)}; {INSTALL_HINT}")
        self._write_config()
        self._start_munge()
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        for node in NODES:
            self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", node)
        self._wait_idle(timeout)

    def _spawn(self, *args: str) -> subprocess.Popen:
        name = args[0] + ("-" + args[-1] if args[0] == "slurmd" else "")
        log = open(self.log_dir / f"{name}.stdout", "w")
        process = subprocess.Popen([_binary(args[0]), *args[1:]], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self._daemons.append(process)
        return process

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        os.chmod(munge, 0o755)  # munged refuses a socket directory others may write to
        subprocess.run([_binary("mungekey"), "-c", "-k", str(munge / "munge.key")], check=True, capture_output=True)
        self._spawn("munged", "--foreground", f"--key-file={munge / 'munge.key'}",
                    f"--socket={munge / 'munge.socket.2'}", f"--pid-file={munge / 'munged.pid'}",
                    f"--log-file={self.log_dir / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}")
        deadline = time.monotonic() + 10
        while not (munge / "munge.socket.2").exists():
            if time.monotonic() > deadline or self._daemons[-1].poll() is not None:
                raise SlurmError(f"munged did not start: {self._log_tail('munged.stdout')}")
            time.sleep(0.05)

    def _write_config(self) -> None:
        root = self.root
        for sub in ("state", "log", "spool"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        ctl_port = _free_port_block(1)
        node_port = _free_port_block(len(NODES), start=ctl_port + 2)
        host = socket.gethostname()
        self.conf.write_text("\n".join([
            "ClusterName=cvdisttest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctl_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root / 'munge' / 'munge.socket.2'},cred_expire=10",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "MinJobAge=600",  # keep finished jobs in `scontrol show job` (no accounting database)
            "KillWait=5",
            "InactiveLimit=0",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool' / '%n'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd-%n.log'}",
            f"NodeName=n[1-{len(NODES)}] NodeHostname={host} NodeAddr=127.0.0.1 "
            f"Port=[{node_port}-{node_port + len(NODES) - 1}] CPUs={CPUS_PER_NODE} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=test Nodes=n[1-{len(NODES)}] Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            for process in self._daemons:
                if process.poll() is not None:
                    raise SlurmError(f"{process.args[0]} exited ({process.returncode}) during start-up:\n"
                                     f"{self._log_tail('slurmctld.log')}\n{self._log_tail('slurmd-n1.log')}")
            result = self.command("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
            states = result.stdout.strip()
            lines = [line.split() for line in states.splitlines()]
            if len(lines) == len(NODES) and all(len(f) == 2 and f[1] == "idle" for f in lines):
                return
            time.sleep(0.2)
        raise SlurmError(f"nodes not idle after {timeout} s: {states!r}\n{self._log_tail('slurmctld.log')}")

    def _log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / name
        return path.read_text(errors="replace")[-chars:] if path.exists() else f"({name} missing)"

    def stop(self) -> None:
        """Stop jobs, daemons and leftover job processes; safe on a half-started cluster."""
        if self.conf.exists():
            with contextlib.suppress(Exception):
                self._cancel_all_jobs()
            with contextlib.suppress(Exception):
                self.command("scontrol", "shutdown", check=False, timeout=10)
        deadline = time.monotonic() + 5
        for process in reversed(self._daemons):  # munged (first started) last: slurmctld needs it
            if process.args[0].endswith("munged"):
                deadline = 0.0  # `scontrol shutdown` does not stop munged: terminate it now
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
        self._kill_leftovers()

    def _cancel_all_jobs(self, timeout: float = 15) -> None:
        """Cancel the jobs a failed test left behind (slurmd's shutdown does not end them)."""
        job_ids = self.command("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
        if not job_ids:
            return
        self.command("scancel", *job_ids, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.command("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.5)

    def _kill_leftovers(self) -> None:
        """SIGKILL what is left of this cluster: job processes (they carry its SLURM_CONF) and
        slurmstepd daemons (their environment is overwritten by their process title; they are
        recognised by their sockets in this cluster's spool directory)."""
        import psutil

        marker, sockets = str(self.conf), _unix_socket_inodes_under(self.root)
        leftovers = []
        for process in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error):
                if process.pid == os.getpid():
                    continue
                if process.environ().get("SLURM_CONF") == marker or (
                        (process.info["name"] or "").startswith("slurmstepd") and _holds_socket(process.pid, sockets)):
                    leftovers.append(process)
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(leftovers, timeout=10)


def _unix_socket_inodes_under(root: Path) -> set[str]:
    """Inodes of the Unix sockets bound to paths under ``root`` (from /proc/net/unix)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith(f"{root}/"):
                inodes.add(fields[6])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
    return False


@contextlib.contextmanager
def running_cluster(root: Optional[Path] = None) -> Iterator[SlurmCluster]:
    """Start a test cluster in ``root`` (default: a new temporary directory), stop it on exit."""
    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix="cvdist-slurm-")) if own_root else root
    os.chmod(root, 0o755)
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if own_root and not os.environ.get("CVDIST_KEEP_SLURM_DIR"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running two-node cluster (n1, n2; one CPU task each fits); see the module doc."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"SLURM binaries missing ({', '.join(missing)}); {INSTALL_HINT}", pytrace=False)
    with running_cluster() as cluster:
        yield cluster


if __name__ == "__main__":
    with running_cluster() as running:
        print(f"export SLURM_CONF={running.conf}   # Ctrl-C stops the cluster", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
