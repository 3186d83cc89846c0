"""The window's work, as jobs: load a model, open an image, ask, explain, score, look at heads.

``Analysis`` turns requests (from the window or from a panel, through its context) into jobs on
the worker thread and puts their results into the ``StudioState``. It remembers which work is
running and which failed for the current answer, so a panel that asks twice starts one job and a
method that failed is not retried until the user asks again. Failures are not shown here: they are
emitted as ``error`` and the window shows one dialog.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from lvlm_studio.core.errors import InputError, LVLMError
from lvlm_studio.core.plugin.jobs import Progress
from lvlm_studio.gui.state import StudioState, params_key
from lvlm_studio.gui.worker import Job, JobRunner

if TYPE_CHECKING:
    from lvlm_studio.core.plugin.contracts import Explainer, Metric
    from lvlm_studio.core.plugin.registry import PluginRegistry

Work = Callable[[Callable[[Progress], None], threading.Event], Any]


def _per_target(explainer: Explainer, params: dict[str, Any]) -> bool:
    """Whether ``explainer`` computes token by token; a plugin whose answer raises is asked for every
    token at once, as plugins were before they could say."""
    try:
        return bool(explainer.per_target(params))
    except Exception:  # noqa: BLE001 - a plugin's bug here only costs the order of its maps
        return False


class Analysis(QObject):
    """The jobs behind one window's analysis, and the registry they take plugins from."""

    message = Signal(str)  # for the status bar
    error = Signal(str, object, str)  # title, exception, details
    registry_ready = Signal()
    activity = Signal()  # a keyed job started or ended: captions and panels may update

    def __init__(self, state: StudioState, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = JobRunner(self)
        self.registry: PluginRegistry | None = None
        self.explainers: dict[str, Explainer] = {}
        self.metrics: dict[str, Metric] = {}
        self._running: dict[str, Job] = {}  # key -> job, for work on the current trace
        self._queues: dict[str, list[int]] = {}  # method -> answer tokens still to explain, next first
        self._failed: set[str] = set()
        self.panel_failures: dict[str, str] = {}  # panel id -> what it raised (Help › Plugins lists them)
        self.image_path: Path | None = None  # the file the image was opened from (another frame is read from it)
        state.subscribe(self._on_state)

    # -- plumbing ----------------------------------------------------------------------------
    def start(
        self,
        title: str,
        work: Work,
        done: Callable[[Any], None],
        failed: Callable[[BaseException, str], bool | None] | None = None,
        key: str | None = None,
    ) -> Job:
        """Queue ``work``; ``done`` gets its result on the GUI thread. A failure is reported once
        through ``error``, unless ``failed`` handles it (returns True); with ``key`` the job is
        remembered as running, then as failed."""
        job = self.runner.start(title, work)
        job.finished.connect(done)

        def report_failure(exc: BaseException, details: str) -> None:
            if key is not None and self._running.get(key) is job:
                self._failed.add(key)
            if failed is None or not failed(exc, details):
                self.error.emit(title, exc, details)

        job.failed.connect(report_failure)
        job.cancelled.connect(lambda: self.message.emit(f"Cancelled: {title.lower()}."))
        if key is not None:
            self._running[key] = job
            self._failed.discard(key)

            def ended() -> None:
                if self._running.get(key) is job:
                    del self._running[key]
                self.activity.emit()

            job.ended.connect(ended)
            self.activity.emit()
        return job

    def is_running(self, key: str) -> bool:
        return key in self._running

    def has_failed(self, key: str) -> bool:
        return key in self._failed

    def forget_failure(self, key: str) -> None:
        self._failed.discard(key)

    def cancel(self) -> None:
        if self.runner.busy:
            self.message.emit("Cancelling\u2026")
            self.runner.cancel_all()
            self._queues.clear()

    def report_panel_failure(self, panel: str, exc: BaseException) -> None:
        """A panel raised: say so once; the panel is disconnected by its context, the app goes on."""
        self.panel_failures[panel] = " ".join(f"{type(exc).__name__}: {exc}".split())
        self.error.emit(f"Panel \u201c{panel}\u201d", exc, traceback.format_exc())

    def set_registry(self, registry: PluginRegistry) -> None:
        self.registry = registry
        self.explainers = registry.explainers()
        self.metrics = registry.metrics()
        self.registry_ready.emit()

    def _on_state(self, name: str) -> None:
        if name == "trace":  # work for the old answer is of no use any more
            for job in self._running.values():
                job.cancel()
            self._running.clear()
            self._failed.clear()
            self._queues.clear()

    # -- loading and asking --------------------------------------------------------------------
    def load_registry(self) -> Job | None:
        """Build the plugin registry on the worker thread (plugins import torch), so that panels
        and methods are there while a model is still loading. None when it is already built."""
        if self.registry is not None:
            return None

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.plugin.registry import create_registry

            return create_registry()

        def done(registry: Any) -> None:
            if self.registry is None:
                self.set_registry(registry)

        return self.start("Loading plugins", work, done)

    def load_model(self, path: str | Path | None, device: str = "auto", dtype: str = "auto",
                   done: Callable[[Any], None] | None = None,
                   failed: Callable[[BaseException, str], bool | None] | None = None,
                   allow_pickle: bool = False, trust_remote_code: bool = False) -> Job:
        """Load the model in ``path`` (None: the demo model); build the registry first if needed.
        ``allow_pickle`` and ``trust_remote_code`` only ever come from the user's confirmation."""
        name = Path(path).name if path else "the demo model"
        registry = self.registry

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.models.loading import LoadOptions, load_model
            from lvlm_studio.core.plugin.registry import create_registry

            used = registry or create_registry()
            options = LoadOptions(device=device, dtype=dtype, allow_pickle=allow_pickle,
                                  trust_remote_code=trust_remote_code)
            return used, load_model(path, options, used)

        def loaded(result: Any) -> None:
            used, model = result
            if self.registry is None:
                self.set_registry(used)
            self.state.set_model(model, str(path) if path else None)
            self.message.emit(f"Loaded {name}. Ask a question about the image.")
            if done is not None:
                done(model)

        return self.start(f"Loading {name}", work, loaded, failed)

    def open_image(self, path: str | Path, frame: int = 0) -> Job:
        """Read ``path`` (of a multi-frame DICOM file, frame ``frame``, from 0) on the worker thread, then
        show it (the answer is cleared)."""
        path = Path(path)

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.io.images import open_with_levels

            return open_with_levels(path, frame)

        def done(result: Any) -> None:
            image, medical = result
            self.image_path = path
            # Only the base name is kept: the session and the report show it, and folders can carry names.
            self.state.set_image(image, path.name, medical=medical)
            where = f", frame {frame + 1} of {medical.frames}" if medical is not None and medical.frames > 1 else ""
            self.message.emit(f"Opened {path.name}{where}.")

        return self.start(f"Opening {path.name}", work, done)

    def open_demo_scene(self, seed: int) -> Job:
        """A synthetic scene with ground-truth masks, one per object word (for the plausibility metrics)."""

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.demo.scenes import make_scene

            return make_scene(seed)

        def done(scene: Any) -> None:
            from lvlm_studio.demo.pointing import scene_masks

            masks = scene_masks(scene, [])  # word -> union mask ("red", "circle", ...)
            self.state.set_image(scene.image, f"demo scene {seed}", masks)
            self.message.emit(f"Demo scene {seed}: {scene.caption()}.")

        return self.start(f"Drawing demo scene {seed}", work, done)

    def ask(self, prompt: str) -> Job | None:
        """Generate an answer to ``prompt`` about the image (None until a model and an image are there)."""
        model, image = self.state.model, self.state.image
        if model is None or image is None:
            return None

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.tracing.trace import generate_trace

            return generate_trace(model, image, prompt, cancel=cancel)

        def done(trace: Any) -> None:
            self.state.set_trace(trace)
            self.message.emit(f"Answered in {sum(trace.timings.values()):.1f} s. "
                              "Click a token to see where it came from.")

        return self.start("Answering", work, done)

    # -- work on the current answer ------------------------------------------------------------
    def explain(self, method: str, retry: bool = False) -> Job | None:
        """Compute ``method``'s maps of the answer tokens; each token's map is computed once per answer
        and parameter set (stepping through tokens afterwards only redraws).

        A method whose maps come from one pass (``Explainer.per_target`` False: attention, rollout,
        perturbations) computes every token in one job. A method that works token by token computes
        the selected token first, then the others one job each in the background; selecting a token
        not computed yet moves it to the front of that queue. Returns the job started, None when none
        was (nothing to do, or the method's job is already running)."""
        state, key = self.state, f"explain:{method}"
        trace = state.trace
        if retry:
            self._failed.discard(key)
        if trace is None or method not in self.explainers or key in self._failed:
            return None
        explainer = self.explainers[method]
        chosen = dict(state.params.get(method, {}))
        try:  # checked again here: a session may bring parameters another version of the plugin knew
            params = explainer.resolve_params(chosen)
        except LVLMError as exc:
            self._failed.add(key)
            self.error.emit(f"Parameters of {explainer.title or method}", exc, "")
            return None
        if not _per_target(explainer, params):
            if method in state.explanations or key in self._running:
                return None
            return self._explain_tokens(method, explainer, params, chosen,
                                        list(range(len(trace.answer_tokens))))
        missing = state.missing_tokens(method)
        first = state.selected if state.selected in missing else None
        self._queues[method] = [first] * (first is not None) + [t for t in missing if t != first]
        if key in self._running or not missing:
            return None
        return self._explain_next(method, explainer, params, chosen)

    def _explain_next(self, method: str, explainer: Explainer, params: dict[str, Any],
                      chosen: dict[str, Any]) -> Job | None:
        """Start the job of the next token in ``method``'s queue that still has no map (None: done)."""
        missing = set(self.state.missing_tokens(method))
        queue = [t for t in self._queues.get(method, []) if t in missing]
        if not queue:
            self._queues.pop(method, None)
            return None
        self._queues[method] = queue[1:]
        return self._explain_tokens(method, explainer, params, chosen, queue[:1])

    def _explain_tokens(self, method: str, explainer: Explainer, params: dict[str, Any],
                        chosen: dict[str, Any], targets: list[int]) -> Job:
        """One job: ``method``'s maps of ``targets`` (all tokens, or one token of a per-target method)."""
        state, trace, model = self.state, self.state.trace, self.state.model
        progressive = len(targets) < len(trace.answer_tokens)
        title = explainer.title or method

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.plugin.checks import check_explanation
            from lvlm_studio.core.plugin.jobs import run_job

            made = run_job(explainer.explain(trace, model, targets, params), report, cancel)
            return check_explanation(made, trace, targets, explainer)

        def done(explanation: Any) -> None:
            if not progressive:
                if state.add_explanation(trace, method, explanation, chosen):
                    self.message.emit(f"{title}: maps for all {len(targets)} tokens ready.")
                return
            if state.add_maps(trace, method, explanation, chosen):
                left = len(state.missing_tokens(method))
                self.message.emit(f"{title}: map of token {targets[0] + 1} ready; " + (
                    f"{left} more token{'s' * (left != 1)} in the background." if left else "every token done."))
                self._explain_next(method, explainer, params, chosen)

        what = f"Explaining token {targets[0] + 1} with" if progressive else "Explaining with"
        return self.start(f"{what} {title}", work, done, key=f"explain:{method}")

    def set_params(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Choose ``method``'s parameters from ``params`` (any subset, as text or values); raise
        ``InputError`` naming the bad one. The values that differ from the defaults are kept in the
        state (returned); work on the old set's maps stops, and the new set's maps come from the cache
        or are computed when a token is selected."""
        explainer = self.explainers.get(method)
        if explainer is None:
            raise InputError(f"no explanation method {method!r} is loaded.", "Choose one of the methods listed.")
        resolved = explainer.resolve_params(params)
        defaults = {p.name: p.default for p in explainer.params}
        chosen = {name: value for name, value in resolved.items() if value != defaults[name]}
        if params_key(chosen) == self.state.params_key(method):
            return chosen
        running = self._running.pop(f"explain:{method}", None)
        self._queues.pop(method, None)  # the old set's remaining tokens
        if running is not None:
            running.cancel()
            self.activity.emit()
        self._failed = {k for k in self._failed  # what failed with the old set may work with the new
                        if k != f"explain:{method}" and not (k.startswith("metric:") and k.split(":")[2] == method)}
        self.state.set_params(method, chosen)
        return chosen

    def token_stats(self) -> Job | None:
        """Log-probability, visual relevance and entropy per token (three forward passes)."""
        state, trace, model = self.state, self.state.trace, self.state.model
        if trace is None or state.stats is not None or self.is_running("stats") or self.has_failed("stats"):
            return None

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.plugin.jobs import run_job
            from lvlm_studio.core.tracing.token_stats import token_stats

            return run_job(token_stats(trace, model), report, cancel)

        def done(stats: Any) -> None:
            if state.set_stats(trace, stats):
                self.message.emit("Visual relevance and entropy ready for every token.")

        return self.start("Token statistics", work, done, key="stats")

    def head_attention(self) -> Job | None:
        """Every layer's and head's attention to the image, for every answer token (one pass)."""
        state, trace, model = self.state, self.state.trace, self.state.model
        if trace is None or state.heads is not None or self.is_running("heads") or self.has_failed("heads"):
            return None

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.plugin.jobs import run_job
            from lvlm_studio.core.tracing.head_attention import head_attention

            return run_job(head_attention(trace, model), report, cancel)

        def done(heads: Any) -> None:
            if state.set_heads(trace, heads):
                self.message.emit("Attention of every layer and head ready.")

        return self.start("Attention per head", work, done, key="heads")

    def show_head(self, layer: int, head: int) -> None:
        """Make one head's attention the map every view shows."""
        state = self.state
        if state.heads is None or state.trace is None:
            return
        explanation = state.heads.head_explanation(state.trace, layer, head)
        if explanation.method not in state.explanations:
            state.add_explanation(state.trace, explanation.method, explanation)
        state.set_method(explanation.method)

    def score(self, metric_id: str, method: str, token: int, retry: bool = True) -> Job | None:
        """Score ``method``'s map of answer token ``token`` with metric ``metric_id``."""
        from lvlm_studio.core.plugin.explanation import Explanation

        state, trace, model = self.state, self.state.trace, self.state.model
        key = f"metric:{metric_id}:{method}:{token}"
        if retry:
            self._failed.discard(key)
        explanation = state.explanations.get(method)
        if trace is None or metric_id not in self.metrics or explanation is None or token not in explanation.maps:
            return None
        if (method, token, metric_id) in state.metrics or key in self._running or key in self._failed:
            return None
        metric = self.metrics[metric_id]
        one = Explanation(explanation.method, {token: explanation.maps[token]}, explanation.params,
                          explanation.provenance)
        masks = dict(state.masks) or None

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.plugin.checks import check_metric_result
            from lvlm_studio.core.plugin.jobs import run_job

            return check_metric_result(run_job(metric.score(trace, one, model, masks, metric.resolve_params({})),
                                               report, cancel), metric)

        def done(result: Any) -> None:
            if state.explanations.get(method) is not explanation:  # the method's parameters changed meanwhile
                return
            if state.add_metric(trace, (method, token, metric_id), result):
                self.message.emit(f"{metric.title or metric_id}: scored {method} on token {token + 1}.")

        return self.start(f"Scoring with {metric.title or metric_id}", work, done, key=key)
