"""Plot parts the panels share.

``SpacedAxis``: a pyqtgraph axis whose tick labels never overlap. pyqtgraph draws every label of the
first tick level even when they collide (an answer's tokens under a narrow plot ran into each
other: "bluesquare"); this axis keeps a label only when it clears the last one kept by a small gap,
so a short axis shows every second or third label instead of a smear.
"""

from __future__ import annotations

import pyqtgraph as pg

LABEL_GAP = 4.0  # pixels between two labels


class SpacedAxis(pg.AxisItem):
    """An ``AxisItem`` that drops tick labels which would overlap the previous label drawn."""

    def generateDrawSpecs(self, p):  # noqa: N802 - pyqtgraph's name
        specs = super().generateDrawSpecs(p)
        if specs is None:
            return None
        axis, ticks, texts = specs
        return axis, ticks, spaced(texts, self.orientation in ("left", "right"))


def spaced(texts: list, vertical: bool) -> list:
    """The (rect, flags, text) label specs that do not overlap, taken along the axis in order."""
    kept: list = []
    ordered = sorted(texts, key=lambda spec: spec[0].top() if vertical else spec[0].left())
    for spec in ordered:
        rect = spec[0]
        if kept:
            last = kept[-1][0]
            start, end = (rect.top(), last.bottom()) if vertical else (rect.left(), last.right())
            if start < end + LABEL_GAP:
                continue
        kept.append(spec)
    return kept
