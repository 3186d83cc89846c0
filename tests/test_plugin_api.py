"""The public plugin API and the checks at registration, with fake plugins registered in-process:
``lvlm_studio.api`` (Qt-free, ``__all__`` importable), the API version range a plugin declares,
unknown hook names, plugins that contribute nothing, ids given twice (both providers named, in
``lvlm-studio plugins`` and in Help › Plugins), and the distribution behind each method in run.json."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_plugins import write_distribution
from test_qt_free import import_without_qt

import lvlm_studio.core.plugin.registry as registry_module
from lvlm_studio import api, cli
from lvlm_studio.api import API_VERSION, Explainer, Explanation, hookimpl
from lvlm_studio.cli.plugins import cmd_plugins
from lvlm_studio.core.plugin.registry import DISABLE_ENV, create_registry

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "samples" / "shapes.png"


class Flat(Explainer):
    id = "test-flat"
    title = "Flat map"

    def explain(self, trace, model, targets, params):
        return Explanation(self.id, {t: [np.ones(r.grid) for r in trace.regions] for t in targets}, params, {})


class FlatPlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        return [Flat()]


@pytest.fixture(autouse=True)
def no_disable_setting(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)


def status_of(registry, name):
    (status,) = [s for s in registry.status if s.name == name]
    return status


def registry_with(*plugins):
    registry = create_registry(load_third_party=False, extra=plugins)
    registry.survey()
    return registry


# -- the API module -----------------------------------------------------------------------------


def test_every_name_in_all_is_importable_and_listed_once():
    assert len(api.__all__) == len(set(api.__all__))
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert missing == []
    for promised in ("Explainer", "Metric", "Analyzer", "ModelAdapter", "PanelSpec", "Param", "Explanation", "Trace",
                     "Progress", "hookimpl", "hookspecs", "capture_attention", "split_by_region", "score_images",
                     "fit_mask", "token_masks", "InputError", "PluginError", "API_VERSION"):
        assert promised in api.__all__, promised
    major, minor, patch = API_VERSION.split(".")
    assert all(part.isdigit() for part in (major, minor, patch))


def test_the_api_imports_without_qt():
    assert import_without_qt("lvlm_studio.api") == ["lvlm_studio.api"]


def test_the_trace_documents_its_fields():
    doc = api.Trace.__doc__
    for field in ("input_ids", "answer_ids", "logprobs", "regions", "hidden", "model_inputs",
                  "teacher_forced_inputs", "answer_position(i) - 1"):
        assert field in doc, field


def test_the_gui_api_exports_what_panels_use():
    pytest.importorskip("PySide6")
    gui_api = importlib.import_module("lvlm_studio.gui.api")
    assert [name for name in gui_api.__all__ if not hasattr(gui_api, name)] == []
    assert {"PanelContext", "ImageView"} <= set(gui_api.__all__)
    assert "0-based" in gui_api.PanelContext.selected.__doc__


def test_first_party_plugins_import_only_the_public_api():
    """A direct check beside the import-linter contract: no plugin module names another module of ours."""
    offenders = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1].startswith("lvlm_studio"):
                if words[1] not in ("lvlm_studio.api", "lvlm_studio.gui.api"):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


# -- the API version a plugin declares ------------------------------------------------------------


def test_a_plugin_needing_another_api_version_is_skipped_with_the_reason():
    class Future(FlatPlugin):
        LVLM_STUDIO_API = ">=2,<3"

    registry = registry_with((Future(), "future"))
    status = status_of(registry, "future")
    assert status.state == "incompatible"
    assert ">=2,<3" in status.error and API_VERSION in status.error
    assert "test-flat" not in registry.explainers()
    assert status_of(registry, "lvlm_explainers").state == "loaded"


def test_a_plugin_in_range_loads_and_a_malformed_range_is_named():
    class Fits(FlatPlugin):
        LVLM_STUDIO_API = ">=1,<2"

    class Garbled:
        LVLM_STUDIO_API = "one or two"

    registry = registry_with((Fits(), "fits"), (Garbled(), "garbled"))
    assert status_of(registry, "fits").state == "loaded" and "test-flat" in registry.explainers()
    garbled = status_of(registry, "garbled")
    assert garbled.state == "incompatible" and "'one or two' is not a version range" in garbled.error


# -- validation at registration -------------------------------------------------------------------


def test_a_typo_in_a_hook_name_fails_that_plugin_only_naming_the_hook():
    class Typo:
        @hookimpl
        def lvlm_studio_explainer(self):  # missing "s"
            return [Flat()]

    registry = registry_with((Typo(), "typo"), (FlatPlugin(), "good"))
    typo = status_of(registry, "typo")
    assert typo.state == "failed"
    assert "unknown hook 'lvlm_studio_explainer'" in typo.error
    assert "did you mean 'lvlm_studio_explainers'" in typo.error
    assert status_of(registry, "good").state == "loaded" and "test-flat" in registry.explainers()
    registry.manager.check_pending()  # nothing unknown is left registered


def test_a_plugin_without_hookimpl_is_loaded_with_a_warning():
    class Unmarked:
        def lvlm_studio_explainers(self):
            return [Flat()]

    registry = registry_with((Unmarked(), "unmarked"))
    status = status_of(registry, "unmarked")
    assert status.state == "loaded"
    assert status.warnings == ["contributes nothing: lvlm_studio_explainers is not marked @hookimpl "
                               "(from lvlm_studio.api import hookimpl; see docs/plugins.md)"]


def test_a_plugin_whose_hooks_return_nothing_is_warned_about():
    class Empty:
        @hookimpl
        def lvlm_studio_metrics(self):
            return []

    registry = registry_with((Empty(), "empty"))
    assert status_of(registry, "empty").warnings == ["contributes nothing: its hooks returned empty lists"]
    assert status_of(registry, "lvlm_metrics").warnings == []
    assert "deletion_insertion" in status_of(registry, "lvlm_metrics").contributes["metrics"]


def test_an_id_given_twice_names_both_providers():
    class Again(FlatPlugin):
        pass

    registry = registry_with((FlatPlugin(), "first"), (Again(), "second"))
    assert len(registry.conflicts) == 1
    conflict = registry.conflicts[0]
    assert "'test-flat'" in conflict and "plugin first" in conflict and "plugin second" in conflict
    assert "first, is used" in conflict
    assert status_of(registry, "second").warnings == [conflict]
    assert registry.provider("methods", "test-flat")["plugin"] == "first"


def test_an_explainer_without_an_id_is_told_to_give_its_class_one():
    class NoId(Flat):
        id = ""

    class Plugin:
        @hookimpl
        def lvlm_studio_explainers(self):
            return [NoId()]

    registry = registry_with((Plugin(), "anonymous"))
    error = status_of(registry, "anonymous").error
    assert "an Explainer with no id: give its class NoId one" in error


def test_the_plugins_command_lists_failures_warnings_and_both_providers(capsys, monkeypatch):
    class Typo:
        @hookimpl
        def lvlm_studio_metric(self):
            return []

    real = registry_module.create_registry
    monkeypatch.setattr(registry_module, "create_registry", lambda: real(
        load_third_party=False, extra=[(FlatPlugin(), "first"), (FlatPlugin(), "second"), (Typo(), "typo")]))
    assert cmd_plugins(argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert f"plugin API {API_VERSION}" in out
    assert "failed   typo  [given]\n           unknown hook 'lvlm_studio_metric'" in out
    assert "gives methods: raw_attention" in out
    conflict = [line for line in out.splitlines() if "'test-flat' is given by both" in line]
    assert conflict and all("plugin first" in line and "plugin second" in line for line in conflict)


# -- provenance -----------------------------------------------------------------------------------


def test_first_party_items_are_provided_by_lvlm_studio():
    registry = create_registry(load_third_party=False)
    provided = registry.providers_of(methods=["tam"], metrics=["iou"], panels=["overlay"])
    assert provided["methods"]["tam"]["plugin"] == "lvlm_explainers"
    assert provided["metrics"]["iou"]["plugin"] == "lvlm_metrics"
    assert provided["panels"]["overlay"]["plugin"] == "lvlm_panels"
    assert {p["distribution"] for kind in provided.values() for p in kind.values()} == {"lvlm-studio"}
    assert registry.provider("methods", "nobody-gives-this")["distribution"] == "unknown"


FLAT_MODULE = """
    import numpy as np
    from lvlm_studio.api import Explainer, Explanation, hookimpl

    LVLM_STUDIO_API = ">=1,<2"

    class ThirdParty(Explainer):
        id = "third-party-flat"
        title = "A third party's flat map"

        def explain(self, trace, model, targets, params):
            return Explanation(self.id, {t: [np.ones(r.grid) for r in trace.regions] for t in targets}, params, {})

    @hookimpl
    def lvlm_studio_explainers():
        return [ThirdParty()]
"""


def test_run_json_names_the_distribution_that_provided_the_method(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "flat_maps", {"flat": "flat_maps_plugin"}, {"flat_maps_plugin": FLAT_MODULE})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        out_dir = tmp_path / "run"
        code = cli.main(["explain", "--method", "third-party-flat", "--image", str(SAMPLE), "--prompt",
                         "what color is the square?", "--out", str(out_dir)])
        assert code == 0, capsys.readouterr().err
    finally:
        sys.modules.pop("flat_maps_plugin", None)
    record = json.loads((out_dir / "run.json").read_text())
    assert record["method"]["provided_by"] == {"plugin": "flat", "distribution": "flat_maps", "version": "0.1"}


def test_a_session_record_names_the_providers():
    from lvlm_studio.core.formats.session import run_record

    registry = create_registry(load_third_party=False)
    record = run_record(None, registry.providers_of(methods=["tam"]))
    assert record["providers"]["methods"]["tam"]["distribution"] == "lvlm-studio"


# -- the app --------------------------------------------------------------------------------------


class BrokenPlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        raise RuntimeError("boom at registration")


def test_help_plugins_lists_a_failure_and_what_each_plugin_gives(make_window, qtbot):
    window = make_window(create_registry(extra=[(BrokenPlugin(), "broken_one"), (FlatPlugin(), "first"),
                                                (FlatPlugin(), "second")]))
    help_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Help")
    entry = next(a for a in help_menu.actions() if a.text().startswith("&Plugins"))
    entry.trigger()
    dialog = window.findChild(object, "plugins_dialog")
    assert dialog is not None and dialog.isVisible()
    text = dialog.text()
    assert "broken_one failed" in text and "RuntimeError: boom at registration" in text
    assert "methods: raw_attention" in text and "lvlm-studio" in text
    assert "'test-flat' is given by both plugin first" in text and "plugin second" in text
    dialog.close()
    assert window.plugin_problems.isVisible() and "broken_one" in window.plugin_problems.text()
    window.plugin_problems.click()  # opens the same listing
    assert len([d for d in window.findChildren(object, "plugins_dialog") if d.isVisible()]) == 1


def test_a_saved_session_names_the_providers_of_its_methods(make_window, lvlm_registry, tmp_path, qtbot):
    from gui_helpers import JOB_TIMEOUT_MS, ask

    from lvlm_studio.core.formats.session import load_session

    window = make_window(lvlm_registry)
    ask(qtbot, window)
    window.state.set_method("tam")
    window.state.select(0)
    qtbot.waitUntil(lambda: "tam" in window.state.explanations and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    record = load_session(window.save_session(tmp_path / "a.lvlm")).record
    assert record["providers"]["methods"]["tam"] == {"plugin": "lvlm_explainers", "distribution": "lvlm-studio",
                                                     "version": record["versions"]["lvlm-studio"]}
    assert record["providers"]["panels"]["overlay"]["plugin"] == "lvlm_panels"
