"""Reading launcher environments: torchrun, srun, none, and half-set ones."""

import pytest

from cvdist.engine.dist import LaunchError, first_slurm_host, resolve_launch_env


def test_single_process_needs_nothing():
    assert resolve_launch_env({}) == {}


def test_torchrun_variables_pass_through():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert resolve_launch_env(env) == env


def test_torchrun_inside_srun_wins_over_slurm():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1",
           "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}
    assert resolve_launch_env(env)["RANK"] == "3"


def test_srun_one_task_per_process():
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu-[007-008]", "SLURM_JOB_ID": "1234"}
    assert resolve_launch_env(env) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                       "MASTER_ADDR": "gpu-007", "MASTER_PORT": str(20000 + 1234)}


def test_sbatch_script_itself_is_one_process():
    assert resolve_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "5"}) == {}


@pytest.mark.parametrize("env,missing", [
    ({"RANK": "0"}, "WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
])
def test_half_set_environment_is_an_error(env, missing):
    with pytest.raises(LaunchError, match=f"half set.*{missing}"):
        resolve_launch_env(env)


@pytest.mark.parametrize("nodelist,first", [
    ("n1", "n1"), ("n[1-2]", "n1"), ("node01,node02", "node01"), ("gpu-[001-004,007],cpu1", "gpu-001"),
    ("a[3,5]", "a3"),
])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first
