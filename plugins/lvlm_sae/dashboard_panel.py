"""The feature dashboard: every feature of a vision SAE at a glance, from a cache built in one pass.

Pick a feature (spin box), or search the tokens features promote; see its top-activating patches
as image crops with the patch outlined, the histogram of its activations, and the tokens its
decoder direction promotes and suppresses through the projector and the LM head. The cache is
found by the coder file's hash, the images and the model; when there is none the panel offers to
build it (one pass over the images, a job on the worker thread with progress and Cancel). Every
number comes from ``lvlm_studio.sae.dashboard``; this widget only shows it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, QStandardPaths, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, PanelContext

TILE = 96  # pixels per example tile
DEMO_SCENES = 200  # held-out demo scenes read by default


def default_cache_root() -> Path:
    """Where dashboards are cached unless the user picks a folder: the app's cache location."""
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.CacheLocation)
    return Path(location or Path.home() / ".cache" / "lvlm-studio") / "feature-dashboards"


def tile_pixmap(crop: np.ndarray, box: tuple[float, float, float, float], size: int = TILE) -> QPixmap:
    """A crop enlarged to ``size`` with the patch (``box``, 0..1 of the crop) outlined in magenta."""
    crop = np.ascontiguousarray(crop)
    image = QImage(crop.data, crop.shape[1], crop.shape[0], 3 * crop.shape[1], QImage.Format.Format_RGB888).copy()
    pixmap = QPixmap.fromImage(image.scaled(size, size, Qt.AspectRatioMode.IgnoreAspectRatio,
                                            Qt.TransformationMode.FastTransformation))
    painter = QPainter(pixmap)
    painter.setPen(QPen(QColor(255, 0, 255), 2))
    x0, y0, x1, y1 = box
    painter.drawRect(int(x0 * size) + 1, int(y0 * size) + 1, int((x1 - x0) * size) - 2, int((y1 - y0) * size) - 2)
    painter.end()
    return pixmap


class FeatureDashboardPanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.sae_path = ""  # empty: the shipped demo SAE
        self.images_folder = ""  # empty: held-out demo scenes
        self.cache_folder: Path | None = None  # None: under default_cache_root()
        self.top_k = 16
        self.dashboard: Any = None
        self.feature = 0
        self.hits: list[int] = []
        self.building = False
        self.opened = False  # showing a folder the user opened, whatever model it was built with

        self.choose_sae = QPushButton("SAE\u2026")
        self.choose_sae.clicked.connect(self._choose_sae)
        self.choose_images = QPushButton("Images\u2026")
        self.choose_images.setToolTip("A folder of images to read (default: 200 held-out demo scenes)")
        self.choose_images.clicked.connect(self._choose_images)
        self.open_cache = QPushButton("Open cache\u2026")
        self.open_cache.setToolTip("Show a dashboard folder written by `lvlm-studio sae dashboard` (its cache/)")
        self.open_cache.clicked.connect(self._open_cache)
        self.build = QPushButton("Build dashboard")
        self.build.setToolTip("One pass over the images caches every feature's top patches, histogram and logits")
        self.build.clicked.connect(self.build_dashboard)
        self.build.setEnabled(False)

        self.spin = QSpinBox()
        self.spin.setPrefix("feature ")
        self.spin.setRange(0, 0)
        self.spin.valueChanged.connect(self.show_feature)
        self.search = QLineEdit()
        self.search.setPlaceholderText("find features promoting a token, e.g. red")
        self.search.returnPressed.connect(self._search)
        self.summary = QLabel()
        self.summary.setWordWrap(True)

        self.examples = QListWidget()
        self.examples.setViewMode(QListView.ViewMode.IconMode)
        self.examples.setIconSize(QSize(TILE, TILE))
        self.examples.setGridSize(QSize(TILE + 12, TILE + 34))
        self.examples.setResizeMode(QListView.ResizeMode.Adjust)
        self.examples.setMovement(QListView.Movement.Static)
        self.examples.setWordWrap(True)
        self.examples.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # image ids differ at their ends
        self.histogram = pg.PlotWidget(background=BACKGROUND)
        self.histogram.setLabel("bottom", "activation", color=FOREGROUND)
        self.histogram.setLabel("left", "patches", color=FOREGROUND)
        self.histogram.setMinimumHeight(140)
        self.promoted = self._table("promotes")
        self.suppressed = self._table("suppresses")
        self.status = QLabel()
        self.status.setWordWrap(True)

        sources = QHBoxLayout()
        for button in (self.choose_sae, self.choose_images, self.open_cache):
            sources.addWidget(button)
        sources.addStretch(1)
        sources.addWidget(self.build)
        picking = QHBoxLayout()
        picking.addWidget(self.spin)
        picking.addWidget(self.search, 1)
        logits = QHBoxLayout()
        logits.addWidget(self.promoted)
        logits.addWidget(self.suppressed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(sources)
        layout.addWidget(self.status)
        layout.addLayout(picking)
        layout.addWidget(self.summary)
        layout.addWidget(self.examples, 3)
        layout.addWidget(self.histogram, 2)
        layout.addLayout(logits, 2)
        context.subscribe(self._on_change)
        self.look_for_cache()

    @staticmethod
    def _table(title: str) -> QTableWidget:
        table = QTableWidget(0, 2)
        table.setHorizontalHeaderLabels([title, "logit"])
        table.verticalHeader().hide()
        table.horizontalHeader().setStretchLastSection(True)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        return table

    # -- finding or building the cache ---------------------------------------------------------------
    def _on_change(self, name: str) -> None:
        if name == "model" and not self.opened and not self.building:
            self.dashboard = None  # built for another model: find this one's
            self.look_for_cache()

    def _image_set(self):
        from lvlm_studio.api import demo_image_set, folder_image_set

        return folder_image_set(self.images_folder) if self.images_folder else demo_image_set(DEMO_SCENES)

    def _sae(self) -> str:
        from lvlm_studio.api import demo_sae_path

        return self.sae_path or str(demo_sae_path())

    def cache_path(self) -> Path:
        """The cache folder of this coder and image set (one folder per pair under the cache root)."""
        if self.cache_folder is not None:
            return self.cache_folder
        sae = Path(self._sae())
        name = hashlib.sha256(f"{sae.resolve()}\0{self.images_folder or 'demo'}".encode()).hexdigest()[:12]
        return default_cache_root() / f"{sae.name}-{name}"

    def look_for_cache(self) -> None:
        """Look for a matching cache (a job: hashing a large coder file takes a moment)."""
        model = self.context.model
        if model is None:
            self.build.setEnabled(False)
            self.status.setText("Load a model to find or build its feature dashboard "
                                "(or open a dashboard folder written by the command line).")
            return
        sae, images_of, folder, top_k = self._sae(), self._image_set, self.cache_path(), self.top_k

        def work(report, cancel):
            from lvlm_studio.api import find_dashboard

            return find_dashboard(sae, images_of(), model.source, folder, top_k)

        self.status.setText("Looking for a cached dashboard\u2026")
        self.context.run_job("Find the feature dashboard", work, self._found)

    def _found(self, dashboard: Any) -> None:
        if dashboard is not None:
            self.set_dashboard(dashboard)
            return
        self.build.setEnabled(not self.building)
        source = f"the images in {self.images_folder}" if self.images_folder else f"{DEMO_SCENES} held-out demo scenes"
        self.status.setText(f"No dashboard is cached for {Path(self._sae()).name} over {source}. "
                            "Build dashboard reads them once (a background job; Cancel stops it).")

    def build_dashboard(self) -> None:
        """Build the cache now, on the worker thread; the panel shows it when it is done."""
        model = self.context.model
        if model is None or self.building:
            return
        sae, images, folder, top_k = self._sae(), self._image_set(), self.cache_path(), self.top_k

        def work(report, cancel):
            from lvlm_studio.api import dashboard_job, run_job

            return run_job(dashboard_job(model, sae, images, folder, top_k), report, cancel)

        self.building = True
        self.build.setEnabled(False)
        self.status.setText(f"Building the dashboard over {len(images.ids)} images\u2026")
        job = self.context.run_job("Build the feature dashboard", work, self._built)
        for signal in ("failed", "cancelled"):
            getattr(job, signal).connect(self._stopped)

    def _built(self, dashboard: Any) -> None:
        self.building = False
        self.set_dashboard(dashboard)

    def _stopped(self, *args: Any) -> None:
        self.building = False
        self.build.setEnabled(True)
        self.status.setText("The dashboard was not built. Build dashboard tries again.")

    # -- choosing --------------------------------------------------------------------------------------
    def _choose_sae(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "SAE folder (SAELens or ViT-Prisma)")
        if folder:
            self.sae_path, self.dashboard, self.cache_folder, self.opened = folder, None, None, False
            self.look_for_cache()

    def _choose_images(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to build the dashboard over")
        if folder:
            self.images_folder, self.dashboard, self.cache_folder, self.opened = folder, None, None, False
            self.look_for_cache()

    def _open_cache(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dashboard folder (from lvlm-studio sae dashboard --out)")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        """Show the dashboard cached in ``folder`` (or its ``cache/``), whatever it was built from."""
        from lvlm_studio.api import load_dashboard

        folder = Path(folder)
        found = load_dashboard(folder / "cache") or load_dashboard(folder)
        if found is None:
            self.status.setText(f"{folder} holds no feature dashboard.")
            return
        self.opened = True
        self.set_dashboard(found)

    # -- showing ---------------------------------------------------------------------------------------
    def set_dashboard(self, dashboard: Any) -> None:
        self.dashboard = dashboard
        self.build.setEnabled(False)
        dead = int((dashboard.nonzero == 0).sum())
        self.status.setText(f"{dashboard.key.get('hook_name', '')}: {dashboard.d_sae} features over "
                            f"{len(dashboard.image_ids)} images ({dashboard.n_patches} patches); {dead} never fire.")
        self.spin.blockSignals(True)
        self.spin.setRange(0, dashboard.d_sae - 1)
        self.spin.blockSignals(False)
        start = int(np.argmax(dashboard.top_values[:, 0]))  # the strongest feature first
        if self.spin.value() != start:
            self.spin.setValue(start)
        else:
            self.show_feature(start)

    def show_feature(self, feature: int) -> None:
        from lvlm_studio.api import PATCH_BOX

        board = self.dashboard
        if board is None:
            return
        self.feature = int(feature)
        examples = board.examples(self.feature)
        top = examples[0]["activation"] if examples else 0.0
        self.summary.setText(f"<b>feature {self.feature}</b>: fires on {board.density[self.feature]:.2%} of patches, "
                             f"at most {top:.3f}; {len(examples)} top examples")
        self.examples.clear()
        for example in examples:
            pixmap = tile_pixmap(example["crop"], PATCH_BOX)
            item = QListWidgetItem(QIcon(pixmap), f"{example['activation']:.2f}\n{example['image']}")
            item.setToolTip(f"{example['image']}, patch row {example['row']}, column {example['col']}: "
                            f"{example['activation']:.4f}")
            self.examples.addItem(item)
        edges, counts = board.histogram(self.feature)
        self.histogram.clear()
        if counts.sum():
            width = float(edges[1] - edges[0])
            self.histogram.addItem(pg.BarGraphItem(x0=edges[:-1], width=width, height=counts,
                                                   brush=pg.mkBrush(70, 130, 200), pen=pg.mkPen(None)))
        self.histogram.setTitle(f"nonzero activations of feature {self.feature}", color=FOREGROUND)
        pos, neg = board.logits(self.feature) if board.logit_pos_ids.shape[1] else ([], [])
        for table, rows in ((self.promoted, pos), (self.suppressed, neg)):
            table.setRowCount(len(rows))
            for index, (token, value) in enumerate(rows):
                table.setItem(index, 0, QTableWidgetItem(repr(token)))
                table.setItem(index, 1, QTableWidgetItem(f"{value:+.3f}"))

    def _search(self) -> None:
        if self.dashboard is None:
            return
        text = self.search.text()
        self.hits = self.dashboard.search(text)
        if not self.hits:
            self.summary.setText(f"No feature promotes a token containing {text!r}.")
            return
        shown = ", ".join(str(f) for f in self.hits[:10])
        self.spin.setValue(self.hits[0])
        self.summary.setText(self.summary.text() + f"<br>{len(self.hits)} features promote {text!r}: {shown}"
                             + ("\u2026" if len(self.hits) > 10 else ""))
