"""Backbones and classifiers, built by name (a plain dict lookup, no registry)."""

from cvdist.models.backbones import build_backbone
from cvdist.models.classifiers import MODEL_NAMES, build_model

__all__ = ["MODEL_NAMES", "build_backbone", "build_model"]
