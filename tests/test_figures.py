"""Publication figures and how signed maps are drawn (core/formats/figure.py, core/plugin/explanation.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.explanation import (
    DIVERGING_COLORMAP,
    Explanation,
    colormap_for,
    is_signed,
    map_levels,
    overlay,
    thresholded,
    value_label,
)


def _explanation(trace, signed: bool, scale_by_token: bool = True, provenance: dict | None = None) -> Explanation:
    """Maps whose strength grows with the token (token t's largest value is t + 1)."""
    rng = np.random.default_rng(1)
    maps = {}
    for t in range(len(trace.answer_tokens)):
        grids = []
        for region in trace.regions:
            values = rng.random(region.grid) * (t + 1 if scale_by_token else 1)
            if signed:
                values = values - 0.4 * (t + 1)
            grids.append(values)
        maps[t] = grids
    return Explanation("grad_x_input" if signed else "raw_attention", maps, {}, provenance or {})


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", data[16:24])


def test_signed_maps_are_found_by_declaration_or_data(demo_trace):
    assert is_signed(_explanation(demo_trace, True))
    assert not is_signed(_explanation(demo_trace, False))
    assert not is_signed(_explanation(demo_trace, True, provenance={"signed": False}))  # the method's word wins
    assert is_signed(_explanation(demo_trace, False, provenance={"signed": True}))
    assert colormap_for(_explanation(demo_trace, True), "inferno") == DIVERGING_COLORMAP
    assert colormap_for(_explanation(demo_trace, False), "viridis") == "viridis"
    assert "signed" in value_label(_explanation(demo_trace, True))
    assert value_label(_explanation(demo_trace, False, provenance={"values": "attention weight"})) == "attention weight"


def test_a_signed_map_is_centred_so_zero_gets_the_colormaps_centre(demo_trace):
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    explanation = _explanation(demo_trace, True)
    for shared in (False, True):
        low, high = map_levels(explanation, np.array([[-0.2, 3.0]]), shared)
        assert low == -high and high > 0
        assert Normalize(low, high)(0.0) == pytest.approx(0.5)
        cmap = colormaps[colormap_for(explanation, "inferno")]
        np.testing.assert_allclose(cmap(Normalize(low, high)(0.0)), cmap(0.5))
    # The overlay leaves the picture as it is where a signed map is 0 (no dark or white veil).
    from PIL import Image

    image = Image.new("RGB", (4, 1), (120, 60, 30))
    pixels = np.array([[-1.0, 0.0, 1.0, np.nan]])
    drawn = np.asarray(overlay(image, pixels, DIVERGING_COLORMAP, 0.6, (-1.0, 1.0), signed=True))
    assert tuple(drawn[0, 1]) == (120, 60, 30) and tuple(drawn[0, 3]) == (120, 60, 30)
    assert drawn[0, 0, 2] > drawn[0, 0, 0] and drawn[0, 2, 0] > 3 * drawn[0, 2, 2]  # blue below 0, red above


def test_a_shared_scale_spans_every_token_and_an_own_scale_one(demo_trace):
    explanation = _explanation(demo_trace, False)
    last = len(demo_trace.answer_tokens) - 1
    own = map_levels(explanation, np.asarray(explanation.maps[0][0]))
    shared = map_levels(explanation, np.asarray(explanation.maps[0][0]), shared=True)
    assert own[1] <= 1.0 < shared[1]
    assert shared[1] == pytest.approx(max(float(m.max()) for m in explanation.maps[last]))
    fixed = Explanation("tam", explanation.maps, {}, {"levels": [0, 1]})
    assert map_levels(fixed, None, shared=True) == (0.0, 1.0)  # the explainer's fixed scale wins


def test_a_signed_threshold_keeps_strong_negative_values():
    pixels = np.array([-0.9, -0.1, 0.1, 0.9])
    kept = thresholded(pixels, (-1.0, 1.0), 0.5, signed=True)
    np.testing.assert_array_equal(np.isfinite(kept), [True, False, False, True])
    kept = thresholded(pixels, (-1.0, 1.0), 0.5)
    np.testing.assert_array_equal(np.isfinite(kept), [False, False, True, True])


@pytest.mark.parametrize("dpi", [100, 200])
def test_figures_are_written_in_each_format_at_the_dpi(demo_trace, tmp_path, dpi):
    from lvlm_studio.core.formats.figure import WIDTH_INCHES, explanation_figure, save_figure

    explanation = _explanation(demo_trace, True)
    figure = explanation_figure(demo_trace, explanation, 1, "inferno", threshold=0.1, shared=True)
    png = save_figure(figure, tmp_path / "map.png", dpi)
    width, height = _png_size(png)
    assert width == round(WIDTH_INCHES * dpi)
    assert height > 0.8 * width  # the square demo image with its title
    svg = save_figure(figure, tmp_path / "map.svg", dpi).read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    pdf = save_figure(figure, tmp_path / "map.pdf", dpi).read_bytes()
    assert pdf.startswith(b"%PDF")
    # The title names the token and the method; the colour bar says what the values are.
    texts = _texts(figure)
    assert any("grad_x_input" in t and "token 2" in t for t in texts)
    assert "grad_x_input value (signed)" in texts
    assert len(figure.axes) == 2  # the map and its colour bar


def test_bad_figure_requests_say_what_to_do(demo_trace, tmp_path):
    from lvlm_studio.core.formats.figure import explanation_figure, save_figure

    explanation = _explanation(demo_trace, False)
    figure = explanation_figure(demo_trace, explanation, 0)
    with pytest.raises(InputError, match=r"\.png"):
        save_figure(figure, tmp_path / "map.jpg")
    with pytest.raises(InputError, match="dpi"):
        save_figure(figure, tmp_path / "map.png", dpi=5)
    del explanation.maps[0]
    with pytest.raises(InputError, match="no map"):
        explanation_figure(demo_trace, explanation, 0)


# -- the PDF report -------------------------------------------------------------------------------
def _report_figures(monkeypatch, session, tokens=None) -> list:
    """The pages ``write_report`` draws, as figures (the PDF's text is in embedded fonts)."""
    from lvlm_studio.core.formats import report

    pages: list = []
    monkeypatch.setattr(report, "write_pages", lambda path, figures, title: pages.extend(figures))
    report.write_report(session, "unused.pdf", tokens)
    return pages


def _texts(figure) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


def _report_session(trace):
    from lvlm_studio.core.formats.session import Session

    last = len(trace.answer_tokens) - 1
    return Session(
        prompt=trace.prompt, image=trace.image, image_name="/home/someone/scans/case 7.png", trace=trace,
        model_source="/home/someone/models/llava-1.5-7b",
        explanations={"raw_attention": _explanation(trace, False), "grad_x_input": _explanation(trace, True)},
        view={"selected": last, "colormap": "viridis", "threshold": 0.3, "opacity": 0.5},
        record={"model": {"source": "/home/someone/models/llava-1.5-7b"},
                "command": ["lvlm-studio", "--image", "/home/someone/scans/case 7.png"],
                "plugins": {"x": "C:\\Users\\someone\\plugin.py"}, "docs": "https://example.org/a/b"},
    )


def test_the_report_lists_tokens_in_answer_order_and_shows_no_local_path(demo_trace, monkeypatch):
    from lvlm_studio.core.formats.report import default_tokens

    session = _report_session(demo_trace)
    last = len(demo_trace.answer_tokens) - 1
    assert default_tokens(session) == sorted(default_tokens(session)) and last in default_tokens(session)
    pages = _report_figures(monkeypatch, session, tokens=[last, 0])
    texts = [text for page in pages for text in _texts(page)]
    assert not [t for t in texts if "/home/someone" in t or "Users" in t]
    joined = "\n".join(texts)
    assert "case 7.png" in joined and "llava-1.5-7b" in joined and "https://example.org/a/b" in joined
    overlay_page = pages[1]
    labels = [axes.get_ylabel() for axes in overlay_page.axes if axes.get_ylabel().startswith("#")]
    assert labels[0].startswith("#0 ") and labels[-1].startswith(f"#{last} ")  # the answer's order


def test_the_report_draws_maps_as_the_session_showed_them_with_colour_bars(demo_trace, monkeypatch):
    from lvlm_studio.core.plugin.explanation import DIVERGING_COLORMAP

    session = _report_session(demo_trace)
    overlay_page = _report_figures(monkeypatch, session, tokens=[0, 1])[1]
    maps = [image for axes in overlay_page.axes for image in axes.get_images()[1:]]  # over each picture
    assert [m.get_cmap().name for m in maps] == ["viridis", DIVERGING_COLORMAP] * 2
    signed = maps[1]
    assert signed.norm.vmin == -signed.norm.vmax  # 0 at the diverging colormap's centre
    shown = np.ma.getdata(maps[0].get_array())
    assert np.isnan(shown).any()  # the session's threshold hid the weak values
    bars = [axes for axes in overlay_page.axes if axes.get_ylabel() in ("raw_attention value",
                                                                          "grad_x_input value (signed)")]
    assert len(bars) == 4  # a labelled colour bar beside every map
    assert any("Colormap viridis" in t and "threshold 30%" in t for t in _texts(overlay_page))


def test_explain_writes_figures_at_the_dpi_and_refuses_a_bad_format_before_loading(capsys, tmp_path):
    from pathlib import Path

    from lvlm_studio import cli
    from lvlm_studio.core.formats.figure import WIDTH_INCHES

    sample = str(Path(__file__).resolve().parents[1] / "resources" / "samples" / "shapes.png")
    out = tmp_path / "run"
    code = cli.main(["explain", "--method", "raw_attention", "--image", sample, "--prompt", "what color is the square?",
                     "--tokens", "0", "--out", str(out), "--figure", "png,svg", "--dpi", "100", "--shared-scale"])
    assert code == 0, capsys.readouterr().err
    figures = sorted(p.name for p in out.glob("*_figure.*"))
    assert len(figures) == 2 and figures[0].endswith(".png") and figures[1].endswith(".svg")
    assert _png_size(out / figures[0])[0] == round(WIDTH_INCHES * 100)
    assert "<svg" in (out / figures[1]).read_text()
    assert cli.main(["explain", "--method", "raw_attention", "--image", sample, "--prompt", "x",
                     "--out", str(tmp_path / "other"), "--figure", "jpg"]) == 2
    assert ".svg" in capsys.readouterr().err and not (tmp_path / "other").exists()


@pytest.mark.parametrize("size", [(96, 96), (320, 96), (96, 320)])
def test_a_long_title_stays_inside_the_figure(demo_trace, size):
    """The title is the figure's, wrapped to its width: on the image axes a long method name ran
    off the left edge of square and wide images alike."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from lvlm_studio.core.formats.figure import explanation_figure

    explanation = _explanation(demo_trace, False)
    method = "Relevancy (gradient-weighted attention, Chefer et al. 2021)"
    figure = explanation_figure(demo_trace, explanation, 1, image=Image.new("RGB", size, "white"),
                                method_title=method, shared=True)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    title = figure.texts[0]
    box, frame = title.get_window_extent(renderer), figure.bbox
    assert "Relevancy" in title.get_text() and "\n" in title.get_text()
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    for axes in figure.axes:  # and it covers neither the map nor its colour bar
        assert not box.overlaps(axes.get_window_extent(renderer))
