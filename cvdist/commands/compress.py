"""``cvdist compress``: the compression run of ``recipes/compress.py`` as a sub-command.

Thin: ``--model LABEL=SOURCE`` (repeatable, in report order) and ``--config FILE`` become
config layers, the remaining ``key=value`` words are overrides of
:class:`cvdist.tasks.compress.run.CompressRunConfig`; the work is :func:`cvdist.tasks.compress.run.run_compress`
(imported when the command runs, so ``cvdist --help`` stays fast).
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  cvdist compress --model student_kd=runs/distill
  cvdist compress --model teacher=runs/teacher --model student=runs/student --model student_kd=runs/distill \\
      prune.method=ln_structured prune.sparsity=0.3 prune.steps=3 prune.finetune_steps=50
  cvdist compress --model resnet=weights.pth model.name=resnet18 model.num_classes=10 model.in_channels=3 \\
      data.train_shards=[shards/cifar10] data.image_size=32 data.mean=[0.5,0.5,0.5] data.std=[0.5,0.5,0.5]
settings (key=value): name, output_dir, compress=[LABEL,...] (models to prune / quantize), prune.*, quantize.*,
report.*, data.*, model.* (architecture of weights files), tracking.*; see recipes/compress.yaml.
"""


def add_compress_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``compress`` on the ``cvdist`` sub-command parsers."""
    parser = subparsers.add_parser(
        "compress", help="prune and INT8-quantize a trained model; accuracy / size / latency report of all models",
        description="Evaluate trained models, prune and quantize one of them, and write one report "
                    "(report.md, summary.json, W&B) with every model and variant.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=SOURCE", dest="models",
                        help="a trained model: cvdist run / checkpoint directory or weights file (repeatable; "
                             "the last one is compressed unless compress=[LABEL,...])")
    parser.add_argument("--config", action="append", default=[], metavar="FILE.yaml",
                        help="YAML file(s) with settings, applied before the key=value overrides")
    parser.add_argument("--allow-interpolation", action="store_true",
                        help="let values use OmegaConf interpolations such as ${oc.env:VAR} (refused by default: "
                             "they copy environment variables into config.yaml and W&B)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. prune.sparsity=0.7")
    parser.set_defaults(handler=run_compress_command)
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`cvdist.tasks.compress.run.CompressRunConfig` the arguments describe."""
    from cvdist.config import ConfigError
    from cvdist.config_loading import load_config
    from cvdist.tasks.compress.run import CompressRunConfig

    model_overrides = []
    for item in args.models:
        label, sep, source = item.partition("=")
        if not sep or not label or not source:
            raise ConfigError(f"--model {item!r} is not of the form LABEL=SOURCE (e.g. --model student=runs/student)")
        model_overrides.append(f"models.{label}={source}")
    return load_config(yaml_paths=args.config, overrides=[*model_overrides, *args.overrides], schema=CompressRunConfig,
                       allow_interpolation=args.allow_interpolation)


def run_compress_command(args: argparse.Namespace) -> int:
    """The ``cvdist compress`` handler: build the config and run."""
    from cvdist.tasks.compress.run import run_compress

    run_compress(config_from_args(args))
    return 0
