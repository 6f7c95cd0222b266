"""``cvdist eval``: kNN and linear-probe top-1 of a trained trunk on frozen features.

    cvdist eval runs/pretrain_contrastive --knn --linear-probe
    cvdist eval runs/x/checkpoints/step-00000400 --knn --k 20
    cvdist eval weights.safetensors --model resnet18 --knn --linear-probe --dataset fashion_mnist

The source is a cvdist run or checkpoint directory (any strategy; its ``config.yaml`` gives the
model, data and seed, which the options override) or a weights file (``.pth`` / ``.pt`` /
``.safetensors``; then ``--model`` is required). The trunk loads as ``recipes/longtail.py
transfer.from_path`` loads it (heads left out). Features of the labelled training split (kNN bank
and probe training set) and of the evaluation split are extracted once, in one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from cvdist.config import ConfigError, DataConfig, ModelConfig
from cvdist.data.from_config import build_bank_batches, build_labelled_data
from cvdist.engine.transfer import load_backbone
from cvdist.eval.knn import KnnEvaluator
from cvdist.models import build_model
from cvdist.models.backbones import remove_head


def _run_config(source: Path) -> dict[str, Any]:
    """The ``config.yaml`` of the run ``source`` belongs to (empty for a weights file)."""
    if not source.is_dir():
        return {}
    for candidate in (source / "config.yaml", source.parent.parent / "config.yaml"):  # run dir, run/checkpoints/step-N
        if candidate.is_file():
            # (resolve=False: never resolve ${oc.env:...} out of a run directory from elsewhere)
            return OmegaConf.to_container(OmegaConf.load(candidate), resolve=False)  # type: ignore[return-value]
    return {}


def _section(schema: type, values: dict[str, Any], overrides: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(schema)}
    merged = {k: v for k, v in values.items() if k in known}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), merged))


def _configs(args: argparse.Namespace) -> tuple[ModelConfig, DataConfig, int]:
    run = _run_config(Path(args.source))
    if not run and args.model is None:
        raise ConfigError(f"{args.source} is not a cvdist run or checkpoint directory; pass --model NAME "
                          "(and --in-channels, --dataset or --train-shards) for a weights file")
    model = _section(ModelConfig, run.get("model", {}), {
        "name": args.model, "in_channels": args.in_channels, "small_stem": args.small_stem,
        "num_classes": args.num_classes})
    data = _section(DataConfig, run.get("data", {}), {
        "dataset": args.dataset, "train_shards": args.train_shards, "eval_shards": args.eval_shards,
        "num_eval_samples": args.num_eval, "eval_batch_size": args.batch_size,
        "allow_pipe": args.allow_pipe})  # from the command line only, never from a run's config.yaml
    if args.train_shards is None and args.dataset is None and not run:
        data.dataset = "fashion_mnist"
    if len(data.mean) != model.in_channels:  # a weights file with 3 channels and the grey defaults
        data.mean, data.std = [0.5] * model.in_channels, [0.5] * model.in_channels
    return model, data, int(run.get("train", {}).get("seed", 0))


def run_eval(args: argparse.Namespace) -> int:
    """The ``eval`` handler: load the trunk, extract features, print (and write) the metrics."""
    if not (args.knn or args.linear_probe):
        raise ConfigError("cvdist eval: choose at least one of --knn and --linear-probe")
    model_cfg, data, seed = _configs(args)
    classifier = build_model(name=model_cfg.name, num_classes=model_cfg.num_classes,
                             in_channels=model_cfg.in_channels, small_stem=model_cfg.small_stem)
    load_backbone(classifier, source=args.source, log=print)
    remove_head(classifier)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trunk = classifier.to(device).eval()
    labelled = build_labelled_data(data, in_channels=model_cfg.in_channels, num_classes=model_cfg.num_classes,
                                   rank=0, world_size=1, micro_batch_size=1, seed=seed, num_epochs=1)
    evaluator = KnnEvaluator(
        bank_batches=build_bank_batches(data, in_channels=model_cfg.in_channels, num_classes=model_cfg.num_classes,
                                        bank_size=args.num_train, rank=0, world_size=1, seed=seed),
        eval_batches=labelled.eval_batches, to_device=lambda batch: tuple(t.to(device) for t in batch),
        num_classes=model_cfg.num_classes, k=args.k, temperature=args.temperature,
        probe_epochs=args.probe_epochs if args.linear_probe else 0, seed=seed)
    with torch.no_grad():
        metrics = evaluator(trunk)
    if not args.knn:
        metrics.pop("knn_top1")
    report = {"source": str(args.source), "model": model_cfg.name, **metrics}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``cvdist`` sub-command parsers."""
    parser = subparsers.add_parser(
        "eval", help="kNN / linear-probe top-1 of a trained trunk (run, checkpoint or weights file)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run directory, a checkpoints/step-* directory or a weights file")
    parser.add_argument("--knn", action="store_true", help="weighted cosine kNN top-1")
    parser.add_argument("--linear-probe", action="store_true", help="linear classifier on frozen features, top-1")
    parser.add_argument("--k", type=int, default=200, help="kNN neighbours (default 200)")
    parser.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature (default 0.07)")
    parser.add_argument("--probe-epochs", type=int, default=100, help="linear-probe epochs (default 100)")
    parser.add_argument("--model", default=None, help="model.name (default: the run's)")
    parser.add_argument("--in-channels", type=int, default=None, help="model.in_channels (default: the run's, else 1)")
    parser.add_argument("--small-stem", default=None, action=argparse.BooleanOptionalAction,
                        help="ResNets: small-image stem (default: the run's, else on)")
    parser.add_argument("--num-classes", type=int, default=None, help="classes of the labels (default: the run's, else 10)")
    parser.add_argument("--dataset", default=None, choices=("fashion_mnist", "synthetic"),
                        help="built-in data (default: the run's, else fashion_mnist)")
    parser.add_argument("--train-shards", default=None, nargs="+", help="shard source(s) instead of built-in data")
    parser.add_argument("--eval-shards", default=None, help="evaluation shards (default: the train source's eval split)")
    parser.add_argument("--num-train", type=int, default=10000,
                        help="built-in data: training images in the bank / probe set (0 = all; default 10000)")
    parser.add_argument("--num-eval", type=int, default=None, help="built-in data: evaluation images (0 = all)")
    parser.add_argument("--batch-size", type=int, default=None, help="feature-extraction batch size")
    parser.add_argument("--allow-pipe", action="store_true",
                        help="allow pipe: shard sources (they run a shell command)")
    parser.add_argument("--out", default=None, help="also write the metrics as JSON to this file")
    parser.set_defaults(handler=run_eval)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m cvdist.commands.eval ...`` (the same as ``cvdist eval ...``)."""
    parser = argparse.ArgumentParser(prog="cvdist")
    add_eval_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
