"""Figures for PNG files: matplotlib's object API on an Agg canvas, no pyplot, no display.

pyplot keeps a global figure registry and picks a backend from the environment; recipes on
cluster nodes need neither. matplotlib is imported only when a figure is made, so metric code
stays fast to import on every rank.
"""

from __future__ import annotations

import logging


def new_figure(*, width: float, height: float, dpi: int = 100, layout: str | None = "constrained"):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches attached to an Agg canvas."""
    # A font cache built by another matplotlib (e.g. Debian's python3-matplotlib, which ships no
    # fonts of its own) makes every figure log a page of harmless "findfont" fallbacks.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(figure)
    return figure
