"""The grounded benchmark: chosen methods over a dataset, judged by every metric, resumable.

A dataset is a list of samples (an image, and the ground-truth masks of what an answer may name):
by default ``n`` held-out demo scenes with their object masks and the prompt "describe the image.",
or a folder of images with a COCO annotation file and a prompt. For each sample the model answers
once (a Trace); each method explains every answer token; every registered metric whose needs are
met scores the explanation (``lvlm_metrics`` and any installed metric plugin). A "uniform random"
row (independent uniform values on each grid, seeded per sample) is the baseline that every
method must beat.

Each finished sample is appended as one JSON line to ``results.jsonl`` in the output folder (and
flushed to disk) before the next starts, so an interrupted run (Ctrl-C, a crash, a closed laptop)
loses at most the sample in progress: running the same command again skips the samples already
there. ``run.json`` records everything needed to reproduce the run (settings, model, versions,
seeds, command); a rerun with different settings into the same folder is refused, since its
results could not be pooled. The tables and figures are written by ``benchmark.report`` from the
JSON lines alone.

With ``replicas`` (``lvlm-studio benchmark --ray``) the samples run on a Ray cluster, one task per
sample on model replicas (``core.models.replicas``); each replica runs the same :func:`run_sample`
and this process appends the records as they arrive, into the same resumable ``results.jsonl``.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lvlm_studio.core.errors import Cancelled, InputError, LVLMError
from lvlm_studio.core.io.files import check_output_folder, read_run_record, reporting, write_bytes, write_text
from lvlm_studio.core.io.lines import append_line, read_lines
from lvlm_studio.core.io.records import environment, jsonable, package_version
from lvlm_studio.core.plugin.checks import check_explanation, check_metric_result
from lvlm_studio.core.plugin.contracts import declared_directions, require_applicable
from lvlm_studio.core.plugin.explanation import Explanation, fixed_levels, overlay, to_pixels
from lvlm_studio.core.plugin.jobs import Job, Progress, relay, run_job

log = logging.getLogger(__name__)

PROMPT = "describe the image."
RANDOM = "uniform random"
RESULTS = "results.jsonl"
RECORD = "run.json"
EXAMPLES = "examples"
#: What ``benchmark.report`` writes from the results: removed when a run (re)starts.
REPORTS = ("summary.md", "summary.csv", "tables", "curves.png", "examples.png")
#: Settings that may differ between a run and its resumption (they do not change any result).
RESUMABLE_CHANGES = frozenset({"n", "examples"})


@dataclass
class BenchmarkSettings:
    """What a run computes; saved in ``run.json`` and compared on resumption."""

    methods: list[str]
    n: int = 100
    prompt: str = PROMPT
    images: str | None = None  # folder of images (with ``coco``); None: held-out demo scenes
    coco: str | None = None
    metrics: list[str] = field(default_factory=list)  # empty: every registered metric
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str | None = None  # method the others are compared with (agreement); default the first
    max_new_tokens: int = 32
    seed: int = 0
    examples: int = 4  # samples whose overlays are drawn
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> name -> value

    def key(self) -> dict[str, Any]:
        key = {k: v for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}
        if not self.method_params:  # the key of a run recorded before methods took parameters
            del key["method_params"]
        return key

    def params_of(self, explainer: Any) -> dict[str, Any]:
        """The parameters ``explainer`` runs with: its defaults overlaid with ``method_params``."""
        return explainer.resolve_params(self.method_params.get(explainer.id, {}))


@dataclass
class Sample:
    """One image of the dataset and how to get its masks for a given answer."""

    key: str
    image: Image.Image
    masks: Callable[[list[str]], dict[Any, np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)


class Dataset:
    """The run's samples by position: every key at once, each sample (its image read) on demand.

    By default the first ``n`` held-out demo scenes (seeds from ``HELDOUT_SEED_BASE``) with their
    masks; with ``settings.images``, the first ``n`` images (by file name) of the COCO file found
    in that folder, with one mask per category. Built wherever samples run (the driver, or each
    Ray replica: the folder and file must then be at the same paths on every node)."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        self.settings = settings
        self.coco: Any = None
        if settings.images is None:
            from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE

            self.keys = [f"scene-{HELDOUT_SEED_BASE + i}" for i in range(settings.n)]
            return
        from lvlm_studio.core.metrics.masks import load_coco

        folder = Path(settings.images)
        if not folder.is_dir():
            raise InputError(f"image folder {folder} does not exist.", "Pass the folder that holds the COCO images.")
        self.coco = load_coco(settings.coco or "")
        names = sorted(Path(info["file_name"]).name for info in self.coco.imgs.values())
        present = [name for name in names if (folder / name).exists()]
        if not present:
            raise InputError(f"none of the {len(names)} images of {settings.coco} is in {folder}.",
                             "Use the folder and annotation file of the same dataset.")
        self.keys = present[:settings.n]

    def sample(self, index: int) -> Sample:
        """Sample ``index`` (0-based) of the run."""
        if self.coco is None:
            from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
            from lvlm_studio.demo.pointing import scene_masks
            from lvlm_studio.demo.scenes import make_scene

            scene = make_scene(HELDOUT_SEED_BASE + index)
            return Sample(f"scene-{scene.seed}", scene.image, lambda tokens: scene_masks(scene, tokens),
                          {"seed": scene.seed, "caption": scene.caption()})
        from lvlm_studio.core.io.images import open_image
        from lvlm_studio.core.metrics.masks import coco_masks

        name, annotations = self.keys[index], self.settings.coco or ""
        image = open_image(Path(self.settings.images or "") / name)
        return Sample(name, image, lambda tokens: coco_masks(annotations, name, image.size, self.coco),
                      {"file": name})


def random_explanation(trace: Any, targets: list[int], seed: int, sample_index: int) -> Explanation:
    """Independent uniform values on every grid cell, for every target; the same for the same sample."""
    rng = np.random.default_rng([seed, sample_index])
    maps = {t: [rng.random(region.grid) for region in trace.regions] for t in targets}
    return Explanation(RANDOM, maps, {"seed": seed, "sample": sample_index}, {"method": "uniform random baseline"})


# -- the run ------------------------------------------------------------------------------------
def run_benchmark(loaded: Any, settings: BenchmarkSettings, out: str | Path, registry: Any = None,
                  command: list[str] | None = None, replicas: Any = None) -> Job[list[dict[str, Any]]]:
    """Run (or resume) the benchmark into ``out``; return every sample's record. A job: progress at
    least once per forward pass, cancellable; finished samples are already on disk.

    ``replicas``, a ``core.models.replicas.ReplicaPool``, runs the samples on its Ray replicas
    instead (``loaded`` may then be None): each replica runs :func:`run_sample`, the same function
    as here, and this process appends each record as it arrives, so the records are those of a
    single-process run but for their ``seconds`` and their order in ``results.jsonl``."""
    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    if settings.n < 1:
        raise InputError(f"n = {settings.n} leaves nothing to run.", "Use at least 1 sample.")
    explainers, metrics = _plan(settings, registry)
    if replicas is None:
        context = sample_context(loaded, settings, registry)  # refuses a method that does not apply
        model = loaded.describe()
    else:
        replicas.prepare(partial(sample_context, settings=settings))
        model = replicas.describe()
    out = Path(out)
    providers = (registry.providers_of(methods=list(explainers), metrics=list(metrics))
                 if hasattr(registry, "providers_of") else {})
    records = _prepare(out, settings, model, command, metric_directions(metrics),
                       {m: settings.params_of(e) for m, e in explainers.items()}, providers)
    done = {r["sample"] for r in records}
    started = time.perf_counter()
    if replicas is None:
        todo = [index for index, key in enumerate(context.dataset.keys) if key not in done]
        for index in todo:
            yield Progress(index, settings.n, "answering")
            record, files = yield from run_sample(context, index)
            _keep(out, record, files)
            records.append(record)
    else:
        todo = [index for index, key in enumerate(Dataset(settings).keys) if key not in done]
        finished = len(records)
        yield Progress(finished, settings.n, f"answering on {len(replicas)} {replicas.slot} replicas")
        for _, result in replicas.map(_run_sample_job, todo):
            if result is not None:
                record, files = result
                _keep(out, record, files)
                records.append(record)
                finished += 1
            yield Progress(finished, settings.n, f"answering on {len(replicas)} {replicas.slot} replicas")
    _finish(out, records, time.perf_counter() - started)
    yield Progress(settings.n, settings.n, "done")
    return sorted(records, key=lambda r: r["index"])


@dataclass
class SampleContext:
    """What every sample of a run needs, built once in each process that runs samples."""

    loaded: Any
    settings: BenchmarkSettings
    explainers: dict[str, Any]
    metrics: dict[str, Any]
    dataset: Dataset

    @property
    def reference(self) -> str:
        return self.settings.reference or self.settings.methods[0]


def sample_context(loaded: Any, settings: BenchmarkSettings, registry: Any = None) -> SampleContext:
    """The methods, metrics and dataset of ``settings`` for ``loaded``; a method that does not apply
    to the model is refused here, before any sample runs."""
    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    explainers, metrics = _plan(settings, registry)
    for explainer in explainers.values():  # refuse at once, not with an error row per sample
        require_applicable(explainer, loaded, settings.params_of(explainer))
    return SampleContext(loaded, settings, explainers, metrics, Dataset(settings))


def _plan(settings: BenchmarkSettings, registry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's explainers and metrics by id, checked against the registry (no model needed)."""
    explainers = {m: registry.explainer(m) for m in settings.methods}
    unknown = sorted(set(settings.method_params) - set(explainers))
    if unknown:
        raise InputError(f"parameters are given for {unknown[0]!r}, which this run does not explain with.",
                         f"Its methods: {', '.join(settings.methods)}.")
    return explainers, _chosen_metrics(registry, settings)


def run_sample(context: SampleContext, index: int) -> Job[tuple[dict[str, Any], dict[str, bytes]]]:
    """Sample ``index``: the model's answer, every method's explanation and metrics, the random
    baseline. Returns its record (one line of results.jsonl) and the example files it draws (name
    in ``examples/`` -> bytes; only for the first ``settings.examples`` samples), which the caller
    writes: the same function runs in this process and on Ray replicas."""
    from lvlm_studio.core.tracing.trace import generate_trace

    settings = context.settings
    sample = context.dataset.sample(index)
    sample_started = time.perf_counter()
    trace = generate_trace(context.loaded, sample.image, settings.prompt, max_new_tokens=settings.max_new_tokens)
    record: dict[str, Any] = {"sample": sample.key, "index": index, "info": sample.info,
                              "answer": trace.answer_text, "tokens": trace.answer_tokens, "methods": {}}
    files: dict[str, bytes] = {}
    targets = list(range(len(trace.answer_ids)))
    masks, masks_error = None, None
    try:
        masks = sample.masks(trace.answer_tokens)
    except InputError as exc:
        masks_error = str(exc)
    if not targets:
        record["skipped"] = "empty answer"
    else:
        for method in [*settings.methods, RANDOM]:
            record["methods"][method], example = yield from _score_method(
                context.loaded, trace, method, context.explainers.get(method), context.metrics, masks, masks_error,
                settings, context.reference, index, targets, method, index < settings.examples)
            files.update(example)
    record["seconds"] = round(time.perf_counter() - sample_started, 3)
    return record, files


def _run_sample_job(context: SampleContext, index: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """:func:`run_sample` driven to its end, as a Ray replica runs it."""
    return run_job(run_sample(context, index))


def _keep(out: Path, record: dict[str, Any], files: dict[str, bytes]) -> None:
    """A finished sample on disk: its example files, then its line in results.jsonl."""
    for name, data in files.items():
        write_bytes(out / EXAMPLES / name, data)
    append_line(out / RESULTS, record)


def _chosen_metrics(registry: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    available = registry.metrics()
    chosen = settings.metrics or list(available)
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise InputError(f"no metric {unknown[0]!r}.", f"Available: {', '.join(sorted(available))}.")
    return {m: available[m] for m in chosen}


def _score_method(loaded, trace, method, explainer, metrics, masks, masks_error, settings, reference, index,
                  targets, message, draw) -> Job[tuple[dict[str, Any], dict[str, bytes]]]:
    """One method on one sample: its explanation, every metric's values and curves, and errors; and,
    when ``draw``, the files of its example overlay."""
    from lvlm_studio.core.metrics.sanity import explain

    result: dict[str, Any] = {"values": {}, "curves": {}, "errors": {}, "seconds": {}}
    started = time.perf_counter()
    try:
        if explainer is None:
            explanation = random_explanation(trace, targets, settings.seed, index)
        else:
            explanation = yield from _forwarded(
                explain(explainer, trace, loaded, targets, settings.params_of(explainer)), index, settings.n, message)
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - one broken method must not stop the benchmark
        result["errors"]["explain"] = f"{type(exc).__name__}: {exc}"
        return result, {}
    if explainer is not None:  # a method that breaks the contract stops the run: its every row would be wrong
        check_explanation(explanation, trace, targets, explainer)
    result["seconds"]["explain"] = round(time.perf_counter() - started, 4)
    for metric_id, metric in metrics.items():
        started = time.perf_counter()
        if "masks" in metric.needs and masks is None:
            result["errors"][metric_id] = masks_error or "no masks"
            continue
        given = dict(settings.metric_params.get(metric_id, {}))
        if metric_id == "agreement":
            given.setdefault("other", reference)
        try:
            params = metric.resolve_params(given)
            scored = yield from _forwarded(metric.score(trace, explanation, loaded, masks, params), index,
                                           settings.n, f"{message}, {metric_id}")
            check_metric_result(scored, metric)
        except (Cancelled, KeyboardInterrupt):
            raise
        except LVLMError as exc:  # a metric that does not apply here (a method it cannot re-run, ...)
            result["errors"][metric_id] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a broken metric plugin must not stop the benchmark
            result["errors"][metric_id] = f"{type(exc).__name__}: {exc}"
            continue
        result["seconds"][metric_id] = round(time.perf_counter() - started, 4)
        result["values"].update({f"{metric_id}.{k}": _number(v) for k, v in scored.values.items()})
        result["curves"].update({f"{metric_id}.{k}": [np.asarray(x, dtype=float).round(5).tolist(),
                                                      np.asarray(y, dtype=float).round(6).tolist()]
                                 for k, (x, y) in scored.curves.items()})
    return result, _example_files(trace, explanation, method, index) if draw else {}


def _forwarded(job: Any, index: int, total: int, message: str) -> Job[Any]:
    """Drive a job (or take a plain result); each of its progress reports becomes one of the run's
    (sample ``index`` of ``total``), so the bar counts samples and the message says what is running."""
    return relay(job, lambda progress: Progress(index, total, f"{message}: {progress.message}"))


def _number(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _example_files(trace: Any, explanation: Explanation, method: str, index: int) -> dict[str, bytes]:
    """An overlay of the map of the answer's first visually relevant token (else its first token),
    what it shows, and the image: file name -> bytes."""
    relevance = trace.visual_relevance
    relevant = relevance.relevant_indices if relevance is not None else []
    token = next((t for t in relevant if t in explanation.maps), explanation.targets[0])
    pixels = to_pixels(explanation.maps[token], trace.regions, trace.image.size)
    stem = f"{index:04d}_{_safe(method)}"
    about = {"method": method, "token": token, "word": trace.answer_tokens[token]}
    return {f"{stem}.png": _png(overlay(trace.image, pixels, levels=fixed_levels(explanation))),
            f"{stem}.json": json.dumps(about).encode(), f"{index:04d}_image.png": _png(trace.image)}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# -- files --------------------------------------------------------------------------------------
def metric_directions(metrics: dict[str, Any]) -> dict[str, str]:
    """"METRIC.VALUE" -> "higher" or "lower" (which is better), as each metric declares it
    (``Metric.directions``); values a metric does not name have no direction."""
    return {f"{metric_id}.{value}": way for metric_id, metric in metrics.items()
            for value, way in declared_directions(metric).items()}


def _prepare(out: Path, settings: BenchmarkSettings, model: dict[str, Any], command: list[str] | None,
             directions: dict[str, str] | None = None, params: dict[str, dict[str, Any]] | None = None,
             providers: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Create or reopen the output folder (refused when it is not ours); return the samples already
    done. The reports of an earlier run are removed, so that nothing old looks complete.
    ``model`` is what ``LoadedModel.describe`` says of the model (a resumed run must be of the same
    source). ``directions`` (which way each metric value is better) go into run.json for the report, with
    ``params``, every method's parameters (defaults included), and ``providers``, the plugin,
    distribution and version behind each method and metric."""
    check_output_folder(out, resume=True)
    previous = read_run_record(out)
    if previous is not None:
        if previous.get("settings_key") != jsonable(settings.key()):
            raise InputError(f"{out} holds a benchmark run with other settings.",
                             "Rerun with the same settings to resume it, or choose another --out.")
        if previous.get("model", {}).get("source") != model.get("source"):
            raise InputError(f"{out} holds a benchmark run of another model.", "Choose another --out.")
    record = {
        "lvlm_studio": package_version("lvlm-studio"),
        "settings": jsonable(asdict(settings)),
        "settings_key": jsonable(settings.key()),
        "model": jsonable(model),
        "command": command or ["lvlm-studio", *sys.argv[1:]],
        "seeds": {"random_baseline": settings.seed,
                  "samples": "held-out demo scenes, seeds HELDOUT_SEED_BASE + i" if settings.images is None
                  else f"first {settings.n} images of {settings.coco} present in {settings.images}, by name"},
        "generation": "greedy",
        "methods": {method: {"params": jsonable(chosen)} for method, chosen in (params or {}).items()},
        "directions": directions or {},
        "versions": environment(("lvlm-studio", "torch", "transformers", "numpy", "scipy", "scikit-image",
                                 "pycocotools")),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "providers": jsonable(providers or {}),
    }
    for stale in REPORTS:
        with reporting(out / stale):
            if (out / stale).is_dir():
                shutil.rmtree(out / stale)
            else:
                (out / stale).unlink(missing_ok=True)
    write_text(out / RECORD, json.dumps(record, indent=2))
    return read_results(out)


def read_results(out: str | Path) -> list[dict[str, Any]]:
    """The finished samples in ``out`` (``read_lines``: a damaged line is skipped and its sample runs
    again; a last line cut short by an interruption is removed)."""
    return read_lines(Path(out) / RESULTS, _is_sample_record)


def _is_sample_record(record: dict[str, Any]) -> bool:
    """Whether a line of results.jsonl is a sample's record."""
    return isinstance(record.get("sample"), str) and isinstance(record.get("index"), int)


def _finish(out: Path, records: list[dict[str, Any]], seconds: float) -> None:
    record_path = out / RECORD
    record = json.loads(record_path.read_text())  # written by _prepare in this run
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["samples_done"] = len(records)
    record["seconds_this_session"] = round(seconds, 2)
    write_text(record_path, json.dumps(record, indent=2))

