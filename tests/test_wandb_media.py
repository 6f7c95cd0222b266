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
