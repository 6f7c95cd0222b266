"""``cvdist compare``: put runs side by side (table + PNG plots).

Thin: parses arguments, loads runs (local directories or a W&B project), and hands explicit
keyword arguments to :mod:`cvdist.tracking.compare`. Heavy imports (matplotlib, wandb) happen
only when the command runs, so ``cvdist --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cvdist compare runs/a runs/b runs/c         run directories
  cvdist compare runs/                        every run under a directory
  cvdist compare 'runs/lr-*'                  a glob
  cvdist compare my-team/cvdist --group longtail --filter optim.lr=0.1 --tag sweep1
                                              a W&B project (needs network and a login)
"""


def add_compare_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``compare`` on the ``cvdist`` sub-command parsers."""
    parser = subparsers.add_parser(
        "compare", help="compare runs (directories or a W&B project): table of differing config + metrics, PNG plots",
        description="Put runs side by side: a table of differing config keys and metrics, and PNG plots.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="RUN_OR_PROJECT",
                        help="run directories, directories of runs, glob patterns, or a W&B project entity/project")
    parser.add_argument("--metrics", default="",
                        help="comma-separated metrics (default: eval/top1,train/loss where present)")
    parser.add_argument("--sort", default=None, help="metric to sort by, best first (default: the first metric)")
    parser.add_argument("--sort-by", choices=("final", "best"), default="final",
                        help="sort by the final or the best value of --sort (default: final)")
    parser.add_argument("--out", default="compare", help="output directory for table.md, table.csv and PNGs")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose config has this value, e.g. optim.lr=0.1 (repeatable)")
    parser.add_argument("--group", default=None, help="keep runs of this group (tracking.group, else the recipe)")
    parser.add_argument("--tag", action="append", default=[], help="keep runs with this tag (repeatable)")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="config key to leave out of the table (repeatable; name, output_dir, "
                             "checkpoint.resume, tracking.wandb_mode are always left out)")
    parser.add_argument("--no-seed-mean", dest="aggregate_seeds", action="store_false",
                        help="one row per run instead of mean ± std over runs differing only in train.seed")
    parser.add_argument("--sampled-history", action="store_true",
                        help="W&B only: read sampled history (500 rows per run) instead of every row")
    parser.set_defaults(handler=run_compare)
    return parser


def run_compare(args: argparse.Namespace) -> int:
    """The ``compare`` handler: load, filter, tabulate, print, write the report."""
    from cvdist.tracking import compare

    runs = _load_runs(args, config_filters=compare.parse_filters(args.filter))
    metrics = [metric.strip() for metric in args.metrics.split(",") if metric.strip()] or None
    table = compare.compare_runs(runs, metrics=metrics, sort=args.sort, sort_by=args.sort_by,
                                 aggregate_seeds=args.aggregate_seeds,
                                 ignore_keys=(*compare.IGNORED_KEYS, *args.ignore))
    print(compare.format_terminal(table), end="")
    for path in compare.write_report(runs, table, out_dir=args.out):
        print(f"wrote {path}")
    return 0


def _load_runs(args: argparse.Namespace, *, config_filters: dict) -> list:
    from cvdist.tracking.compare import load_runs, select_runs
    from cvdist.tracking.wandb_source import load_wandb_runs

    local = [source for source in args.sources if not _is_wandb_source(source)]
    runs = select_runs(load_runs(local), config_filters=config_filters, group=args.group,
                       tags=args.tag) if local else []
    for source in args.sources:
        if source in local:
            continue
        try:
            runs += load_wandb_runs(source.removeprefix("wandb:"), config_filters=config_filters,
                                    group=args.group, tags=args.tag, sampled=args.sampled_history)
        except ValueError as error:
            if source.startswith("wandb:"):
                raise
            # Say why a path was taken for a project: it is most often a mistyped run directory.
            raise ValueError(f"{source} is not a local directory, so it was read as a W&B project: {error}") from error
    if not runs:
        raise ValueError(f"no run in {', '.join(args.sources)} matches the filters; check --filter/--group/--tag")
    return runs


def _is_wandb_source(source: str) -> bool:
    from cvdist.tracking.wandb_source import looks_like_project

    # entity/project is a W&B project unless a local directory of that name exists; wandb: forces it.
    return source.startswith("wandb:") or (looks_like_project(source) and not Path(source).exists())
