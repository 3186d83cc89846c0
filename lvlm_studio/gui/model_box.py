"""The Model box at the top of the window: which model to ask, where it runs, and loading it.

A model folder loads on the worker thread. A folder that needs an option that can run code
(pickle weights, the folder's own Python code) is refused first; the box then asks the user,
saying what the option risks, and loads with it only on Yes. The answer is never remembered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QGroupBox, QLabel, QMessageBox, QPushButton

from lvlm_studio.core.errors import UnsafeModelError
from lvlm_studio.gui.analysis import Analysis
from lvlm_studio.gui.settings import DEVICES, DTYPES, StudioSettings
from lvlm_studio.gui.state import StudioState
from lvlm_studio.gui.widgets import HINT_STYLE, combo, fill_group, row, wrapping_label
from lvlm_studio.gui.worker import Job

DEMO_MODEL = "Demo model (built in)"
#: What a risky load option may do, asked before the model is loaded with it (never remembered).
RISKS = {
    "allow_pickle": ("Load the pickle weights anyway?",
                     "Pickle files can run any program on this computer, with your permissions, while they load. "
                     "Say Yes only if you trust where this model came from."),
    "trust_remote_code": ("Run the model folder's own Python code?",
                          "That code runs on this computer with your permissions and can do anything you can. "
                          "Say Yes only if you trust where this model came from."),
}


class ModelBox(QGroupBox):
    """The model chooser (the demo model and recent folders), device and weight format, and what is loaded."""

    message = Signal(str)  # for the status bar

    def __init__(self, settings: StudioSettings, state: StudioState, analysis: Analysis) -> None:
        super().__init__("Model")
        self.settings, self.state, self.analysis = settings, state, analysis
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model to ask; recent model folders are remembered")
        self._fill_model_combo()
        self.model_combo.activated.connect(self._on_model_chosen)
        self.open_model_button = QPushButton("Open folder\u2026")
        self.open_model_button.clicked.connect(self.choose_model)
        self.device_combo = combo(DEVICES, settings.device(), "Where the model runs (next load)")
        self.dtype_combo = combo(DTYPES, settings.dtype(), "Number format of the weights (next load)")
        self.device_combo.currentTextChanged.connect(settings.set_device)
        self.dtype_combo.currentTextChanged.connect(settings.set_dtype)
        self.model_label = wrapping_label("")
        self.model_label.setStyleSheet(HINT_STYLE)
        fill_group(
            self,
            row(self.model_combo, self.open_model_button, stretch=0),
            row(QLabel("Device"), self.device_combo, QLabel("Weights"), self.dtype_combo, self.model_label, stretch=4),
        )
        state.subscribe(self._on_state)

    def choose_model(self) -> None:
        path = QFileDialog.getExistingDirectory(self.window(), "Open model folder")
        if path:
            self.load_model(path)

    def load_model(self, path: str | Path | None, allow_pickle: bool = False, trust_remote_code: bool = False) -> Job:
        """Load the model in folder ``path`` (None: the demo model) on the worker thread. A folder
        that needs pickle weights or remote code is loaded with them only after the user confirms."""
        name = Path(path).name if path else "the demo model"

        def done(model: Any) -> None:
            if path:
                self.settings.add_recent_model(str(Path(path).resolve()))
            self._fill_model_combo()
            self.model_label.setText(describe_model(model))

        def failed(error: BaseException, details: str) -> bool:
            if self.state.model is None:
                self.model_label.setText("No model loaded: open a model folder.")
            self._fill_model_combo()
            if isinstance(error, UnsafeModelError) and error.option in RISKS and path:
                self._offer_risky_load(path, error, allow_pickle, trust_remote_code)
                return True
            return False

        if self.state.model is None:
            self.model_label.setText(f"Loading {name}\u2026")
        return self.analysis.load_model(path, self.device_combo.currentText(), self.dtype_combo.currentText(),
                                        done, failed, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    def _offer_risky_load(self, path: str | Path, error: UnsafeModelError, allow_pickle: bool,
                          trust_remote_code: bool) -> None:
        """The folder needs an option that can run code: say what it risks; load with it on Yes (No is the default)."""
        question, risk = RISKS[error.option]
        box = QMessageBox(QMessageBox.Icon.Question, "LVLM Studio: this model can run code",
                          f"{error.message} {question}", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                          self.window())
        box.setInformativeText(risk)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        if box.exec() != QMessageBox.StandardButton.Yes:
            self.message.emit(f"Did not load {Path(path).name}.")
            return
        options = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code, error.option: True}
        self.load_model(path, **options)

    def _fill_model_combo(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem(DEMO_MODEL, None)
        for folder in self.settings.recent_models():
            self.model_combo.addItem(Path(folder).name, folder)
            self.model_combo.setItemData(self.model_combo.count() - 1, folder, Qt.ItemDataRole.ToolTipRole)
        current = self.state.model_source
        index = self.model_combo.findData(current) if current else 0
        self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        folder = self.model_combo.itemData(index)
        if folder != self.state.model_source or self.state.model is None:
            self.load_model(folder)

    def _on_state(self, name: str) -> None:
        if name == "model" and self.state.model is not None:
            self.model_label.setText(describe_model(self.state.model))


def describe_model(model: Any) -> str:
    """One line about a loaded model: its folder, family, device and size."""
    info = model.describe()
    source = "demo model" if Path(model.source).name == "demo-model" else Path(model.source).name
    parts = (source, info["family"], info["device"], f"{info['parameters'] / 1e6:.2f} M parameters")
    return " \u00b7 ".join(parts)
