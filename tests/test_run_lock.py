"""The run-directory lock: a second job on the same run stops at once naming the holder; a lock
left by a dead process, by our own requeued SLURM job or with an old heartbeat is taken over;
concurrent starters never both win; read-only commands do not take it."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time

import pytest

from cvdist.engine.run_lock import LOCK_FILE, RunLock, RunLockedError, _holder
from tests.helpers.recipes import REPO, TINY, clean_env, recipe_command
from tests.helpers.runs import kill_tree


def write_lock(run_dir, **fields) -> dict:
    """A lock file as another job would have written it (defaults: a live job on this machine)."""
    holder = {**_holder({}, time.time()), **fields}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))
    return holder


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_is_exclusive_and_names_a_live_holder(tmp_path, live_process):
    write_lock(tmp_path / "run", pid=live_process.pid, slurm_job_id="77", started=0.0)
    with pytest.raises(RunLockedError) as error:
        RunLock.acquire(tmp_path / "run", stale_after_s=3600)
    message = str(error.value)
    assert "\n" not in message
    assert f"pid {live_process.pid}, SLURM job 77, since 1970-01-01 00:00:00 UTC" in message
    assert "choose another name=..." in message


def test_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    write_lock(tmp_path / "run", pid=dead_pid())
    lock = RunLock.acquire(tmp_path / "run", stale_after_s=3600)
    assert lock.owned() and "is gone" in capsys.readouterr().out


def test_requeue_of_the_same_slurm_job_takes_its_own_lock(tmp_path, live_process):
    # Another machine (pid not checkable), fresh heartbeat: only the job id tells it is ours.
    write_lock(tmp_path / "run", machine="other-node", pid=live_process.pid, slurm_job_id="4242")
    with pytest.raises(RunLockedError):
        RunLock.acquire(tmp_path / "run", stale_after_s=3600, environ={"SLURM_JOB_ID": "4243"})
    lock = RunLock.acquire(tmp_path / "run", stale_after_s=3600, environ={"SLURM_JOB_ID": "4242"})
    assert lock.owned()


def test_old_heartbeat_is_stale_and_refresh_keeps_a_lock_fresh(tmp_path, live_process):
    write_lock(tmp_path / "run", machine="other-node", pid=live_process.pid, heartbeat=time.time() - 120)
    with pytest.raises(RunLockedError):
        RunLock.acquire(tmp_path / "run", stale_after_s=300)
    lock = RunLock.acquire(tmp_path / "run", stale_after_s=60)
    before = json.loads((tmp_path / "run" / LOCK_FILE).read_text())["heartbeat"]
    time.sleep(0.01)
    lock.refresh()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["heartbeat"] > before


def test_release_removes_only_our_lock_and_an_unused_directory(tmp_path, live_process, capsys):
    lock = RunLock.acquire(tmp_path / "fresh", stale_after_s=60)
    lock.release()
    assert not (tmp_path / "fresh").exists()  # start-up failed before anything was written
    lock = RunLock.acquire(tmp_path / "run", stale_after_s=60)
    (tmp_path / "run" / "config.yaml").write_text("x: 1\n")
    lock.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]
    lock = RunLock.acquire(tmp_path / "run", stale_after_s=60)
    other = write_lock(tmp_path / "run", pid=live_process.pid)  # taken over by someone else meanwhile
    lock.refresh()
    assert "is no longer this job's" in capsys.readouterr().out
    lock.release()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text()) == other


def _contend(run_dir, barrier, results):
    try:
        RunLock.acquire(run_dir, stale_after_s=3600)
        results.put("won")
    except RunLockedError:
        results.put("refused")
    barrier.wait()  # winners hold the lock until every contender has tried


@pytest.mark.parametrize("stale", [False, True])
def test_concurrent_starters_never_both_win(tmp_path, stale):
    run_dir = tmp_path / "run"
    if stale:
        write_lock(run_dir, pid=dead_pid())
    context = multiprocessing.get_context("fork")  # no re-import: the contenders start together
    barrier, results = context.Barrier(6), context.Queue()
    workers = [context.Process(target=_contend, args=(run_dir, barrier, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == ["refused"] * 5 + ["won"]
    assert not list(run_dir.glob(".lock.*"))  # no private or stale files left behind


@pytest.mark.slow
def test_second_job_on_a_running_run_stops_and_takes_over_once_it_died(tmp_path):
    args = [*TINY, f"output_dir={tmp_path}", "name=shared", "checkpoint.every_steps=2"]
    first = subprocess.Popen(recipe_command(nproc=1) + [*args, "train.max_steps=100000"], cwd=REPO,
                             env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "shared"
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints").is_dir():  # the first job is training
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        second = subprocess.run(recipe_command(nproc=1) + [*args, "checkpoint.resume=auto", "train.max_steps=4"],
                                cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert "is in use by another job (host " in second.stderr and f"pid {first.pid}, since" in second.stderr
        compare = subprocess.run([sys.executable, "-c", "from cvdist.cli import main; main()", "compare", str(run_dir),
                                  "--out", str(tmp_path / "compare")],
                                 cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
        assert compare.returncode == 0, compare.stderr[-2000:]  # read-only: no lock needed
    finally:
        kill_tree(first.pid)  # SIGKILL: the lock stays behind, with a dead pid
        first.wait()
    assert (run_dir / LOCK_FILE).exists()
    third = subprocess.run(recipe_command(nproc=1) + [*args, "checkpoint.resume=auto", "train.max_steps=4"],
                           cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the lock of {run_dir} from host" in third.stdout and "is gone" in third.stdout
    assert not (run_dir / LOCK_FILE).exists()  # released at the end
