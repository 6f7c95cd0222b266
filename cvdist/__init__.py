"""cvdist: distributed training recipes for computer vision (Accelerate, DeepSpeed, WebDataset, W&B)."""

__version__ = "0.1.0"
