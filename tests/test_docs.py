"""The documentation: the site builds with no warning, links stay inside the repository, and the
plugin guide's examples run as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from lvlm_studio.testing import check_explanation, run_explainer

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                           cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stdout + built.stderr
    pages = {p.relative_to(site).parent.as_posix() for p in site.rglob("index.html")}
    assert {"getting-started", "app", "cli", "METHODS", "plugins", "api", "faq", "AUDIT", "DEMO_WORLD", "REVIEW",
            "REVIEW_APP"} <= pages
    api = (site / "api" / "index.html").read_text()
    assert "teacher_forced_inputs" in api and "resolve_params" in api  # from the docstrings
    outside = set()
    for page in site.rglob("*.html"):  # nothing is loaded from, or linked to, outside the site
        outside |= set(re.findall(r'(?:href|src)="((?:https?:)?//[^"]*)"', page.read_text()))
    assert not outside


def test_markdown_links_stay_in_the_repository():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            assert "://" not in target, f"{page.name} links outside the repository: {target}"
            path = target.split("#")[0]
            if path:
                assert (page.parent / path).resolve().is_relative_to(REPO), f"{page.name}: {target}"
                assert (page.parent / path).exists(), f"{page.name} links to a missing file: {target}"


def guide_module(name: str) -> types.ModuleType:
    """The guide's code block that defines class ``name``, run as a module."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    (source,) = [b for b in blocks if re.search(rf"^class {name}\(", b, flags=re.M)]
    module = types.ModuleType(f"guide_{name.lower()}")
    exec(compile(source, f"{GUIDE}:{name}", "exec"), module.__dict__)  # noqa: S102 - our own documentation
    return module


def test_the_guides_explainer_runs_on_the_demo_model(demo_model, demo_trace):
    explainer = guide_module("AttentionTimesGradient").AttentionTimesGradient()
    explanation = run_explainer(explainer, demo_trace, demo_model)
    check_explanation(explanation, demo_trace)
    assert all(np.ptp(np.concatenate([m.ravel() for m in maps])) > 0 for maps in explanation.maps.values())


def test_the_guides_metric_and_analyzer_run(demo_model, demo_scene, demo_trace):
    from lvlm_studio.demo.pointing import scene_masks

    explanation = run_explainer(guide_module("AttentionTimesGradient").AttentionTimesGradient(), demo_trace,
                                demo_model)
    metric = guide_module("MassInside").MassInside()
    result = metric.score(demo_trace, explanation, demo_model, scene_masks(demo_scene, demo_trace.answer_tokens),
                          metric.resolve_params({}))
    assert 0.0 <= result.values["mass_inside"] <= 1.0
    analyzer = guide_module("TokenNorms").TokenNorms()
    found = analyzer.analyze(demo_trace, demo_model, analyzer.resolve_params({}))
    assert [g.shape for g in found["grids"]] == [tuple(r.grid) for r in demo_trace.regions]


def test_the_guides_adapter_finds_the_llava_layout(tmp_path):
    """On a tiny LLaVA (LLaVA-1.5's layout) the guide's adapter finds the built-in adapter's regions (for a
    square image, which LLaVA's centre crop leaves whole)."""
    from PIL import Image

    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.testing.tiny_models import build_tiny_model

    loaded = load_model(build_tiny_model("llava", tmp_path / "llava"), LoadOptions(device="cpu"))
    trace = generate_trace(loaded, Image.new("RGB", (40, 40), "red"), "describe the image.", max_new_tokens=1)
    adapter = guide_module("BlockAdapter").BlockAdapter(loaded.model, loaded.processor)
    inputs = {"input_ids": trace.input_ids[None]}
    (mine,), (theirs,) = adapter.image_regions(inputs, [(40, 40)]), trace.regions
    assert mine.grid == tuple(theirs.grid) and np.array_equal(mine.positions, theirs.positions)
    assert mine.box == tuple(theirs.box)


def test_the_guides_panel_draws_the_selected_map(qtbot, demo_trace):
    pytest.importorskip("PySide6")
    panel_class = guide_module("StrongestCell").StrongestCell
    height, width = demo_trace.image.size[1], demo_trace.image.size[0]
    pixels = np.zeros((height, width))
    pixels[5, 7] = 1.0

    class StandIn:  # the part of PanelContext the panel uses
        shown_image, selected, method, view = demo_trace.image, None, "raw_attention", {"opacity": 0.5}
        asked: list[str] = []

        def subscribe(self, listener, widget=None):
            self.listener = listener

        def pixels(self, method, token):
            return pixels, (0.0, 1.0)

        def request_explanation(self, method):
            self.asked.append(method)

    context = StandIn()
    panel = panel_class(context)
    qtbot.addWidget(panel)
    assert "Select a token" in panel.caption.text()
    context.selected = 0
    context.listener("selected")
    assert panel.caption.text() == "token 1: strongest at x=7, y=5"
