"""The public API for panel plugins: the Qt side of ``lvlm_studio.api``.

A panel is declared as ``PanelSpec`` data (``lvlm_studio.api``) by a Qt-free module; its factory,
in a module imported only when the panel is first opened, is called with a ``PanelContext`` and
returns a QWidget. Panel modules import from here and from ``lvlm_studio.api``, and from nowhere
else in ``lvlm_studio``; ``__all__`` is the promise, versioned with the rest of the API
(``lvlm_studio.api.API_VERSION``).

- ``PanelContext``: all a panel gets (the trace, explanations, the selected answer token, results,
  change notifications, requests for work). Token indices are 0-based indices into
  ``trace.answer_ids``: the app shows token ``i`` as "token i+1 of n".
- ``ImageView``: an image with an overlaid map, zoom and pan, and a colour bar.
- ``BACKGROUND``, ``FOREGROUND``: the colours plots use, so panels match the window.
- ``SpacedAxis``: a pyqtgraph axis whose tick labels never overlap (pass it in ``axisItems``).
- ``COLORMAPS``: the colormap names the View settings offer; ``display_levels`` and ``thresholded``
  turn a pixel map into the levels and the thresholded map the overlay draws.
"""

from __future__ import annotations

from lvlm_studio.gui.image_view import BACKGROUND, FOREGROUND, ImageView
from lvlm_studio.gui.panels import PanelContext
from lvlm_studio.gui.plots import SpacedAxis
from lvlm_studio.gui.state import COLORMAPS, display_levels, thresholded

__all__ = [
    "PanelContext",
    "ImageView",
    "BACKGROUND",
    "FOREGROUND",
    "SpacedAxis",
    "COLORMAPS",
    "display_levels",
    "thresholded",
]
