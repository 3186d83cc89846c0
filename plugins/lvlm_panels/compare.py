"""Compare methods: several methods' maps of the selected token side by side, and how they agree.

Agreement is read on the token grids (``lvlm_studio.core.metrics.agreement``): Spearman's rank correlation
over every cell, the overlap of the top 10 % of cells, and the core's flag for a pair that
disagrees too much to trust either map alone. Ticking a method computes its maps for the whole
answer (a job), like choosing it in the overlay.
"""

from __future__ import annotations

import itertools

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSizePolicy,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.gui.api import ImageView, PanelContext

DEFAULT_METHODS = ("raw_attention", "rollout", "tam")
MAX_SHOWN = 4


def grid_shape(count: int, width: float, height: float) -> tuple[int, int]:
    """(rows, columns) for ``count`` equal cells in a ``width`` x ``height`` area: the arrangement whose
    largest square fits best in a cell (maps are square-ish, so that is the biggest map); ties go to
    fewer empty cells."""
    if count <= 1:
        return 1, 1
    best: tuple[float, int, int, int] | None = None
    for columns in range(1, count + 1):
        rows = -(-count // columns)
        side = min(width / columns, height / rows)
        key = (side, -(rows * columns - count), -rows, columns)
        if best is None or key > best:
            best = key
    assert best is not None
    return -best[2], best[3]


class MapGrid(QWidget):
    """Equal cells, rearranged into the rows and columns that keep them square-ish whenever the
    panel is resized: every cell gets the same share, whatever its title or hint would ask for."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(4)
        self.cells: list[QWidget] = []
        self.shape = (0, 0)

    def set_cells(self, cells: list[QWidget]) -> None:
        """Show ``cells`` (the others stay hidden) and arrange them for the current size."""
        self.cells = cells
        self.arrange()

    def arrange(self) -> None:
        shape = grid_shape(len(self.cells), max(self.width(), 1), max(self.height(), 1))
        old_rows, old_columns = self.shape
        for r in range(max(old_rows, shape[0])):
            self.grid.setRowStretch(r, 1 if r < shape[0] else 0)
        for c in range(max(old_columns, shape[1])):
            self.grid.setColumnStretch(c, 1 if c < shape[1] else 0)
        self.shape = shape
        for i, cell in enumerate(self.cells):
            self.grid.addWidget(cell, i // shape[1], i % shape[1])

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if grid_shape(len(self.cells), max(self.width(), 1), max(self.height(), 1)) != self.shape:
            self.arrange()


class ComparePanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.method_list = QListWidget()
        self.method_list.setToolTip("Tick up to four methods to compare")
        self.method_list.itemChanged.connect(self._on_ticked)
        self.method_list.setMaximumWidth(180)
        self.method_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.method_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.views_widget = MapGrid()
        self.views: list[ImageView] = []
        self._image_cache: tuple[object, np.ndarray | None] = (None, None)
        self._agreement_cache: dict[tuple[int, int, int], object] = {}
        self.titles: list[QLabel] = []
        self.columns: list[QWidget] = []
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["pair", "\u03c1", "top 10 %", "verdict"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeaderItem(1).setToolTip("Spearman rank correlation of all grid cells")
        self.table.horizontalHeaderItem(2).setToolTip("Share of the top 10 % of cells that both maps put there")
        self.table.setMaximumHeight(110)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.views_widget)
        right.addWidget(self.table)
        right.setStretchFactor(0, 1)
        body = QHBoxLayout()
        body.addWidget(self.method_list)
        body.addWidget(right, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(body, 1)
        layout.addWidget(self.caption)
        self._fill_methods()
        context.subscribe(self._on_change, self)
        self.redraw()

    def _fill_methods(self) -> None:
        ticked = set(self.ticked()) or set(DEFAULT_METHODS)
        self.method_list.blockSignals(True)
        self.method_list.clear()
        for method, title in self.context.methods().items():
            item = QListWidgetItem(short_title(title))
            item.setToolTip(title)
            item.setData(Qt.ItemDataRole.UserRole, method)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if method in ticked else Qt.CheckState.Unchecked)
            self.method_list.addItem(item)
        self.method_list.blockSignals(False)

    def ticked(self) -> list[str]:
        return [self.method_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.method_list.count())
                if self.method_list.item(i).checkState() == Qt.CheckState.Checked][:MAX_SHOWN]

    def set_ticked(self, methods: list[str]) -> None:
        self.method_list.blockSignals(True)
        for i in range(self.method_list.count()):
            item = self.method_list.item(i)
            on = item.data(Qt.ItemDataRole.UserRole) in methods
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        self.method_list.blockSignals(False)
        self.redraw()

    def _on_ticked(self, item: QListWidgetItem) -> None:
        self.redraw()

    def _on_change(self, name: str) -> None:
        if name == "registry":
            self._fill_methods()
        if name == "trace":
            self._agreement_cache.clear()
        if name in ("registry", "trace", "selected", "explanations", "view", "activity", "window"):
            self.redraw()

    def redraw(self) -> None:
        context = self.context
        methods = self.ticked()
        if context.selected is not None and self.isVisible():
            for method in methods:
                context.request_explanation(method)
        while len(self.views) < len(methods):
            column = QWidget()
            column_layout = QVBoxLayout(column)
            column_layout.setContentsMargins(0, 0, 0, 0)
            column_layout.setSpacing(2)
            column.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)  # equal shares
            label = QLabel()
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)  # one line, never wider
            view = ImageView(color_bar=False, hint="")
            view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
            column_layout.addWidget(label)
            column_layout.addWidget(view, 1)
            self.views.append(view)
            self.titles.append(label)
            self.columns.append(column)
        for column in self.columns[len(methods):]:
            column.hide()
        self.views_widget.set_cells(self.columns[:len(methods)])
        image = self._image_pixels()
        view_settings = context.view
        for i, view in enumerate(self.views):
            self.columns[i].setVisible(i < len(methods))
            if i >= len(methods):
                continue
            method = methods[i]
            view.set_image(image)
            view.set_colormap(*context.map_style(method)[:2])  # signed maps: diverging, centred at 0
            found = context.pixels(method, context.selected) if context.selected is not None else None
            view.set_map(None if found is None else found[0], found[1] if found else (0, 1),
                         view_settings["opacity"])
            state = "" if found is not None or not context.is_running(f"explain:{method}") else " \u2026"
            title = short_title(context.title_of(method)) + state
            self.titles[i].setText(title)
            self.titles[i].setToolTip(title)
        self._fill_table(methods)

    def _image_pixels(self) -> np.ndarray | None:
        """The image as an array, converted once per image (redraws reuse it)."""
        image = self.context.shown_image
        if image is None:
            return None
        if self._image_cache[0] is not image:
            self._image_cache = (image, np.asarray(image.convert("RGB")))
        return self._image_cache[1]

    def agreements(self) -> list[tuple[str, str, float, float, bool]]:
        """(method a, method b, Spearman rho, top-k overlap, inconsistent) for every ticked pair with
        maps of the selected token."""
        from lvlm_studio.api import agreement, flatten

        context, token = self.context, self.context.selected
        if token is None:
            return []
        explanations = context.explanations
        ready = [m for m in self.ticked() if m in explanations and token in explanations[m].maps]
        rows = []
        for a, b in itertools.combinations(ready, 2):
            key = (id(explanations[a]), id(explanations[b]), token)
            if key not in self._agreement_cache:
                self._agreement_cache[key] = agreement(flatten(explanations[a].maps[token]),
                                                       flatten(explanations[b].maps[token]))
            result = self._agreement_cache[key]
            rows.append((a, b, result.rank_correlation, result.top_k_overlap, result.inconsistent))
        return rows

    def _fill_table(self, methods: list[str]) -> None:
        rows = self.agreements()
        self.table.setRowCount(len(rows))
        for r, (a, b, rho, overlap, inconsistent) in enumerate(rows):
            pair = f"{short_title(self.context.title_of(a))} \u00b7 {short_title(self.context.title_of(b))}"
            for c, text in enumerate((pair, "-" if np.isnan(rho) else f"{rho:+.2f}", f"{overlap:.0%}",
                                      "disagree" if inconsistent else "agree")):
                item = self.table.item(r, c)
                if item is None:
                    self.table.setItem(r, c, QTableWidgetItem(text))
                elif item.text() != text:  # most cells keep their text from token to token
                    item.setText(text)
        if self.context.trace is None:
            text = "After an answer, select a token to compare the ticked methods' maps."
        elif self.context.selected is None:
            text = "Select a token to compare the ticked methods' maps."
        elif len(methods) < 2:
            text = "Tick at least two methods."
        else:
            text = (f"\u201c{(self.context.selected_token or '').strip()}\u201d: agreement on the token grid "
                    "(\u03c1 = rank correlation of all cells; overlap of the top 10 % of cells).")
        self.caption.setText(text)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.redraw()


def short_title(title: str) -> str:
    """A method's title without its parenthesised gloss ("Relevancy (gradient-weighted ...)")."""
    return title.split(" (")[0]
