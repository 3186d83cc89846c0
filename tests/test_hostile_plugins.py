"""Hostile plugins: installed for real (a distribution on sys.path with an entry point), each broken in
one way a real plugin gets wrong. A broken plugin is listed as failed by ``lvlm-studio plugins`` (which
still exits 0), a run that asks for its method is refused in one line naming the plugin and its
distribution, and everything else keeps working."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
from hostile_helpers import SAMPLE, Outcome, assert_refused, run_cli, run_cli_process

from lvlm_studio.core.plugin.contracts import PanelSpec
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.core.plugin.registry import DISABLE_ENV, ENTRY_POINT_GROUP, create_registry

DIST = "hostile_plugin"  # the distribution every test installs
PLUGIN = "hostile"  # its entry point's name
METHOD = "hostile-method"  # the explanation method it means to provide
MODULE = "hostile_plugin_module"  # the module the entry point names

HEADER = f"""
import sys

import numpy as np

from lvlm_studio.core.plugin.contracts import Explainer, Metric, MetricResult
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.hookspecs import hookimpl


class Method(Explainer):
    id = {METHOD!r}
    title = "Hostile method"

    def maps(self, trace, targets):
        return {{t: [np.ones(region.grid) for region in trace.regions] for t in targets}}

    def explain(self, trace, model, targets, params):
        return Explanation(self.id, self.maps(trace, targets), params)
"""

#: Plugins that cannot provide their method at all: each must be reported as failed.
BROKEN = {
    "sys.exit at import": """
        sys.exit(3)

        @hookimpl
        def lvlm_studio_explainers():
            return [Method()]
        """,
    "sys.exit in a hook": """
        @hookimpl
        def lvlm_studio_explainers():
            sys.exit(3)
        """,
    "one object, not a list": """
        @hookimpl
        def lvlm_studio_explainers():
            return Method()
        """,
    "hook raises": """
        @hookimpl
        def lvlm_studio_explainers():
            raise RuntimeError("the plugin's hook broke")
        """,
    "hook returns None": """
        @hookimpl
        def lvlm_studio_explainers():
            return None
        """,
    "a dict, not an Explainer": f"""
        @hookimpl
        def lvlm_studio_explainers():
            return [{{"id": {METHOD!r}}}]
        """,
    "explainer without id": """
        class NoId(Method):
            id = ""

        @hookimpl
        def lvlm_studio_explainers():
            return [NoId(), Method()]
        """,
    "import error": """
        import a_library_that_is_not_installed

        @hookimpl
        def lvlm_studio_explainers():
            return [Method()]
        """,
    "syntax error": """
        @hookimpl
        def lvlm_studio_explainers(:
            return [Method()]
        """,
}

#: What ``lvlm-studio plugins`` must say about each (the reason, in the plugin's status).
REASONS = {
    "sys.exit at import": "sys.exit(3)",
    "sys.exit in a hook": "sys.exit(3)",
    "one object, not a list": "not a list",
    "hook raises": "the plugin's hook broke",
    "hook returns None": "returned None",
    "a dict, not an Explainer": "dict",
    "explainer without id": "no id",
    "import error": "a_library_that_is_not_installed",
    "syntax error": "SyntaxError",
}

#: Plugins that load fine but whose explainer breaks the Explanation contract.
WRONG_EXPLANATIONS = {
    "NaN maps of the wrong grid": ("""
        def maps(self, trace, targets):
            return {t: [np.full((3, 5), np.nan) for region in trace.regions] for t in targets}
        """, "3x5"),
    "NaN maps": ("""
        def maps(self, trace, targets):
            return {t: [np.full(region.grid, np.nan) for region in trace.regions] for t in targets}
        """, "NaN"),
    "a token missing": ("""
        def maps(self, trace, targets):
            return {t: [np.ones(region.grid) for region in trace.regions] for t in targets[1:]}
        """, "no map for answer token 0"),
    "two maps for one region": ("""
        def maps(self, trace, targets):
            return {t: [np.ones(region.grid) for region in trace.regions] * 2 for t in targets}
        """, "one per region"),
    "a dict returned": ("""
        def explain(self, trace, model, targets, params):
            return self.maps(trace, targets)
        """, "dict"),
}


def plugin_source(body: str) -> str:
    return HEADER + textwrap.dedent(body)


def explainer_plugin(method_body: str) -> str:
    """A plugin whose explainer overrides one function of ``Method`` with ``method_body``."""
    body = textwrap.indent(textwrap.dedent(method_body), "    ")
    return HEADER + f"""
class Bad(Method):
{body}

@hookimpl
def lvlm_studio_explainers():
    return [Bad()]
"""


def install(root: Path, module: str, source: str) -> None:
    """A distribution ``hostile_plugin`` whose entry point ``hostile`` is ``module`` (a file in ``root``)."""
    info = root / f"{DIST}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{PLUGIN} = {module}\n")
    (root / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Install a hostile plugin into a folder on sys.path (as pip would); forget its module afterwards."""
    root = tmp_path / "site"
    root.mkdir()

    def install_here(source: str) -> None:
        install(root, MODULE, source)
        importlib.invalidate_caches()  # also drops importlib.metadata's cached folder listings

    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.syspath_prepend(str(root))
    yield install_here
    sys.modules.pop(MODULE, None)


def refused(outcome: Outcome, *mentions: str) -> str:
    """``assert_refused`` with exit 2."""
    return assert_refused(outcome, 2, *mentions)


def explain_args(tmp_path: Path, method: str = METHOD, *extra: str) -> list[str]:
    return ["explain", "--method", method, "--image", SAMPLE, "--prompt", "describe the image.",
            "--out", tmp_path / "out", *extra]


def benchmark_args(tmp_path: Path, method: str = METHOD, metric: str = "pointing_game") -> list[str]:
    return ["benchmark", "--methods", method, "--metrics", metric, "--n", "1", "--examples", "0",
            "--out", tmp_path / "bench"]


# -- plugins that cannot provide their method ----------------------------------------------------


@pytest.mark.hostile("plugins")
@pytest.mark.parametrize("case", BROKEN)
def test_plugins_lists_a_broken_plugin_as_failed_with_its_reason(case, site, capsys):
    site(plugin_source(BROKEN[case]))
    outcome = run_cli(capsys, "plugins")
    assert outcome.code == 0, outcome.err
    status = re.search(rf"^  (\w+) +{PLUGIN}  \[entry point \({DIST} 0\.1\)\]\n +(.*)$", outcome.out, re.M)
    assert status and status[1] == "failed", outcome.out
    assert REASONS[case] in status[2], status[2]
    assert "tam" in outcome.out and "pointing_game" in outcome.out  # everything else is still there
    assert "Traceback" not in outcome.err


@pytest.mark.hostile("plugins")
@pytest.mark.parametrize("case", BROKEN)
def test_explain_with_a_broken_plugins_method_is_refused_naming_it(case, site, capsys, tmp_path):
    site(plugin_source(BROKEN[case]))
    assert_refused(run_cli(capsys, *explain_args(tmp_path)), 2, METHOD, PLUGIN, DIST)
    assert not (tmp_path / "out").exists()


@pytest.mark.hostile("plugins")
@pytest.mark.parametrize("case", BROKEN)
def test_benchmark_with_a_broken_plugins_method_is_refused_naming_it(case, site, capsys, tmp_path):
    site(plugin_source(BROKEN[case]))
    assert_refused(run_cli(capsys, *benchmark_args(tmp_path)), 2, METHOD, PLUGIN, DIST)


@pytest.mark.hostile("plugins")
def test_the_other_methods_still_explain_with_a_plugin_that_returned_one_object(site, capsys, tmp_path):
    site(plugin_source(BROKEN["one object, not a list"]))
    outcome = run_cli(capsys, *explain_args(tmp_path, "tam", "--tokens", "1"))
    assert outcome.code == 0, outcome.err
    assert (tmp_path / "out" / "maps.npz").exists()


SYS_EXIT_AT_IMPORT = plugin_source(BROKEN["sys.exit at import"])


def process_env(root: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))}


@pytest.mark.hostile("plugins")
def test_a_plugin_calling_sys_exit_at_import_is_listed_as_failed(tmp_path, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    install(tmp_path, MODULE, SYS_EXIT_AT_IMPORT)
    outcome = run_cli_process("plugins", env=process_env(tmp_path))
    assert outcome.code == 0, outcome.err
    assert f"failed   {PLUGIN}  [entry point ({DIST} 0.1)]" in outcome.out
    assert "sys.exit(3)" in outcome.out
    assert "tam" in outcome.out


@pytest.mark.hostile("plugins")
def test_explain_with_a_plugin_calling_sys_exit_at_import_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    install(tmp_path, MODULE, SYS_EXIT_AT_IMPORT)
    outcome = run_cli_process(*explain_args(tmp_path), env=process_env(tmp_path))
    assert_refused(outcome, 2, METHOD, PLUGIN, DIST, "sys.exit(3)")


# -- plugins whose explanations break the contract -----------------------------------------------


@pytest.mark.hostile("plugins")
@pytest.mark.parametrize("case", WRONG_EXPLANATIONS)
def test_explain_refuses_a_wrong_explanation_naming_the_plugin(case, site, capsys, tmp_path):
    body, problem = WRONG_EXPLANATIONS[case]
    site(explainer_plugin(body))
    line = refused(run_cli(capsys, *explain_args(tmp_path)), METHOD, DIST)
    assert problem.lower() in line.lower()
    assert not (tmp_path / "out").exists()


@pytest.mark.hostile("plugins")
def test_explain_names_the_plugin_whose_method_raises(site, capsys, tmp_path):
    """A plugin's own bug is the plugin's failure, named with its distribution, not "a bug" of ours.
    (The benchmark records it in the method's row and goes on: one broken method must not stop it.)"""
    site(explainer_plugin("""
        def explain(self, trace, model, targets, params):
            raise ValueError("shapes (3,4) and (5,6) not aligned")
        """))
    line = refused(run_cli(capsys, *explain_args(tmp_path)), METHOD, DIST, "ValueError: shapes (3,4)")
    assert "report it to its authors" in line and "this is a bug" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.hostile("plugins")
@pytest.mark.parametrize("case", WRONG_EXPLANATIONS)
def test_benchmark_refuses_a_wrong_explanation_naming_the_plugin(case, site, capsys, tmp_path):
    body, problem = WRONG_EXPLANATIONS[case]
    site(explainer_plugin(body))
    line = refused(run_cli(capsys, *benchmark_args(tmp_path)), METHOD, DIST)
    assert problem.lower() in line.lower()


@pytest.mark.hostile("plugins")
@pytest.mark.parametrize(("returned", "problem"), [
    ("{'auc': 0.5}", "returned a dict, not a MetricResult"),
    ("MetricResult({'auc': float('inf')})", "auc"),
])
def test_a_metric_breaking_its_contract_is_reported_naming_the_plugin(returned, problem, site, capsys, tmp_path):
    site(plugin_source(f"""
        class Hostile(Metric):
            id = "hostile-metric"

            def score(self, trace, explanation, model, masks, params):
                return {returned}

        @hookimpl
        def lvlm_studio_metrics():
            return [Hostile()]
        """))
    outcome = run_cli(capsys, *benchmark_args(tmp_path, "tam", "hostile-metric"))
    assert outcome.code == 0, outcome.err  # one metric's failure is a cell of the table, not the end of the run
    record = json.loads((tmp_path / "bench" / "results.jsonl").read_text().splitlines()[0])
    error = record["methods"]["tam"]["errors"]["hostile-metric"]
    assert "'hostile-metric'" in error and f"{DIST} 0.1" in error and problem in error


# -- the app -------------------------------------------------------------------------------------


class OnePanel:
    """A plugin whose panels hook returns one PanelSpec instead of a list: once, the app lost every panel."""

    @hookimpl
    def lvlm_studio_panels(self):
        return PanelSpec("lonely", "Lonely", "nowhere:factory")


@pytest.mark.hostile("plugins")
def test_the_app_keeps_its_panels_and_blames_the_plugin_of_a_wrong_explanation(site, make_window, dialogs, qtbot):
    pytest.importorskip("PySide6")
    from gui_helpers import ask, wait_idle

    site(explainer_plugin(WRONG_EXPLANATIONS["a dict returned"][0]))
    window = make_window(create_registry(extra=[(OnePanel(), "one_panel")]))
    assert {"overlay", "timeline", "heads", "compare", "metrics"} <= set(window.panel_specs)

    window.state.set_method(METHOD)
    ask(qtbot, window)
    window.state.select(0)
    qtbot.waitUntil(lambda: len(dialogs) > 0, timeout=60_000)
    wait_idle(qtbot, window)
    assert len(dialogs) == 1, dialogs
    text, hint, _ = dialogs[0]
    assert f"'{METHOD}' ({DIST} 0.1) returned a dict, not an Explanation" in text
    assert "Panel" not in text and "report it to its authors" in hint
    assert METHOD not in window.state.explanations
