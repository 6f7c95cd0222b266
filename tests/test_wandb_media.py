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


def offline_log(run_dir: Path, run_id: str, *, until: bytes, patience_s: float = 60) -> bytes:
    """The offline run's transaction log. wandb's writer process may still be appending after
    ``finish()`` returns on a loaded machine, so read until ``until`` is in it (or give up)."""
    import time

    deadline = time.monotonic() + patience_s
    while True:
        log = b"".join(p.read_bytes() for p in (run_dir / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))
        if until in log or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


def test_checkpoint_artifact_and_offline_input(tmp_path: Path) -> None:
    from cvdist.tracking.wandb_run import RunInput

    checkpoint = tmp_path / "source" / "checkpoints" / "step-00000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(b"weights" * 10)
    producer = WandbRun(mode="offline", is_main=True, run_dir=tmp_path / "producer", name="p", project="cvdist-test",
                        entity=None, group=None, job_type=None, tags=[], config={}, run_id="prod0001")
    producer.log_checkpoint(checkpoint, step=3)
    producer.finish()
    log = offline_log(tmp_path / "producer", "prod0001", until=b"step-00000003/model.pt")
    assert b"checkpoint-prod0001" in log and b"step-00000003/model.pt" in log and b"step-3" in log

    consumer = WandbRun(mode="offline", is_main=True, run_dir=tmp_path / "consumer", name="c", project="cvdist-test",
                        entity=None, group=None, job_type=None, tags=[], config={"a": 1}, run_id="cons0001")
    consumer.use_input(RunInput(checkpoint, wandb_run_id="prod0001", step=3))  # offline: config only, no error
    consumer.finish()
    log = offline_log(tmp_path / "consumer", "cons0001", until=b"cvdist_inputs")
    assert b"cvdist_inputs" in log and b"prod0001" in log and str(checkpoint).encode() in log
