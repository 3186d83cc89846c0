"""The feature inspector: a vision SAE's features on the current image, tied to the selected answer token.

Click a patch to list its strongest features, with each feature's attribution to the selected
answer token (activation x gradient of that token's log-probability); pick a feature to see its
activation map over the image; scale it (0 ablates, negative pushes against it) and let the model
answer again to see what changes. Every number comes from ``lvlm_studio.sae.inspect`` and runs on
the worker thread through the panel context; this widget only shows it.
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
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.gui.api import ImageView, PanelContext

TOP = 12


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
        self._trace_id: int | None = None

        self.view = ImageView(color_bar=True, hint="Ask a question to inspect the vision tower's features.")
        self.view.graphics.scene().sigMouseClicked.connect(self._on_click)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["feature", "activation", "attribution"])
        self.table.verticalHeader().hide()
        self.table.itemSelectionChanged.connect(self._on_row)
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

    def refresh(self) -> None:
        """Start over for a new trace: compute its features (once), then draw."""
        trace = self.context.trace
        self.view.set_image(np.asarray(trace.image.convert("RGB")) if trace is not None else None)
        if trace is None or self.context.model is None:
            self.features = self.attribution = None
            self._trace_id = None
            self.status.setText("Ask a question to inspect the vision tower's features.")
            self._fill_table()
            return
        if self._trace_id == id(trace):
            return
        self._trace_id = id(trace)
        self.features = self.attribution = None
        self.attribution_token = None
        self.patch = self.feature = None
        model, path = self.context.model, self.sae_path

        def work(report, cancel):
            from lvlm_sae import load
            from lvlm_studio.api import image_features

            coder = load(path)
            return coder, image_features(model, coder, trace.image, trace.prompt)

        self.status.setText("Computing features\u2026")
        self.context.run_job("SAE features", work, self._features_ready)

    def _features_ready(self, result: tuple[Any, np.ndarray]) -> None:
        self.coder, self.features = result
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
        coder = self.coder

        def work(report, cancel):
            from lvlm_studio.api import feature_attribution

            return token, feature_attribution(model, coder, trace, token)

        self.context.run_job("SAE attribution", work, self._attribution_ready)

    def _attribution_ready(self, result: tuple[int, np.ndarray]) -> None:
        self.attribution_token, self.attribution = result
        self._fill_table()

    # -- choosing --------------------------------------------------------------------------------
    def select_patch(self, row: int, col: int) -> None:
        self.patch = (int(row), int(col))
        self._fill_table()
        if self.table.rowCount():
            self.table.selectRow(0)

    def select_feature(self, feature: int) -> None:
        from lvlm_studio.api import feature_map, grid_to_pixels

        if self.features is None or self.context.trace is None:
            return
        self.feature = int(feature)
        grid_map = feature_map(self.features, self.feature)
        pixels = grid_to_pixels(grid_map, self.context.trace.image.size)
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
        if self.features is None or self.context.trace is None:
            return
        point = self.view.view.mapSceneToView(event.scenePos())
        width, height = self.context.trace.image.size
        rows, cols = self.features.shape[:2]
        x, y = point.x(), point.y()
        if 0 <= x < width and 0 <= y < height:
            self.select_patch(int(y * rows // height), int(x * cols // width))

    def _choose_sae(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "SAE folder (SAELens or ViT-Prisma)")
        if folder:
            self.load_sae(folder)

    def load_sae(self, path: str) -> None:
        """Use the coder in ``path`` from now on (features are recomputed)."""
        self.sae_path, self.coder, self._trace_id = path, None, None
        self.refresh()

    # -- acting ----------------------------------------------------------------------------------
    def reanswer(self) -> None:
        """Answer again with the chosen feature scaled by the spin box's factor, at every patch."""
        trace, model, coder, feature = self.context.trace, self.context.model, self.coder, self.feature
        if trace is None or model is None or coder is None or feature is None:
            return
        factor = float(self.factor.value())

        def work(report, cancel):
            from lvlm_studio.api import edited_answer

            return feature, factor, edited_answer(model, coder, trace.image, trace.prompt, {feature: factor})

        self.context.run_job("Re-answer with an edited feature", work, self._answered)

    def _answered(self, result: tuple[int, float, str]) -> None:
        feature, factor, text = result
        self.edited = text
        before = self.context.trace.answer_text if self.context.trace is not None else ""
        verdict = "unchanged" if text == before else "changed"
        self.answer.setText(f"feature {feature} x {factor:g}: \u201c{text}\u201d ({verdict}; was \u201c{before}\u201d)")
