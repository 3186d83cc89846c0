"""Run a study over a dataset and models, resumably, like the benchmark.

For each model in turn (loaded when its first unfinished sample comes up, so a finished model is
never loaded again) and each sample, the study's ``run_sample`` gives rows; they are appended, as
one JSON line per (model, sample), to ``results.jsonl`` and flushed to disk before the next sample,
so an interrupted run loses at most the sample in progress and running the same command again skips
what is there. A sample on which the study raises is recorded with its error (and counted in the
report) instead of stopping the run. ``run.json`` records what is needed to reproduce the run
(study, parameters, dataset, models, versions, seed, command); a rerun with other settings into the
same folder is refused, since its rows could not be pooled. The report (``report.write_report``) is
written from the saved rows alone.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.io.files import check_output_folder, read_run_record, write_text
from lvlm_studio.core.io.lines import append_line, read_lines
from lvlm_studio.core.io.records import environment, jsonable, package_version
from lvlm_studio.core.plugin.contracts import Study, StudyContext
from lvlm_studio.core.plugin.jobs import Job, Progress, relay, run_job
from lvlm_studio.studies.datasets import DatasetSettings, samples

RESULTS = "results.jsonl"
RECORD = "run.json"
#: Settings that may differ between a run and its resumption (more samples add rows; none change).
RESUMABLE_CHANGES = frozenset({"n"})


@dataclass
class StudySettings:
    """What a study run computes; saved in run.json and compared on resumption."""

    study: str
    models: list[str]  # labels, in order
    params: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    seed: int = 0

    def key(self) -> dict[str, Any]:
        key = asdict(self)
        key["dataset"] = {k: v for k, v in key["dataset"].items() if k not in RESUMABLE_CHANGES}
        return key


def model_labels(folders: list[str | None]) -> list[str]:
    """A short, unique label per model folder (its folder name; None is the demo model)."""
    labels: list[str] = []
    for folder in folders:
        label = Path(folder).name if folder else "demo-model"
        label = label or str(folder)
        candidate, count = label, 2
        while candidate in labels:
            candidate, count = f"{label}#{count}", count + 1
        labels.append(candidate)
    return labels


def run_study(study: Study, models: dict[str, Any | Callable[[], Any]], settings: StudySettings, out: str | Path,
              registry: Any = None, command: list[str] | None = None,
              replicas: dict[str, Callable[[], Any]] | None = None) -> Job[list[dict[str, Any]]]:
    """Run (or resume) ``study`` into ``out``; return every (model, sample) record. ``models`` maps
    each label to a loaded model or to a function that loads it. A job: progress per sample (and
    whatever the study reports inside one), cancellable; finished samples are already on disk.

    ``replicas`` (``--ray``) maps each label instead to a function that starts a
    ``core.models.replicas.ReplicaPool`` of that model: its samples then run on the Ray replicas (one
    task per sample, the same :func:`_run_one` as here), and this process appends each record as it
    arrives. The records are those of a single-process run but for ``seconds`` and their order."""
    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    settings.dataset.check()
    if len(models) < study.min_models:
        raise InputError(f"study {study.id} compares models: it needs at least {study.min_models}, got {len(models)}.",
                         "Pass --model once per model folder.")
    params = study.resolve_params(settings.params)
    out = Path(out)
    provider = registry.provider("studies", study.id) if hasattr(registry, "provider") else {}
    records = _prepare(out, study, settings, params, command, provider)
    done = {(r["model"], r["sample"]) for r in records}
    total = settings.dataset.n * len(models)
    started = time.perf_counter()
    step = 0
    for label, source in models.items():
        if replicas is not None:
            step = yield from _run_on_replicas(study, replicas[label], label, settings, params, out, done, records,
                                               step, total)
            continue
        loaded = None
        for index, sample in _study_samples(study, settings):
            if (label, sample.key) in done:
                step += 1
                continue
            if loaded is None:
                yield Progress(step, total, f"loading {label}")
                loaded = source() if callable(source) else source
                note_model(out, label, loaded)
            yield Progress(step, total, f"{label}: {sample.key}")
            record = yield from _run_one(study, sample, index, loaded, params,
                                         StudyContext(label, registry, settings.seed, out), step, total)
            append_line(out / RESULTS, record)
            records.append(record)
            step += 1
        del loaded  # one model in memory at a time
    _finish(out, records, time.perf_counter() - started)
    yield Progress(total, total, "done")
    return records


def _run_one(study: Study, sample: Any, index: int, loaded: Any, params: dict[str, Any], context: StudyContext,
             step: int, total: int) -> Job[dict[str, Any]]:
    """Sample ``index`` on one model: its record (one line of results.jsonl), in this process or on a
    Ray replica."""
    record = yield from _rows_of(study, sample, loaded, params, context, step, total)
    record.update(sample=sample.key, index=index, model=context.model_label)
    return record


def _rows_of(study: Study, sample: Any, loaded: Any, params: dict[str, Any], context: StudyContext, step: int,
             total: int) -> Job[dict[str, Any]]:
    started = time.perf_counter()
    try:
        rows = yield from relay(study.run_sample(sample, loaded, params, context),
                                lambda p: Progress(step, total, f"{context.model_label}: {sample.key}: {p.message}"))
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - one failing sample must not stop the study
        return {"rows": [], "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - started, 3)}
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError(f"study {study.id} returned {type(rows).__name__} from run_sample, not a list of dicts.",
                         "Its plugin breaks the Study contract (docs/plugins.md).")
    return {"rows": jsonable(rows), "seconds": round(time.perf_counter() - started, 3)}


def _study_samples(study: Study, settings: StudySettings) -> Iterator[tuple[int, Any]]:
    """The dataset's samples with their indexes, each checked to carry what the study needs."""
    for index, sample in enumerate(samples(settings.dataset, study.demo_tasks)):
        if study.needs_masks and not sample.masks:
            raise InputError(f"study {study.id} needs object masks, and sample {sample.key} has none.",
                             "Use demo scenes, a manifest with masks or boxes, or a COCO file.")
        yield index, sample


# -- on Ray replicas ----------------------------------------------------------------------------
def _run_on_replicas(study: Study, start: Callable[[], Any], label: str, settings: StudySettings,
                     params: dict[str, Any], out: Path, done: set[tuple[str, str]], records: list[dict[str, Any]],
                     step: int, total: int) -> Job[int]:
    """The unfinished samples of model ``label`` on the Ray replicas ``start()`` gives (started only
    when there is something to run); each record appended as it arrives. Returns the step reached."""
    todo = []
    for index, sample in _study_samples(study, settings):
        if (label, sample.key) in done:
            step += 1
        else:
            todo.append(index)
    if not todo:
        return step
    yield Progress(step, total, f"starting the replicas of {label}")
    pool = start()
    try:
        pool.prepare(partial(_replica_context, study=study, label=label, settings=settings, params=params,
                             out=str(out)))
        note_model(out, label, pool.describe())
        for _, record in pool.map(_run_on_replica, todo):
            if record is not None:
                append_line(out / RESULTS, record)
                records.append(record)
                step += 1
            yield Progress(step, total, f"{label}: {len(pool)} {pool.slot} replicas")
    finally:
        pool.close()
    return step


@dataclass
class _ReplicaContext:
    """What a Ray replica keeps for a study's samples: the study, its settings and the model, and the
    dataset read in order (the tasks a replica gets come in increasing order, so it reads it once)."""

    study: Study
    settings: StudySettings
    params: dict[str, Any]
    context: StudyContext
    loaded: Any
    cursor: Any = None
    position: int = -1
    sample: Any = None

    def sample_at(self, index: int) -> Any:
        if self.cursor is None or index < self.position:
            self.cursor, self.position = iter(samples(self.settings.dataset, self.study.demo_tasks)), -1
        while self.position < index:
            self.sample, self.position = next(self.cursor), self.position + 1
        return self.sample


def _replica_context(loaded: Any, study: Study, label: str, settings: StudySettings, params: dict[str, Any],
                     out: str) -> _ReplicaContext:
    """Built once on each replica: the registry of that node (its plugins), the study's context.
    ``StudyContext.out`` is the run's folder path: files a study writes there land on the replica's node."""
    from lvlm_studio.core.plugin.registry import create_registry

    return _ReplicaContext(study, settings, params, StudyContext(label, create_registry(), settings.seed, Path(out)),
                           loaded)


def _run_on_replica(replica: _ReplicaContext, index: int) -> dict[str, Any]:
    """Sample ``index``'s record, computed on a replica by :func:`_run_one`."""
    return run_job(_run_one(replica.study, replica.sample_at(index), index, replica.loaded, replica.params,
                            replica.context, 0, 0))


def read_records(out: str | Path) -> list[dict[str, Any]]:
    """The finished (model, sample) records in ``out`` (damaged lines skipped: they run again)."""
    return read_lines(Path(out) / RESULTS, lambda r: isinstance(r.get("sample"), str)
                      and isinstance(r.get("model"), str) and isinstance(r.get("rows"), list))


def all_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of every record, each with its "model" and "sample" (in the order models ran)."""
    return [{**row, "model": r["model"], "sample": r["sample"]} for r in records for row in r["rows"]]


def _prepare(out: Path, study: Study, settings: StudySettings, params: dict[str, Any],
             command: list[str] | None, provider: dict[str, str] | None = None) -> list[dict[str, Any]]:
    check_output_folder(out, resume=True)
    key = jsonable({**settings.key(), "params": params})
    previous = read_run_record(out)
    if previous is not None and previous.get("settings_key") != key:
        raise InputError(f"{out} holds a run with other settings (another study, models, parameters or dataset).",
                         "Rerun with the same settings to resume it, or choose another --out.")
    record = {
        "lvlm_studio": package_version("lvlm-studio"),
        "kind": "study",
        "study": study.id,
        "title": study.title,
        "provider": provider or {},  # the plugin, distribution and version that gave the study
        "settings": jsonable(asdict(settings)),
        "params": jsonable(params),
        "settings_key": key,
        "dataset": settings.dataset.describe(),
        "command": command or ["lvlm-studio", *sys.argv[1:]],
        "seed": settings.seed,
        "generation": "greedy",
        "versions": environment(("lvlm-studio", "torch", "transformers", "numpy", "scipy", "matplotlib")),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": (previous or {}).get("models", {}),
    }
    write_text(out / RECORD, json.dumps(record, indent=2))
    return read_records(out)


def note_model(out: str | Path, label: str, loaded: Any) -> None:
    """Record in run.json what model ``label`` was (its ``describe()``, or that dict itself: source,
    family, dtype, device)."""
    path = Path(out) / RECORD
    record = json.loads(path.read_text())
    described = jsonable(loaded if isinstance(loaded, dict) else loaded.describe())
    earlier = record.setdefault("models", {}).get(label)
    if earlier is not None and earlier.get("source") != described.get("source"):
        raise InputError(f"{out} holds rows of another model labelled {label!r} ({earlier.get('source')}).",
                         "Choose another --out.")
    record["models"][label] = described
    write_text(path, json.dumps(record, indent=2))


def _finish(out: Path, records: list[dict[str, Any]], seconds: float) -> None:
    path = out / RECORD
    record = json.loads(path.read_text())
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["samples_done"] = len(records)
    record["errors"] = sum(1 for r in records if r.get("error"))
    record["seconds_this_session"] = round(seconds, 2)
    write_text(path, json.dumps(record, indent=2))
