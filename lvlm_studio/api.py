"""The public plugin API of LVLM Studio: everything a plugin may import, in one place.

A plugin imports from here (panels also from ``lvlm_studio.gui.api``) and from nowhere else in
``lvlm_studio``; ``__all__`` is the promise. The API is versioned by ``API_VERSION`` (semantic
versioning): a new name is a minor release, a name removed or changed in meaning a major one. A
plugin module may declare the versions it works with, as a version specifier::

    LVLM_STUDIO_API = ">=1,<2"

and a plugin whose range excludes this release is reported (``lvlm-studio plugins``, Help › Plugins)
and skipped. Nothing here imports Qt. The plugin guide is docs/plugins.md.

What is here, by purpose:

- **Hooks and contracts**: ``hookimpl`` marks a plugin's functions; ``hookspecs`` documents the
  hooks. A plugin returns ``Explainer``, ``Metric``, ``Analyzer`` instances, ``PanelSpec`` data and
  ``ModelAdapter`` subclasses; each declares its ``Param``s.
- **What methods read and return**: ``Trace`` (one generation; its fields are documented on the
  class), ``Explanation`` (one map per image region per answer token), ``MetricResult``,
  ``ImageRegion``, ``LoadedModel``. How maps are drawn: ``map_levels`` (a map's colour scale, its
  own or shared by every token; symmetric about 0 for signed maps), ``is_signed``, ``colormap_for``
  (a diverging colormap for signed maps), ``value_label``; ``explanation_figure`` and
  ``save_figure`` write a map as a PNG, SVG or PDF figure with a labelled colour bar.
- **Jobs**: a method may be a generator that yields ``Progress`` and returns its result (``relay``
  forwards a sub-job's progress, ``run_job``/``collect_job`` run one, ``explain_job`` runs an
  explainer as a sub-job).
- **Attention and gradients**: ``trace.teacher_forced_inputs(model, upto=...)`` (one forward pass
  over prompt + answer), ``capture_attention`` (attention of chosen query positions over chosen key
  positions, one pass), ``split_by_region`` (values over the image positions, cut into each
  region's grid), ``attention_implementation`` (eager attention for a block), ``rows_with_gradients``
  (one attention module's eager weights, with their graph, for chosen query rows only),
  ``attention_output_leaf`` (one attention module's weights without a graph, its output a leaf: a
  backward that stops there gives dO, and dA = dO V^T can be built a block of rows at a time),
  ``log_probability``,
  ``hook_points``/``hooks``/``run_with_cache`` (named points inside the model);
  ``capture_self_attention`` (the decoder's self-attention, also where the image enters by
  cross-attention). The attention views: ``head_gallery``/``render_gallery`` (every head's map of a
  token over a layer range), ``patch_text_attention`` (text tokens' attention to chosen image patches,
  ``patches_in_box``), ``question_answer_attention`` (answer tokens x question words; ``token_words``).
  Answer token ``t`` was predicted at position ``trace.answer_position(t) - 1``: that is the query to read.
- **Contrastive targets**: a method that declares ``CONTRAST`` among its parameters explains the
  target against an alternative token ("why red rather than blue"), scoring ``logit_difference``
  (``contrast_token`` reads the alternative; ``supports_contrast``/``require_contrast`` ask and refuse).
- **Altered images**: ``blend``, ``blurred_baseline`` and ``baseline_image`` (blur, black, mean or noise: ``BASELINES``)
  make them, ``score_images`` scores them in batches, ``pixels_to_grids`` and ``to_pixels`` move
  maps between pixels and grids; ``pixel_layout`` and ``answer_logprobs_with_grad`` give differentiable pixel masks.
- **Masks and metrics**: ``fit_mask``, ``token_masks``, ``ObjectMasks``; the computations behind
  the built-in metrics (``deletion_insertion``, ``plausibility``, ``agreement``,
  ``model_randomisation``, ``input_independence``).
- **Studies**: a plugin returns ``Study`` instances (``lvlm_studio_studies``); a study sees
  ``StudySample``s (image, ``StudyQuestion``s, named object masks) and a ``StudyContext``, and
  returns rows, then a ``StudyReport`` of ``StudyTable``s and ``StudyFigure``s. A study answers
  with ``generate_trace``; reusable numbers: ``bootstrap_interval``, ``modality_influence``
  (relevance on the image vs the prompt's words), ``prompt_words``, ``peak_on`` (which named mask
  a map's maximum lies in); ``trace_stats`` (attention-pattern statistics), ``factor_anova`` (a
  fitted model of a statistic on factors, with p-values and partial eta squared), ``model_meta``
  (a model's vision architecture and LLM size); ``logit_lens`` and ``attention_knockout`` (when
  vision enters); for the views: ``influence_shares`` (the image's and each prompt word's share of
  an answer token's relevance), ``causal_graph`` (a causal subset's graph and validation),
  ``lens_at`` (the logit lens's top tokens per layer at one position); ``splice_losses`` and
  ``splice_summary`` (an SAE spliced in).
- **Errors**: ``InputError`` (bad input: a message and a hint saying what to do), ``PluginError``,
  ``Cancelled`` and the rest of ``LVLMError``'s kinds.
"""

from __future__ import annotations

from lvlm_studio.core.errors import (
    Cancelled,
    InputError,
    LVLMError,
    ModelLoadError,
    PluginError,
    UnsupportedModelError,
)
from lvlm_studio.core.formats.figure import FORMATS as FIGURE_FORMATS
from lvlm_studio.core.formats.figure import explanation_figure, save_figure
from lvlm_studio.core.metrics.agreement import (
    MIN_RANK_CORRELATION,
    MIN_TOP_K_OVERLAP,
    Agreement,
    agreement,
    flatten,
    rank_correlation,
)
from lvlm_studio.core.metrics.causal_graph import CausalGraph, causal_graph
from lvlm_studio.core.metrics.effects import FactorEffect, factor_anova
from lvlm_studio.core.metrics.faithfulness import DEFAULT_STEPS, combined_map, deletion_insertion
from lvlm_studio.core.metrics.intervals import bootstrap_interval
from lvlm_studio.core.metrics.masks import ObjectMasks, fit_mask, token_masks
from lvlm_studio.core.metrics.modality import (
    TEXT_RELEVANCE,
    InfluenceShares,
    ModalityInfluence,
    influence_shares,
    modality_influence,
    prompt_words,
    text_relevance_record,
)
from lvlm_studio.core.metrics.plausibility import PlausibilityScores, group_words, peak_on, plausibility
from lvlm_studio.core.metrics.sanity import explain as explain_job
from lvlm_studio.core.metrics.sanity import input_independence, model_randomisation
from lvlm_studio.core.models.capture import (
    attention_implementation,
    attention_output_leaf,
    capture_attention,
    capture_attention_and_key_means,
    capture_self_attention,
    rows_with_gradients,
    rows_with_gradients_applies,
    split_by_region,
)
from lvlm_studio.core.models.hooks import HookPoint, hook_points, hooks, run_with_cache
from lvlm_studio.core.models.inputs import forward_inputs
from lvlm_studio.core.models.loading import LoadedModel
from lvlm_studio.core.models.meta import META_FILE, model_meta, read_meta_file
from lvlm_studio.core.perturbation.perturb import (
    BASELINES,
    DEFAULT_BATCH_SIZE,
    baseline_image,
    blend,
    pixels_to_grids,
    score_images,
)
from lvlm_studio.core.perturbation.pixel_masks import PixelLayout, answer_logprobs_with_grad, pixel_layout
from lvlm_studio.core.plugin import hookspecs
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter
from lvlm_studio.core.plugin.checks import check_explanation, check_metric_result
from lvlm_studio.core.plugin.contracts import (
    CONTRAST,
    DIRECTIONS,
    HIGHER,
    LOWER,
    Analyzer,
    Explainer,
    Metric,
    MetricResult,
    PanelSpec,
    Param,
    Study,
    StudyContext,
    StudyFigure,
    StudyQuestion,
    StudyReport,
    StudySample,
    StudyTable,
    contrast_token,
    image_tokens_reason,
    require_applicable,
    require_contrast,
    supports_contrast,
)
from lvlm_studio.core.plugin.explanation import (
    DIVERGING_COLORMAP,
    Explanation,
    colormap_for,
    fixed_levels,
    is_signed,
    map_levels,
    normalise,
    overlay,
    to_pixels,
    value_label,
)
from lvlm_studio.core.plugin.hookspecs import API_RANGE_ATTRIBUTE, API_VERSION, PLUGIN_GUIDE, hookimpl
from lvlm_studio.core.plugin.jobs import Job, Progress, relay, run_job
from lvlm_studio.core.plugin.jobs import collect as collect_job
from lvlm_studio.core.plugin.registry import create_registry
from lvlm_studio.core.tracing.attention_stats import STATISTICS as ATTENTION_STATISTICS
from lvlm_studio.core.tracing.attention_stats import AttentionStats, pattern_stats, trace_stats
from lvlm_studio.core.tracing.attention_views import (
    GALLERY_GAP,
    GALLERY_MARGIN,
    HeadGallery,
    PatchTextAttention,
    QuestionAnswerAttention,
    TokenWord,
    gallery_cell_at,
    head_gallery,
    parse_indices,
    patch_text_attention,
    patches_in_box,
    question_answer_attention,
    render_gallery,
    token_words,
)
from lvlm_studio.core.tracing.prompt_tokens import prompt_text_positions
from lvlm_studio.core.tracing.relevance import blurred_baseline, visual_relevance
from lvlm_studio.core.tracing.scores import log_odds, log_probability, logit_difference
from lvlm_studio.core.tracing.trace import Trace, generate_trace
from lvlm_studio.core.tracing.vision_entry import (
    Knockout,
    LensAt,
    LogitLens,
    attention_knockout,
    layer_windows,
    lens_at,
    logit_lens,
)
from lvlm_studio.sae.dashboard import (
    PATCH_BOX,
    FeatureDashboard,
    dashboard_job,
    demo_image_set,
    find_dashboard,
    folder_image_set,
)
from lvlm_studio.sae.dashboard import load_cache as load_dashboard
from lvlm_studio.sae.evaluate import ExampleLosses, splice_losses, splice_summary
from lvlm_studio.sae.formats import load_coder
from lvlm_studio.sae.inspect import edited_answer, feature_attribution, feature_map, image_features, top_features
from lvlm_studio.sae.render import grid_to_pixels
from lvlm_studio.sae.shipped import demo_sae_path

__all__ = [
    "DIRECTIONS",
    "HIGHER",
    "LOWER",
    # versions and hooks
    "API_VERSION",
    "API_RANGE_ATTRIBUTE",
    "PLUGIN_GUIDE",
    "hookimpl",
    "hookspecs",
    "create_registry",
    # contracts
    "Explainer",
    "Metric",
    "Analyzer",
    "PanelSpec",
    "ModelAdapter",
    "Param",
    "MetricResult",
    "image_tokens_reason",
    "require_applicable",
    "CONTRAST",
    "supports_contrast",
    "contrast_token",
    "require_contrast",
    "check_explanation",
    "check_metric_result",
    # what methods read and return
    "Trace",
    "Explanation",
    "ImageRegion",
    "LoadedModel",
    "fixed_levels",
    "normalise",
    "overlay",
    "to_pixels",
    # how maps are drawn, and figures of them
    "is_signed",
    "map_levels",
    "colormap_for",
    "value_label",
    "DIVERGING_COLORMAP",
    "explanation_figure",
    "save_figure",
    "FIGURE_FORMATS",
    # jobs
    "Job",
    "Progress",
    "relay",
    "run_job",
    "collect_job",
    "explain_job",
    # attention, gradients, hook points
    "capture_attention",
    "capture_attention_and_key_means",
    "capture_self_attention",
    "split_by_region",
    "attention_implementation",
    "rows_with_gradients",
    "rows_with_gradients_applies",
    "attention_output_leaf",
    "forward_inputs",
    "log_probability",
    "log_odds",
    "logit_difference",
    "prompt_text_positions",
    "HookPoint",
    "hook_points",
    "hooks",
    "run_with_cache",
    # attention views: per head over layers, image patches -> text, question -> answer (words)
    "HeadGallery",
    "head_gallery",
    "render_gallery",
    "gallery_cell_at",
    "GALLERY_MARGIN",
    "GALLERY_GAP",
    "PatchTextAttention",
    "patch_text_attention",
    "patches_in_box",
    "QuestionAnswerAttention",
    "question_answer_attention",
    "TokenWord",
    "token_words",
    "parse_indices",
    # altered images
    "blend",
    "BASELINES",
    "baseline_image",
    "blurred_baseline",
    "score_images",
    "pixels_to_grids",
    "DEFAULT_BATCH_SIZE",
    "visual_relevance",
    "PixelLayout",
    "pixel_layout",
    "answer_logprobs_with_grad",
    # masks and metrics
    "ObjectMasks",
    "fit_mask",
    "token_masks",
    "DEFAULT_STEPS",
    "deletion_insertion",
    "combined_map",
    "PlausibilityScores",
    "group_words",
    "plausibility",
    "Agreement",
    "agreement",
    "flatten",
    "rank_correlation",
    "MIN_RANK_CORRELATION",
    "MIN_TOP_K_OVERLAP",
    "model_randomisation",
    "input_independence",
    # sparse coders over the vision tower
    "load_coder",
    "demo_sae_path",
    "image_features",
    "top_features",
    "feature_map",
    "feature_attribution",
    "edited_answer",
    "grid_to_pixels",
    # feature dashboards (one pass caches every feature's top patches, histogram, logit attribution)
    "FeatureDashboard",
    "dashboard_job",
    "find_dashboard",
    "load_dashboard",
    "demo_image_set",
    "folder_image_set",
    "PATCH_BOX",
    # studies
    "Study",
    "StudySample",
    "StudyQuestion",
    "StudyContext",
    "StudyReport",
    "StudyTable",
    "StudyFigure",
    "generate_trace",
    "peak_on",
    "bootstrap_interval",
    "ModalityInfluence",
    "modality_influence",
    "prompt_words",
    "TEXT_RELEVANCE",
    "text_relevance_record",
    "AttentionStats",
    "ATTENTION_STATISTICS",
    "pattern_stats",
    "trace_stats",
    "FactorEffect",
    "factor_anova",
    "META_FILE",
    "model_meta",
    "read_meta_file",
    "LogitLens",
    "logit_lens",
    "LensAt",
    "lens_at",
    "InfluenceShares",
    "influence_shares",
    "CausalGraph",
    "causal_graph",
    "Knockout",
    "attention_knockout",
    "layer_windows",
    "ExampleLosses",
    "splice_losses",
    "splice_summary",
    # errors
    "LVLMError",
    "InputError",
    "PluginError",
    "ModelLoadError",
    "UnsupportedModelError",
    "Cancelled",
]
