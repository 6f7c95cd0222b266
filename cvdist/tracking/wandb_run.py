"""W&B on rank 0: one run per cvdist run, the same run id across resumes.

The mode comes from ``tracking.wandb_mode``, else ``$WANDB_MODE``, else ``offline`` (a record
on disk without network, uploaded later with ``wandb sync``). Credentials are left to wandb
(``WANDB_API_KEY`` or ``wandb login``); cvdist never writes them anywhere.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import Any, Mapping, Optional


def resolve_wandb_mode(configured: str, environ: Mapping[str, str]) -> str:
    """``online``, ``offline`` or ``disabled``."""
    mode = configured or environ.get("WANDB_MODE", "") or "offline"
    if mode == "dryrun":  # wandb's old name for offline
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"WANDB_MODE={mode!r} is not one of 'online', 'offline', 'disabled'")
    return mode


def new_run_id() -> str:
    """An 8-character id in W&B's alphabet; stored in checkpoints so a resumed run reuses it."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbRun:
    """A thin wrapper that is inert when disabled or on ranks other than 0."""

    def __init__(self, *, mode: str, is_main: bool, run_dir: Path, name: str, project: str,
                 entity: Optional[str], group: Optional[str], job_type: Optional[str],
                 tags: list[str], config: dict[str, Any], run_id: Optional[str]):
        self.mode = mode
        self._run = None
        self.run_id = run_id
        if not is_main or mode == "disabled":
            return
        import wandb  # tracking-only dependency; imported only when used (it is slow to import)

        self.run_id = run_id or new_run_id()
        run_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            mode=mode, dir=str(run_dir), name=name, project=project, entity=entity, group=group,
            job_type=job_type, tags=tags or None, config=config, id=self.run_id, resume="allow",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def directory(self) -> Optional[str]:
        return None if self._run is None else self._run.dir

    def log(self, row: dict[str, Any], *, step: int) -> None:
        if self._run is not None:
            self._run.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def log_image(self, key: str, path: Path, *, step: Optional[int] = None, caption: Optional[str] = None) -> None:
        """Log a PNG already written to the run directory (the file on disk is the local record)."""
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(str(path), caption=caption)}, step=step)

    def log_table(self, key: str, *, columns: list[str], rows: list[list[Any]], step: Optional[int] = None) -> None:
        """Log a table (e.g. a compression report) as a ``wandb.Table``."""
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def update_summary(self, values: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(values)

    def finish(self, *, exit_code: int = 0) -> None:
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
            self._run = None
