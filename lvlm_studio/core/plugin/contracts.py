"""The objects plugins hand to LVLM Studio: explainers, metrics, analyzers, panels, parameters.

These are the public API for plugin authors (with ``hookspecs``). Plugins subclass ``Explainer``,
``Metric`` or ``Analyzer``, declare their parameters as ``Param`` data, and return instances from
the hooks. Nothing here imports Qt: a panel is declared by the import path of its factory and is
only built, by the GUI, when it is first shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lvlm_studio.core.errors import InputError

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.explanation import Explanation
    from lvlm_studio.core.plugin.jobs import Job
    from lvlm_studio.core.tracing.trace import Trace


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its default fixes its type; ``choices`` or bounds restrict it."""

    name: str
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, value: Any) -> Any:
        """Convert (from CLI text, JSON or Python) and validate; raise ``InputError`` with the fix."""
        try:
            value = _convert(value, self.default)
        except (TypeError, ValueError, OverflowError):
            raise InputError(
                f"parameter {self.name!r} got {value!r}, which is not a {_type_name(self.default)}.",
                f"Example: {self.name}={_format(self.default)}.",
            ) from None
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every bound check below
            raise InputError(f"parameter {self.name!r} got {value!r}, which is not a finite number.",
                             f"Example: {self.name}={_format(self.default)}.")
        if self.choices is not None and value not in self.choices:
            raise InputError(
                f"parameter {self.name!r} got {value!r}.",
                f"Choose one of: {', '.join(map(_format, self.choices))}.",
            )
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if (self.minimum is not None and item < self.minimum) or (
                    self.maximum is not None and item > self.maximum
                ):
                    raise InputError(f"parameter {self.name!r} got {item!r}.", self._bounds_hint())
        return value

    def _bounds_hint(self) -> str:
        if self.minimum is None:
            return f"It must be at most {self.maximum}."
        if self.maximum is None:
            return f"It must be at least {self.minimum}."
        return f"It must lie between {self.minimum} and {self.maximum}."


def _type_name(default: Any) -> str:
    if isinstance(default, tuple):
        return "comma-separated list"
    return {bool: "true/false", int: "whole number", float: "number", str: "text"}.get(type(default), "value")


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "all"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _convert(value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        return bool(value)
    if isinstance(default, tuple):  # a list of ints (layers, heads); empty means "all"
        if isinstance(value, str):
            text = value.strip().lower()
            return () if text in {"", "all"} else tuple(int(v) for v in text.split(","))
        return tuple(int(v) for v in value)
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


class _Described:
    """Shared by the plugin objects: an id, a title, parameters and their validation."""

    id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: Parameters with defaults; ``resolve_params`` validates user input against them.
    params: ClassVar[tuple[Param, ...]] = ()

    def resolve_params(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``given``; unknown names and bad values raise ``InputError``."""
        known = {p.name: p for p in self.params}
        given = dict(given or {})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise InputError(
                f"{self.id} has no parameter {', '.join(map(repr, unknown))}.",
                f"Its parameters: {', '.join(known) or 'none'}.",
            )
        return {name: p.parse(given[name]) if name in given else p.default for name, p in known.items()}


class Explainer(_Described):
    """Turns a Trace into a map over the image grid for each chosen answer token.

    ``needs`` tells the application what the method requires: "model" (a live model, not only a
    saved trace), "eager_attention" (attention weights, which SDPA and flash attention do not
    produce), "gradients".
    """

    needs: ClassVar[frozenset[str]] = frozenset()

    def applies_to(self, model: LoadedModel, params: dict[str, Any]) -> str | None:
        """Why this method cannot explain ``model`` with ``params``, as one plain sentence; None when it can.

        Families differ in how the image reaches the language model (``model.adapter.image_entry``:
        "tokens", or "cross_attention" for Mllama, whose sequence holds no image tokens) and in
        their vision towers (with or without a CLS token). A method that cannot work on a family
        says so here instead of failing inside ``explain``; the application asks before running
        (``require_applicable``) and the support table is built from the answers. ``params`` have
        been through ``resolve_params``. The default: the method applies to every model.
        """
        return None

    def per_target(self, params: dict[str, Any]) -> bool:
        """Whether each answer token's map costs its own passes and does not depend on which other
        tokens are explained with it (gradients, relevancy, a mask optimised per token).

        The app then asks ``explain`` for the selected token alone first, shows its map, and asks for
        the other tokens one at a time in the background. False (the default): one pass gives every
        token's map (attention, rollout, perturbations scored for all tokens at once), and the app asks
        for all tokens in one call, as before. ``params`` have been through ``resolve_params``.
        A method that returns maps for more tokens than asked is still correct either way.
        """
        return False

    def explain(
        self, trace: Trace, model: LoadedModel | None, targets: list[int], params: dict[str, Any]
    ) -> Explanation | Job[Explanation]:
        """Maps for the answer tokens ``targets`` (indices into ``trace.answer_ids``).

        ``params`` has been through ``resolve_params``. Return an ``Explanation`` directly, or be a
        generator that yields ``Progress`` (at least once per forward pass, so it can be
        cancelled) and returns the ``Explanation``.
        """
        raise NotImplementedError


#: The ``contrast`` value that means "no contrast": explain the target on its own.
NO_CONTRAST = -1

#: The parameter of every method that can explain a target token *against an alternative* ("why
#: red rather than blue"): the token id of the alternative, -1 for none. A method that declares it
#: scores the logit difference, target minus alternative (``core.tracing.scores.logit_difference``),
#: wherever it would score the target alone; the app offers the target's top-k alternatives for it.
#: Methods without a score of the target (attention read as it is) do not declare it.
CONTRAST = Param("contrast", NO_CONTRAST, "token id of an alternative to explain the target against: the "
                 "score becomes the target's logit minus the alternative's (-1: no contrast)", minimum=-1)


def supports_contrast(explainer: Explainer) -> bool:
    """Whether ``explainer`` can explain a target against an alternative token (declares ``CONTRAST``)."""
    return any(p.name == CONTRAST.name for p in explainer.params)


def contrast_token(params: dict[str, Any]) -> int | None:
    """The alternative's token id in resolved ``params``, or None when there is no contrast."""
    value = int(params.get(CONTRAST.name, NO_CONTRAST))
    return None if value == NO_CONTRAST else value


def require_contrast(explainer: Explainer, capable: list[str] | None = None) -> None:
    """Raise one ``InputError`` when ``explainer`` cannot explain against an alternative token;
    ``capable`` (method ids that can) goes into the hint."""
    if supports_contrast(explainer):
        return
    others = f": {', '.join(capable)}" if capable else " (those with a 'contrast' parameter)"
    raise InputError(f"{explainer.id} cannot explain a token against an alternative: it has no score of the "
                     f"target to set against another token's (it reads attention as it is, which does not "
                     f"depend on which token is asked about).",
                     f"Use a method that can{others}; or leave the contrast out.")


def image_tokens_reason(model: LoadedModel, method: str) -> str | None:
    """The reason a method that reads image positions of the sequence cannot run on ``model``, or None.

    For explainers whose ``applies_to`` needs the image as tokens in the sequence (logit lens,
    gradients of the decoder's input embeddings, attention propagated over self-attention).
    """
    if model.adapter.image_entry == "tokens":
        return None
    return (f"{method} reads the image tokens of the sequence, and {model.adapter.family} has none: its image enters "
            f"through {model.adapter.image_entry.replace('_', '-')} layers")


def require_applicable(explainer: Explainer, model: LoadedModel | None, params: dict[str, Any]) -> None:
    """Raise ``InputError`` with the explainer's reason when it does not apply to ``model``.

    Called by the CLI, the GUI and the benchmarks before ``explain``; without a model (a saved trace
    only) there is nothing to check here, and methods that need one say so themselves.
    """
    if model is None:
        return
    reason = explainer.applies_to(model, params)
    if reason is not None:
        raise InputError(f"{explainer.id} does not apply to this model: {reason}.",
                         "Choose another method (`lvlm-studio plugins` lists them; the support table in "
                         "docs/families.md says which apply to which family).")


@dataclass
class MetricResult:
    """What a metric returns: headline numbers, and the curves behind them so they can be plotted.

    ``values`` are named by what they measure (``{"deletion_auc": 0.21}``); ``curves`` map a name
    to ``(x, y)`` arrays (``"deletion": (fraction removed, score)``); ``details`` holds anything
    else a reader may want (per-token values, thresholds) as JSON-able data.
    """

    values: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


#: The directions a metric's value may declare as better (``Metric.directions``).
HIGHER, LOWER = "higher", "lower"
DIRECTIONS = (HIGHER, LOWER)


def declared_directions(metric: Any) -> dict[str, str]:
    """Value name -> "higher" or "lower" (which is better), as ``metric`` declares it in
    ``directions``; empty for anything that declares none (a third-party object, None)."""
    declared = getattr(metric, "directions", None)
    if not isinstance(declared, dict):
        return {}
    return {str(value): way for value, way in declared.items() if way in DIRECTIONS}


class Metric(_Described):
    """Scores an explanation: faithfulness (needs the model) or plausibility (needs masks).

    ``needs`` as for ``Explainer``, plus "masks" for metrics that compare against ground truth.

    ``directions`` says, for each name in ``MetricResult.values``, whether a "higher" or a "lower"
    value is better (``{"deletion_auc": "lower", "insertion_auc": "higher"}``). The benchmark's
    tables, the Metrics panel and the reports show it as an arrow and order by it. A value it does
    not name has no better direction (the default, and what metrics written before directions
    existed get): it is shown without an arrow and nothing is ranked by it. Name none for values
    that are not better either way (how alike two maps are, a count).
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    directions: ClassVar[dict[str, str]] = {}

    def direction(self, value: str) -> str | None:
        """"higher" or "lower" when that is better for ``value``; None when not declared (or not one of them)."""
        return declared_directions(self).get(value)

    def score(
        self,
        trace: Trace,
        explanation: Explanation,
        model: LoadedModel | None,
        masks: dict[Any, Any] | None,
        params: dict[str, Any],
    ) -> MetricResult | Job[MetricResult]:
        """Score the maps of ``explanation``; may be a job (see ``Explainer.explain``).

        ``masks`` (for metrics that need "masks") maps a word ("dog", "red") to a boolean mask of
        the image and may pin an answer-token index to its own object's mask
        (``lvlm_studio.core.metrics.masks.ObjectMasks``; ``token_masks`` resolves a token to its mask).
        """
        raise NotImplementedError


class Analyzer(_Described):
    """A feature tool (sparse autoencoder, probe) over named hook points of the vision tower."""

    def analyze(self, trace: Trace, model: LoadedModel, params: dict[str, Any]) -> dict[str, Any] | Job[dict[str, Any]]:
        """Plain arrays and numbers describing the features active in this trace; may be a job."""
        raise NotImplementedError


@dataclass(frozen=True)
class PanelSpec:
    """A dockable GUI panel, declared as data. ``factory`` is "package.module:callable"; it is
    imported only when the panel is first shown and called with the panel context."""

    id: str
    title: str
    factory: str
    area: str = "right"  # left, right, top or bottom


# -- studies ------------------------------------------------------------------------------------
@dataclass
class StudyQuestion:
    """One question a study asks of a sample.

    ``answer`` is the expected answer when the dataset knows it; ``object`` names the sample's mask
    (``StudySample.masks``) of what the question is about; ``kind`` says where it came from ("colour",
    "exist", ... for demo scenes; "" for questions a user wrote). Questions sharing a ``pair`` id
    are opposites (a consistent model answers one yes and one no); ``negated`` marks the member that
    asks the negation, so declarative answers ("the red circle is there") can be read as yes or no.
    """

    text: str
    answer: str | None = None
    object: str | None = None
    kind: str = ""
    pair: str | None = None
    negated: bool = False


@dataclass
class StudySample:
    """One image of a study's dataset: its questions, and named boolean object masks (the image's
    (height, width); "cue" for the shortcut twin's corner mark of a demo scene)."""

    key: str
    image: Any  # a PIL image, RGB
    questions: list[StudyQuestion] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyContext:
    """What a study's ``run_sample`` gets besides the sample and the model: the model's label (as
    ``--model`` named it), the plugin registry (``registry.explainer(id)``), the run's seed and the
    folder the run writes into (for optional per-sample files)."""

    model_label: str
    registry: Any
    seed: int = 0
    out: Any = None  # pathlib.Path of the run's folder, or None


@dataclass
class StudyTable:
    """A named table: rows of plain values (each row a dict; the first row's keys are the columns)."""

    name: str
    rows: list[dict[str, Any]]
    caption: str = ""


@dataclass
class StudyFigure:
    """A named figure: ``draw(ax)`` draws it on a matplotlib Axes (the runner saves it as NAME.png)."""

    name: str
    draw: Any  # Callable[[matplotlib.axes.Axes], None]
    caption: str = ""


@dataclass
class StudyReport:
    """What a study's ``summarize`` returns: tables, figures and Markdown text for the run's report."""

    title: str
    text: str = ""
    tables: list[StudyTable] = field(default_factory=list)
    figures: list[StudyFigure] = field(default_factory=list)


class Study(_Described):
    """A reproducible analysis over a dataset and one or more models (``lvlm-studio study ID``).

    The runner (``lvlm_studio.studies``) loads each model in turn and calls ``run_sample`` once per
    (model, sample); the rows it returns (plain JSON-able dicts) are saved, with "model" and
    "sample" added, one line per (model, sample) in results.jsonl, so an interrupted run resumes where
    it stopped. ``summarize`` turns every row saved so far into the report (tables as CSV and
    Markdown, figures as PNG); it must need nothing but the rows and the parameters.

    ``demo_tasks`` says which questions the runner asks about demo scenes ("colour", "exist",
    "exist-pair", "where", "caption"); ``needs_masks`` refuses datasets without object masks;
    ``min_models`` refuses runs with fewer models. ``description`` is one paragraph for listings.
    """

    description: ClassVar[str] = ""
    demo_tasks: ClassVar[tuple[str, ...]] = ("colour",)
    needs_masks: ClassVar[bool] = False
    min_models: ClassVar[int] = 1

    @property
    def name(self) -> str:
        return self.title

    def run_sample(self, sample: StudySample, model: LoadedModel, params: dict[str, Any],
                   context: StudyContext) -> list[dict[str, Any]] | Job[list[dict[str, Any]]]:
        """The rows for one sample and one model; may be a job (yield ``Progress``, return the rows)."""
        raise NotImplementedError

    def summarize(self, rows: list[dict[str, Any]], params: dict[str, Any]) -> StudyReport:
        """The report from every row of the run (each carries "model" and "sample")."""
        raise NotImplementedError
