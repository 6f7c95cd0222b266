"""Real multi-process training over uneven shards: no hang at epoch ends, and a SIGKILLed run
resumed mid-epoch (2 processes x 2 DataLoader workers, shuffle buffer, augmentation, class
re-sampling) ends with bit-identical weights."""

from __future__ import annotations

import pytest

from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import run_recipe
from tests.helpers.runs import assert_same, run_killed_after_checkpoint, weights
from tests.helpers.shards import UNEVEN, png_bytes, write_tar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shard_args(tmp_path_factory):
    data = tmp_path_factory.mktemp("shards")
    index = 0
    for shard, size in enumerate([s * 3 for s in UNEVEN]):  # 264 samples in 5 uneven shards
        samples = []
        for _ in range(size):
            samples.append((f"s{index:05d}", {"png": png_bytes(index * 7), "cls": str(index % 3).encode()}))
            index += 1
        write_tar(data / f"train-{shard:06d}.tar", samples)
    write_tar(data / "test-000000.tar", [(f"t{i}", {"png": png_bytes(i), "cls": str(i % 3).encode()})
                                         for i in range(40)])
    return [
        f"data.train_shards=['{data}/train-{{000000..000004}}.tar']", f"data.eval_shards={data}/test-*.tar",
        "data.num_workers=2", "data.shuffle_buffer=20", "data.image_size=8", "data.augment=flip",
        "data.sampling=sqrt", "data.global_batch_size=16", "data.eval_batch_size=16", "model.name=tiny_cnn",
        "model.num_classes=3", "tracking.wandb_mode=disabled", "tracking.log_every_steps=1", "train.epochs=3",
        "checkpoint.every_steps=3", "optim.lr=0.05",
    ]


def test_two_processes_train_over_uneven_shards_and_resume_mid_epoch_exactly(shard_args, tmp_path):
    straight = run_recipe([*shard_args, f"output_dir={tmp_path}", "name=straight"], nproc=2, timeout=600)
    assert "2 process(es)" in straight.stdout
    rows = [r for r in read_metrics(tmp_path / "straight") if "train/loss" in r]
    steps_per_epoch = max(r["step"] for r in rows if r["epoch"] == 0)
    assert steps_per_epoch > 3 and rows[-1]["epoch"] >= 2  # three epoch ends passed without a hang
    assert "eval/top1" in read_metrics(tmp_path / "straight")[-1]

    args = [*shard_args, f"output_dir={tmp_path}", "name=resumed"]
    run_killed_after_checkpoint(args, nproc=2, step=3, marker=tmp_path / "marker", kind="hang_after_checkpoint")
    run_recipe([*args, "checkpoint.resume=auto"], nproc=2, timeout=600)
    assert_same(weights(tmp_path / "resumed"), weights(tmp_path / "straight"), atol=0)
    resumed_rows = [r for r in read_metrics(tmp_path / "resumed") if "train/loss" in r]
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in rows]
    assert [r["train/loss"] for r in resumed_rows] == [r["train/loss"] for r in rows]
