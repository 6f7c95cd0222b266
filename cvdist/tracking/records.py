"""The local record of a run: ``config.yaml``, ``metrics.jsonl``, ``summary.json``.

Only rank 0 writes. ``config.yaml`` and ``summary.json`` are replaced atomically;
``metrics.jsonl`` is append-only, one JSON object per logged step, and is cut back to the
checkpoint's step when a run resumes so that no step appears twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cvdist.io import atomic_write_json, atomic_write_text

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.jsonl", "summary.json"


class RunExistsError(ValueError):
    """A new run would write over an existing one."""


def check_run_dir_is_free(run_dir: Path, *, resume: str) -> None:
    """Refuse to start a new run in a directory that already holds one."""
    if resume == "none" and (run_dir / CONFIG_FILE).exists():
        raise RunExistsError(
            f"run directory {run_dir} already holds a run; pass checkpoint.resume=auto to continue it, "
            "or choose another name=... (nothing was changed)"
        )


class RunRecord:
    """Writes one run's local record (a no-op object on ranks other than 0)."""

    def __init__(self, run_dir: Path, *, is_main: bool):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def start(self, *, config_yaml: str, resumed_step: int | None) -> None:
        """Create the run directory, write the resolved config, cut metrics back on resume."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / CONFIG_FILE, config_yaml)
        metrics = self.run_dir / METRICS_FILE
        kept = [row for row in read_metrics(self.run_dir)
                if resumed_step is not None and row.get("step", 0) <= resumed_step]
        atomic_write_text(metrics, "".join(json.dumps(row) + "\n" for row in kept))
        for row in kept:
            self._remember(row)

    def log(self, row: dict[str, Any]) -> None:
        """Append one metrics row (must contain ``step``)."""
        if not self.is_main:
            return
        with open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        self._remember(row)

    def _remember(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if not isinstance(value, (int, float)) or key in ("step", "epoch"):
                continue
            self.last[key] = value
            # "best" only means something for model-quality metrics, not for lr or throughput.
            if "/" in key and math.isfinite(value):
                better = min if _lower_is_better(key) else max
                self.best[key] = better(self.best.get(key, value), value)

    def write_summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` with final and best metrics plus ``extra``; return it."""
        summary = {"final": dict(self.last), "best": dict(self.best), **extra}
        if self.is_main:
            atomic_write_json(self.run_dir / SUMMARY_FILE, summary)
        return summary


def _lower_is_better(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return "loss" in name or name.endswith("error") or name in ("data_wait_s", "lr")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows of a run; a line cut off by a crash is ignored."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    with open(path) as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
