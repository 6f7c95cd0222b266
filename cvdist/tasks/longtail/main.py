"""``main`` of the longtail task: parse the config, build the parts, call the engine, report.

The user-facing entry point is ``recipes/longtail.py`` (its docstring shows the command lines),
which passes the recipe's YAML defaults as ``default_yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cvdist.config_loading import load_recipe_config
from cvdist.data.longtail_data import build_longtail_data
from cvdist.engine import AfterTraining, TrainTask, fit, start_session
from cvdist.engine.export import consolidated_state_dict
from cvdist.engine.transfer import prepare_transfer
from cvdist.eval.longtail import plot_per_class_accuracy, scaled_shot_thresholds
from cvdist.eval.longtail_evaluator import SCALAR_METRICS, LongtailEvaluator, fp32_mover, tau_norm_and_evaluate
from cvdist.models import build_model
from cvdist.models.multitask import add_aux_heads
from cvdist.models.transfer import find_head_name
from cvdist.tasks.common import build_label_loss
from cvdist.tasks.longtail.config import LongtailRunConfig, validate_longtail
from cvdist.tasks.longtail.step import LongtailTrainStep, WeightEma


def build_data(config: LongtailRunConfig, session):
    lt = config.longtail
    return build_longtail_data(
        config.data, num_classes=config.model.num_classes, in_channels=config.model.in_channels,
        rank=session.env.rank, world_size=session.env.world_size, micro_batch_size=session.micro_batch_size,
        seed=config.train.seed, num_epochs=config.train.epochs,
        holdout_per_class=lt.holdout_per_class, holdout_shards=lt.holdout_shards, holdout_split=lt.holdout_split,
        need_holdout=lt.tau_norm, aux_labels=tuple(config.multitask.labels))


def build_fresh_model(config: LongtailRunConfig, aux_classes: dict[str, int]):
    """The classifier, with an auxiliary head per multi-task label (``aux_classes``: name -> classes)."""
    model = build_model(name=config.model.name, num_classes=config.model.num_classes,
                        in_channels=config.model.in_channels, small_stem=config.model.small_stem)
    head_name = find_head_name(model, head_name=config.transfer.head_name) if aux_classes else ""
    return add_aux_heads(model, head_name=head_name, aux_classes=aux_classes)


def after_training(config: LongtailRunConfig, session, data, evaluator, *, head_name: str,
                   thresholds) -> AfterTraining:
    """The per-class PNG, and tau-normalisation when asked (its metrics join the run's record)."""
    counts, env, run_dir = data.class_counts, session.env, session.run_dir
    plot = dict(train_class_counts=counts, class_names=data.class_names, thresholds=thresholds)
    if env.is_main and evaluator.last:
        plot_per_class_accuracy(evaluator.last[""]["per_class"], path=run_dir / "per_class_accuracy.png", **plot)
        session.wandb.log_image("plots/per_class_accuracy", run_dir / "per_class_accuracy.png")
    if not config.longtail.tau_norm:
        return AfterTraining(metrics={}, summary={})
    model = build_fresh_model(config, data.aux_classes)
    model.load_state_dict(consolidated_state_dict(run_dir))  # the final weights under any strategy
    tau, scores, metrics = tau_norm_and_evaluate(
        model.to(env.device), head_name=head_name, holdout_batches=data.holdout_batches(),
        eval_batches=data.eval_batches(), taus=config.longtail.tau_grid, class_counts=counts, thresholds=thresholds,
        to_device=fp32_mover(env.device), device=env.device)
    if env.is_main:
        plot_per_class_accuracy(metrics["per_class"], path=run_dir / "per_class_accuracy_taunorm.png", **plot)
        session.wandb.log_image("plots/per_class_accuracy_taunorm", run_dir / "per_class_accuracy_taunorm.png")
    session.print(f"[cvdist] tau-normalisation: tau={tau:g} (held-out balanced acc {scores[tau]:.4f})")
    return AfterTraining(metrics={"tau_norm/tau": tau, "tau_norm/holdout_balanced_acc": scores[tau],
                                  **{f"eval/{k}_taunorm": metrics[k] for k in (*SCALAR_METRICS, "loss")}}, summary={})


def main(argv: Sequence[str], *, default_yaml: str | Path) -> int:
    """Run the task with the recipe's YAML defaults ``default_yaml`` and the command line ``argv``."""
    config = load_recipe_config(argv, default_yaml=default_yaml, recipe="longtail",
                                schema=LongtailRunConfig)
    validate_longtail(config)
    session = start_session(config)
    env, lt, reg = session.env, config.longtail, config.regularization
    data = build_data(config, session)
    model = build_fresh_model(config, data.aux_classes)
    crt = lt.stage == "crt"
    head_name, groups = prepare_transfer(
        model, from_path=config.transfer.from_path, head_name=config.transfer.head_name,
        keep_head=config.transfer.keep_head, freeze=config.transfer.freeze_trunk or crt,
        trunk_lr_scale=config.transfer.trunk_lr_scale, lr=config.optim.lr,
        load=session.resume_from is None, log=session.print)  # a resumed run has its own weights
    if config.transfer.from_path:
        session.add_input(config.transfer.from_path)  # lineage: inputs.json and the W&B input artifact
    loss = build_label_loss(config.loss, data.class_counts).to(env.device)
    ema = WeightEma(decay=reg.ema_decay) if reg.ema_decay > 0 else None
    thresholds = scaled_shot_thresholds(data.class_counts, many=lt.shot_many, few=lt.shot_few)
    evaluator = LongtailEvaluator(
        eval_batches=data.eval_batches, class_counts=data.class_counts, thresholds=thresholds,
        posthoc_tau=lt.posthoc_tau, to_device=session.backend.to_device, device=env.device,
        run_dir=session.run_dir, is_main=env.is_main, resumed_step=session.resumed_step, ema=ema, aux_keys=tuple(data.aux_classes))
    session.print(f"[cvdist] training class counts {data.class_counts}; shot thresholds many > {thresholds.many:g}, "
                  f"few < {thresholds.few:g}")
    step = LongtailTrainStep(loss=loss, mixup_alpha=reg.mixup_alpha, cutmix_alpha=reg.cutmix_alpha,
                             ema=ema, aux_weights=dict(config.multitask.labels))
    finish = lambda progress: after_training(config, session, data, evaluator,  # noqa: E731
                                             head_name=head_name, thresholds=thresholds)
    result = fit(session, TrainTask(model=model, compute_loss=step, train_batches=data.train, evaluate=evaluator,
                                    parameter_groups=groups, extra_state=ema, after_training=finish))
    if not result.stopped_early:
        final = result.summary["final"]
        session.print(f"[cvdist] done: step {result.step}, eval top-1 {final.get('eval/top1', float('nan')):.4f}, "
                      f"balanced {final.get('eval/balanced_acc', float('nan')):.4f}, record in {session.run_dir}")
    session.close()
    return 0
