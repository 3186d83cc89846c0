"""The chosen method's parameters as a form, generated from its ``Param`` declarations.

Each ``Param`` becomes one magicgui widget, picked by its default's type: a check box for true/false,
a drop-down for a fixed set of ``choices``, a spin box held within ``minimum`` and ``maximum`` for
whole numbers and numbers, and a text field for text and for lists of numbers ("0,1"; empty: all).
The help text is the widget's tooltip. Nothing runs while values are edited: Apply checks them with
the method's own ``resolve_params`` (one message names a bad value, the window goes on) and makes
them the method's parameters for this window (``Analysis.set_params``); its maps are then computed
for that parameter set, or taken from the cache when they were computed before. The form (and
magicgui) is only built when the user unfolds it, so opening the window costs nothing more.

A method that can explain a token against an alternative (it declares the ``contrast`` parameter:
gradients, relevancy, perturbations) gets a drop-down of the selected token's top-k alternatives
instead of a number box ("none" explains the token on its own); methods that cannot (attention read
as it is) have no such parameter, so the choice is not offered for them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QPushButton, QScrollArea, QToolButton, QVBoxLayout, QWidget

from lvlm_studio.core.errors import LVLMError
from lvlm_studio.core.plugin.contracts import CONTRAST, NO_CONTRAST
from lvlm_studio.gui.widgets import HINT_STYLE, row, wrapping_label

if TYPE_CHECKING:
    from magicgui import widgets as mg

    from lvlm_studio.core.plugin.contracts import Param
    from lvlm_studio.gui.analysis import Analysis

#: Spin boxes of parameters without a bound stop here (Qt's spin boxes hold 32-bit whole numbers).
INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 1e12
ERROR_STYLE = "color: #b00020;"
MIN_FORM_HEIGHT = 60  # pixels: about two parameters; a short window scrolls the rest
MAX_FORM_HEIGHT = 190  # about six parameters, then the form scrolls


def contrast_choices(trace: Any, token: int | None, current: int = NO_CONTRAST) -> list[tuple[str, int]]:
    """(label, token id) of each alternative the drop-down offers for ``token`` of ``trace``: "none",
    then the top-k alternatives other than the chosen token, most likely first; ``current`` (the
    alternative in use) is kept in the list even when it is not among them (chosen for another token)."""
    choices = [("none", NO_CONTRAST)]
    if trace is not None and token is not None and 0 <= token < len(trace.answer_ids):
        chosen = int(trace.answer_ids[token])
        for text, token_id, logprob in zip(trace.top_tokens[token], trace.top_ids[token], trace.top_logprobs[token]):
            if int(token_id) != chosen:
                choices.append((f"{text.strip() or repr(text)}  (p = {math.exp(float(logprob)):.3g})", int(token_id)))
    if current != NO_CONTRAST and current not in {value for _, value in choices}:
        choices.append((f"token id {current}", int(current)))
    return choices


def param_widget(param: Param, contrast: list[tuple[str, int]] | None = None) -> mg.ValueWidget:
    """One widget for ``param``, showing its default, with its help, bounds and choices as tooltip.
    The ``contrast`` parameter is a drop-down of ``contrast`` (``contrast_choices``)."""
    from magicgui import widgets as mg

    default, common = param.default, {"name": param.name, "label": param.name, "tooltip": _tooltip(param)}
    if param.name == CONTRAST.name:
        common["tooltip"] = ("explain the selected token against an alternative from its top-k: the score becomes "
                             "its logit minus the alternative's (\"why this rather than that\"); none: on its own")
        return mg.ComboBox(value=default, choices=contrast or [("none", NO_CONTRAST)], **common)
    if param.choices is not None:
        return mg.ComboBox(value=default, choices=tuple(param.choices), **common)
    if isinstance(default, bool):
        return mg.CheckBox(value=default, text="", **common)
    if isinstance(default, int):
        low = -INT_LIMIT if param.minimum is None else max(math.ceil(param.minimum), -INT_LIMIT)
        high = INT_LIMIT if param.maximum is None else min(math.floor(param.maximum), INT_LIMIT)
        return mg.SpinBox(value=default, min=low, max=high, step=1, **common)
    if isinstance(default, float):
        low = -FLOAT_LIMIT if param.minimum is None else param.minimum
        high = FLOAT_LIMIT if param.maximum is None else param.maximum
        step = _step(default, low, high)
        box = mg.FloatSpinBox(value=default, min=low, max=high, step=step, **common)
        # One decimal finer than the step, and enough for the default itself (0.355 must not show 0.36).
        needed = next((d for d in range(13) if round(default, d) == default), 12)
        box.native.setDecimals(max(needed, 1 - math.floor(math.log10(step))))
        box.value = default
        return box
    text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    field = mg.LineEdit(value=text, **common)
    if isinstance(default, tuple):
        field.native.setPlaceholderText("all")
    return field


def _step(default: float, low: float, high: float) -> float:
    """A spin step one decimal below the default's leading digit (the box shows two more decimals)."""
    scale = abs(default) or (min(abs(high - low), 1.0) if math.isfinite(high - low) else 1.0)
    return 10.0 ** (math.floor(math.log10(scale)) - 1) if scale > 0 else 0.01


def _tooltip(param: Param) -> str:
    parts = [param.help] if param.help else []
    if param.choices is not None:
        parts.append("one of: " + ", ".join(map(str, param.choices)))
    if param.minimum is not None or param.maximum is not None:
        low = "" if param.minimum is None else f"{param.minimum:g} \u2264 "
        high = "" if param.maximum is None else f" \u2264 {param.maximum:g}"
        parts.append(f"{low}{param.name}{high}")
    if isinstance(param.default, tuple):
        parts.append("comma-separated whole numbers; empty: all")
    parts.append(f"default: {_shown(param.default)}")
    return "\n".join(parts)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "all"
    return str(value)


def _value_for(param: Param, value: Any) -> Any:
    """``value`` as ``param``'s widget holds it."""
    if isinstance(param.default, tuple) and param.choices is None:
        return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    if isinstance(param.default, str) and param.choices is None:
        return str(value)
    return value


class ParamsForm(QWidget):
    """A form of one widget per ``Param``; ``values()`` is what it shows, not yet checked."""

    def __init__(self, params: tuple[Param, ...], parent: QWidget | None = None,
                 contrast: list[tuple[str, int]] | None = None) -> None:
        super().__init__(parent)
        from magicgui import widgets as mg

        self.params = tuple(params)
        self.container = mg.Container(widgets=[param_widget(p, contrast) for p in self.params], labels=True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.container.native)

    def widget(self, name: str) -> mg.ValueWidget:
        return self.container[name]

    def values(self) -> dict[str, Any]:
        """Every parameter's value as shown (text fields as text: ``resolve_params`` parses them)."""
        return {p.name: self.container[p.name].value for p in self.params}

    def set_contrast_choices(self, choices: list[tuple[str, int]]) -> None:
        """Offer ``choices`` (``contrast_choices``) in the contrast drop-down, keeping its value when
        it is among them; nothing for a method without one."""
        if not any(p.name == CONTRAST.name for p in self.params):
            return
        widget = self.container[CONTRAST.name]
        value = widget.value
        widget.choices = choices
        widget.value = value if value in {v for _, v in choices} else NO_CONTRAST

    def set_values(self, values: dict[str, Any]) -> None:
        """Show ``values`` (parameters not named show their defaults)."""
        for p in self.params:
            widget = self.container[p.name]
            try:
                widget.value = _value_for(p, values.get(p.name, p.default))
            except (TypeError, ValueError):  # a value the widget cannot hold: show the default
                widget.value = _value_for(p, p.default)


class MethodParamsBox(QWidget):
    """The chosen method's parameters (the method is picked in the Image overlay panel): one line
    that says which are in use (or what is wrong), and, unfolded, the form with Apply and Defaults.
    Folded by default, so the window's layout stays as it was for those who keep the defaults."""

    def __init__(self, analysis: Analysis, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.analysis = analysis
        self.state = analysis.state
        self.method: str | None = None
        self.form: ParamsForm | None = None
        self.title = QToolButton()
        self.title.setCheckable(True)
        self.title.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.title.setAutoRaise(True)
        self.title.setToolTip("Show or hide the parameters of the method (chosen in the Image overlay panel)")
        self.title.toggled.connect(self.set_expanded)
        self.form_area = QWidget()
        self.form_holder = QVBoxLayout(self.form_area)
        self.form_holder.setContentsMargins(0, 0, 0, 0)
        # A method with many parameters scrolls instead of pushing the window taller than the screen.
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.form_area)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Use these parameters for the method's maps (computed again, or taken "
                                     "from the ones already computed with them)")
        self.apply_button.clicked.connect(self.apply)
        self.defaults_button = QPushButton("Defaults")
        self.defaults_button.setToolTip("Show the method's default parameters (Apply uses them)")
        self.defaults_button.clicked.connect(self.show_defaults)
        self.note = wrapping_label("", lines=1)
        self.note.setStyleSheet(HINT_STYLE)
        layout = QVBoxLayout(self)  # no box of its own: it sits under the map caption, in the Answer box
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(row(self.title, self.note, self.defaults_button, self.apply_button, stretch=1))
        layout.addWidget(self.scroll)
        self.state.subscribe(self._on_state)
        analysis.registry_ready.connect(self.rebuild)
        self.rebuild()
        self.set_expanded(False)

    @property
    def expanded(self) -> bool:
        return self.title.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        """Unfold (the form, Apply, Defaults) or fold the box to its one line."""
        if self.title.isChecked() != expanded:
            self.title.setChecked(expanded)  # comes back here through ``toggled``
            return
        self.title.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        if expanded and self.form is None:
            self._build_form()
        shown = expanded and self.form is not None
        for widget in (self.scroll, self.apply_button, self.defaults_button):
            widget.setVisible(shown)

    def _on_state(self, name: str) -> None:
        if name == "method" and self.state.method != self.method:
            self.rebuild()
        elif name == "params" and self.form is not None and self.method is not None:
            self.form.set_contrast_choices(self._contrast_choices())
            self.form.set_values(self.state.params.get(self.method, {}))
            self._say_applied()
        elif name in ("selected", "trace") and self.form is not None:
            self.form.set_contrast_choices(self._contrast_choices())

    def _contrast_choices(self) -> list[tuple[str, int]]:
        """The selected token's alternatives, and the one in use for the method."""
        current = self.state.params.get(self.method or "", {}).get(CONTRAST.name, NO_CONTRAST)
        return contrast_choices(self.state.trace, self.state.selected, int(current))

    def _params(self) -> tuple[Param, ...]:
        explainer = self.analysis.explainers.get(self.method or "")
        return tuple(explainer.params) if explainer is not None else ()

    def _build_form(self) -> None:
        """The form of the chosen method, showing the parameters chosen for it (none without any)."""
        params = self._params()
        if not params:
            return
        self.form = ParamsForm(params, contrast=self._contrast_choices())
        self.form.set_values(self.state.params.get(self.method or "", {}))
        self.form_holder.addWidget(self.form)
        rows = self.form.sizeHint().height()
        self.scroll.setMinimumHeight(min(rows, MIN_FORM_HEIGHT))  # the window shares its height out
        self.scroll.setMaximumHeight(min(rows + 4, MAX_FORM_HEIGHT))

    def rebuild(self) -> None:
        """Follow the chosen method: its title, what is in use, and its form when unfolded."""
        if self.form is not None:
            self.form.setParent(None)
            self.form.deleteLater()
            self.form = None
        self.method = self.state.method
        explainer = self.analysis.explainers.get(self.method)
        params = self._params()
        self.title.setText(f"{explainer.title or self.method}" if explainer is not None else "No method loaded yet.")
        for button in (self.apply_button, self.defaults_button):
            button.setEnabled(bool(params))
        self.set_expanded(self.expanded)
        if explainer is not None and not params:
            self.note.setText("This method has no parameters.")
        else:
            self._say_applied()

    def show_defaults(self) -> None:
        if self.form is not None:
            self.form.set_values({})

    def apply(self) -> bool:
        """Check the form and make it the method's parameters; False (and the reason shown) when a
        value is not accepted, and nothing changes."""
        if self.form is None or self.method is None:
            return False
        try:
            self.analysis.set_params(self.method, self.form.values())
        except LVLMError as exc:
            self.note.setStyleSheet(ERROR_STYLE)
            self.note.setText(str(exc))
            self.analysis.message.emit(f"Parameters not applied: {exc.message}")
            return False
        self._say_applied()
        return True

    def _say_applied(self) -> None:
        self.note.setStyleSheet(HINT_STYLE)
        chosen = self.state.params.get(self.method or "", {})
        if not chosen:
            self.note.setText("Defaults in use.")
        else:
            self.note.setText("In use: " + ", ".join(f"{k}={self._shown_param(k, v)}" for k, v in chosen.items()) +
                              " (the others: defaults).")

    def _shown_param(self, name: str, value: Any) -> str:
        """A parameter's value as the note shows it: the contrast as its token's text where the trace
        lists it among the selected token's alternatives, else as its id."""
        trace, token = self.state.trace, self.state.selected
        if name == CONTRAST.name and trace is not None and token is not None and 0 <= token < len(trace.answer_ids):
            for text, token_id in zip(trace.top_tokens[token], trace.top_ids[token]):
                if int(token_id) == int(value):
                    return f"{text.strip()!r}"
        return _shown(value)
