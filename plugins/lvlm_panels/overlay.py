"""The image overlay panel: the selected token's map over the image, with the controls to read it.

Method, colormap, opacity and threshold are shared view settings (every map panel follows them);
"Per region" shows one view per image region (a LLaVA-NeXT base view and its tiles side by side,
each with its own grid's map) instead of the combined map on the whole image. Wheel zooms, drag
pans, double-click resets. Signed maps are drawn on a diverging colormap centred at 0; "One scale"
draws every token's map on one colour scale so strengths compare across tokens. Export figure
writes what is shown, with a labelled colour bar, the token and the method, as a PNG, SVG or PDF
at a chosen resolution (the core's ``explanation_figure``, which the command line uses too).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QSlider,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.api import map_levels
from lvlm_studio.gui.api import COLORMAPS, ImageView, PanelContext, thresholded


class OverlayPanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self._region_cache: dict[tuple[str, int, int], np.ndarray] = {}
        self._image_pixels: np.ndarray | None = None

        self.method_combo = QComboBox()
        self.method_combo.setToolTip("The explanation method whose map is drawn")
        self.method_combo.setMinimumContentsLength(12)
        self.method_combo.activated.connect(self._on_method_picked)
        self.colormap_combo = QComboBox()
        self.colormap_combo.addItems(list(COLORMAPS))
        self.colormap_combo.setToolTip("Colormap of the map")
        self.colormap_combo.currentTextChanged.connect(lambda name: context.set_view(colormap=name))
        self.opacity_slider = _slider("How strongly the map covers the image")
        self.opacity_slider.valueChanged.connect(lambda v: context.set_view(opacity=v / 100))
        self.threshold_slider = _slider("Hide map values below this share of the map's range")
        self.threshold_slider.valueChanged.connect(lambda v: context.set_view(threshold=v / 100))
        self.opacity_value, self.threshold_value = QLabel(), QLabel()
        for label in (self.opacity_value, self.threshold_value):
            label.setMinimumWidth(label.fontMetrics().horizontalAdvance("100 %") + 2)
        self.tiles_box = QCheckBox("Per region")
        self.tiles_box.setToolTip("One view per image region (base view and tiles), each with its own grid's map")
        self.tiles_box.toggled.connect(self.redraw)
        self.shared_box = QCheckBox("One scale")
        self.shared_box.setToolTip("Draw every token's map on one colour scale, so strengths compare across "
                                   "tokens (unchecked: each map spans the whole colormap)")
        self.shared_box.toggled.connect(lambda on: context.set_view(shared_scale=on))
        self.export_button = QPushButton("Export figure\u2026")
        self.export_button.setToolTip("Save the image with this map, a labelled colour bar, the token and the "
                                      "method as a PNG, SVG or PDF figure")
        self.export_button.clicked.connect(self._choose_export)

        top = QHBoxLayout()
        top.addWidget(QLabel("Method"))
        top.addWidget(self.method_combo, 1)
        top.addWidget(QLabel("Colours"))
        top.addWidget(self.colormap_combo)
        top.addWidget(self.shared_box)
        bottom = QHBoxLayout()
        bottom.addWidget(QLabel("Opacity"))
        bottom.addWidget(self.opacity_slider, 1)
        bottom.addWidget(self.opacity_value)
        bottom.addWidget(QLabel("Threshold"))
        bottom.addWidget(self.threshold_slider, 1)
        bottom.addWidget(self.threshold_value)
        bottom.addWidget(self.tiles_box)
        bottom.addWidget(self.export_button)

        self.view = ImageView()
        self.view.graphics.scene().sigMouseClicked.connect(self._on_click)
        self.tiles_widget = QWidget()
        self.tiles_layout = QGridLayout(self.tiles_widget)
        self.tiles_layout.setContentsMargins(0, 0, 0, 0)
        self.tiles_layout.setSpacing(2)
        self.tile_views: list[ImageView] = []
        self.stack = QStackedWidget()
        self.stack.addWidget(self.view)
        self.stack.addWidget(self.tiles_widget)
        self.caption = QLabel()
        self.caption.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addLayout(bottom)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)

        self._fill_methods()
        self._sync_view_controls()
        self._show_image()
        self.redraw()
        context.subscribe(self._on_change, self)

    # -- following the analysis -------------------------------------------------------------------
    def _on_change(self, name: str) -> None:
        if name in ("registry", "explanations"):
            self._fill_methods()
        if name in ("image", "trace"):
            self._region_cache.clear()
        if name in ("image", "trace", "window"):
            self._show_image()
        if name == "explanations":
            self._region_cache.clear()
        if name == "view":
            self._sync_view_controls()
        if name == "method":
            self._fill_methods()
        if name in ("image", "trace", "selected", "method", "explanations", "view", "activity", "window"):
            self.redraw()

    def _fill_methods(self) -> None:
        context = self.context
        entries = dict(context.methods())
        for method in context.explanations:
            entries.setdefault(method, context.title_of(method))
        if context.method not in entries:
            entries[context.method] = context.method
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        for method, title in entries.items():
            self.method_combo.addItem(title, method)
            self.method_combo.setItemData(self.method_combo.count() - 1, method, Qt.ItemDataRole.ToolTipRole)
        self.method_combo.setCurrentIndex(max(self.method_combo.findData(context.method), 0))
        self.method_combo.blockSignals(False)

    def _sync_view_controls(self) -> None:
        view = self.context.view
        for widget, value in ((self.opacity_slider, view["opacity"]), (self.threshold_slider, view["threshold"])):
            widget.blockSignals(True)
            widget.setValue(round(value * 100))
            widget.blockSignals(False)
        self.opacity_value.setText(f"{round(view['opacity'] * 100)} %")
        self.threshold_value.setText(f"{round(view['threshold'] * 100)} %")
        if self.shared_box.isChecked() != view["shared_scale"]:
            self.shared_box.blockSignals(True)
            self.shared_box.setChecked(view["shared_scale"])
            self.shared_box.blockSignals(False)
        if self.colormap_combo.currentText() != view["colormap"]:
            self.colormap_combo.blockSignals(True)
            self.colormap_combo.setCurrentText(view["colormap"])
            self.colormap_combo.blockSignals(False)

    def _on_method_picked(self, index: int) -> None:
        method = self.method_combo.itemData(index)
        if not method:
            return
        self.context.set_method(method)
        if self.context.selected is not None:
            self.context.request_explanation(method, retry=True)  # picking it again retries a failure

    def _show_image(self) -> None:
        image = self.context.shown_image  # a DICOM or 16-bit image in the window chosen in the Image box
        self._image_pixels = None if image is None else np.asarray(image.convert("RGB"))
        self.view.set_image(self._image_pixels)

    # -- drawing ----------------------------------------------------------------------------------
    def current_map(self) -> tuple[np.ndarray, tuple[float, float]] | None:
        """The selected token's map by the chosen method, thresholded, with its levels."""
        context = self.context
        if context.selected is None:
            return None
        found = context.pixels(context.method, context.selected)
        if found is None:
            return None
        pixels, levels = found
        signed = context.map_style(context.method)[1]
        return thresholded(pixels, levels, context.view["threshold"], signed), levels

    def redraw(self) -> None:
        """Draw the current map (cached pixels: no resampling, no rescan of the data)."""
        view = self.context.view
        tiles = self.tiles_box.isChecked() and self.context.trace is not None
        self.stack.setCurrentWidget(self.tiles_widget if tiles else self.view)
        shown = self.current_map()
        colormap, signed, label = self.context.map_style(self.context.method)
        self.view.set_colormap(colormap, signed)
        self.view.set_label(label)
        if shown is None:
            self.view.set_map(None)
        else:
            self.view.set_map(shown[0], shown[1], view["opacity"])
        if tiles:
            self._draw_tiles()
        self._update_caption(shown)

    def _draw_tiles(self) -> None:
        context, trace = self.context, self.context.trace
        assert trace is not None and self._image_pixels is not None
        regions = trace.regions
        columns = max(1, math.ceil(math.sqrt(len(regions))))
        colormap, signed, _label = context.map_style(context.method)
        while len(self.tile_views) < len(regions):
            self.tile_views.append(ImageView(color_bar=False, parent=self.tiles_widget))
        for i, view in enumerate(self.tile_views):
            if i < len(regions):
                self.tiles_layout.addWidget(view, i // columns, i % columns)
            view.setVisible(i < len(regions))
            if i >= len(regions):
                continue
            region = regions[i]
            left, top, right, bottom = (int(round(v)) for v in region.box)
            view.set_image(np.ascontiguousarray(self._image_pixels[top:bottom, left:right]))
            view.set_title(f"{region.name} \u00b7 {region.grid[0]}\u00d7{region.grid[1]}")
            view.set_colormap(colormap, signed)
            pixels = self._region_map(i, right - left, bottom - top)
            if pixels is None:
                view.set_map(None)
            else:
                explanation = context.explanations[context.method]  # _region_map found it
                levels = map_levels(explanation, pixels, context.view["shared_scale"])
                view.set_map(thresholded(pixels, levels, context.view["threshold"], signed), levels,
                             context.view["opacity"])

    def _region_map(self, index: int, width: int, height: int) -> np.ndarray | None:
        from lvlm_studio.api import to_pixels

        context, trace = self.context, self.context.trace
        explanation = context.explanations.get(context.method)
        token = context.selected
        if trace is None or explanation is None or token is None or token not in explanation.maps:
            return None
        key = (context.method, token, index)
        if key not in self._region_cache:
            local = dataclasses.replace(trace.regions[index], box=(0.0, 0.0, float(width), float(height)))
            self._region_cache[key] = to_pixels([explanation.maps[token][index]], [local], (width, height))
        return self._region_cache[key]

    def _update_caption(self, shown: tuple[np.ndarray, tuple[float, float]] | None) -> None:
        context = self.context
        title = context.title_of(context.method)
        key = f"explain:{context.method}"
        if context.image is None:
            text = "Open an image, or draw a demo scene."
        elif context.trace is None:
            text = "Ask a question; then click a token of the answer to see its map here."
        elif context.selected is None:
            text = "Click a token of the answer (or press \u2192) to see its map."
        elif shown is not None:
            low, high = shown[1]
            signed = context.map_style(context.method)[1]
            scale = "one scale for all tokens" if context.view["shared_scale"] else "this token's own scale"
            centre = ", centred at 0 (red raises the token, blue lowers it)" if signed else ""
            text = (f"<b>{title}</b> for \u201c{(context.selected_token or '').strip()}\u201d "
                    f"(token {context.selected + 1}): colours from {low:.3g} to {high:.3g} on {scale}{centre}. "
                    "Wheel zooms, drag pans, double-click resets.")
        elif context.is_running(key):
            text = f"Computing {title} for this token\u2026"
        elif context.has_failed(key):
            text = f"{title} failed on this answer; pick it again in the list to retry."
        else:
            text = f"No {title} map yet."
        self.caption.setText(text)

    def _on_click(self, event) -> None:
        if event.double():
            self.view.reset_zoom()

    # -- export -----------------------------------------------------------------------------------
    def _choose_export(self) -> None:
        from lvlm_studio.api import FIGURE_FORMATS

        if self.current_map() is None:
            self.context.show_message("Nothing to export: select a token with a map first.")
            return
        token = "".join(c if c.isalnum() else "_" for c in (self.context.selected_token or "").strip()) or "map"
        filters = ";;".join(f"{kind.upper()} (*.{kind})" for kind in FIGURE_FORMATS)
        path, chosen = QFileDialog.getSaveFileName(self, "Export figure", f"{self.context.method}_{token}.png",
                                                   filters)
        if not path:
            return
        if not Path(path).suffix:  # the format chosen in the dialog when the name has no suffix
            path += "." + chosen.split("*.")[-1].rstrip(")") if "*." in chosen else ".png"
        dpi, ok = QInputDialog.getInt(self, "Export figure", "Resolution (dots per inch):", 300, 50, 1200, 50)
        if ok:
            self.export_figure(path, dpi)

    def export_figure(self, path: str | Path, dpi: int = 300) -> Path | None:
        """The image with the shown map (colormap, opacity, threshold, scale), a labelled colour bar,
        the token and the method, as a PNG, SVG or PDF by ``path``'s suffix; None with no map."""
        from lvlm_studio.api import LVLMError, explanation_figure, save_figure

        context = self.context
        explanation, trace = context.explanations.get(context.method), context.trace
        if context.shown_image is None or trace is None or explanation is None or self.current_map() is None:
            context.show_message("Nothing to export: select a token with a map first.")
            return None
        view = context.view
        try:
            figure = explanation_figure(trace, explanation, context.selected, view["colormap"], view["opacity"],
                                        view["threshold"], view["shared_scale"], context.shown_image,
                                        context.title_of(context.method))
            path = save_figure(figure, path, dpi)
        except LVLMError as exc:  # a bad name or resolution, a full disk: said, nothing half-written
            context.show_message(str(exc))
            return None
        context.show_message(f"Exported {path.name} ({dpi} dpi).")
        return path


def _slider(tip: str) -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, 100)
    slider.setToolTip(tip)
    slider.setMinimumWidth(60)
    return slider
