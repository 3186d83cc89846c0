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
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lvlm_studio.core.errors import Cancelled, InputError, LVLMError
from lvlm_studio.core.io.files import atomic_path, check_output_folder, read_run_record, reporting, write_text
from lvlm_studio.core.io.lines import append_line, read_lines
from lvlm_studio.core.io.records import environment, jsonable, package_version
from lvlm_studio.core.plugin.checks import check_explanation, check_metric_result
from lvlm_studio.core.plugin.contracts import declared_directions, require_applicable
from lvlm_studio.core.plugin.explanation import Explanation, fixed_levels, overlay, to_pixels
from lvlm_studio.core.plugin.jobs import Job, Progress, relay

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


def demo_samples(n: int) -> Iterator[Sample]:
    """The first ``n`` held-out demo scenes (seeds from ``HELDOUT_SEED_BASE``) with their masks."""
    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
    from lvlm_studio.demo.pointing import scene_masks
    from lvlm_studio.demo.scenes import make_scene

    for i in range(n):
        scene = make_scene(HELDOUT_SEED_BASE + i)
        yield Sample(f"scene-{scene.seed}", scene.image, lambda tokens, scene=scene: scene_masks(scene, tokens),
                     {"seed": scene.seed, "caption": scene.caption()})


def coco_samples(images: str | Path, annotation_file: str | Path, n: int) -> Iterator[Sample]:
    """Images of the COCO file found in the folder, by file name, with one mask per category."""
    from lvlm_studio.core.io.images import open_image
    from lvlm_studio.core.metrics.masks import coco_masks, load_coco

    folder = Path(images)
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist.", "Pass the folder that holds the COCO images.")
    coco = load_coco(annotation_file)
    names = sorted(Path(info["file_name"]).name for info in coco.imgs.values())
    present = [name for name in names if (folder / name).exists()]
    if not present:
        raise InputError(f"none of the {len(names)} images of {annotation_file} is in {folder}.",
                         "Use the folder and annotation file of the same dataset.")
    for name in present[:n]:
        image = open_image(folder / name)
        yield Sample(name, image,
                     lambda tokens, name=name, size=image.size: coco_masks(annotation_file, name, size, coco),
                     {"file": name})


def random_explanation(trace: Any, targets: list[int], seed: int, sample_index: int) -> Explanation:
    """Independent uniform values on every grid cell, for every target; the same for the same sample."""
    rng = np.random.default_rng([seed, sample_index])
    maps = {t: [rng.random(region.grid) for region in trace.regions] for t in targets}
    return Explanation(RANDOM, maps, {"seed": seed, "sample": sample_index}, {"method": "uniform random baseline"})


# -- the run ------------------------------------------------------------------------------------
def run_benchmark(loaded: Any, settings: BenchmarkSettings, out: str | Path, registry: Any = None,
                  command: list[str] | None = None) -> Job[list[dict[str, Any]]]:
    """Run (or resume) the benchmark into ``out``; return every sample's record. A job: progress at
    least once per forward pass, cancellable; finished samples are already on disk."""
    from lvlm_studio.core.tracing.trace import generate_trace

    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    if settings.n < 1:
        raise InputError(f"n = {settings.n} leaves nothing to run.", "Use at least 1 sample.")
    explainers = {m: registry.explainer(m) for m in settings.methods}
    unknown = sorted(set(settings.method_params) - set(explainers))
    if unknown:
        raise InputError(f"parameters are given for {unknown[0]!r}, which this run does not explain with.",
                         f"Its methods: {', '.join(settings.methods)}.")
    for explainer in explainers.values():  # refuse at once, not with an error row per sample
        require_applicable(explainer, loaded, settings.params_of(explainer))
    metrics = _chosen_metrics(registry, settings)
    reference = settings.reference or settings.methods[0]
    out = Path(out)
    providers = (registry.providers_of(methods=list(explainers), metrics=list(metrics))
                 if hasattr(registry, "providers_of") else {})
    records = _prepare(out, settings, loaded, command, metric_directions(metrics),
                       {m: settings.params_of(e) for m, e in explainers.items()}, providers)
    done = {r["sample"] for r in records}
    samples = (demo_samples(settings.n) if settings.images is None
               else coco_samples(settings.images, settings.coco or "", settings.n))
    started = time.perf_counter()
    for index, sample in enumerate(samples):
        if sample.key in done:
            continue
        yield Progress(index, settings.n, "answering")
        sample_started = time.perf_counter()
        trace = generate_trace(loaded, sample.image, settings.prompt, max_new_tokens=settings.max_new_tokens)
        record: dict[str, Any] = {"sample": sample.key, "index": index, "info": sample.info,
                                  "answer": trace.answer_text, "tokens": trace.answer_tokens, "methods": {}}
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
                message = f"{method}"
                record["methods"][method] = yield from _score_method(
                    loaded, trace, method, explainers.get(method), metrics, masks, masks_error, settings, reference,
                    index, targets, message, out / EXAMPLES if index < settings.examples else None)
        record["seconds"] = round(time.perf_counter() - sample_started, 3)
        append_line(out / RESULTS, record)
        records.append(record)
    _finish(out, records, time.perf_counter() - started)
    yield Progress(settings.n, settings.n, "done")
    return sorted(records, key=lambda r: r["index"])


def _chosen_metrics(registry: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    available = registry.metrics()
    chosen = settings.metrics or list(available)
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise InputError(f"no metric {unknown[0]!r}.", f"Available: {', '.join(sorted(available))}.")
    return {m: available[m] for m in chosen}


def _score_method(loaded, trace, method, explainer, metrics, masks, masks_error, settings, reference, index,
                  targets, message, examples_dir) -> Job[dict[str, Any]]:
    """One method on one sample: its explanation, every metric's values and curves, and errors."""
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
        return result
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
    if examples_dir is not None:
        _save_example(trace, explanation, method, index, examples_dir)
    return result


def _forwarded(job: Any, index: int, total: int, message: str) -> Job[Any]:
    """Drive a job (or take a plain result); each of its progress reports becomes one of the run's
    (sample ``index`` of ``total``), so the bar counts samples and the message says what is running."""
    return relay(job, lambda progress: Progress(index, total, f"{message}: {progress.message}"))


def _number(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _save_example(trace: Any, explanation: Explanation, method: str, index: int, folder: Path) -> None:
    """An overlay of the map of the answer's first visually relevant token (else its first token)."""
    relevance = trace.visual_relevance
    relevant = relevance.relevant_indices if relevance is not None else []
    token = next((t for t in relevant if t in explanation.maps), explanation.targets[0])
    pixels = to_pixels(explanation.maps[token], trace.regions, trace.image.size)
    stem = f"{index:04d}_{_safe(method)}"
    with atomic_path(folder / f"{stem}.png") as temporary:
        overlay(trace.image, pixels, levels=fixed_levels(explanation)).save(temporary)
    write_text(folder / f"{stem}.json", json.dumps({"method": method, "token": token,
                                                   "word": trace.answer_tokens[token]}))
    image_path = folder / f"{index:04d}_image.png"
    if not image_path.exists():
        with atomic_path(image_path) as temporary:
            trace.image.save(temporary)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# -- files --------------------------------------------------------------------------------------
def metric_directions(metrics: dict[str, Any]) -> dict[str, str]:
    """"METRIC.VALUE" -> "higher" or "lower" (which is better), as each metric declares it
    (``Metric.directions``); values a metric does not name have no direction."""
    return {f"{metric_id}.{value}": way for metric_id, metric in metrics.items()
            for value, way in declared_directions(metric).items()}


def _prepare(out: Path, settings: BenchmarkSettings, loaded: Any, command: list[str] | None,
             directions: dict[str, str] | None = None, params: dict[str, dict[str, Any]] | None = None,
             providers: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Create or reopen the output folder (refused when it is not ours); return the samples already
    done. The reports of an earlier run are removed, so that nothing old looks complete.
    ``directions`` (which way each metric value is better) go into run.json for the report, with
    ``params``, every method's parameters (defaults included), and ``providers``, the plugin,
    distribution and version behind each method and metric."""
    check_output_folder(out, resume=True)
    previous = read_run_record(out)
    if previous is not None:
        if previous.get("settings_key") != jsonable(settings.key()):
            raise InputError(f"{out} holds a benchmark run with other settings.",
                             "Rerun with the same settings to resume it, or choose another --out.")
        if previous.get("model", {}).get("source") != loaded.describe().get("source"):
            raise InputError(f"{out} holds a benchmark run of another model.", "Choose another --out.")
    record = {
        "lvlm_studio": package_version("lvlm-studio"),
        "settings": jsonable(asdict(settings)),
        "settings_key": jsonable(settings.key()),
        "model": jsonable(loaded.describe()),
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

