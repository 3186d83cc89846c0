"""One case as the reviewer sees it: the verdict, the image with its critical regions, the methods' maps.

From the top: a large verdict banner that cannot be missed (amber "Defer to a human expert: ..." or
green "Grounded: high confidence"), every reason under it, who signed the case and when; then the
image with the critical regions drawn as contours beside the question, the answer and its scores;
then the maps of the methods that were combined, side by side (small multiples, each named), and
a line with the keys that sign off. The view only draws: the window decides what to show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from lvlm_studio.gui.image_view import ImageView
from lvlm_studio.gui.state import display_levels

#: Banner colours: background, text. Amber and green are told apart by their words as well.
BANNER_STYLES = {
    "defer": ("#f29900", "#1f1f1f"),
    "accept": ("#188038", "#ffffff"),
    "waiting": ("#3c4043", "#e8eaed"),
    "failed": ("#b3261e", "#ffffff"),
}
#: How a sign-off is shown: the word and its colour (queue and case view).
STATUS_STYLES = {
    "pending": ("pending", "#5f6368"),
    "accepted": ("accepted", "#188038"),
    "overridden": ("overridden", "#1967d2"),
    "deferred": ("deferred", "#b06000"),
}
CONTOUR_COLOR = "#00e5ff"  # cyan: stands out on greys, on photographs and on the inferno maps
MAP_OPACITY = 0.6
MULTIPLE_SIZE = 190  # pixels a side of each method's map
KEYS_HINT = ("<b>A</b> accept \u00b7 <b>O</b> override (corrected answer) \u00b7 <b>D</b> defer to an expert "
             "\u00b7 <b>\u2191 \u2193</b> another case \u00b7 <b>R</b> assess again")


def verdict_text(assessment: Any) -> str:
    """The banner's words: "Defer to a human expert: <first reason>" or "Grounded: <confidence> confidence"."""
    if assessment.decision == "defer":
        reasons = list(assessment.reasons)
        return f"Defer to a human expert: {reasons[0] if reasons else 'the grounding of the answer is weak'}"
    return f"Grounded: {assessment.confidence} confidence"


class CaseView(QWidget):
    """The selected case: banner, reasons, sign-off, image with contours, details and small multiples."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setTextFormat(Qt.TextFormat.PlainText)
        self.banner.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.reasons_label = _label()
        self.reasons_label.setTextFormat(Qt.TextFormat.PlainText)
        self.reasons_label.setStyleSheet("font-size: 14px;")
        self.signed_label = _label()
        self.signed_label.setTextFormat(Qt.TextFormat.RichText)

        self.image_view = ImageView(color_bar=False, hint="Open a worklist (File \u203a Open worklist\u2026), "
                                                          "then select a case in the queue.")
        self.image_view.setMinimumSize(320, 260)
        self._contours: list[pg.PlotCurveItem] = []
        self.details_label = _label()
        self.details_label.setTextFormat(Qt.TextFormat.RichText)
        self.details_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.details_label.setMinimumWidth(300)
        middle = QHBoxLayout()
        middle.addWidget(self.image_view, 3)
        middle.addWidget(self.details_label, 2)

        self.methods_title = QLabel("<b>The methods' maps</b> (each on its own scale; bright: the evidence "
                                    "the method found)")
        self.methods_widget = QWidget()
        self.methods_layout = QHBoxLayout(self.methods_widget)
        self.methods_layout.setContentsMargins(0, 0, 0, 0)
        self.methods_layout.setSpacing(6)
        self.method_views: dict[str, ImageView] = {}
        self.keys_label = QLabel(KEYS_HINT)
        self.keys_label.setStyleSheet("background: palette(alternate-base); padding: 6px; font-size: 13px;")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.banner)
        layout.addWidget(self.reasons_label)
        layout.addWidget(self.signed_label)
        layout.addLayout(middle, 1)
        layout.addWidget(self.methods_title)
        layout.addWidget(self.methods_widget)
        layout.addWidget(self.keys_label)
        self.clear()

    # -- what the window calls -------------------------------------------------------------------
    def clear(self, text: str = "No case selected.") -> None:
        self._set_banner("waiting", text)
        self.reasons_label.hide()
        self.signed_label.hide()
        self.details_label.setText("")
        self.image_view.set_image(None)
        self._draw_contours([])
        self._show_maps({}, {}, None)

    def show_case(self, item: Any, pixels: np.ndarray | None, text: str) -> None:
        """A case whose assessment is not there yet (``text`` says why: running, waiting for the model)."""
        self._set_banner("waiting", text)
        self.reasons_label.hide()
        self.details_label.setText(_details(item, None))
        self._draw_contours([])
        self._set_image(self.image_view, pixels)
        self._show_maps({}, {}, None)

    def show_failure(self, item: Any, pixels: np.ndarray | None, message: str) -> None:
        self._set_banner("failed", f"The assessment failed: {message}")
        self.reasons_label.setText("Press R to assess the case again. A case is signed off once its verdict "
                                   "is there.")
        self.reasons_label.show()
        self.details_label.setText(_details(item, None))
        self._draw_contours([])
        self._set_image(self.image_view, pixels)
        self._show_maps({}, {}, None)

    def show_assessment(self, item: Any, pixels: np.ndarray, assessment: Any, titles: Mapping[str, str]) -> None:
        """The verdict, every reason, the contours on the image, the details and each method's map."""
        self._set_banner("defer" if assessment.decision == "defer" else "accept", verdict_text(assessment))
        reasons = list(assessment.reasons)
        self.reasons_label.setText("\n".join(f"\u2022 {reason}" for reason in reasons) or "No reasons given.")
        self.reasons_label.show()
        self.details_label.setText(_details(item, assessment))
        self._draw_contours([])
        self._set_image(self.image_view, pixels)
        self._draw_contours(list(assessment.regions))
        self._show_maps(dict(assessment.maps), titles, pixels)

    def show_signed(self, status: str, reviewer: str = "", time: str = "", comment: str = "") -> None:
        """Who signed the case and when, or nothing while it is pending."""
        if status == "pending" or not reviewer:
            self.signed_label.hide()
            return
        word, colour = STATUS_STYLES[status]
        when = time.replace("T", " ").rsplit(".", 1)[0].rstrip("Z") + " UTC" if time else ""
        said = f" \u2014 \u201c{_escape(_one_line(comment))}\u201d" if comment else ""
        self.signed_label.setText(f"<span style='color:{colour}; font-weight:bold'>{word.capitalize()}</span> "
                                  f"by <b>{_escape(reviewer)}</b> \u00b7 {when}{said}")
        self.signed_label.show()

    # -- drawing ---------------------------------------------------------------------------------
    def _set_banner(self, kind: str, text: str) -> None:
        background, foreground = BANNER_STYLES[kind]
        self.banner.setText(text)
        self.banner.setProperty("kind", kind)
        self.banner.setStyleSheet(f"background: {background}; color: {foreground}; font-size: 22px; "
                                  f"font-weight: bold; padding: 12px 16px; border-radius: 6px;")

    @staticmethod
    def _set_image(view: ImageView, pixels: np.ndarray | None) -> None:
        """Show ``pixels`` in ``view``, zoomed to the image alone (not to the last case's map or contours)."""
        view.set_image(pixels)
        if pixels is not None:
            view.view.autoRange(padding=0.02, items=[view.image_item])

    def _draw_contours(self, regions: list[np.ndarray]) -> None:
        """Each critical region's contour, (row, col) in image pixels, over the image: a dark edge
        under a cyan line, so it shows on light and dark images alike."""
        for curve in self._contours:
            self.image_view.view.removeItem(curve)
        self._contours = []
        for region in regions:
            points = np.asarray(region, dtype=float)
            if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
                continue
            x, y = points[:, 1] + 0.5, points[:, 0] + 0.5  # pixel (r, c) covers [c, c + 1) x [r, r + 1)
            for pen in (pg.mkPen("#000000", width=5), pg.mkPen(CONTOUR_COLOR, width=2.5)):
                curve = pg.PlotCurveItem(x=x, y=y, pen=pen, antialias=True)
                curve.setZValue(2)
                self.image_view.view.addItem(curve)
                self._contours.append(curve)

    @property
    def contour_count(self) -> int:
        """How many regions are drawn (for tests)."""
        return len(self._contours) // 2

    def _show_maps(self, maps: dict[str, np.ndarray], titles: Mapping[str, str], pixels: np.ndarray | None) -> None:
        """One small view per method: the image under the method's map, its name above."""
        if list(maps) != list(self.method_views):
            while self.methods_layout.count():  # the old views and the stretch after them
                view = self.methods_layout.takeAt(0).widget()
                if view is not None:
                    view.hide()  # gone at once, not only when the deferred delete runs
                    view.setParent(None)
                    view.deleteLater()
            self.method_views = {}
            for method in maps:
                view = ImageView(color_bar=False, hint="")
                view.setFixedSize(MULTIPLE_SIZE, MULTIPLE_SIZE + 22)
                view.view.setMouseEnabled(False, False)
                self.methods_layout.addWidget(view)
                self.method_views[method] = view
            self.methods_layout.addStretch(1)
        for method, view in self.method_views.items():
            title = titles.get(method, method)
            view.set_title(view.fontMetrics().elidedText(title, Qt.TextElideMode.ElideRight, MULTIPLE_SIZE - 16))
            view.setToolTip(title)
            pixel_map = np.asarray(maps[method], dtype=float)
            view.set_map(pixel_map, display_levels(pixel_map), MAP_OPACITY)
            self._set_image(view, pixels)
        self.methods_title.setVisible(bool(maps))
        self.methods_widget.setVisible(bool(maps))


# -- text ---------------------------------------------------------------------------------------
def _details(item: Any, assessment: Any) -> str:
    """The question, the reference answer if any, and once assessed the answer and its scores."""
    rows = [("Case", _escape(item.id)), ("Question", _escape(item.question))]
    if assessment is not None:
        rows.append(("Answer", f"<span style='font-size:18px; font-weight:bold'>{_escape(assessment.answer)}</span>"))
    if item.reference:
        rows.append(("Reference", _escape(item.reference)))
    if assessment is not None:
        thresholds = dict(assessment.thresholds)
        rows += [
            ("Probability", f"{100 * assessment.probability:.0f} %"),
            ("Consistency", f"<b>{assessment.consistency:.2f}</b>{_threshold_note(thresholds)}"),
            ("Confidence", _escape(assessment.confidence)),
            ("Suggested", _escape(assessment.decision)),
        ]
        signals = {name: value for name, value in dict(assessment.signals).items() if name not in
                   ("probability", "consistency")}
        if signals:
            listed = "<br>".join(f"{_escape(name)}: {_number(value)}" for name, value in signals.items())
            rows.append(("Signals", listed))
    cells = "".join(f"<tr><td style='color:#80868b; padding-right:10px' valign='top'>{name}</td>"
                    f"<td valign='top'>{value}</td></tr>" for name, value in rows)
    return f"<table cellspacing='3'>{cells}</table>"


def _threshold_note(thresholds: dict[str, float]) -> str:
    defer, high = thresholds.get("defer", thresholds.get("threshold_defer")), thresholds.get(
        "high", thresholds.get("threshold_high"))
    parts = []
    if defer is not None:
        parts.append(f"defer below {defer:.2f}")
    if high is not None:
        parts.append(f"high from {high:.2f}")
    return f" <span style='color:#80868b'>({', '.join(parts)})</span>" if parts else ""


def _number(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _escape(str(value))
    return f"{number:.3g}" if np.isfinite(number) else "\u2014"


def _label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
