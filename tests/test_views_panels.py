"""The text-vs-image influence, causal graph and logit lens panels render what the core computes, and
``lvlm-studio view`` writes the same numbers to a file."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

from lvlm_studio import cli

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "samples" / "shapes.png"
FAST_CAUSAL = {"random_draws": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False)


@pytest.fixture
def answered(qtbot, make_window, registry):
    """A window that answered about the sample image, its second token selected."""
    pytest.importorskip("pyqtgraph")
    from gui_helpers import ask

    window = make_window(registry)
    window.prompt_edit.setPlainText("describe the image.")
    ask(qtbot, window)
    window.state.select(1)
    return window


def wait_for(qtbot, window, condition):
    from gui_helpers import JOB_TIMEOUT_MS

    qtbot.waitUntil(lambda: condition() and not window.runner.busy, timeout=JOB_TIMEOUT_MS * 2)


def test_influence_panel_draws_the_shares_and_a_click_selects(qtbot, answered):
    from lvlm_studio.core.metrics.modality import influence_shares

    window = answered
    panel = window.toggle_panel("influence", True).widget()
    wait_for(qtbot, window, lambda: "relevancy" in window.state.explanations
             and not window.state.missing_tokens("relevancy") and not window.runner.busy)
    panel.redraw()
    trace, model = window.state.trace, window.state.model
    expected = influence_shares(trace, window.state.explanations["relevancy"], model.processor.tokenizer)
    heights = panel.image_bars.opts["height"]
    np.testing.assert_allclose(heights, 100 * np.nan_to_num(expected.image))  # drawn in percent
    np.testing.assert_allclose(heights + panel.text_bars.opts["height"], 100.0, atol=1e-4)
    np.testing.assert_allclose(panel.word_bars.opts["height"], 100 * np.nan_to_num(expected.word_shares[1]))
    assert "image" in panel.caption.text() and "%" in panel.caption.text()
    panel.words_box.setChecked(True)
    assert sum(len(t) for t in panel.shares.tokens) == len(trace.answer_ids)
    window.state.select(0)
    assert panel.selected_row() == next(r for r, t in enumerate(panel.shares.tokens) if 0 in t)


def test_causal_graph_panel_shows_the_subset_and_the_validation(qtbot, answered):
    from lvlm_studio.core.metrics.causal_graph import causal_graph

    window = answered
    window.analysis.set_params("causal", FAST_CAUSAL)
    assert len(window.state.trace.answer_ids) > 1
    panel = window.toggle_panel("causal_graph", True).widget()
    wait_for(qtbot, window, lambda: "causal" in window.state.explanations)
    panel.redraw()
    explanation = window.state.explanations["causal"]
    expected = causal_graph(window.state.trace, explanation, 1)
    assert panel.graph is not None and panel.graph.to_dict() == expected.to_dict()
    assert len(panel.labels) == len(expected.nodes)
    scatter = [i for i in panel.graph_plot.items if type(i).__name__ == "ScatterPlotItem"]
    assert len(scatter) == 1 and len(scatter[0].data) == len(expected.nodes)
    assert "edges" in panel.caption.text()
    window.state.select(0)
    assert panel.graph.token == 0


def test_lens_panel_reads_the_answer_and_a_patch(qtbot, answered):
    from lvlm_studio.core.tracing.vision_entry import lens_at

    window = answered
    panel = window.toggle_panel("lens", True).widget()
    wait_for(qtbot, window, lambda: panel.key() in panel.cache)
    trace, model = window.state.trace, window.state.model
    expected = lens_at(model, trace, 1, k=5)
    _, y = panel.curve.getData()
    np.testing.assert_allclose(y, expected.token_prob)
    layers = len(expected.token_prob)
    assert panel.table.rowCount() == layers and panel.table.columnCount() == 6
    top = panel.table.item(layers - 1, 1)
    assert top.text().startswith(trace.answer_tokens[1].strip()[:12]) and top.font().bold()
    panel.set_patch(3)
    wait_for(qtbot, window, lambda: panel.key() in panel.cache)
    np.testing.assert_allclose(panel.curve.getData()[1], lens_at(model, trace, 1, k=5, patch=3).token_prob)
    assert "image token 3" in panel.caption.text()


@pytest.mark.parametrize("view, extra", [("influence", ["--words"]), ("lens", ["--patch", "2", "--k", "3"]),
                                         ("causal-graph", ["--param", "random_draws=2"])])
def test_the_cli_writes_each_view(capsys, tmp_path, view, extra):
    out = tmp_path / f"{view}.json"
    code = cli.main(["view", view, "--image", str(SAMPLE), "--prompt", "describe the image.", "--device", "cpu",
                     "--max-new-tokens", "4", "--tokens", "0,1", "--out", str(out), *extra])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["view"] == view and record["answer_tokens"]
    if view == "influence":
        for row in record["influence"]["rows"]:
            if row["image_share"] is not None:
                assert row["image_share"] + sum(v or 0 for v in row["word_shares"]) == pytest.approx(1, abs=1e-6)
    elif view == "lens":
        assert [entry["token"] for entry in record["lens"]] == [0, 1]
        assert all(len(layer["top"]) == 3 for layer in record["lens"][0]["layers"])
    else:
        assert [g["token"] for g in record["graphs"]] == [0, 1]
        assert record["method"]["params"]["random_draws"] == 2


def test_the_cli_refuses_bad_view_options_before_loading(capsys, tmp_path):
    base = ["view", "lens", "--image", str(SAMPLE), "--prompt", "x"]
    assert cli.main([*base, "--out", str(tmp_path / "lens.txt")]) == cli.EXIT_INPUT
    assert "JSON" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "l.json"), "--k", "0"]) == cli.EXIT_INPUT
    assert cli.main([*base, "--out", str(tmp_path / "l.json"), "--param", "a=1"]) == cli.EXIT_INPUT
    assert not any(tmp_path.iterdir())
