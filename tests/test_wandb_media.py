"""W&B media: images and tables logged by recipes land in the offline run's files."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cvdist.tracking.wandb_run import WandbRun  # noqa: E402


def test_offline_run_keeps_logged_image_and_table(tmp_path: Path) -> None:
    plot = tmp_path / "plot.png"
    plt.figure()
    plt.plot([0, 1], [1, 0])
    plt.savefig(plot)
    plt.close()
    run = WandbRun(mode="offline", is_main=True, run_dir=tmp_path / "run", name="media", project="cvdist-test",
                   entity=None, group=None, job_type=None, tags=[], config={}, run_id=None)
    run.log({"loss": 1.0}, step=1)
    run.log_image("plots/curve", plot, step=1, caption="a curve")
    run.log_table("report", columns=["model", "top1"], rows=[["student", 0.5]], step=2)
    run.finish()
    files = [p.name for p in (tmp_path / "run" / "wandb").rglob("*") if p.is_file()]
    assert any(name.startswith("curve_1_") and name.endswith(".png") for name in files), files
    assert any(name.startswith("report_") and name.endswith(".table.json") for name in files), files


def test_inactive_run_ignores_media(tmp_path: Path) -> None:
    run = WandbRun(mode="offline", is_main=False, run_dir=tmp_path / "run", name="x", project="p", entity=None,
                   group=None, job_type=None, tags=[], config={}, run_id=None)
    run.log_image("plots/curve", tmp_path / "missing.png", step=1)
    run.log_table("report", columns=["a"], rows=[[1]])
    assert not (tmp_path / "run").exists()


def test_checkpoint_artifact_and_offline_input(tmp_path: Path) -> None:
    from cvdist.tracking.wandb_run import RunInput

    checkpoint = tmp_path / "source" / "checkpoints" / "step-00000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(b"weights" * 10)
    producer = WandbRun(mode="offline", is_main=True, run_dir=tmp_path / "producer", name="p", project="cvdist-test",
                        entity=None, group=None, job_type=None, tags=[], config={}, run_id="prod0001")
    producer.log_checkpoint(checkpoint, step=3)
    producer.finish()
    log = next((tmp_path / "producer" / "wandb").glob("offline-run-*/run-prod0001.wandb")).read_bytes()
    assert b"checkpoint-prod0001" in log and b"step-00000003/model.pt" in log and b"step-3" in log

    consumer = WandbRun(mode="offline", is_main=True, run_dir=tmp_path / "consumer", name="c", project="cvdist-test",
                        entity=None, group=None, job_type=None, tags=[], config={"a": 1}, run_id="cons0001")
    consumer.use_input(RunInput(checkpoint, wandb_run_id="prod0001", step=3))  # offline: config only, no error
    consumer.finish()
    log = next((tmp_path / "consumer" / "wandb").glob("offline-run-*/run-cons0001.wandb")).read_bytes()
    assert b"cvdist_inputs" in log and b"prod0001" in log and str(checkpoint).encode() in log
