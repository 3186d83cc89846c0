"""The review workspace, driven from the keyboard: a worklist, three sign-offs, the audit trail they leave.

The grounding assessment is replaced by a stand-in with the same signature (a generator job that
returns an object with the assessment's fields), so these tests are about the workspace: the queue,
the verdict banner, the contours and maps, the dialogs, the audit records. The main window runs
offscreen on the demo model (fixtures in conftest.py); message boxes are recorded, not shown.
"""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS
from PIL import Image
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from lvlm_studio.core.formats.audit import read_records, verify
from lvlm_studio.core.plugin.jobs import Progress
from lvlm_studio.gui.review.dialogs import ReviewerDialog, SignOffDialog
from lvlm_studio.gui.review.window import ReviewWindow, core_assessor

DEFER_REASON = "the methods disagree on where the evidence is"


@dataclass
class StandInAssessment:
    """The fields of ``lvlm_studio.review.assessment.Assessment``, filled in by ``stand_in_assess``."""

    question: str
    answer: str
    probability: float
    key_tokens: list[int]
    consistency: float
    confidence: str
    decision: str
    reasons: list[str]
    signals: dict[str, float]
    maps: dict[str, np.ndarray]
    regions: list[np.ndarray]
    thresholds: dict[str, float] = field(default_factory=lambda: {"defer": 0.45, "high": 0.7})

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "decision": self.decision}


def stand_in_assess(loaded, image, question, settings=None, registry=None):
    """A generator job like the real one: a defer verdict for questions about a circle, accept otherwise."""
    yield Progress(0, 1, "combining the methods")
    width, height = image.size
    rows, cols = np.mgrid[0:height, 0:width]
    blob = np.exp(-((rows - height * 0.4) ** 2 + (cols - width * 0.4) ** 2) / (0.02 * width * height))
    maps = {"raw_attention": blob, "relevancy": blob[::-1].copy(), "tam": blob.T.copy() if width == height else blob}
    angle = np.linspace(0, 2 * np.pi, 40)
    region = np.stack([height * 0.4 + 0.2 * height * np.sin(angle), width * 0.4 + 0.2 * width * np.cos(angle)], 1)
    yield Progress(1, 1, "combining the methods")
    if "circle" in question:
        return StandInAssessment(question, "yes", 0.41, [0], 0.22, "low", "defer",
                                 [DEFER_REASON, "the answer's probability is low (41 %)"],
                                 {"rank_agreement": 0.1, "llr": -0.3, "stability": float("nan")}, maps, [region])
    return StandInAssessment(question, "red", 0.93, [0], 0.81, "high", "accept",
                             ["the methods agree on where the evidence is", "the answer is stable under blur"],
                             {"rank_agreement": 0.78, "llr": 2.1}, maps, [region])


def write_cases(folder: Path, extra_rows: str = "") -> Path:
    """Three small PNGs and a CSV manifest of them (plus ``extra_rows``)."""
    (folder / "img").mkdir(exist_ok=True)
    for number, colour in enumerate(((200, 40, 40), (40, 160, 40), (40, 40, 200)), start=1):
        pixels = np.full((48, 48, 3), 235, np.uint8)
        pixels[12:30, 10:28] = colour
        Image.fromarray(pixels).save(folder / "img" / f"c{number}.png")
    manifest = folder / "cases.csv"
    manifest.write_text("case,image,question,reference\n"
                        "c-1,img/c1.png,What colour is the square?,red\n"
                        "c-2,img/c2.png,Is there a circle?,no\n"
                        "c-3,img/c3.png,What colour is the square?,blue\n" + extra_rows, encoding="utf-8")
    return manifest


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False)


@pytest.fixture
def review(make_window, registry):
    window = make_window(registry)
    review = ReviewWindow(window, assessor=stand_in_assess)
    window.review_window = review
    return review


def assessed(qtbot, review: ReviewWindow, case: str) -> None:
    qtbot.waitUntil(lambda: review.cases[case].result is not None, timeout=JOB_TIMEOUT_MS)


def activate(qtbot, review: ReviewWindow) -> None:
    review.show()
    review.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is review, timeout=5_000)


def when_dialog(qtbot, handler) -> list:
    """Run ``handler(dialog)`` on the next modal dialog, from inside its event loop; the dialog is
    rejected afterwards if the handler left it open (a failed check never hangs the test)."""
    seen: list = []

    def act(tries: int = 200) -> None:
        dialog = QApplication.activeModalWidget()
        if dialog is None:
            if tries:
                QTimer.singleShot(10, lambda: act(tries - 1))
            return
        seen.append(dialog)
        try:
            dialog.activateWindow()
            qtbot.waitUntil(lambda: QApplication.activeWindow() is dialog, timeout=5_000)
            handler(dialog)
        finally:
            if dialog.isVisible():
                dialog.reject()

    QTimer.singleShot(0, act)
    return seen


def test_a_review_from_a_worklist_to_three_sign_offs(qtbot, review, tmp_path, dialogs, gui_settings):
    assert review.open_worklist(write_cases(tmp_path))
    assert dialogs == []
    assert review.queue.rowCount() == 3
    assert [review.queue.item(r, 3).text() for r in range(3)] == ["pending"] * 3
    assert review.selected_item().id == "c-1"
    assessed(qtbot, review, "c-1")

    view = review.case_view
    assert view.banner.text() == "Grounded: high confidence"
    assert view.banner.property("kind") == "accept"
    assert "the answer is stable under blur" in view.reasons_label.text()
    assert view.contour_count == 1
    assert list(view.method_views) == ["raw_attention", "relevancy", "tam"]
    assert "Raw attention" in view.method_views["raw_attention"].title_item.text
    assert "93 %" in view.details_label.text() and "0.81" in view.details_label.text()
    assert review.queue.item(0, 2).text() == "accept"
    activate(qtbot, review)

    # A: accept. The first sign-off asks who the reviewer is; the name is kept in the settings.
    def name(dialog) -> None:
        assert isinstance(dialog, ReviewerDialog)
        qtbot.keyClick(dialog.name_edit, Qt.Key.Key_Return)  # empty: refused
        assert dialog.isVisible() and dialog.error_label.text()
        qtbot.keyClicks(dialog.name_edit, "dr.lee")
        qtbot.keyClick(dialog.name_edit, Qt.Key.Key_Return)

    asked = when_dialog(qtbot, name)
    qtbot.keyClick(review.queue, Qt.Key.Key_A)
    assert len(asked) == 1 and gui_settings.reviewer() == "dr.lee"
    assert review.cases["c-1"].status == "accepted"
    assert review.queue.item(0, 3).text() == "accepted" and review.queue.item(0, 4).text() == "dr.lee"

    # The next case is selected: a defer verdict, in amber, with its first reason.
    assert review.selected_item().id == "c-2"
    assessed(qtbot, review, "c-2")
    assert view.banner.text() == f"Defer to a human expert: {DEFER_REASON}"
    assert view.banner.property("kind") == "defer"
    assert "41 %" in view.reasons_label.text()

    # D: defer. An empty comment is refused; the dialog stays open until there is one.
    refused: list[bool] = []

    def defer(dialog) -> None:
        assert isinstance(dialog, SignOffDialog) and dialog.answer_edit is None
        qtbot.keyClick(dialog.comment_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        qtbot.mouseClick(dialog.sign_button, Qt.MouseButton.LeftButton)
        refused.append(dialog.isVisible() and "comment" in dialog.error_label.text())
        qtbot.keyClicks(dialog.comment_edit, "   ")  # blank is empty too
        qtbot.mouseClick(dialog.sign_button, Qt.MouseButton.LeftButton)
        refused.append(dialog.isVisible())
        qtbot.keyClicks(dialog.comment_edit, "faint shape top left: needs a radiologist")
        qtbot.keyClick(dialog.comment_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)

    seen = when_dialog(qtbot, defer)
    activate(qtbot, review)
    qtbot.keyClick(review.queue, Qt.Key.Key_D)
    assert len(seen) == 1
    assert refused == [True, True]
    assert review.cases["c-2"].status == "deferred"

    # O: override with a corrected answer; the comment is required here too.
    assert review.selected_item().id == "c-3"
    assessed(qtbot, review, "c-3")

    def override(dialog) -> None:
        assert isinstance(dialog, SignOffDialog) and dialog.answer_edit is not None
        assert dialog.answer_edit.text() == "red"  # the model's answer, selected: typing replaces it
        qtbot.keyClicks(dialog.answer_edit, "blue")
        qtbot.keyClick(dialog.answer_edit, Qt.Key.Key_Return)
        refused.append(dialog.isVisible())
        qtbot.keyClicks(dialog.comment_edit, "the square is blue")
        qtbot.keyClick(dialog.comment_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)

    activate(qtbot, review)
    assert len(when_dialog(qtbot, override)) == 0  # filled in once the dialog opens
    qtbot.keyClick(review.queue, Qt.Key.Key_O)
    assert refused == [True, True, True]
    assert review.cases["c-3"].status == "overridden"
    assert "dr.lee" in view.signed_label.text() and "Overridden" in view.signed_label.text()
    assert "3 signed off" in review.worklist_label.text()
    assert dialogs == []

    # The audit trail: intact, one record per sign-off, with the reviewer, decision and comment.
    log_path = gui_settings.audit_log()
    assert verify(log_path).ok and verify(log_path).records == 3
    records = read_records(log_path)
    assert [(r["case"], r["decision"]) for r in records] == [("c-1", "accepted"), ("c-2", "deferred"),
                                                            ("c-3", "overridden")]
    assert {r["reviewer"] for r in records} == {"dr.lee"}
    assert records[0]["comment"] == "" and records[1]["comment"] == "faint shape top left: needs a radiologist"
    assert records[2]["comment"] == "Corrected answer: blue\nthe square is blue"
    assert records[2]["answer"] == "red"  # the model's answer; the correction is in the comment
    assert records[1]["scores"]["probability"] == pytest.approx(0.41)
    assert records[1]["scores"]["stability"] is None  # NaN is recorded as "no value"
    assert records[1]["thresholds"] == {"defer": 0.45, "high": 0.7}

    # Opening the worklist again shows what the audit trail holds.
    assert review.open_worklist(tmp_path / "cases.csv")
    assert [review.queue.item(r, 3).text() for r in range(3)] == ["accepted", "deferred", "overridden"]
    assert "All 3 questions" in review.statusBar().currentMessage()


def test_a_bad_row_gives_one_message_and_the_others_load(review, tmp_path, dialogs):
    manifest = write_cases(tmp_path, "c-4,img/missing.png,What is this?,\n"
                                     "c-5,img/c1.png,,\n")
    assert review.open_worklist(manifest)
    assert len(dialogs) == 1
    text, hint, _ = dialogs[0]
    assert text.startswith("2 rows of cases.csv were skipped; the other 3 questions loaded")
    assert "row 5: image img/missing.png of case 'c-4' does not exist" in text
    assert "row 6: case 'c-5' has no question" in text
    assert "manifest" in hint
    assert review.queue.rowCount() == 3


def test_signing_waits_for_the_verdict_and_a_broken_log_is_refused(qtbot, review, tmp_path, dialogs, gui_settings):
    gui_settings.set_reviewer("dr.lee")
    log_path = tmp_path / "audit.jsonl"
    log_path.write_text("not a record\n")
    gui_settings.set_audit_log(log_path)
    review.open_worklist(write_cases(tmp_path))
    assert len(dialogs) == 1 and "does not verify" in dialogs[0][0]  # said when the worklist opens
    assessed(qtbot, review, "c-1")
    assert review.sign_off("accept") is None  # the log does not verify: nothing is signed
    assert len(dialogs) == 2 and "does not verify" in dialogs[1][0]
    assert review.cases["c-1"].status == "pending" and log_path.read_text() == "not a record\n"


def test_the_menus_open_the_workspace(make_window, registry):
    window = make_window(registry)
    file_entries = [a.text() for a in window.menuBar().actions()[0].menu().actions()]
    assert "Open &worklist\u2026" in file_entries
    assert "&Review" in [a.text() for a in window.menuBar().actions()]
    review = window.open_review()
    assert review.isVisible() and review.assessor is core_assessor
    assert window.open_review() is review
    window.close()
    assert not review.isVisible()


def test_screenshots_of_the_workspace(qtbot, review, tmp_path):
    review.open_worklist(write_cases(tmp_path))
    for row, name in ((1, "defer"), (0, "accept")):
        review.select(row)
        assessed(qtbot, review, review.items[row].id)
        qtbot.wait(50)
        path = tmp_path / f"review-{name}.png"
        assert review.grab().save(str(path))
        assert 0 < path.stat().st_size < 300_000


def test_reopening_while_a_case_is_assessed_assesses_it_again(qtbot, review, tmp_path, dialogs):
    manifest = write_cases(tmp_path)
    review.open_worklist(manifest)
    first = review.cases["c-1"]
    review.open_worklist(manifest)  # the first worklist's job is cancelled; its result would be dropped
    assessed(qtbot, review, "c-1")
    assert review.cases["c-1"] is not first and first.result is None
    assert review.case_view.banner.text() == "Grounded: high confidence"

    review.select(2)
    review.cancel()  # Esc: the case says it was stopped, and R runs it again
    qtbot.waitUntil(lambda: not review._jobs, timeout=JOB_TIMEOUT_MS)
    if review.cases["c-3"].result is None:
        assert "stopped" in review.case_view.banner.text()
        review.assess_again()
    assessed(qtbot, review, "c-3")
    assert dialogs == []
