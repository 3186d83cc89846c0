"""File › Open study…: a study's output folder shown as its tables and plots."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("PySide6")

from lvlm_studio.api import Study, StudyFigure, StudyReport, StudyTable  # noqa: E402
from lvlm_studio.studies.report import write_report  # noqa: E402


class Tiny(Study):
    id = "tiny-view"
    title = "A tiny study"

    def summarize(self, rows, params):
        table = [{"model": "a", "image_share": 0.61, "ci_low": 0.5, "ci_high": 0.7},
                 {"model": "b", "image_share": 0.25, "ci_low": 0.2, "ci_high": 0.31}]
        return StudyReport(self.title, "Two models.", [StudyTable("per model", table, "A caption.")],
                           [StudyFigure("bars", lambda ax: ax.bar([0, 1], [0.61, 0.25]))])


def write_folder(folder):
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"lvlm_studio": "0", "study": "tiny-view", "command": ["x"]}))
    write_report(folder, Tiny(), [], {}, "Dataset: nothing.")


def test_the_view_shows_text_tables_and_plots(qtbot, tmp_path):
    from lvlm_studio.gui.study_view import StudyView

    write_folder(tmp_path / "run")
    view = StudyView(tmp_path / "run")
    qtbot.addWidget(view)
    assert [view.tabs.tabText(i) for i in range(view.tabs.count())] == ["Summary", "per model", "bars"]
    from PySide6.QtWidgets import QLabel, QTableWidget

    (grid,) = view.tabs.widget(1).findChildren(QTableWidget)
    assert grid.rowCount() == 2 and grid.item(0, 1).text() == "0.610"
    (picture,) = [w for w in view.tabs.widget(2).findChildren(QLabel) if w.pixmap() is not None
                  and not w.pixmap().isNull()]
    assert picture.pixmap().width() > 100
    view.resize(700, 420)
    view.tabs.setCurrentIndex(1)
    view.grab().save(str(tmp_path / "view.png"))


def test_a_folder_without_a_report_is_refused_with_a_dialog(make_window, dialogs, tmp_path):
    from lvlm_studio.api import create_registry

    window = make_window(create_registry(load_third_party=False))
    assert window.open_study(tmp_path) is None
    assert dialogs and "no study report" in dialogs[-1][0]
    write_folder(tmp_path / "run")
    view = window.open_study(tmp_path / "run")
    assert view is not None and view.isVisible()
