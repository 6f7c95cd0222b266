"""Knowledge distillation: a trained teacher teaches a student (logit KD, feature KD or both),
on WebDataset shards or the built-in data, under any strategy (one process, DDP, ZeRO-1/2/3).

    python recipes/distill.py teacher.path=runs/teacher                   # small_cnn teacher -> tiny_cnn student
    torchrun --nproc_per_node 2 recipes/distill.py teacher.path=runs/teacher dist.strategy=zero2
    python recipes/distill.py teacher.path=runs/teacher kd.feature_weight=1 kd.teacher_hint=4 kd.student_hint=1
    python recipes/distill.py teacher.path=runs/teacher name=student kd.alpha=0  # the student alone, same budget
    python recipes/distill.py teacher.path=runs/lt-teacher longtail.imbalance_factor=100 \
        loss.name=balanced_softmax kd.logit_adjust_tau=1                     # long-tail aware KD

The teacher (``teacher.path``: a cvdist run / checkpoint directory, ZeRO included, or a weights
file) is **replicated**: every process holds a full, frozen fp32 copy (eval mode, no gradients),
kept outside the model handed to the engine, so the optimiser never sees it and ZeRO shards only
the student (and the hint adapter). This costs one teacher of memory per process and needs no
communication for the teacher's forward pass; the test checks that its weights are bit-identical
after training (``teacher/sha256_*`` in ``summary.json``).

Writes, besides the usual run record, ``report.md`` and ``summary.json["report"]``: test top-1
(and balanced / many / medium / few accuracy when the training data is long-tailed), parameters,
size on disk and CPU latency of the teacher and the trained student (also the W&B table
``report/models``). ``cvdist compress --model teacher=... --model student_kd=runs/<this run>``
adds pruned and quantized rows to the same table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from cvdist.cli import run_recipe
from cvdist.config import ConfigError, load_recipe_config, longtail_loss_options
from cvdist.distill_config import DistillRunConfig, validate_distill
from cvdist.distill_training import (DistillStep, build_classification_data, build_student, final_report,
                                     load_teacher, state_fingerprint)
from cvdist.engine import TrainTask, fit, start_session
from cvdist.eval.longtail import scaled_shot_thresholds
from cvdist.longtail_eval import LongtailEvaluator
from cvdist.longtail_training import EpochHook, StepCounter
from cvdist.losses.distill import DistillationLoss, kd_logit_offset
from cvdist.losses.longtail import build_longtail_loss


def main(argv: Sequence[str]) -> int:
    config = load_recipe_config(argv, default_yaml=Path(__file__).with_suffix(".yaml"), recipe="distill",
                                schema=DistillRunConfig)
    validate_distill(config)
    session = start_session(config)
    env, kd = session.env, config.kd
    data = build_classification_data(
        config.data, num_classes=config.model.num_classes, in_channels=config.model.in_channels,
        imbalance_factor=config.longtail.imbalance_factor, rank=env.rank, world_size=env.world_size,
        micro_batch_size=session.micro_batch_size, seed=config.train.seed, num_epochs=config.train.epochs)
    teacher = load_teacher(config, env.device)
    session.add_input(config.teacher.path)
    fingerprint = state_fingerprint(teacher)
    probe = torch.zeros(1, config.model.in_channels, config.data.image_size, config.data.image_size)
    student, teacher_hint = build_student(config, teacher, probe=probe)
    try:
        label_loss = build_longtail_loss(name=config.loss.name, class_counts=data.class_counts,
                                         **longtail_loss_options(config.loss)).to(env.device)
    except ValueError as error:
        raise ConfigError(f"loss.name={config.loss.name!r}: {error}") from None
    loss = DistillationLoss(temperature=kd.temperature, alpha=kd.alpha, label_loss=label_loss,
                            feature_weight=kd.feature_weight, feature_loss=kd.feature_loss,
                            kd_offset=kd_logit_offset(data.class_counts, tau=kd.logit_adjust_tau)).to(env.device)
    resumed_step = session.resume_meta.step if session.resume_meta else None
    counter = StepCounter(start_step=resumed_step or 0, accum_steps=config.optim.accum_steps)
    thresholds = scaled_shot_thresholds(data.class_counts, many=config.longtail.shot_many, few=config.longtail.shot_few)
    evaluator = LongtailEvaluator(
        eval_batches=data.eval_batches, class_counts=data.class_counts, thresholds=thresholds, posthoc_tau=0.0,
        to_device=session.backend.to_device, device=env.device, step_of=lambda: counter.steps_done,
        run_dir=session.run_dir, is_main=env.is_main, resumed_step=resumed_step)
    step = DistillStep(teacher=teacher, loss=loss, counter=counter, teacher_hint=teacher_hint)
    result = fit(session, TrainTask(model=student, compute_loss=step, evaluate=evaluator,
                                    train_batches=EpochHook(data.train, label_loss.set_epoch)))
    if not result.stopped_early:
        teacher_state = {"teacher/sha256_before": fingerprint, "teacher/sha256_after": state_fingerprint(teacher),
                         "teacher/params_with_grad": sum(p.grad is not None for p in teacher.parameters()),
                         "teacher/trainable_params": sum(p.requires_grad for p in teacher.parameters())}
        final_report(config, session=session, data=data, teacher=teacher, thresholds=thresholds,
                     settings=config.report, extra_summary=teacher_state)
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main))
