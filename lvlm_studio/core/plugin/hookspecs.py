"""The plugin contract. These docstrings are the reference documentation for plugin authors.

A plugin is a module (or object) with functions named like the hooks below, marked with
``hookimpl``::

    from lvlm_studio.api import hookimpl

    @hookimpl
    def lvlm_studio_explainers():
        return [MyExplainer()]

Plugins import what they use from ``lvlm_studio.api`` (panels also from ``lvlm_studio.gui.api``):
those names are the public API, versioned by ``API_VERSION`` (semantic versioning: a new name is a
minor release, a removed or changed one a major release). A plugin module may declare the range of
API versions it works with, as a version specifier::

    LVLM_STUDIO_API = ">=1,<2"

A plugin whose range excludes this release is reported as incompatible and skipped. The plugin
guide is docs/plugins.md.

Third-party plugins are found through the ``lvlm_studio.plugins`` entry-point group::

    [project.entry-points."lvlm_studio.plugins"]
    my_plugin = "my_package.plugin"

Every hook is optional and returns a list; results from all plugins are concatenated. A function
named like a hook that is not one (a typo) fails its plugin with the unknown name; a plugin that
contributes nothing (e.g. its functions lack ``@hookimpl``) loads with a warning; two plugins that
give the same id are both named, and the one registered first wins. A plugin
that raises (or calls ``sys.exit()``) while loading, registering or answering a hook, or whose hook
returns anything but a list of the documented objects, each with a non-empty ``id``, is reported as
failed (``lvlm-studio plugins`` shows why) and skipped; the others keep working. Set
``LVLM_STUDIO_DISABLE_PLUGINS=1`` to load no third-party plugin, or to a comma-separated list of
plugin names to skip just those.

What an explainer or a metric returns is checked where it enters the CLI, the app and the benchmark
(``lvlm_studio.core.plugin.checks``); a result that breaks the contract described below is refused with
a message naming the method and the distribution that installed it.
"""

from __future__ import annotations

import pluggy

PROJECT = "lvlm_studio"
# 1.1: studies (Study, lvlm_studio_studies, bootstrap_interval, ...), feature dashboards;
# 1.2: trace_stats, factor_anova, model_meta, logit_lens, attention_knockout, splice_losses, ...
# 1.3: attention views (head_gallery, patch_text_attention, question_answer_attention, token_words, ...),
#      influence_shares, causal_graph, lens_at (the influence, causal graph and logit lens views),
#      baseline_image and BASELINES (blur, black, mean, noise),
#      contrastive targets (CONTRAST, supports_contrast, contrast_token, require_contrast, logit_difference),
#      figures (map_levels, is_signed, colormap_for, value_label, explanation_figure, save_figure, ...),
#      Explainer.per_target (the app computes the selected token's map first),
#      rows_with_gradients, rows_with_gradients_applies (exact relevancy at real shape),
#      gui.api.SpacedAxis (tick labels that never overlap);
# 1.4: attention_output_leaf (exact relevancy without the first layer's T x T gradient in one piece)
#: The version of the plugin API (``lvlm_studio.api``), semantic versioning.
API_VERSION = "1.4.0"
#: The module-level attribute in which a plugin declares the API versions it needs, e.g. ">=1,<2".
API_RANGE_ATTRIBUTE = "LVLM_STUDIO_API"
#: Where plugin authors are sent by messages.
PLUGIN_GUIDE = "docs/plugins.md"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def lvlm_studio_model_adapters() -> list[type]:
    """Model families this plugin supports: a list of ``ModelAdapter`` subclasses.

    An adapter declares the ``config.model_type`` values it serves and returns, for a processed
    input, each image region's token positions, grid and box in the original image
    (``lvlm_studio.core.plugin.adapter``). When two adapters claim a model type, the one
    registered first (first-party) wins. An adapter also says how the image reaches the language
    model (``image_entry``: "tokens" in the sequence, or "cross_attention" layers, whose keys the
    region positions then index) and how per-token inputs extend over generated tokens.
    """


@hookspec
def lvlm_studio_explainers() -> list:
    """Explanation methods: a list of ``Explainer`` instances (``lvlm_studio.core.plugin.contracts``).

    Each has a unique ``id`` (used by ``lvlm-studio explain --method ID``), a ``title``, declared
    ``params`` and ``needs``, and ``explain(trace, model, targets, params)`` returning an
    ``Explanation`` with, for each target token, one map per image region (``trace.regions``
    order), each a finite array of its region's ``grid`` shape (rows, cols). ``applies_to(model,
    params)`` returns None, or one plain sentence saying why the method cannot explain that model
    (e.g. a method that reads image tokens of the sequence, on a family whose image enters by
    cross-attention); the application asks it before running and shows the reason.
    """


@hookspec
def lvlm_studio_metrics() -> list:
    """Metrics that judge explanations: a list of ``Metric`` instances.

    ``score(trace, explanation, model, masks, params)`` returns a ``MetricResult`` (named values,
    curves to plot, JSON-able details), or is a job; a value is a number, NaN where it is undefined
    (never infinite), and a curve a pair of equally long 1-D arrays; faithfulness metrics need the model,
    plausibility metrics need ground-truth masks (``lvlm_studio.core.metrics.masks.ObjectMasks``). The
    computations behind the built-in metrics are public for plugins to reuse (``lvlm_studio.api``:
    ``deletion_insertion``, ``plausibility``, ``agreement``, ``model_randomisation``, ``input_independence``,
    ``fit_mask``, ``token_masks``).
    Every metric registered runs in ``lvlm-studio benchmark``.
    """


@hookspec
def lvlm_studio_analyzers() -> list:
    """Feature analyzers over hook points of the vision tower: a list of ``Analyzer`` instances."""


@hookspec
def lvlm_studio_panels() -> list:
    """Dockable GUI panels: a list of ``PanelSpec`` (id, title, factory "module:attr", area).

    Declaring a panel costs nothing: the factory module is imported, and the panel built, only
    when the user first opens it (View > Panels), so the module declaring it must not import Qt.
    The factory is called with a ``lvlm_studio.gui.api.PanelContext`` and returns a QWidget.
    The context is all a panel gets, never the main window: it reads the current trace,
    explanations, selected token, token statistics and metric results; ``subscribe(callback,
    widget)`` hears every change (held while the panel is hidden); and it asks for work with
    ``request_explanation``, ``request_metric``, ``request_stats``, ``request_heads`` or
    ``run_job`` (a worker-thread job with progress and Cancel). A panel that raises while being
    built or while following a change is reported once and disconnected; the window goes on.
    ``area`` is the default dock area: "left", "right", "top" or "bottom".
    """


@hookspec
def lvlm_studio_studies() -> list:
    """Studies: a list of ``Study`` instances (``lvlm_studio.core.plugin.contracts``).

    A study is an analysis over a dataset (demo scenes, a folder with a manifest, or a COCO file)
    and one or more models, run by ``lvlm-studio study ID``: ``run_sample(sample, model, params,
    context)`` returns plain JSON-able rows for one sample and one model (or is a job), and
    ``summarize(rows, params)`` returns a ``StudyReport`` (tables, figures drawn on a matplotlib
    Axes, Markdown text). The runner saves the rows as they come (a run resumes where it stopped)
    and writes the report as CSV, Markdown and PNG files that the app opens (File > Open study).
    """
