"""The Qt side of the public plugin API: what a panel's factory receives and may draw with."""

from __future__ import annotations

from lvlm_studio.gui.image_view import ImageView
from lvlm_studio.gui.panels import PanelContext

__all__ = ["ImageView", "PanelContext"]
