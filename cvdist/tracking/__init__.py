"""Run records on local disk and on W&B (the only package that imports wandb)."""
