"""The ``cvdist`` command, and the error handling every recipe entry point shares."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Sequence

from cvdist.commands.compare import add_compare_command
from cvdist.commands.compress import add_compress_command
from cvdist.commands.demo import add_demo_command
from cvdist.commands.eval import add_eval_command
from cvdist.commands.shards import add_shards_commands
from cvdist.config import ConfigError
from cvdist.data.stream import DataError
from cvdist.engine.dist import LaunchError
from cvdist.engine.lost_ranks import LostRankError
from cvdist.redact import redact_text
from cvdist.tracking.records import RunExistsError

# Errors that mean "the user asked for something wrong" (cvdist raises ValueError for those, by
# convention): one clear line and exit status 2; CVDIST_DEBUG=1 shows the traceback too.
USER_ERRORS = (ConfigError, RunExistsError, LaunchError, DataError, FileNotFoundError, ValueError)


def run_recipe(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main(argv)``; user errors print ``cvdist: error: ...`` and return 2, a
    lost rank (not the user's doing, but a traceback would say no more) the same way with 1."""
    try:
        return int(main(sys.argv[1:] if argv is None else argv) or 0)
    except (*USER_ERRORS, LostRankError) as error:
        if os.environ.get("CVDIST_DEBUG"):
            traceback.print_exc()
        print(f"cvdist: error: {redact_text(str(error))}", file=sys.stderr, flush=True)
        return 1 if isinstance(error, LostRankError) else 2


def _export(args: argparse.Namespace) -> int:
    from cvdist.engine.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvdist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", help="write consolidated fp32 weights (safetensors or .pt) from a checkpoint or run directory")
    export.add_argument("checkpoint", help="a checkpoints/step-* directory, or a run directory (newest checkpoint)")
    export.add_argument("--out", required=True, help="output file: *.safetensors, *.pt or *.pth")
    export.set_defaults(handler=_export)
    add_shards_commands(commands)
    add_eval_command(commands)
    add_compress_command(commands)
    add_compare_command(commands)
    add_demo_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"cvdist: error: {redact_text(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
