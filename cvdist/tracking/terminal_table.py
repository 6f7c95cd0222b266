"""Plain-text tables that fit the terminal: long cells shortened, wide tables split into blocks.

``cvdist compare`` grows one column per differing config key and two per metric, so a real
comparison (the demo's, for one) is easily 300 characters wide; wrapped by the terminal, its
rows become unreadable. Here the columns are laid out in blocks that each fit ``width``, every
block repeating the first column (the run names) so each line still says which run it is.
"""

from __future__ import annotations

import shutil
from typing import Optional, Sequence

MAX_CELL_CHARS = 32
"""Longer cells (a long list value, many seed runs in one row) are cut with an ellipsis; the
Markdown and CSV reports keep them whole."""

GAP = "  "


def terminal_width(default: int = 120) -> int:
    """The terminal's width in characters (``COLUMNS`` first; ``default`` when not a terminal)."""
    return shutil.get_terminal_size((default, 24)).columns


def shorten(cell: str, limit: int = MAX_CELL_CHARS) -> str:
    """``cell`` cut to ``limit`` characters, the cut marked by an ellipsis."""
    return cell if len(cell) <= limit else cell[:limit - 1] + "…"


def _column_blocks(widths: Sequence[int], *, width: int) -> list[list[int]]:
    """Indices of the columns after the first, grouped so that each block with the first column fits
    ``width`` (a column wider than that alone gets a block of its own)."""
    blocks: list[list[int]] = [[]]
    used = widths[0]
    for index in range(1, len(widths)):
        needed = len(GAP) + widths[index]
        if blocks[-1] and used + needed > width:
            blocks.append([])
            used = widths[0]
        blocks[-1].append(index)
        used += needed
    return blocks


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, width: Optional[int] = None) -> str:
    """``header`` and ``rows`` as aligned text no wider than ``width`` (default: the terminal's)
    wherever the columns allow, with a dashed rule under each header."""
    width = terminal_width() if width is None else width
    lines = [[shorten(cell) for cell in line] for line in [header, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered: list[str] = []
    for block in _column_blocks(widths, width=width):
        columns = [0, *block]
        if rendered:
            rendered.append("")
        for number, line in enumerate(lines):
            rendered.append(GAP.join(line[i].ljust(widths[i]) for i in columns).rstrip())
            if number == 0:
                rendered.append(GAP.join("-" * widths[i] for i in columns))
    return "\n".join(rendered) + "\n"
