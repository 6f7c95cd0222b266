"""Read runs of a W&B project through the public API into :class:`~cvdist.tracking.compare.RunData`.

This is the only boundary between W&B and the comparison: a W&B run (``run.config``, its history,
``run.summary``) becomes the same in-memory form as a local run directory. The API client is a
parameter so that tests can pass a stand-in; by default it is ``wandb.Api()``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

from cvdist.tracking.compare import RunData, flatten_config, select_runs, summarize_rows

PROJECT_PATTERN = re.compile(r"^[\w.-]+/[\w.-]+$")
OFFLINE_MODES = ("offline", "dryrun", "disabled")
NETWORK_HINT = (
    "the W&B API needs network access and a login (WANDB_API_KEY or `wandb login`); without network, "
    "compare local run directories instead (cvdist compare runs/a runs/b), and upload offline runs later "
    "with `wandb sync runs/<name>/wandb/offline-run-*`"
)


def looks_like_project(text: str) -> bool:
    """Whether ``text`` has the form ``entity/project``."""
    return bool(PROJECT_PATTERN.match(text))


def build_wandb_filters(*, config_filters: Mapping[str, Any] | None = None, group: Optional[str] = None,
                        tags: Sequence[str] = ()) -> dict[str, Any]:
    """The MongoDB-style filter for ``Api.runs``: all config values, the group and every tag."""
    # Nested config keys are addressed with dots (config.optim.lr), as W&B's query language does.
    clauses: list[dict[str, Any]] = [{f"config.{key}": value} for key, value in (config_filters or {}).items()]
    if group is not None:
        clauses.append({"group": group})
    clauses.extend({"tags": {"$in": [tag]}} for tag in tags)
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def run_from_wandb(run: Any, *, project_path: str, sampled: bool = False) -> RunData:
    """Convert one W&B public-API run to :class:`RunData`.

    History comes from ``scan_history()`` (every row) unless ``sampled``, then from
    ``history(pandas=False)`` (at most 500 rows, faster for long runs). Best values are computed from
    the history; final values come from the summary (cvdist writes ``final/<metric>``), else history.
    """
    raw_rows = run.history(pandas=False) if sampled else run.scan_history()
    rows = [row for row in (_convert_row(raw) for raw in raw_rows) if row is not None]
    rows.sort(key=lambda row: row["step"])
    final, best = summarize_rows(rows)
    summary = dict(run.summary.items())
    for key, value in summary.items():
        if _is_number(value) and not key.startswith("_"):
            if key.startswith("final/"):
                final[key[len("final/"):]] = value
            elif "/" in key and key not in final:
                final[key] = value
    config = {key: value for key, value in flatten_config(dict(run.config)).items() if not key.startswith("_")}
    return RunData(name=str(run.name or run.id), config=config, rows=rows, final=final, best=best,
                   source=f"wandb:{project_path}/{run.id}", group=getattr(run, "group", None),
                   tags=list(getattr(run, "tags", None) or []))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _convert_row(raw: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    # W&B adds _step/_runtime/_timestamp; cvdist logs with step=<training step>, so _step is the step.
    step = raw.get("_step")
    if not _is_number(step):
        return None
    row: dict[str, Any] = {"step": int(step)}
    for key, value in raw.items():
        if not key.startswith("_") and _is_number(value) and not (isinstance(value, float) and math.isnan(value)):
            row[key] = value
    return row


def load_wandb_runs(project_path: str, *, api: Any = None, config_filters: Mapping[str, Any] | None = None,
                    group: Optional[str] = None, tags: Sequence[str] = (), sampled: bool = False,
                    environ: Mapping[str, str] | None = None) -> list[RunData]:
    """Every run of ``entity/project`` matching the filters, as :class:`RunData`.

    ``api`` defaults to ``wandb.Api()``. Raises ValueError when ``WANDB_MODE`` says offline, when the
    project cannot be read (no network, no login, no such project) or when no run matches.
    """
    if not looks_like_project(project_path):
        raise ValueError(f"{project_path!r} is not a W&B project path; write it as entity/project")
    environ = os.environ if environ is None else environ
    mode = environ.get("WANDB_MODE", "")
    if mode in OFFLINE_MODES:
        raise ValueError(f"WANDB_MODE={mode} but reading the W&B project {project_path!r} needs the online API: "
                         f"{NETWORK_HINT}; if this machine has network, unset WANDB_MODE")
    filters = build_wandb_filters(config_filters=config_filters, group=group, tags=tags)
    try:
        if api is None:
            import wandb  # only tracking/ imports wandb; slow to import, so only when used

            api = wandb.Api()
        # Conversion stays inside: reading each run's history is network I/O too.
        runs = [run_from_wandb(run, project_path=project_path, sampled=sampled)
                for run in api.runs(project_path, filters=filters)]
    except Exception as error:  # noqa: BLE001 - the client raises many types (CommError, requests, UsageError)
        raise ValueError(f"could not read the W&B project {project_path!r} "
                         f"({type(error).__name__}: {error}); {NETWORK_HINT}") from error
    # The server filtered already; filtering again here keeps the semantics identical to local runs.
    runs = select_runs(runs, config_filters=config_filters, group=group, tags=tags) if runs else runs
    if not runs:
        raise ValueError(f"the W&B project {project_path!r} has no runs matching the filters {filters or '{}'}")
    return runs
