"""The loop tells the task where training stands: one ``Progress`` value for ``compute_loss``,
``evaluate``, ``on_step_end`` and ``after_training``, consistent across a resume; and what
``after_training`` returns lands in the run record the engine writes (no second summary write)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers.recipes import REPO, clean_env

# Runs in its own process: the engine sets up Accelerate / process-group state once per process.
SCRIPT = r'''
import json, sys
import torch
from torch.nn import functional as F
from cvdist.config_loading import load_config
from tests.helpers.tensor_batches import TensorBatches
from cvdist.engine import AfterTraining, TrainTask, fit, start_session

out_dir, max_steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = load_config(overrides=[
    f"output_dir={out_dir}", "name=run", "tracking.wandb_mode=disabled", "data.global_batch_size=4",
    "optim.accum_steps=2", "train.epochs=3", f"train.max_steps={max_steps}", "train.eval_every_steps=3",
    "checkpoint.every_steps=2", f"checkpoint.resume={resume}", "tracking.log_every_steps=1"])
session = start_session(config)
images = torch.randint(0, 255, (20, 1, 4, 4), dtype=torch.uint8)  # 10 micro-batches of 2 per epoch
batches = TensorBatches(images=images, labels=torch.arange(20) % 2, rank=0, world_size=1, batch_size=2, seed=0,
                        horizontal_flip=False, mean=0.5, std=0.5)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
seen = {"loss": [], "step_end": [], "eval": [], "after": []}

def as_list(p):
    return [p.step, p.micro_batch, p.epoch, p.total_steps]

def compute_loss(model, batch, progress):
    seen["loss"].append(as_list(progress))
    return F.cross_entropy(model(batch["image"].float()), batch["label"]), {}

def evaluate(model, progress):
    seen["eval"].append(as_list(progress))
    return {"progress_step": float(progress.step)}

def after_training(progress):
    seen["after"].append(as_list(progress))
    return AfterTraining(metrics={"final/extra_metric": 1.5}, summary={"extra_table": {"rows": [[1]]}})

fit(session, TrainTask(model=model, compute_loss=compute_loss, train_batches=batches, evaluate=evaluate,
                       on_step_end=lambda p: seen["step_end"].append(as_list(p)), after_training=after_training))
session.close()
print("SEEN " + json.dumps(seen))
'''


def run_script(tmp_path, *, max_steps: int, resume: str = "none") -> dict:
    script = tmp_path / "progress_script.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "runs"), str(max_steps), resume],
                            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("SEEN "))
    return json.loads(line[len("SEEN "):])


def test_progress_values_and_after_training(tmp_path):
    seen = run_script(tmp_path, max_steps=0)  # 3 epochs x 10 micro-batches / 2 accumulation = 15 steps
    loss = seen["loss"]
    assert len(loss) == 30
    for index, (step, micro, epoch, total) in enumerate(loss):
        assert (step, micro, epoch, total) == (index // 2, index, index // 10, 15)
    assert seen["step_end"] == [[s, 2 * s, (2 * s - 1) // 10, 15] for s in range(1, 16)]
    assert [row[0] for row in seen["eval"]] == [3, 6, 9, 12, 15]
    assert seen["after"] == [[15, 30, 2, 15]]
    run = tmp_path / "runs" / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["final/extra_metric"] == 1.5 and summary["extra_table"] == {"rows": [[1]]}
    assert summary["step"] == 15 and summary["final"]["eval/progress_step"] == 15.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == {"step": 15, "final/extra_metric": 1.5}


def test_progress_continues_across_a_resume(tmp_path):
    first = run_script(tmp_path, max_steps=4)  # stops at step 4 with a checkpoint, after_training at 4
    assert first["after"] == [[4, 8, 0, 4]]
    resumed = run_script(tmp_path, max_steps=6, resume="auto")
    # the second run starts from the checkpoint at step 4: micro-batch 8, epoch 0
    assert resumed["loss"][0] == [4, 8, 0, 6] and resumed["loss"][-1] == [5, 11, 1, 6]
    assert resumed["step_end"] == [[5, 10, 0, 6], [6, 12, 1, 6]]
