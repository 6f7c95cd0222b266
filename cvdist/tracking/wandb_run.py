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

    def log_checkpoint(self, directory: Path, *, step: int) -> None:
        """Record checkpoint ``directory`` as this run's output: a W&B *reference* artifact
        ``checkpoint-<run id>`` (file URIs and checksums, no copy of the weights), aliases
        ``latest`` and ``step-N``. Offline it is uploaded by ``wandb sync`` with the run."""
        if self._run is not None:
            import wandb

            self._run.log_artifact(_checkpoint_artifact(wandb, directory, run_id=self.run_id, step=step),
                                   aliases=["latest", f"step-{step}"])

    def use_input(self, source: "RunInput") -> None:
        """Record a checkpoint or weights file this run starts from. Online it becomes the
        run's input artifact (``use_artifact``), which is what draws the pretrain -> fine-tune ->
        distill lineage in W&B; wandb refuses ``use_artifact`` offline, so there the input is
        kept in the run config (``cvdist_inputs``) only."""
        if self._run is None:
            return
        import wandb

        inputs = list(self._run.config.get("cvdist_inputs", [])) + [source.as_dict()]
        self._run.config.update({"cvdist_inputs": inputs}, allow_val_change=True)
        if self.mode == "online":
            if source.wandb_run_id is not None:
                artifact = _checkpoint_artifact(wandb, source.path, run_id=source.wandb_run_id, step=source.step)
            else:
                artifact = wandb.Artifact(_safe_name(f"weights-{source.path.stem}"), type="model")
                artifact.add_reference(source.path.resolve().as_uri())
            self._run.use_artifact(artifact)

    def update_summary(self, values: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(values)

    def finish(self, *, exit_code: int = 0) -> None:
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
            self._run = None


class RunInput:
    """A checkpoint directory (with the W&B run id and step from its ``meta.json``) or a plain
    weights file that a run starts from."""

    def __init__(self, path: Path, *, wandb_run_id: Optional[str] = None, step: Optional[int] = None):
        self.path, self.wandb_run_id, self.step = Path(path), wandb_run_id, step

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "wandb_run_id": self.wandb_run_id, "step": self.step}


def _safe_name(name: str) -> str:
    # W&B artifact names: alphanumerics, dashes, underscores and dots
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _checkpoint_artifact(wandb: Any, directory: Path, *, run_id: Optional[str], step: Optional[int]) -> Any:
    # The same name and reference for the producing run (log_artifact) and a consuming run
    # (use_artifact) give the same artifact digest, so W&B links the two runs.
    artifact = wandb.Artifact(_safe_name(f"checkpoint-{run_id}"), type="model", metadata={"step": step})
    artifact.add_reference(Path(directory).resolve().as_uri(), name=Path(directory).name)
    return artifact
