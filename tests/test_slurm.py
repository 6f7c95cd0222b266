"""The SLURM and torchrun launch scripts, run for real: `sbatch slurm/supervised.sh` on a two-node
SLURM cluster on this machine (tests/helpers/slurm_cluster.py), pre-emption with requeue and exact
resume, and launch/torchrun.sh as two nodes and with elastic restarts."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import BIN, LONGTAIL_TINY, REPO, TINY, TINY_DETECT, TINY_SEGMENT, clean_env
from tests.helpers.runs import assert_same, kill_tree, weights

if TYPE_CHECKING:
    from tests.helpers.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.helpers.slurm_cluster"]  # the session-scoped `slurm_cluster` fixture

SBATCH_SCRIPT = REPO / "slurm" / "supervised.sh"
TORCHRUN_SCRIPT = REPO / "launch" / "torchrun.sh"
# Long enough (each step takes ~10 ms here) that a stop signal sent once the first checkpoint
# exists lands mid-run; still a few seconds of training.
STEPS, SAVE_EVERY = 600, 100
LONG = [*TINY, f"train.max_steps={STEPS}", f"checkpoint.every_steps={SAVE_EVERY}", "checkpoint.keep_last=2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def job_env(out: Path, name: str, **extra: str) -> dict[str, str]:
    """What a user's shell would hold: the venv running these tests, run directory settings."""
    venv = BIN.parent if (BIN / "activate").is_file() else None
    # A free rendezvous port: the default (29500 + job id % 1000) would collide with another
    # test cluster on this host, whose job ids also start at 1.
    env = clean_env(CVDIST_OUTPUT_DIR=str(out / "runs"), CVDIST_RUN_NAME=name, CVDIST_MASTER_PORT=str(free_port()),
                    CVDIST_VENV=str(venv) if venv else "none", **extra)
    if venv is None:
        env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


def submit(cluster: SlurmCluster, out: Path, name: str, args: list[str], *, nodes: int = 0,
           **extra_env: str) -> tuple[int, Path, Path]:
    """sbatch the recipe script from the repository root (``nodes``: instead of the script's 2);
    returns (job id, run dir, output file)."""
    # The test nodes have 2 CPUs each; the script's header asks for 8 per task (real nodes).
    options = ["--cpus-per-task=1", f"--output={out}/slurm-%j.out", *([f"--nodes={nodes}"] if nodes else [])]
    job_id = cluster.sbatch(SBATCH_SCRIPT, args, env=job_env(out, name, **extra_env), options=options, cwd=REPO)
    return job_id, out / "runs" / name, out / f"slurm-{job_id}.out"


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"({path} does not exist)"


def metric_steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in read_metrics(run_dir) if "train/loss" in row]


@pytest.fixture(scope="module")
def straight_run(slurm_cluster, tmp_path_factory):
    """An uninterrupted 2-node x 1-process job: the reference for the pre-empted one."""
    out = tmp_path_factory.mktemp("slurm-straight")
    job_id, run_dir, output = submit(slurm_cluster, out, "straight", LONG)
    fields = slurm_cluster.wait(job_id, timeout=240)
    return fields, run_dir, read(output)


def test_sbatch_two_nodes_one_process_each(straight_run):
    fields, run_dir, output = straight_run
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{output[-4000:]}"
    assert "SLURM_RESTART_COUNT=0: 2 node(s) x 1 process(es)" in output, output[-4000:]
    assert "strategy ddp | 2 process(es) on cpu" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["world_size"] == 2 and summary["stopped_early"] is False
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == [f"step-{STEPS - SAVE_EVERY:08d}", f"step-{STEPS:08d}"]
    assert sorted(p.name for p in (run_dir / "checkpoints" / checkpoints[-1]).glob("rank-*.pt")) == [
        "rank-0.pt", "rank-1.pt"]
    assert metric_steps(run_dir) == list(range(1, STEPS + 1))


def preempt_after_first_checkpoint(cluster: SlurmCluster, job_id: int, run_dir: Path, output_file: Path) -> None:
    """Wait for the run's first checkpoint, then do what `--signal=B:USR1@N` does before the
    time limit: SIGUSR1 to the batch shell only."""
    first_checkpoint = run_dir / "checkpoints" / f"step-{SAVE_EVERY:08d}"
    deadline = time.monotonic() + 180
    while not first_checkpoint.is_dir():
        assert cluster.is_active(job_id), f"job ended before its first checkpoint:\n{read(output_file)[-4000:]}"
        assert time.monotonic() < deadline, f"no checkpoint after 180 s:\n{read(output_file)[-4000:]}"
        time.sleep(0.1)
    cluster.signal(job_id, "USR1", batch_only=True)


def test_preempted_job_saves_requeues_and_resumes_exactly(slurm_cluster, straight_run, tmp_path):
    job_id, run_dir, output_file = submit(slurm_cluster, tmp_path, "preempted", [*LONG, "tracking.wandb_mode=offline"],
                                          WANDB_SILENT="true")
    preempt_after_first_checkpoint(slurm_cluster, job_id, run_dir, output_file)
    fields = slurm_cluster.wait(job_id, timeout=240)
    output = read(output_file)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{output[-5000:]}"
    assert fields["Restarts"] == "1", fields

    stopped = re.search(r"stop signal \(SIGUSR1\): saved step (\d+), stopping", output)
    assert stopped, output[-5000:]
    stop_step = int(stopped.group(1))
    assert SAVE_EVERY <= stop_step < STEPS
    assert f"requeueing job {job_id}" in output
    assert "SLURM_RESTART_COUNT=1: 2 node(s) x 1 process(es)" in output
    assert f"resuming from {run_dir}/checkpoints/step-{stop_step:08d}" in output

    # The same work as the uninterrupted job: same final step, each step logged once, and on
    # the CPU (fp32, same world size) bit-identical weights.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["stopped_early"] is False
    assert metric_steps(run_dir) == list(range(1, STEPS + 1))
    _, straight_dir, _ = straight_run
    assert_same(weights(run_dir), weights(straight_dir), atol=0)

    # One W&B run, continued: both attempts wrote offline runs with the checkpointed id.
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2, wandb_runs
    assert summary["wandb_run_id"] and all(r.name.endswith("-" + summary["wandb_run_id"]) for r in wandb_runs)


def test_preempted_job_at_the_requeue_cap_stops_then_resumes_on_one_node(slurm_cluster, tmp_path):
    job_id, run_dir, output_file = submit(slurm_cluster, tmp_path, "capped", LONG, CVDIST_MAX_REQUEUES="0")
    preempt_after_first_checkpoint(slurm_cluster, job_id, run_dir, output_file)
    fields = slurm_cluster.wait(job_id, timeout=240)
    output = read(output_file)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{output[-5000:]}"
    assert fields["Restarts"] == "0", fields
    stopped = re.search(r"stop signal \(SIGUSR1\): saved step (\d+), stopping", output)
    assert stopped, output[-5000:]
    assert (f"not requeueing: requeued 0 time(s), CVDIST_MAX_REQUEUES=0; resubmit with CVDIST_RUN_NAME=capped "
            f"(or raise CVDIST_MAX_REQUEUES) to continue from step {stopped.group(1)}") in output, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["step"] == int(stopped.group(1))

    # resubmitted onto one node (the cluster had fewer free): the 2-process checkpoint continues on
    # one process, its epoch's remaining samples re-planned (cvdist/data/elastic.py)
    job_id, run_dir, output_file = submit(slurm_cluster, tmp_path, "capped", LONG, nodes=1)
    fields = slurm_cluster.wait(job_id, timeout=240)
    output = read(output_file)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{output[-5000:]}"
    assert "1 node(s) x 1 process(es)" in output and "data layout changed (2 process(es) -> 1" in output, output[-3000:]
    assert metric_steps(run_dir) == list(range(1, STEPS + 1))
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 1


def test_compress_script_runs_one_process_on_one_node(slurm_cluster, tmp_path):
    from cvdist.models import build_model

    torch.save(build_model(name="small_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "small.pt")
    args = ["data.dataset=synthetic", "data.num_train_samples=128", "data.num_eval_samples=64",
            "data.global_batch_size=32", "tracking.wandb_mode=disabled", f"models.small={tmp_path}/small.pt",
            "model.name=small_cnn", "model.num_classes=10", "model.in_channels=1", "quantize.static=false",
            "report.latency_batches=2"]
    job_id = slurm_cluster.sbatch(REPO / "slurm" / "compress.sh", args, env=job_env(tmp_path, "compressed"), cwd=REPO,
                                  options=["--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out"])
    fields = slurm_cluster.wait(job_id, timeout=240)
    output = read(tmp_path / f"slurm-{job_id}.out")
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{output[-4000:]}"
    assert fields["NumNodes"] == "1" and fields["Requeue"] == "0", fields
    assert f"job {job_id}: 1 process, run {tmp_path}/runs/compressed, recipe compress" in output, output[-3000:]
    summary = json.loads((tmp_path / "runs" / "compressed" / "summary.json").read_text())
    assert [row[0] for row in summary["report"]["rows"]] == ["small", "small/pruned", "small/int8_dynamic"]


# A few steps of every recipe's own sbatch script (slurm/<recipe>.sh), 2 nodes x 1 process. A
# script without an entry here fails the test below, so no recipe script goes untested. "{tmp}" is
# the test's directory (distill's teacher weights file is written there first).
RECIPE_SCRIPT_ARGS = {
    "distill": [*TINY, "train.max_steps=4", "teacher.path={tmp}/teacher.pt", "teacher.name=small_cnn"],
    "pretrain_contrastive": [*TINY, "train.max_steps=4", "ssl.knn_bank_size=128", "ssl.knn_k=20"],
    "longtail": [*LONGTAIL_TINY, "train.max_steps=4"],
    "detect": [*TINY_DETECT, "train.max_steps=4", "dist.strategy=zero3"],  # DDP: tests/test_detect_recipe.py
    "segment": [*TINY_SEGMENT, "train.max_steps=4", "dist.strategy=zero1"],  # DDP / ZeRO-2: test_segment_recipe.py
    "pretrain_autoencoder": ["--config", "recipes/pretrain_multitask.yaml", "data.num_train_samples=256", "ae.knn_bank_size=256",
                             "data.num_eval_samples=64", "data.global_batch_size=32", "train.max_steps=4",
                             "tracking.wandb_mode=disabled"],
}


def test_every_training_script_runs_here():
    # tests/test_slurm_script.py checks that every recipe has a script; each of them runs below.
    scripts = {p.stem for p in (REPO / "slurm").glob("*.sh") if not p.name.startswith("_")}
    assert scripts == {"supervised", "compress", *RECIPE_SCRIPT_ARGS}, "add the new script to RECIPE_SCRIPT_ARGS"


@pytest.mark.parametrize("recipe", sorted(RECIPE_SCRIPT_ARGS))
def test_recipe_sbatch_script_runs_on_two_nodes(slurm_cluster, tmp_path, recipe):
    env = job_env(tmp_path, recipe)
    if recipe == "distill":
        from cvdist.models import build_model

        torch.save(build_model(name="small_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "teacher.pt")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in RECIPE_SCRIPT_ARGS[recipe]]
    job_id = slurm_cluster.sbatch(REPO / "slurm" / f"{recipe}.sh", args, env=env, cwd=REPO,
                                  options=["--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out"])
    fields = slurm_cluster.wait(job_id, timeout=240)
    output = read(tmp_path / f"slurm-{job_id}.out")
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{output[-4000:]}"
    assert f"recipe {recipe}" in output and "2 process(es) on cpu" in output, output[-4000:]
    run_dir = tmp_path / "runs" / recipe
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["stopped_early"] is False and summary["step"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step-00000004").glob("rank-*.pt")) == [
        "rank-0.pt", "rank-1.pt"]
    assert read_metrics(run_dir)[-1]["step"] == 4  # metrics logged up to the last step


def run_torchrun_script(args: list[str], *, timeout: float = 240, **env: str) -> subprocess.Popen:
    return subprocess.Popen([str(TORCHRUN_SCRIPT), *args], cwd=REPO, env=clean_env(CVDIST_VENV=str(BIN.parent), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def communicate(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        raise


def test_torchrun_script_two_nodes_without_slurm(tmp_path):
    port = str(free_port())
    args = ["supervised", *TINY, f"output_dir={tmp_path}", "name=nodes", "train.max_steps=3"]
    agents = [run_torchrun_script(args, NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                  PROCS_PER_NODE="1") for rank in (0, 1)]
    outputs = [communicate(agent) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "2 process(es) on cpu" in "".join(outputs)
    summary = json.loads((tmp_path / "nodes" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    assert sorted(p.name for p in (tmp_path / "nodes" / "checkpoints" / "step-00000003").glob("rank-*.pt")) == [
        "rank-0.pt", "rank-1.pt"]


def test_torchrun_script_restarts_a_killed_worker_from_the_last_checkpoint(tmp_path):
    import psutil

    steps = 400
    run_dir = tmp_path / "elastic"
    agent = run_torchrun_script(["--max-restarts", "1", "supervised", *TINY, f"output_dir={tmp_path}",
                                 "name=elastic", f"train.max_steps={steps}", f"checkpoint.every_steps={SAVE_EVERY}"],
                                MASTER_PORT=str(free_port()), PROCS_PER_NODE="2")
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoints" / f"step-{SAVE_EVERY:08d}").is_dir():
            assert agent.poll() is None, f"ended before the first checkpoint:\n{agent.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.05)
        workers = psutil.Process(agent.pid).children()  # the script execs torchrun: its children are the workers
        assert len(workers) == 2, workers
        workers[-1].kill()
    except BaseException:
        kill_tree(agent.pid)
        raise
    output = communicate(agent)
    assert agent.returncode == 0, output[-5000:]
    assert "exitcode: -9" in output, "torchrun must have seen the killed worker"
    resumed = re.search(r"resuming from \S+/checkpoints/step-(\d+)", output)
    assert resumed and int(resumed.group(1)) >= SAVE_EVERY, output[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == steps and summary["stopped_early"] is False
    assert metric_steps(run_dir) == list(range(1, steps + 1)), "each step logged exactly once"
