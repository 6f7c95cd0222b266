"""DeepSpeed checkpoint loads never unpickle: every ``torch.load`` DeepSpeed makes while cvdist
loads a ZeRO checkpoint is weights-only, even where DeepSpeed asks for ``weights_only=False``;
a tampered ZeRO checkpoint is refused with a one-line error and its payload never runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cvdist.engine.safe_load import UnsafeCheckpointError, weights_only_torch_load
from tests.helpers.recipes import TINY, clean_env, run_recipe


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_payload(path: Path, marker: Path) -> None:
    torch.save({"module": {"weight": torch.zeros(1)}, "evil": Payload(marker)}, path)


def test_the_guard_overrides_weights_only_false(tmp_path):
    write_payload(tmp_path / "states.pt", tmp_path / "ran")
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    original = torch.load
    with weights_only_torch_load():
        with pytest.raises(UnsafeCheckpointError, match="holds objects other than tensors"):
            torch.load(tmp_path / "states.pt", weights_only=False)  # as DeepSpeed's loaders call it
        assert torch.load(tmp_path / "plain.pt", weights_only=False)["w"].shape == (2,)
    assert not (tmp_path / "ran").exists()
    assert torch.load is original


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero_safe")
    run_recipe([*TINY, f"output_dir={out}", "name=run", "dist.strategy=zero2", "train.max_steps=2",
                "checkpoint.every_steps=2"])
    return out / "run"


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["mp_rank_00_model_states.pt", "*optim_states.pt"])
def test_a_pickle_payload_in_a_zero_checkpoint_is_refused(zero_run, tmp_path, pattern):
    run = tmp_path / "run"
    shutil.copytree(zero_run, run)
    target = next((run / "checkpoints" / "step-00000002" / "zero").glob(pattern))
    write_payload(target, tmp_path / "ran")
    result = run_recipe([*TINY, f"output_dir={tmp_path}", "name=run", "dist.strategy=zero2", "train.max_steps=4",
                         "checkpoint.resume=auto"], check=False, env=clean_env())
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cvdist: error: {target} holds objects other than tensors" in result.stderr
    assert not (tmp_path / "ran").exists()  # the payload never ran
