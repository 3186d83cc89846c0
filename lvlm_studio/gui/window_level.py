"""The grey-level window of a DICOM or more-than-8-bit image, under the Image box's name line.

Shown only while such an image is open: its centre and width (in the image's values: Hounsfield units
for CT), a button back to the default window, the frame of a multi-frame file, and the patient's
identifiers (display only; they are never saved). Changing the window redraws the image in the panels;
the model keeps the image in its default window, so the answer and its maps stay. Another frame is
another image: it is opened anew and the answer is cleared.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from lvlm_studio.core.io.identifiers import shown_identifiers
from lvlm_studio.gui.state import StudioState
from lvlm_studio.gui.widgets import HINT_STYLE, wrapping_label

LIMIT = 1e9  # the spin boxes' range: any value an image holds
MODEL_NOTE = ("Changes only what you see. The model is given the image in its default window "
              "(the file's own for DICOM), whatever is chosen here.")


class WindowLevelBox(QWidget):
    """Window centre and width, "Default window", the frame, and the patient line, for ``state``'s image.
    ``open_frame(frame)`` opens another frame (from 0) of the same file."""

    def __init__(self, state: StudioState, open_frame: Callable[[int], object]) -> None:
        super().__init__()
        self.state = state
        self._open_frame = open_frame
        self.centre_box = self._spin_box("Window centre: the value shown mid-grey. " + MODEL_NOTE)
        self.width_box = self._spin_box("Window width: the range of values spread from black to white. " + MODEL_NOTE)
        self.reset_button = QPushButton("Default window")
        self.reset_button.clicked.connect(lambda: self.state.set_window(None))
        self.frame_box = QSpinBox()
        self.frame_box.setPrefix("frame ")
        self.frame_box.setKeyboardTracking(False)
        self.frame_box.setToolTip("Another frame is another image: it is opened anew, and the answer is cleared")
        self.frame_box.valueChanged.connect(self._on_frame)
        self.info_label = wrapping_label("", lines=2)  # frames, depth, pixel spacing, where the window comes from
        self.info_label.setStyleSheet(HINT_STYLE)
        self.patient_label = wrapping_label("")
        self.patient_label.setToolTip("The patient's identifiers from the file: shown here only, never saved in "
                                      "sessions, reports, exports or logs")

        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        for widget in (QLabel("Window: centre"), self.centre_box, QLabel("width"), self.width_box, self.reset_button,
                       self.frame_box):
            controls.addWidget(widget)
        controls.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.info_label)
        layout.addLayout(controls)
        layout.addWidget(self.patient_label)
        self.centre_box.valueChanged.connect(self._on_value)
        self.width_box.valueChanged.connect(self._on_value)
        state.subscribe(self._on_state)
        self._load()

    def _spin_box(self, tip: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(-LIMIT, LIMIT)
        box.setKeyboardTracking(False)  # redraw when the number is complete, not at every digit
        box.setToolTip(tip)
        box.setMinimumWidth(90)
        return box

    # -- following the state ---------------------------------------------------------------------
    def _on_state(self, name: str) -> None:
        if name == "image":
            self._load()
        elif name == "window":
            self._show_window()

    def _load(self) -> None:
        """A new image: show the box only for an image with levels, set for its values."""
        medical = self.state.medical
        self.setVisible(medical is not None)
        if medical is None:
            return
        decimals = 0 if medical.whole_numbers else 4
        span = abs(medical.window.width)
        for box in (self.centre_box, self.width_box):
            box.blockSignals(True)
            box.setDecimals(decimals)
            box.setSingleStep(max(span / 50, 10 ** -decimals))
            box.blockSignals(False)
        self.width_box.blockSignals(True)
        self.width_box.setMinimum(1.0 if medical.window.function == "LINEAR" else 10 ** -decimals)
        self.width_box.blockSignals(False)
        self.reset_button.setText("File's window" if medical.kind == "DICOM" else "Default window")
        self.reset_button.setToolTip("Back to the window the image opened in (and the model was given): "
                                     + _default_text(medical))
        self.frame_box.blockSignals(True)
        self.frame_box.setRange(1, medical.frames)
        self.frame_box.setSuffix(f" of {medical.frames}")
        self.frame_box.setValue(medical.frame + 1)
        self.frame_box.blockSignals(False)
        self.frame_box.setVisible(medical.frames > 1)
        patient = shown_identifiers(medical.identifiers)
        self.patient_label.setText(patient)
        self.patient_label.setVisible(bool(patient))
        self._show_window()

    def _show_window(self) -> None:
        medical = self.state.medical
        if medical is None:
            return
        window = self.state.window or medical.window
        for box, value in ((self.centre_box, window.centre), (self.width_box, window.width)):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        if self.state.window is None:
            source = f"window: {_default_text(medical)}"
        else:
            source = "window: yours (the model has the default)"
        self.info_label.setText(f"{medical.describe()} \u00b7 {source}")

    # -- the user's changes ------------------------------------------------------------------------
    def _on_value(self) -> None:
        medical = self.state.medical
        if medical is not None:
            self.state.set_window(medical.with_window(self.centre_box.value(), self.width_box.value()))

    def _on_frame(self, value: int) -> None:
        medical = self.state.medical
        if medical is not None and value - 1 != medical.frame:
            self._open_frame(value - 1)


def _default_text(medical) -> str:
    """Where the image's default window comes from, in a few words."""
    if medical.lut is not None:
        return "the file's VOI LUT" + (f" ({medical.lut.explanation})" if medical.lut.explanation else "")
    return medical.window.source or "the image's range"
