"""``main`` of the distill task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/distill.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cvdist.config_loading import load_recipe_config
from cvdist.data.longtail_data import build_longtail_data
from cvdist.engine import AfterTraining, Progress, TrainTask, fit, start_session
from cvdist.eval.longtail import scaled_shot_thresholds
from cvdist.eval.longtail_evaluator import LongtailEvaluator
from cvdist.losses.distill import DistillationLoss, kd_logit_offset
from cvdist.tasks.common import build_label_loss
from cvdist.tasks.distill.config import DistillRunConfig, validate_distill
from cvdist.tasks.distill.step import DistillStep, build_student, final_report, load_teacher, state_fingerprint


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml, recipe="distill",
                                schema=DistillRunConfig)
    validate_distill(config)
    session = start_session(config)
    env, kd = session.env, config.kd
    data = build_longtail_data(
        config.data, num_classes=config.model.num_classes, in_channels=config.model.in_channels,
        rank=env.rank, world_size=env.world_size,
        micro_batch_size=session.micro_batch_size, seed=config.train.seed, num_epochs=config.train.epochs)
    teacher = load_teacher(config, env.device)
    session.add_input(config.teacher.path)
    fingerprint = state_fingerprint(teacher)
    probe = torch.zeros(1, config.model.in_channels, config.data.image_size, config.data.image_size)
    student, teacher_hint = build_student(config, teacher, probe=probe)
    label_loss = build_label_loss(config.loss, data.class_counts).to(env.device)
    loss = DistillationLoss(temperature=kd.temperature, alpha=kd.alpha, label_loss=label_loss,
                            feature_weight=kd.feature_weight, feature_loss=kd.feature_loss,
                            kd_offset=kd_logit_offset(data.class_counts, tau=kd.logit_adjust_tau)).to(env.device)
    thresholds = scaled_shot_thresholds(data.class_counts, many=config.longtail.shot_many, few=config.longtail.shot_few)
    evaluator = LongtailEvaluator(
        eval_batches=data.eval_batches, class_counts=data.class_counts, thresholds=thresholds, posthoc_tau=0.0,
        to_device=session.backend.to_device, device=env.device, run_dir=session.run_dir, is_main=env.is_main,
        resumed_step=session.resumed_step)
    step = DistillStep(teacher=teacher, loss=loss, teacher_hint=teacher_hint)

    def after_training(progress: Progress) -> AfterTraining:
        """The teacher / student report, and proof that the teacher did not change."""
        teacher_state = {"teacher/sha256_before": fingerprint, "teacher/sha256_after": state_fingerprint(teacher),
                         "teacher/params_with_grad": sum(p.grad is not None for p in teacher.parameters()),
                         "teacher/trainable_params": sum(p.requires_grad for p in teacher.parameters())}
        report = final_report(config, session=session, data=data, teacher=teacher, thresholds=thresholds,
                              settings=config.report)
        return AfterTraining(metrics={}, summary={"report": report, **teacher_state})

    fit(session, TrainTask(model=student, compute_loss=step, evaluate=evaluator, train_batches=data.train,
                           after_training=after_training))
    session.close()
    return 0
