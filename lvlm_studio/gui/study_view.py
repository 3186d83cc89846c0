"""File › Open study…: a study's output folder as a window of its own (its text, tables and plots).

It reads only ``report.json`` (and run.json) of the folder that ``lvlm-studio study`` wrote
(``lvlm_studio.studies.report.read_report``): the tables come with their rows, the plots are the
PNG files beside it. Nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QLabel,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.studies.report import cell, read_report


class StudyView(QWidget):
    """One study report: a summary tab (text, dataset, models, command), one tab per table and plot."""

    def __init__(self, folder: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent, Qt.WindowType.Window)
        self.report = read_report(folder)
        self.folder = Path(folder)
        self.setWindowTitle(f"Study: {self.report.get('title', '')} ({self.folder.name})")
        self.tabs = QTabWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        self.tabs.addTab(self._summary(), "Summary")
        for table in self.report["tables"]:
            self.tabs.addTab(self._table(table), table.get("name", "table"))
        for figure in self.report.get("figures", []):
            self.tabs.addTab(self._figure(figure), figure.get("name", "plot"))
        self.resize(900, 600)

    def _summary(self) -> QWidget:
        run = self.report.get("run", {})
        lines = [f"# {self.report.get('title', '')}", "", self.report.get("heading", ""), "",
                 self.report.get("text", ""), ""]
        if run:
            lines += ["", f"Study `{run.get('study', '')}`, {run.get('samples_done', '?')} model-sample runs, "
                          f"finished {run.get('finished', 'not yet')}.", "",
                      "Command: `" + " ".join(map(str, run.get("command", []))) + "`"]
        for error in self.report.get("errors", [])[:20]:
            lines += [f"- failed: {error}"]
        browser = QTextBrowser()
        browser.setMarkdown("\n".join(lines))
        return browser

    def _table(self, table: dict[str, Any]) -> QWidget:
        rows = table.get("rows", [])
        columns = table.get("columns") or list(dict.fromkeys(k for row in rows for k in row))
        widget = QTableWidget(len(rows), len(columns))
        widget.setHorizontalHeaderLabels([str(c) for c in columns])
        for r, row in enumerate(rows):
            for c, column in enumerate(columns):
                item = QTableWidgetItem(cell(row.get(column)))
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                widget.setItem(r, c, item)
        widget.resizeColumnsToContents()
        widget.setToolTip(table.get("caption", ""))
        box = QWidget()
        layout = QVBoxLayout(box)
        if table.get("caption"):
            caption = QLabel(table["caption"])
            caption.setWordWrap(True)
            layout.addWidget(caption)
        layout.addWidget(widget)
        return box

    def _figure(self, figure: dict[str, Any]) -> QWidget:
        label = QLabel()
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        pixmap = QPixmap(str(self.folder / str(figure.get("png", ""))))
        if pixmap.isNull():
            label.setText(f"{figure.get('png')} could not be read.")
        else:
            label.setPixmap(pixmap)
        scroll = QScrollArea()
        scroll.setWidget(label)
        scroll.setWidgetResizable(True)
        return scroll
