"""A PDF report of one analysis: the answer, the chosen tokens' overlays, the metrics, the run record.

Built with matplotlib's ``Figure`` and ``PdfPages`` and no pyplot, so it needs no display and no
Qt: the app's File \u203a Export report and ``lvlm-studio report SESSION`` write the same file.
Maps are drawn as the session showed them (its colormap, opacity, threshold and colour scale;
signed maps diverging about 0), each with a labelled colour bar. A report is meant to be shared:
it names files and folders by their base name only, never by a path on this computer.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats.figure import add_color_bar, draw_map
from lvlm_studio.core.io.files import atomic_path
from lvlm_studio.core.plugin.explanation import (
    colormap_for,
    is_signed,
    map_levels,
    thresholded,
    to_pixels,
    value_label,
)
from lvlm_studio.core.tracing.token_stats import percent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lvlm_studio.core.formats.session import Session

PAGE = (8.27, 11.69)  # A4 portrait, inches
MAX_TOKENS = 6
MAX_METHODS = 4


def default_tokens(session: Session) -> list[int]:
    """The tokens worth a page, in the answer's order: the selected one, the visually relevant ones,
    then the rest, at most ``MAX_TOKENS``."""
    trace = session.trace
    if trace is None:
        return []
    chosen: list[int] = []
    selected = session.view.get("selected")
    if isinstance(selected, int) and 0 <= selected < len(trace.answer_tokens):
        chosen.append(selected)
    if trace.visual_relevance is not None:
        chosen += trace.visual_relevance.relevant_indices
    chosen += range(len(trace.answer_tokens))
    return sorted(list(dict.fromkeys(chosen))[:MAX_TOKENS])


def write_report(session: Session, path: str | Path, tokens: list[int] | None = None) -> Path:
    """Write the report of ``session`` to ``path`` (a PDF) and return the path."""
    if session.trace is None:
        raise InputError("this session has no answer to report on.", "Ask a question first, then export the report.")
    tokens = default_tokens(session) if tokens is None else sorted(dict.fromkeys(tokens))
    count = len(session.trace.answer_tokens)
    bad = [t for t in tokens if not 0 <= t < count]
    if bad:
        raise InputError(f"answer token {bad[0]} does not exist.", f"This answer has tokens 0 to {count - 1}.")

    def pages() -> Iterator[Figure]:
        yield _summary_page(session)
        if session.explanations and tokens:
            yield _overlay_page(session, tokens)
        if session.metrics:
            yield _metrics_page(session)
        yield _record_page(session)

    return write_pages(path, pages(), f"LVLM Studio report: {session.prompt}")


def write_pages(path: str | Path, pages: Iterable[Figure], title: str) -> Path:
    """Write figures as the pages of one PDF (each drawn only when its turn comes), atomically: a
    failure or a full disk part-way leaves the previous file as it was. The case report of the
    clinical review (``lvlm_studio.review.report``) is written with it too."""
    from matplotlib.backends.backend_pdf import PdfPages

    path = Path(path)
    with atomic_path(path) as temporary, PdfPages(temporary) as pdf:
        for figure in pages:
            pdf.savefig(figure)
        info = pdf.infodict()
        info["Title"] = title
        info["Creator"] = "LVLM Studio"
    return path


def page(title: str) -> Figure:
    """An empty A4 page with its title at the top left, as every page of LVLM Studio's reports has."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=PAGE)
    figure.suptitle(title, fontsize=14, x=0.08, ha="left", y=0.97)
    return figure


def _summary_page(session: Session) -> Figure:
    trace = session.trace
    assert trace is not None
    figure = page("LVLM Studio: analysis report")
    image_axes = figure.add_axes((0.08, 0.62, 0.38, 0.3))
    image_axes.imshow(np.asarray(trace.image))
    image_axes.set_axis_off()
    image_name = base_name(session.image_name) or "unnamed"
    source = base_name(session.model_source) or "the demo model"
    text = (f"Image: {image_name} ({trace.image.size[0]} x {trace.image.size[1]} px)\n"
            f"Model: {trace.model_info.get('family', '?')} from {source}\n\n"
            f"Prompt:\n{wrap(session.prompt, 40)}\n\nAnswer:\n{wrap(trace.answer_text, 40)}")
    figure.text(0.5, 0.92, text, va="top", fontsize=9, family="DejaVu Sans")
    relevance = trace.visual_relevance
    rows = []
    for i, token in enumerate(trace.answer_tokens):
        others = [(a, p) for a, p in zip(trace.top_tokens[i], trace.top_logprobs[i]) if a != token][:3]
        alternatives = ", ".join(f"{a.strip() or repr(a)} {percent(np.exp(p))}" for a, p in others)
        llr = f"{relevance.llr[i]:+.2f}" if relevance is not None else "-"
        rows.append([str(i), token.strip() or repr(token), percent(trace.probabilities[i]), llr, alternatives])
    table_axes = figure.add_axes((0.08, 0.05, 0.84, 0.52))
    table_axes.set_axis_off()
    table_axes.set_title("Answer tokens (LLR: log p with the image - log p with it blurred, nats)",
                         fontsize=9, loc="left")
    table = table_axes.table(cellText=rows[:40], colLabels=["#", "token", "prob", "LLR", "next best"],
                             colWidths=[0.06, 0.16, 0.13, 0.09, 0.56], loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    if any(m.directions for m in session.metrics):
        table_axes.text(0, -0.05, "\u2191 higher is better, \u2193 lower is better (as each metric declares it)",
                        transform=table_axes.transAxes, fontsize=7, va="top")
    return figure


def _overlay_page(session: Session, tokens: list[int]) -> Figure:
    trace = session.trace
    assert trace is not None
    methods = list(session.explanations)[:MAX_METHODS]
    view = session.view
    chosen = view.get("colormap") if isinstance(view.get("colormap"), str) else "inferno"
    from matplotlib import colormaps

    chosen = chosen if chosen in colormaps else "inferno"
    opacity = _fraction(view.get("opacity"), 0.6)
    threshold = _fraction(view.get("threshold"), 0.0)
    shared = view.get("shared_scale") is True
    scale = "one colour scale per method for all tokens" if shared else "each map on its own colour scale"
    figure = page("Where each token came from")
    figure.text(0.08, 0.925, f"Colormap {chosen}, opacity {opacity:.0%}, threshold {threshold:.0%}, {scale}; "
                "signed maps diverge about 0.", fontsize=8)
    grid = figure.add_gridspec(len(tokens), len(methods), left=0.08, right=0.95, top=0.9, bottom=0.04,
                               hspace=0.35, wspace=0.35)
    for row, token in enumerate(tokens):
        for col, method in enumerate(methods):
            axes = figure.add_subplot(grid[row, col])
            axes.set_xticks([])
            axes.set_yticks([])
            explanation = session.explanations[method]
            if token in explanation.maps:
                pixels = to_pixels(explanation.maps[token], trace.regions, trace.image.size)
                signed = is_signed(explanation)
                levels = map_levels(explanation, pixels, shared)
                artist = draw_map(axes, trace.image, thresholded(pixels, levels, threshold, signed), levels,
                                  colormap_for(explanation, chosen), opacity, signed)
                add_color_bar(figure, artist, axes, value_label(explanation), fontsize=6)
            else:
                axes.text(0.5, 0.5, "not computed", ha="center", va="center", fontsize=8, transform=axes.transAxes)
            if row == 0:
                axes.set_title(method, fontsize=9)
            if col == 0:
                axes.set_ylabel(f"#{token} \u201c{trace.answer_tokens[token].strip()}\u201d", fontsize=9)
    return figure


def _metrics_page(session: Session) -> Figure:
    trace = session.trace
    assert trace is not None
    figure = page("Metrics")
    arrows = {"higher": " \u2191", "lower": " \u2193"}  # which way is better, as the metric declared it
    rows = [[m.metric, m.method, f"#{m.token} {trace.answer_tokens[m.token].strip()}",
             ", ".join(f"{k} = {v:.3g}{arrows.get(m.directions.get(k), '')}" for k, v in m.result.values.items())]
            for m in session.metrics]
    table_axes = figure.add_axes((0.08, 0.6, 0.84, 0.3))
    table_axes.set_axis_off()
    table = table_axes.table(cellText=rows[:20], colLabels=["metric", "method", "token", "values"],
                             colWidths=[0.18, 0.18, 0.16, 0.48], loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    if any(m.directions for m in session.metrics):
        table_axes.text(0, -0.05, "\u2191 higher is better, \u2193 lower is better (as each metric declares it)",
                        transform=table_axes.transAxes, fontsize=7, va="top")
    curves = [(m, name, xy) for m in session.metrics for name, xy in m.result.curves.items()][:4]
    for i, (record, name, (x, y)) in enumerate(curves):
        axes = figure.add_axes((0.1 + (i % 2) * 0.45, 0.32 - (i // 2) * 0.27, 0.36, 0.2))
        axes.plot(np.asarray(x), np.asarray(y), color="#c0392b" if "del" in name else "#2471a3")
        axes.set_title(f"{name}: {record.method}, #{record.token}", fontsize=8)
        axes.tick_params(labelsize=7)
    return figure


def _record_page(session: Session) -> Figure:
    figure = page("Run record")
    text = json.dumps(without_paths(session.record), indent=1, default=str)
    lines = [wrapped for line in text.splitlines() for wrapped in textwrap.wrap(line, 95) or [""]]
    figure.text(0.08, 0.92, "\n".join(lines[:90]), va="top", fontsize=7, family="monospace")
    return figure


def wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters ("-" when empty)."""
    return "\n".join(textwrap.wrap(text, width)) or "-"


def _fraction(value: object, default: float) -> float:
    """``value`` if it is a number from 0 to 1 (as a session's view keeps opacity and threshold), else ``default``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return default


# An absolute path inside a text: /a/b, ~/a or C:\a (a URL's // is not one).
_PATH = re.compile(r"(?<![\w.:/\\~])(?:~?/|[A-Za-z]:[\\/])[^\s\"',;()\[\]]*")


def base_name(text: str | None) -> str:
    """The last part of a path (a file or folder name), "" for None: what a shared report may show."""
    if not text:
        return ""
    parts = [p for p in re.split(r"[\\/]", str(text)) if p]
    return parts[-1] if parts else str(text)


def without_paths(value: object) -> object:
    """``value`` (JSON-like) with every absolute path in its texts cut to its base name, so that a
    report shows no folder of the computer it was made on."""
    if isinstance(value, str):
        return _PATH.sub(lambda match: base_name(match.group()) or match.group(), value)
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_paths(item) for item in value]
    return value
