"""W&B offline records, and the launch forms users type: python, accelerate launch, srun."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import BIN, RECIPE, REPO, clean_env, run_recipe
from tests.helpers.runs import run_killed_after_checkpoint

pytestmark = pytest.mark.slow


def test_wandb_offline_run_and_resume_keep_one_run_id(tiny_args, tmp_path):
    wandb_env = dict(WANDB_MODE="offline", WANDB_SILENT="true")
    args = [a for a in tiny_args if not a.startswith("tracking.wandb_mode")]
    args += ["name=tracked", "train.max_steps=4", "checkpoint.every_steps=2"]
    run_dir = Path(tiny_args[-1].split("=", 1)[1]) / "tracked"

    run_killed_after_checkpoint(args, nproc=1, step=2, marker=tmp_path / "marker", kind="hang_after_checkpoint",
                                **wandb_env)
    first_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(first_runs) == 1, list((run_dir).rglob("*"))
    run_id = first_runs[0].name.rsplit("-", 1)[1]
    meta = json.loads((run_dir / "checkpoints" / "step-00000002" / "meta.json").read_text())
    assert meta["wandb_run_id"] == run_id

    run_recipe([*args, "checkpoint.resume=auto"], env=clean_env(**wandb_env))
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    assert (runs[-1] / f"run-{run_id}.wandb").stat().st_size > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["wandb_run_id"] == run_id
    system = summary["system"]
    assert system["world_size"] == 1 and system["versions"]["torch"] and system["launcher"] == "python"
    # the final checkpoint is the run's output artifact (a reference, not a copy)
    log = (runs[-1] / f"run-{run_id}.wandb").read_bytes()
    assert f"checkpoint-{run_id}".encode() in log and b"step-00000004/" in log
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all("train/loss" in r and "lr" in r and "samples_per_s" in r and "data_wait_s" in r for r in rows)
    assert "eval/top1" in rows[-1]


def _assert_two_process_run(run_dir: Path, output: str) -> None:
    assert "2 process(es) on cpu" in output, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step-00000003").glob("rank-*.pt")) == [
        "rank-0.pt", "rank-1.pt"]


@pytest.mark.parametrize("config_file, recipe, overrides, strategy", [
    ("ddp.yaml", "supervised", [], "ddp"),
    ("ddp.yaml", "supervised", ["dist.strategy=zero2"], "zero2"),
    ("zero3.yaml", "supervised", [], "zero3"),  # the strategy and DeepSpeed JSON come from the accelerate config
    ("zero2.yaml", "pretrain_contrastive", ["ssl.projection_hidden_dim=32", "ssl.projection_dim=16"], "zero2"),
    ("fsdp.yaml", "supervised", [], "fsdp"),  # FSDP2 settings from the accelerate config
])
def test_accelerate_launch_configs_run_two_cpu_processes(tiny_args, config_file, recipe, overrides, strategy):
    # The supported CPU form (see README): accelerate's --multi_gpu / DeepSpeed launchers, which
    # on a machine without GPUs start N processes that join one gloo group (MULTI_CPU needs MPI).
    command = [str(BIN / "accelerate"), "launch", "--config_file", f"launch/accelerate/{config_file}",
               "--num_processes", "2", str(REPO / "recipes" / f"{recipe}.py"), *tiny_args, "name=acc",
               "train.max_steps=3", *overrides]
    result = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    output = result.stdout + result.stderr
    assert f"strategy {strategy} | 2 process(es)" in output
    run_dir = Path(tiny_args[-1].split("=", 1)[1]) / "acc"
    _assert_two_process_run(run_dir, output)
    if config_file == "fsdp.yaml":
        assert (run_dir / "checkpoints" / "step-00000003" / "fsdp" / ".metadata").is_file()
    if config_file.startswith("zero"):
        assert f"deepspeed_config: launch/deepspeed/{config_file[:-5]}.json" in (run_dir / "config.yaml").read_text()


def test_srun_environment_one_task_per_process(tiny_args):
    # The variables srun sets for `srun --ntasks=2 python recipe.py` (a real SLURM cluster is
    # exercised by the cluster tests); here two tasks are started by hand with them.
    processes = []
    for rank in range(2):
        env = clean_env(SLURM_JOB_ID="4242", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2",
                        SLURM_STEP_NUM_TASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_STEP_NODELIST="localhost")
        processes.append(subprocess.Popen(
            [str(BIN / "python"), str(RECIPE), *tiny_args, "name=srun", "train.max_steps=3"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    _assert_two_process_run(Path(tiny_args[-1].split("=", 1)[1]) / "srun", outputs[0])
    assert "[cvdist] run" not in outputs[1], "only rank 0 prints the run banner"


def test_two_torchrun_agents_as_two_nodes(tiny_args):
    """Multi-node without SLURM: two torchrun agents (node ranks 0 and 1) meet through c10d."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agents = []
    for node_rank in range(2):
        command = [str(BIN / "torchrun"), "--nnodes=2", f"--node_rank={node_rank}", "--nproc_per_node=1",
                   "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=cvdist-test",
                   str(RECIPE), *tiny_args, "name=nodes", "train.max_steps=3"]
        agents.append(subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True))
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    _assert_two_process_run(Path(tiny_args[-1].split("=", 1)[1]) / "nodes", "".join(outputs))
