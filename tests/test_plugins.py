"""The plugin system: documented hooks, lazy import, built-in, given and entry-point plugins,
broken plugins reported and skipped, parameter validation, and adapter lookup."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from lvlm_studio.core.errors import InputError, PluginError, UnsupportedModelError
from lvlm_studio.core.models.llava import LlavaAdapter
from lvlm_studio.core.plugin import hookspecs
from lvlm_studio.core.plugin.checks import check_explanation, check_metric_result
from lvlm_studio.core.plugin.contracts import Explainer, Metric, MetricResult, PanelSpec, Param
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.core.plugin.registry import DISABLE_ENV, ENTRY_POINT_GROUP, create_registry, distribution_of

REPO = Path(__file__).resolve().parents[1]
BUILT_IN_ADAPTERS = "lvlm_studio.core.models.families"


# -- the hookspecs are the reference docs ----------------------------------------------------


def hookspec_functions(module: types.ModuleType) -> dict[str, object]:
    marker = f"{hookspecs.PROJECT}_spec"  # the attribute pluggy's HookspecMarker sets
    return {name: fn for name, fn in inspect.getmembers(module, inspect.isfunction) if hasattr(fn, marker)}


def undocumented_hooks(module: types.ModuleType) -> list[str]:
    """Hooks with no docstring of at least one sentence (four words and a full stop)."""
    bad = []
    for name, fn in hookspec_functions(module).items():
        doc = inspect.getdoc(fn) or ""
        if len(doc.split()) < 4 or "." not in doc:
            bad.append(name)
    return bad


def test_every_hook_has_a_docstring():
    names = set(hookspec_functions(hookspecs))
    assert {"lvlm_studio_explainers", "lvlm_studio_model_adapters", "lvlm_studio_panels"} <= names
    assert undocumented_hooks(hookspecs) == []


def test_the_docstring_check_catches_an_undocumented_hook():
    fake = types.ModuleType("fake_hookspecs")

    @hookspecs.hookspec
    def lvlm_studio_documented() -> list:
        """Things a plugin contributes, as a list."""

    @hookspecs.hookspec
    def lvlm_studio_bare() -> list: ...

    @hookspecs.hookspec
    def lvlm_studio_terse() -> list:
        """Stuff"""

    fake.lvlm_studio_documented = lvlm_studio_documented
    fake.lvlm_studio_bare = lvlm_studio_bare
    fake.lvlm_studio_terse = lvlm_studio_terse
    assert sorted(undocumented_hooks(fake)) == ["lvlm_studio_bare", "lvlm_studio_terse"]


# -- importing the plugin module does no work ------------------------------------------------


def write_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A fake installed distribution that importlib.metadata finds when ``root`` is on sys.path."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def explainer_module(method_id: str) -> str:
    return f"""
        from lvlm_studio.core.plugin.contracts import Explainer
        from lvlm_studio.core.plugin.hookspecs import hookimpl

        class FakeExplainer(Explainer):
            id = {method_id!r}
            title = "Fake method"

        @hookimpl
        def lvlm_studio_explainers():
            return [FakeExplainer()]
        """


def test_importing_the_plugin_module_imports_no_plugin(tmp_path):
    sources = {"lazy_plugin_module": explainer_module("lazy-method")}
    write_distribution(tmp_path, "lazy_plugin", {"lazy": "lazy_plugin_module"}, sources)
    script = textwrap.dedent("""
        import sys
        import lvlm_studio.core.plugin.registry as plugins

        watched = (*plugins.FIRST_PARTY, "lazy_plugin_module", "torch")
        print("after import:", sorted(m for m in watched if m in sys.modules))
        plugins.create_registry()
        print("after create_registry:", "lazy_plugin_module" in sys.modules)
    """)
    inherited = filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))
    path = os.pathsep.join([str(tmp_path), str(REPO), str(REPO / "plugins"), *inherited])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop(DISABLE_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "after import: []" in result.stdout
    # The same subprocess does find and load the plugin when asked to: the check above is real.
    assert "after create_registry: True" in result.stdout


# -- a plugin is seen listed and used --------------------------------------------------------


class ConstantExplainer(Explainer):
    """A map that is ``value`` everywhere: enough to see a plugin's method run end to end."""

    id = "test-constant"
    title = "Constant map"
    params = (
        Param("value", 1.0, "the value of every cell", minimum=0.0),
        Param("rows", 2, "grid rows", minimum=1, maximum=8),
    )

    def explain(self, trace, model, targets, params):
        maps = {t: [np.full((params["rows"], 3), params["value"])] for t in targets}
        return Explanation(self.id, maps, params, {"method": self.id})


class ConstantPlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        return [ConstantExplainer()]

    @hookimpl
    def lvlm_studio_panels(self):
        return [PanelSpec("test-panel", "Test panel", "nowhere.at_all:factory")]


class BrokenPlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def no_disable_setting(monkeypatch):
    """A developer's own LVLM_STUDIO_DISABLE_PLUGINS must not change what these tests see."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)


def status_of(registry, name):
    matches = [s for s in registry.status if s.name == name]
    assert len(matches) == 1, f"{name} appears {len(matches)} times in {registry.status}"
    return matches[0]


def test_a_given_plugin_is_listed_and_its_explainer_runs():
    registry = create_registry(load_third_party=False, extra=[(ConstantPlugin(), "constant")])
    assert status_of(registry, "constant").state == "loaded"
    assert status_of(registry, BUILT_IN_ADAPTERS).state == "loaded"
    assert "test-constant" in registry.explainers()
    assert "test-panel" in registry.panels()

    method = registry.explainer("test-constant")
    params = method.resolve_params({"value": "0.5"})
    assert params == {"value": 0.5, "rows": 2}
    result = method.explain(None, None, [0, 2], params)
    assert isinstance(result, Explanation)
    assert result.method == "test-constant"
    assert result.targets == [0, 2]
    np.testing.assert_array_equal(result.maps[2][0], np.full((2, 3), 0.5))


def test_asking_for_an_unknown_method_lists_the_known_ones():
    registry = create_registry(load_third_party=False, extra=[(ConstantPlugin(), "constant")])
    with pytest.raises(InputError, match="no explanation method 'nope'") as info:
        registry.explainer("nope")
    assert "test-constant" in info.value.hint


def test_a_plugin_whose_hook_raises_is_failed_and_the_others_still_work():
    registry = create_registry(
        load_third_party=False, extra=[(BrokenPlugin(), "broken"), (ConstantPlugin(), "constant")]
    )
    assert "test-constant" in registry.explainers()
    broken = status_of(registry, "broken")
    assert broken.state == "failed"
    assert broken.error == "RuntimeError: boom"
    assert status_of(registry, "constant").state == "loaded"


def test_a_plugin_that_cannot_register_is_failed():
    class WrongSignature:
        @hookimpl
        def lvlm_studio_explainers(self, trace):  # the hook takes no arguments
            return []

    registry = create_registry(
        load_third_party=False, extra=[(WrongSignature(), "wrong"), (ConstantPlugin(), "constant")]
    )
    wrong = status_of(registry, "wrong")
    assert wrong.state == "failed"
    assert "trace" in wrong.error
    assert "test-constant" in registry.explainers()


def test_a_plugin_returning_the_wrong_kind_of_object_is_failed():
    class NotAnExplainer:
        @hookimpl
        def lvlm_studio_explainers(self):
            return ["test-constant"]

    registry = create_registry(load_third_party=False, extra=[(NotAnExplainer(), "strings")])
    assert "test-constant" not in registry.explainers()
    assert status_of(registry, "strings").state == "failed"
    assert "not an Explainer" in status_of(registry, "strings").error


def test_the_first_registered_plugin_wins_an_id():
    class Other(ConstantExplainer):
        title = "Another method with the same id"

    class Late:
        @hookimpl
        def lvlm_studio_explainers(self):
            return [Other()]

    registry = create_registry(load_third_party=False, extra=[(ConstantPlugin(), "early"), (Late(), "late")])
    assert type(registry.explainers()["test-constant"]) is ConstantExplainer


# -- model adapters --------------------------------------------------------------------------


def test_the_llava_adapter_serves_llava_configs():
    registry = create_registry(load_third_party=False)
    assert registry.adapter_for(types.SimpleNamespace(model_type="llava")) is LlavaAdapter


def test_a_built_in_adapter_wins_over_a_plugin_claiming_the_same_family():
    class Impostor(LlavaAdapter):
        pass

    class ImpostorPlugin:
        @hookimpl
        def lvlm_studio_model_adapters(self):
            return [Impostor]

    registry = create_registry(load_third_party=False, extra=[(ImpostorPlugin(), "impostor")])
    assert registry.adapter_for(types.SimpleNamespace(model_type="llava")) is LlavaAdapter


def test_an_unsupported_family_names_the_supported_ones():
    registry = create_registry(load_third_party=False)
    with pytest.raises(UnsupportedModelError) as info:
        registry.adapter_for(types.SimpleNamespace(model_type="bert"))
    assert "'bert'" in str(info.value)
    assert "Supported families: " in info.value.hint
    assert "llava" in info.value.hint


# -- third-party plugins through entry points ------------------------------------------------


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Install fake distributions into a folder on sys.path; forget their modules afterwards."""
    modules: list[str] = []

    def install(dist: str, entry_points: dict[str, str], sources: dict[str, str]) -> None:
        write_distribution(tmp_path, dist, entry_points, sources)
        modules.extend(sources)
        importlib.invalidate_caches()  # also drops importlib.metadata's cached folder listings

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for name in modules:
        sys.modules.pop(name, None)


GOOD = {"fake": "fake_plugin_module"}
GOOD_SOURCES = {"fake_plugin_module": explainer_module("fake-method")}
BAD = {"needs_missing": "needs_missing_module"}
BAD_SOURCES = {"needs_missing_module": "raise ImportError('needs a library that is not installed')\n"}


def test_an_installed_plugin_is_loaded(site):
    site("fake_plugin", GOOD, GOOD_SOURCES)
    registry = create_registry()
    fake = status_of(registry, "fake")
    assert fake.state == "loaded"
    assert fake.origin == "entry point (fake_plugin 0.1)"
    assert "fake-method" in registry.explainers()


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_load(site):
    site("fake_plugin", GOOD, GOOD_SOURCES)
    site("broken_plugin", BAD, BAD_SOURCES)
    registry = create_registry()
    broken = status_of(registry, "needs_missing")
    assert broken.state == "failed"
    assert broken.error == "ImportError: needs a library that is not installed"
    assert status_of(registry, "fake").state == "loaded"
    assert "fake-method" in registry.explainers()


def test_disabling_all_third_party_plugins_keeps_the_built_in_ones(site, monkeypatch):
    site("fake_plugin", GOOD, GOOD_SOURCES)
    site("broken_plugin", BAD, BAD_SOURCES)
    monkeypatch.setenv(DISABLE_ENV, "1")
    registry = create_registry()
    assert status_of(registry, "fake").state == "disabled"
    assert status_of(registry, "needs_missing").state == "disabled"
    assert "fake_plugin_module" not in sys.modules  # not even imported
    assert "fake-method" not in registry.explainers()
    assert status_of(registry, BUILT_IN_ADAPTERS).state == "loaded"
    assert LlavaAdapter in registry.adapters()


def test_disabling_one_plugin_by_name(site, monkeypatch):
    site("fake_plugin", GOOD, GOOD_SOURCES)
    other_sources = {"other_plugin_module": explainer_module("other-method")}
    site("other_plugin", {"other": "other_plugin_module"}, other_sources)
    monkeypatch.setenv(DISABLE_ENV, "unknown_name, other")
    registry = create_registry()
    assert status_of(registry, "other").state == "disabled"
    assert "other_plugin_module" not in sys.modules
    assert status_of(registry, "fake").state == "loaded"
    assert set(registry.explainers()) >= {"fake-method"}
    assert "other-method" not in registry.explainers()


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "given", "expected"),
    [
        (Param("smooth", False), "yes", True),
        (Param("smooth", False), "On", True),
        (Param("smooth", True), "false", False),
        (Param("smooth", True), "0", False),
        (Param("smooth", False), 1, True),
        (Param("steps", 10), "20", 20),
        (Param("steps", 10), 3.0, 3),
        (Param("alpha", 0.5), "0.25", 0.25),
        (Param("alpha", 0.5), 1, 1.0),
        (Param("layers", ()), "1,2, 3", (1, 2, 3)),
        (Param("layers", ()), "all", ()),
        (Param("layers", ()), "", ()),
        (Param("layers", ()), [4, 5], (4, 5)),
        (Param("reduce", "mean", choices=("mean", "max")), "max", "max"),
        (Param("alpha", 0.5, minimum=0.0, maximum=1.0), "1", 1.0),
        (Param("alpha", 0.5, minimum=0.0, maximum=1.0), 0, 0.0),
    ],
)
def test_param_converts_valid_values(param, given, expected):
    value = param.parse(given)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("param", "given", "message"),
    [
        (Param("smooth", False), "maybe", "parameter 'smooth' got 'maybe', which is not a true/false"),
        (Param("steps", 10), "2.5", "parameter 'steps' got '2.5', which is not a whole number"),
        (Param("steps", 10), 2.5, "which is not a whole number"),
        (Param("alpha", 0.5), "abc", "which is not a number"),
        (Param("layers", ()), "1,x", "which is not a comma-separated list"),
        (Param("layers", ()), 3, "which is not a comma-separated list"),
        (Param("reduce", "mean", choices=("mean", "max")), "median", "Choose one of: mean, max."),
        (Param("alpha", 0.5, minimum=0.0, maximum=1.0), "1.5", "It must lie between 0.0 and 1.0."),
        (Param("rows", 2, minimum=1), 0, "It must be at least 1."),
        (Param("rows", 2, maximum=8), "9", "It must be at most 8."),
        (Param("layers", (), minimum=0), "0,-1", "parameter 'layers' got -1."),
    ],
)
def test_param_rejects_bad_values_with_a_helpful_message(param, given, message):
    with pytest.raises(InputError) as info:
        param.parse(given)
    assert message in str(info.value)


def test_a_type_error_shows_an_example():
    with pytest.raises(InputError) as info:
        Param("layers", (1, 2)).parse("a,b")
    assert info.value.hint == "Example: layers=1,2."


def test_resolve_params_fills_defaults_and_parses_given_values():
    method = ConstantExplainer()
    assert method.resolve_params() == {"value": 1.0, "rows": 2}
    assert method.resolve_params({"rows": "4"}) == {"value": 1.0, "rows": 4}
    with pytest.raises(InputError, match="parameter 'rows' got 9"):
        method.resolve_params({"rows": 9})


def test_resolve_params_names_unknown_parameters_and_the_known_ones():
    with pytest.raises(InputError) as info:
        ConstantExplainer().resolve_params({"value": 2, "colour": "red", "alpah": 1})
    assert info.value.message == "test-constant has no parameter 'alpah', 'colour'."
    assert info.value.hint == "Its parameters: value, rows."


def test_a_method_without_params_says_so():
    class Bare(Explainer):
        id = "bare"

    with pytest.raises(InputError, match="Its parameters: none"):
        Bare().resolve_params({"x": 1})


# -- what a hook returns is checked; sys.exit is caught ----------------------------------------


def test_a_hook_returning_one_object_fails_its_plugin_and_the_built_in_panels_stay():
    class OnePanel:
        @hookimpl
        def lvlm_studio_panels(self):
            return PanelSpec("lonely", "Lonely", "nowhere:factory")  # not in a list

    registry = create_registry(load_third_party=False, extra=[(OnePanel(), "one")])
    panels = registry.panels()
    assert {"overlay", "timeline", "heads"} <= set(panels) and "lonely" not in panels
    assert status_of(registry, "one").state == "failed"
    assert status_of(registry, "one").error == "lvlm_studio_panels returned a PanelSpec, not a list"


def test_sys_exit_in_a_hook_fails_the_plugin_and_ctrl_c_goes_through():
    class Exits:
        @hookimpl
        def lvlm_studio_explainers(self):
            sys.exit("bye")

    class Interrupted:
        @hookimpl
        def lvlm_studio_metrics(self):
            raise KeyboardInterrupt

    registry = create_registry(load_third_party=False, extra=[(Exits(), "exits"), (Interrupted(), "interrupted")])
    assert "tam" in registry.explainers()
    assert status_of(registry, "exits").error == "SystemExit: the plugin called sys.exit('bye')"
    with pytest.raises(KeyboardInterrupt):
        registry.metrics()


def test_one_bad_item_fails_the_whole_plugin_and_it_is_not_asked_again():
    class Mixed:
        calls = 0

        @hookimpl
        def lvlm_studio_explainers(self):
            Mixed.calls += 1
            return [ConstantExplainer(), None]

    registry = create_registry(load_third_party=False, extra=[(Mixed(), "mixed")])
    assert "test-constant" not in registry.explainers()
    assert "returned None, not an Explainer" in status_of(registry, "mixed").error
    registry.explainers()
    assert Mixed.calls == 1


def test_an_explainer_without_an_id_is_named_with_the_fix():
    class Anonymous(ConstantExplainer):
        id = ""

    class Plugin:
        @hookimpl
        def lvlm_studio_explainers(self):
            return [Anonymous()]

    registry = create_registry(load_third_party=False, extra=[(Plugin(), "anonymous")])
    registry.explainers()
    assert status_of(registry, "anonymous").error == (
        'lvlm_studio_explainers returned an Explainer with no id: give its class Anonymous one, e.g. id = "my-method" '
        '(see docs/plugins.md)')


def test_an_unknown_method_names_the_plugins_that_failed():
    registry = create_registry(load_third_party=False, extra=[(BrokenPlugin(), "broken")])
    failed = r"no explanation method 'x'; plugin broken \[given\] failed \(RuntimeError: boom\)"
    with pytest.raises(InputError, match=failed):
        registry.explainer("x")


def test_the_distribution_of_a_plugin_object(site):
    site("fake_plugin", GOOD, GOOD_SOURCES)
    registry = create_registry()
    assert distribution_of(registry.explainers()["fake-method"]) == "fake_plugin 0.1"
    assert distribution_of(registry.explainers()["tam"]).startswith("lvlm-studio ")
    assert distribution_of(ConstantExplainer()) == "module test_plugins"


# -- the contract checks on explanations and metric results ----------------------------------


@pytest.fixture(scope="module")
def two_region_trace():
    return types.SimpleNamespace(regions=[types.SimpleNamespace(grid=(2, 3)), types.SimpleNamespace(grid=(4, 4))])


def good_maps(targets):
    return {t: [np.zeros((2, 3)), np.ones((4, 4))] for t in targets}


def test_a_good_explanation_passes_and_extra_tokens_are_allowed(two_region_trace):
    explanation = Explanation("test-constant", good_maps([0, 1, 2]))
    assert check_explanation(explanation, two_region_trace, [0, 2], ConstantExplainer()) is explanation


@pytest.mark.parametrize(("made", "problem"), [
    ({0: [np.zeros((2, 3)), np.ones((4, 4))]}, "returned a dict, not an Explanation"),
    (Explanation("m", good_maps([0])), "gave no map for answer token 2."),
    (Explanation("m", {**good_maps([2]), 0: [np.zeros((2, 3))]}), "gave 1 maps for answer token 0; it must give one"),
    (Explanation("m", {**good_maps([2]), 0: np.zeros((2, 3))}), "gave a ndarray of maps for answer token 0"),
    (Explanation("m", {**good_maps([0]), 2: [np.zeros((2, 3)), np.ones((3, 5))]}),
     "gave a 3x5 map for answer token 2, region 1, whose grid is 4x4."),
    (Explanation("m", {**good_maps([0]), 2: [np.zeros((2, 3)), np.full((4, 4), np.inf)]}),
     "gave NaN or infinite values in the map of answer token 2, region 1."),
    (Explanation("m", {**good_maps([0]), 2: [np.zeros((2, 3)), "a map"]}),
     "gave a str as the map of answer token 2, region 1, not an array."),
])
def test_a_wrong_explanation_is_refused_naming_the_method_and_distribution(two_region_trace, made, problem):
    with pytest.raises(PluginError) as info:
        check_explanation(made, two_region_trace, [0, 2], ConstantExplainer())
    assert info.value.message.startswith("explanation method 'test-constant' (module test_plugins) ")
    assert problem in info.value.message
    assert "report it to its authors" in info.value.hint


class FakeMetric(Metric):
    id = "fake-metric"


def test_a_metric_result_may_say_undefined_with_nan():
    result = MetricResult({"auc": float("nan"), "n": 3}, {"deletion": ([0.0, 1.0], np.array([0.5, np.nan]))})
    assert check_metric_result(result, FakeMetric()) is result


@pytest.mark.parametrize(("result", "problem"), [
    ({"auc": 0.5}, "returned a dict, not a MetricResult"),
    (MetricResult({"auc": float("-inf")}), "returned -inf as its value 'auc'"),
    (MetricResult({"auc": "high"}), "returned 'high' as its value 'auc'"),
    (MetricResult({"auc": 0.5}, {"deletion": ([0, 1], [1, 2, 3])}), "curve 'deletion' whose x and y"),
    (MetricResult({"auc": 0.5}, {"deletion": [0.5]}), "curve 'deletion' that is not a pair"),
    (MetricResult([0.5]), "values or curves that are not dicts"),
])
def test_a_wrong_metric_result_is_refused_naming_the_metric(result, problem):
    with pytest.raises(PluginError) as info:
        check_metric_result(result, FakeMetric())
    assert info.value.message.startswith("metric 'fake-metric' (module test_plugins) ")
    assert problem in info.value.message
