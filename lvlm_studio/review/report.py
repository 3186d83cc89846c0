"""The case report: one PDF per reviewed case, with the verdict, the sign-off and the evidence.

Page 1: the verdict in a coloured banner (amber "Defer to a human expert", green for an accepted
answer), the case, question and answer, the scores, the reasons, the reviewer's decision and
comment, the model and the versions, and the image with the critical region's contours. Page 2:
each method's map with its colour bar and the same contours. Page 3: every signal against its
cutoff, and the thresholds. Built on the analysis report's pages (``core.formats.report``): no
pyplot, no display, written atomically.

Nothing in it is an absolute local path: the image and the model are named by their file and
folder names only, so a report can leave the machine without saying where files were kept.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats.report import page, wrap, write_pages
from lvlm_studio.review.combine import SIGNALS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lvlm_studio.review.assessment import Assessment

AMBER = "#f5b041"
GREEN = "#58d68d"
CONTOUR = "#00e5ff"
DECISION_WORDS = {"pending": "pending (not yet signed off)", "accepted": "accepted", "overridden": "overridden",
                  "deferred": "deferred to a human expert"}


def write_case_report(assessments: Assessment | Sequence[Assessment], path: str | Path, case: str,
                      reviewer: str = "", decision: str = "pending", comment: str = "", corrected_answer: str = "",
                      image_name: str = "", model_name: str = "", model_version: str = "") -> Path:
    """Write the case report of one assessment, or of several questions about the case (three
    pages each), to ``path`` (a PDF) and return the path.

    ``decision`` is the reviewer's ("pending", "accepted", "overridden" or "deferred"), not the
    suggested one, which the report shows beside it. ``image_name`` and ``model_name`` are shown
    as given, without their folders; ``model_version`` is free text (e.g. a folder hash)."""
    assessments = [assessments] if not isinstance(assessments, Sequence) else list(assessments)
    if not assessments:
        raise InputError("a case report needs at least one assessment.", "Assess the case first.")
    first = assessments[0]
    model_name = Path(model_name or first.model.get("source", "") or "model").name
    model = f"{model_name} ({first.model.get('family', '?')})" + (f", {model_version}" if model_version else "")
    details = {
        "case": case, "reviewer": reviewer or "-", "decision": DECISION_WORDS.get(decision, decision),
        "comment": comment or "-", "corrected": corrected_answer, "image": Path(image_name).name if image_name else "-",
        "model": model,
    }

    def pages():
        for number, assessment in enumerate(assessments, start=1):
            suffix = f" (question {number} of {len(assessments)})" if len(assessments) > 1 else ""
            yield _summary(assessment, details, suffix)
            if assessment.maps:
                yield _maps(assessment, suffix)
            yield _signals(assessment, suffix)

    return write_pages(path, pages(), f"LVLM Studio case report: {case}")


def _banner(figure: Figure, assessment: Assessment) -> None:
    colour = AMBER if assessment.deferred else GREEN
    axes = figure.add_axes((0.06, 0.865, 0.88, 0.07))
    axes.set_axis_off()
    axes.add_patch(_rectangle(colour))
    axes.text(0.02, 0.5, "\n".join(textwrap.wrap(assessment.verdict(), 80)[:2]), va="center", fontsize=12,
              weight="bold", transform=axes.transAxes)


def _rectangle(colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0), 1, 1, facecolor=colour, edgecolor="none")


def _summary(assessment: Assessment, details: dict[str, str], suffix: str = "") -> Figure:
    from lvlm_studio.core.io.records import package_version

    figure = page("LVLM Studio: case report" + suffix)
    _banner(figure, assessment)
    answer = assessment.answer or "(no answer)"
    lines = [
        f"Case: {details['case']}",
        f"Image: {details['image']}",
        f"Question: {assessment.question}",
        f"Answer: {answer}",
        f"Key words: {', '.join(assessment.key_words) or '-'}",
        "",
        f"Probability of the key words (their product): {_number(assessment.probability)}",
        f"Consistency of the grounding: {_number(assessment.consistency)} "
        f"(defer below {assessment.thresholds.get('defer', math.nan):.2f}, "
        f"high from {assessment.thresholds.get('high', math.nan):.2f})",
        f"Confidence: {assessment.confidence}    Suggested decision: {assessment.decision}",
        "",
        f"Reviewer: {details['reviewer']}",
        f"Decision: {details['decision']}",
    ]
    if details["corrected"]:
        lines.append(f"Corrected answer: {details['corrected']}")
    lines += [f"Comment: {line}" if i == 0 else f"         {line}"
              for i, line in enumerate(textwrap.wrap(details["comment"], 80)[:6] or ["-"])]
    lines += ["", f"Model: {details['model']}",
              f"Methods: {', '.join(assessment.methods) or '-'}",
              f"LVLM Studio {package_version('lvlm-studio')}; written "
              f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"]
    figure.text(0.08, 0.84, "\n".join(_cut(line, 100) for line in lines), va="top", fontsize=9,
                family="DejaVu Sans", linespacing=1.5)
    reasons = assessment.reasons or ["none: every signal is within what grounded answers reach"]
    shown = [f"\u2022 {wrap(reason, 100)}".replace("\n", "\n   ") for reason in reasons[:6]]
    figure.text(0.08, 0.5, "Reasons:\n" + "\n".join(shown), va="top", fontsize=9, family="DejaVu Sans",
                linespacing=1.4)
    if assessment.trace is not None:
        axes = figure.add_axes((0.08, 0.04, 0.5, 0.28))
        axes.imshow(np.asarray(assessment.trace.image))
        _contours(axes, assessment)
        axes.set_title("The image, its critical region outlined", fontsize=9)
        axes.set_axis_off()
    return figure


def _maps(assessment: Assessment, suffix: str = "") -> Figure:
    from matplotlib import colormaps

    figure = page("Where the evidence is: each method's map of the key words" + suffix)
    methods = list(assessment.maps)[:6]
    columns = 2
    rows = max(1, math.ceil(len(methods) / columns))
    grid = figure.add_gridspec(rows, columns, left=0.06, right=0.86, top=0.88, bottom=0.06, hspace=0.3, wspace=0.45)
    image = np.asarray(assessment.trace.image) if assessment.trace is not None else None
    for i, method in enumerate(methods):
        axes = figure.add_subplot(grid[i // columns, i % columns])
        pixels = np.asarray(assessment.maps[method], dtype=np.float64)
        if image is not None:
            axes.imshow(image)
        shown = np.ma.masked_invalid(pixels)
        mappable = axes.imshow(shown, cmap=colormaps["inferno"], alpha=0.6, vmin=0.0, vmax=1.0)
        _contours(axes, assessment)
        axes.set_title(f"{method}", fontsize=9)
        axes.set_axis_off()
        bar = figure.colorbar(mappable, cax=axes.inset_axes((1.04, 0.0, 0.05, 1.0)))
        bar.ax.tick_params(labelsize=7)
        bar.set_label("share of the map's range", fontsize=7)
    figure.text(0.06, 0.02, "Maps are normalised to [0, 1] per key word and averaged over the key words; the outline "
                "is the critical region (the methods' consensus).", fontsize=7)
    return figure


def _contours(axes: Axes, assessment: Assessment) -> None:
    for contour in assessment.regions:
        contour = np.asarray(contour)
        if len(contour) > 1:
            axes.plot(contour[:, 1], contour[:, 0], color=CONTOUR, linewidth=1.5)


def _signals(assessment: Assessment, suffix: str = "") -> Figure:
    figure = page("Signals and thresholds" + suffix)
    rows = []
    for name, spec in SIGNALS.items():
        value = assessment.signals.get(name)
        if value is None:
            continue
        cutoff = assessment.thresholds.get(name)
        if cutoff is None:
            verdict = "not used"
        elif not math.isfinite(value):
            verdict = "does not apply"
        else:
            worse = value < cutoff if spec.direction > 0 else value > cutoff
            verdict = "FAILS" if worse else "passes"
        side = ">=" if spec.direction > 0 else "<="
        rows.append([name, _number(value), f"{side} {_number(cutoff)}" if cutoff is not None else "-", verdict,
                     wrap(spec.meaning, 60)])
    figure.text(0.06, 0.92, f"Consistency {_number(assessment.consistency)}: defer below "
                f"{_number(assessment.thresholds.get('defer'))}, high confidence from "
                f"{_number(assessment.thresholds.get('high'))}.", fontsize=9, va="top")
    axes = figure.add_axes((0.06, 0.3, 0.88, 0.58))
    axes.set_axis_off()
    if rows:
        table = axes.table(cellText=rows, colLabels=["signal", "value", "cutoff", "", "what it measures"],
                           colWidths=[0.17, 0.1, 0.12, 0.1, 0.51], loc="upper left", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        for (row, _), cell in table.get_celld().items():
            if row > 0:
                cell.set_height(cell.get_height() * 2.8)
    figure.text(0.06, 0.26, wrap("A signal fails when it is worse than what 95% of grounded, correct answers reach on "
                                 "the calibration split; \"not used\": the calibration gave it no weight. The "
                                 "consistency score combines the signals (a logistic regression fitted on the demo "
                                 "world; docs/REVIEW.md).", 110), fontsize=8, va="top")
    return figure


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"
