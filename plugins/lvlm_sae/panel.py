"""The feature inspector: a vision SAE's features on the current image, tied to the selected answer token.

Click a patch to list its strongest features, with each feature's attribution to the selected
answer token (activation x gradient of that token's log-probability); pick a feature to see its
activation map over the image; scale it (0 ablates, negative pushes against it) and let the model
answer again to see what changes. Every number comes from ``lvlm_studio.sae.inspect`` and runs on
the worker thread through the panel context; this widget only shows it.

The map is laid over the part of the image the vision tower saw (the first image region's box: a
square the image was padded to, a centre crop, or the whole image), as every other overlay is, and
clicks are read back through the same box. Everything the panel holds belongs to one trace: a new
model or answer drops it, results of jobs started for an older one are ignored, and a coder that does
not fit the model says so in the panel instead of failing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.gui.api import ImageView, PanelContext

TOP = 12


def region_box(trace: Any) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom, original-image pixels) of the first image's first region:
    what the vision tower's patch grid covers. The whole image when the trace has no region."""
    width, height = trace.image.size
    for region in trace.regions:
        if region.image_index == 0:
            return tuple(float(v) for v in region.box)  # type: ignore[return-value]
    return 0.0, 0.0, float(width), float(height)


def grid_pixels(grid_map: np.ndarray, trace: Any) -> np.ndarray:
    """A [rows, cols] patch map on the image's pixels, laid over ``region_box`` (NaN outside it)."""
    from lvlm_studio.api import ImageRegion, to_pixels

    rows, cols = grid_map.shape
    region = ImageRegion("vision tower", 0, np.arange(rows * cols), (rows, cols), region_box(trace))
    return to_pixels([grid_map], [region], trace.image.size)


def patch_at(x: float, y: float, box: tuple[float, float, float, float], grid: tuple[int, int]
             ) -> tuple[int, int] | None:
    """The (row, col) of the patch under image point (x, y) through ``box``; None outside the grid
    or the image."""
    left, top, right, bottom = box
    rows, cols = grid
    row = int(np.floor((y - top) / (bottom - top) * rows))
    col = int(np.floor((x - left) / (right - left) * cols))
    return (row, col) if 0 <= row < rows and 0 <= col < cols else None


class FeatureInspectorPanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.sae_path = ""  # empty: the shipped demo SAE
        self.coder: Any = None
        self.features: np.ndarray | None = None  # [rows, cols, d_sae] for the current trace
        self.attribution: np.ndarray | None = None  # [rows, cols, d_sae] for the selected token
        self.attribution_token: int | None = None
        self.patch: tuple[int, int] | None = None
        self.feature: int | None = None
        self.edited = ""
        self.trace: Any = None  # the trace the features belong to (None: none computed or asked)
        self.model: Any = None  # the model they were computed with

        self.view = ImageView(color_bar=True, hint="Ask a question to inspect the vision tower's features.")
        self.view.graphics.scene().sigMouseClicked.connect(self._on_click)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["feature", "activation", "attribution"])
        self.table.verticalHeader().hide()
        self.table.itemSelectionChanged.connect(self._on_row)
        self.table.setMinimumHeight(90)
        self.factor = QDoubleSpinBox()
        self.factor.setRange(-50.0, 50.0)
        self.factor.setSingleStep(0.5)
        self.factor.setValue(0.0)
        self.factor.setPrefix("scale x")
        self.rerun = QPushButton("Re-answer")
        self.rerun.clicked.connect(self.reanswer)
        self.choose = QPushButton("SAE\u2026")
        self.choose.clicked.connect(self._choose_sae)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.answer = QLabel()
        self.answer.setWordWrap(True)
        for label in (self.status, self.answer):  # wrapped text takes its height, never the table's
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)

        controls = QHBoxLayout()
        controls.addWidget(self.choose)
        controls.addStretch(1)
        controls.addWidget(self.factor)
        controls.addWidget(self.rerun)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.view, 3)
        layout.addWidget(self.table, 2)
        layout.addLayout(controls)
        layout.addWidget(self.status)
        layout.addWidget(self.answer)
        context.subscribe(self._on_change)
        self.refresh()

    # -- following the analysis -------------------------------------------------------------------
    def _on_change(self, name: str) -> None:
        if name in ("trace", "image", "model"):
            self.refresh()
        elif name == "selected":
            self.request_attribution()

    def _forget(self) -> None:
        """Drop everything computed for the previous trace or model (the map, the table, the edit)."""
        self.trace = self.model = self.coder = None
        self.features = self.attribution = None
        self.attribution_token = None
        self.patch = self.feature = None
        self.edited = ""
        self.answer.clear()
        self.view.set_map(None)
        self.view.set_title("")
        self._fill_table()

    def _current(self, trace: Any, model: Any) -> bool:
        """Whether a result computed for ``trace`` and ``model`` still belongs to what is shown."""
        return trace is self.context.trace and model is self.context.model and trace is self.trace

    def refresh(self) -> None:
        """Start over for a new trace or model: compute the features (once per trace), then draw."""
        trace, model = self.context.trace, self.context.model
        if trace is not None and model is not None and trace is self.trace and model is self.model:
            return
        self._forget()
        self.view.set_image(np.asarray(trace.image.convert("RGB")) if trace is not None else None)
        if trace is None or model is None:
            self.status.setText("Ask a question to inspect the vision tower's features.")
            return
        self.trace, self.model = trace, model
        path = self.sae_path

        def work(report, cancel):
            from lvlm_sae import load
            from lvlm_studio.api import InputError, image_features

            try:
                coder = load(path)
                return trace, model, coder, image_features(model, coder, trace.image, trace.prompt)
            except InputError as exc:  # a coder of another model: said in the panel, not a dialog per answer
                return trace, model, None, exc

        self.status.setText("Computing features\u2026")
        self.context.run_job("SAE features", work, self._features_ready)

    def _features_ready(self, result: tuple[Any, Any, Any, Any]) -> None:
        trace, model, coder, features = result
        if not self._current(trace, model):
            return  # computed for an answer or model that is gone
        if coder is None:
            self.status.setText(f"No features: {features.message} {features.hint} (SAE\u2026 chooses another coder.)")
            return
        self.coder, self.features = coder, features
        rows, cols = self.features.shape[:2]
        active = float((self.features > 0).sum(axis=-1).mean())
        self.status.setText(f"{self.coder.cfg.hook_name}: {self.coder.cfg.d_sae} features, {active:.1f} active per "
                            f"patch. Click a patch.")
        totals = self.features.sum(axis=-1)
        self.select_patch(*np.unravel_index(int(totals.argmax()), (rows, cols)))
        self.request_attribution()

    def request_attribution(self) -> None:
        token, trace, model = self.context.selected, self.context.trace, self.context.model
        if token is None or trace is None or model is None or self.coder is None or token == self.attribution_token:
            return
        if not self._current(trace, model):
            return
        coder = self.coder

        def work(report, cancel):
            from lvlm_studio.api import feature_attribution

            return trace, model, token, feature_attribution(model, coder, trace, token)

        self.context.run_job("SAE attribution", work, self._attribution_ready)

    def _attribution_ready(self, result: tuple[Any, Any, int, np.ndarray]) -> None:
        trace, model, token, attribution = result
        if not self._current(trace, model):
            return
        self.attribution_token, self.attribution = token, attribution
        self._fill_table()

    # -- choosing --------------------------------------------------------------------------------
    def select_patch(self, row: int, col: int) -> None:
        self.patch = (int(row), int(col))
        self._fill_table()
        if self.table.rowCount():
            self.table.selectRow(0)

    def select_feature(self, feature: int) -> None:
        from lvlm_studio.api import feature_map

        if self.features is None or self.trace is None:
            return
        self.feature = int(feature)
        grid_map = feature_map(self.features, self.feature)
        pixels = grid_pixels(grid_map, self.trace)
        top = max(float(grid_map.max()), 1e-6)
        self.view.set_map(pixels, (0.0, top), self.context.view.get("opacity", 0.6))
        self.view.set_title(f"feature {self.feature}")

    def top_rows(self) -> list[tuple[int, float, float | None]]:
        """(feature, activation at the patch, attribution to the selected token) for the table."""
        from lvlm_studio.api import top_features

        if self.features is None or self.patch is None:
            return []
        rows = []
        for feature, value in top_features(self.features, *self.patch, k=TOP):
            attribution = None if self.attribution is None else float(self.attribution[..., feature].sum())
            rows.append((feature, value, attribution))
        return rows

    def _fill_table(self) -> None:
        rows = self.top_rows()
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for index, (feature, value, attribution) in enumerate(rows):
            for column, text in enumerate((str(feature), f"{value:.3f}",
                                           "" if attribution is None else f"{attribution:+.4f}")):
                self.table.setItem(index, column, QTableWidgetItem(text))
        self.table.blockSignals(False)

    def _on_row(self) -> None:
        selected = self.table.selectedItems()
        if selected:
            self.select_feature(int(self.table.item(selected[0].row(), 0).text()))

    def _on_click(self, event) -> None:
        if self.features is None or self.trace is None:
            return
        point = self.view.view.mapSceneToView(event.scenePos())
        width, height = self.trace.image.size
        if not (0 <= point.x() < width and 0 <= point.y() < height):
            return
        patch = patch_at(point.x(), point.y(), region_box(self.trace), self.features.shape[:2])
        if patch is not None:
            self.select_patch(*patch)

    def _choose_sae(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "SAE folder (SAELens or ViT-Prisma)")
        if folder:
            self.load_sae(folder)

    def load_sae(self, path: str) -> None:
        """Use the coder in ``path`` from now on (features are recomputed)."""
        self.sae_path = path
        self.trace = None  # recompute for the current trace
        self.refresh()

    # -- acting ----------------------------------------------------------------------------------
    def reanswer(self) -> None:
        """Answer again with the chosen feature scaled by the spin box's factor, at every patch."""
        trace, model, coder, feature = self.trace, self.model, self.coder, self.feature
        if trace is None or model is None or coder is None or feature is None or not self._current(trace, model):
            return
        factor = float(self.factor.value())

        def work(report, cancel):
            from lvlm_studio.api import edited_answer

            return trace, model, feature, factor, edited_answer(model, coder, trace.image, trace.prompt,
                                                                {feature: factor})

        self.context.run_job("Re-answer with an edited feature", work, self._answered)

    def _answered(self, result: tuple[Any, Any, int, float, str]) -> None:
        trace, model, feature, factor, text = result
        if not self._current(trace, model):
            return
        self.edited = text
        before = trace.answer_text
        verdict = "unchanged" if text == before else "changed"
        self.answer.setText(f"feature {feature} x {factor:g}: \u201c{text}\u201d ({verdict}; was \u201c{before}\u201d)")
