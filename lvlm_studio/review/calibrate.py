"""Fit the review's consistency score and thresholds on the demo world, and report them on a held-out split.

    python -m lvlm_studio.review.calibrate --model resources/demo-model \\
        --shortcut resources/demo-model-shortcut --out lvlm_studio/review/calibration.json

(``--world open`` for a main model trained on the open world; the shortcut twin's cases are
open-world scenes either way.)

Four stages, all on the cases of ``review.cases`` (grounded answers against failures):

1. **Methods** (skipped when ``--methods`` is given): the first ``--compare`` calibration cases of
   each kind are explained with every candidate method. For each set of two or three methods, how
   well their agreement (rank correlation, critical-region overlap) separates grounded answers
   from failures (AUROC), plus how often their maps point at the object the answer names; the set
   with the best sum is chosen.
2. **Calibration split**: ``--n`` cases per kind with the chosen methods; the consistency score is
   fitted on them (``combine.fit``), ``threshold_defer`` set so that at most ``--budget`` of the
   grounded answers are deferred, ``threshold_high`` so that at most 2% of failures reach it, and
   each signal's cutoff at the 5th percentile of grounded answers (worse than 95% of them).
3. **Held-out split**: ``--n`` other cases per kind, scored with what was fitted: the AUROC with
   a bootstrap interval, the share deferred of grounded answers and of each kind of failure.
4. **Output**: the calibration JSON (the review's default settings), a Markdown report on stdout,
   and a reliability plot (``--plot``).

Without the shortcut twin (``--shortcut`` missing or not found) its kind is left out and the
report says so. About two minutes on one CPU core with the defaults (the demo model is tiny).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lvlm_studio.core.errors import InputError, LVLMError
from lvlm_studio.core.plugin.jobs import Job, Progress, relay, run_job
from lvlm_studio.demo.scenes import WORLDS
from lvlm_studio.review.assessment import (
    CALIBRATION_FORMAT,
    TOP_FRACTION,
    consistency_of,
    image_cells,
    measure,
    pair_agreement,
)
from lvlm_studio.review.cases import FAILURE_KINDS, KIND_TITLES, KINDS, cases, normalised_answer
from lvlm_studio.review.combine import SIGNALS, Combiner, auroc, bootstrap_auroc, fit

CANDIDATE_METHODS = ("tam", "raw_attention", "rollout", "relevancy", "grad_x_input", "gradcam")
DEFAULT_N = 100
DEFAULT_COMPARE = 30
DEFAULT_BUDGET = 0.07  # grounded answers deferred on the calibration split (the target is 10% held out)
HIGH_FAILURES = 0.02  # at most this share of calibration failures reach "high" confidence
CUTOFF_QUANTILE = 0.05  # a signal fails below what 95% of grounded answers reach
MAX_KEY_TOKENS = 6
CRITICAL_QUANTILE = 0.8
MILD_BLUR = 0.02
TRIES = 4  # a kind whose cases rarely count (the twin ignoring its cue) stops after TRIES x n tries


@dataclass
class Row:
    """One measured case: its truth (kind), what the model said and every signal."""

    kind: str  # a kind of ``cases.KINDS``, or "wrong" for a grounded case answered wrongly
    split: str
    source: str
    question: str
    answer: str
    signals: dict[str, float]
    pairs: dict[str, tuple[float, float]] = field(default_factory=dict)  # "a|b" -> (rank corr., overlap)
    pointing: dict[str, bool] = field(default_factory=dict)  # method -> its map points at the named object

    @property
    def grounded(self) -> bool:
        return self.kind == "grounded"


# -- measuring ------------------------------------------------------------------------------------
def collect(models: dict[str, Any], split: str, n: int, methods: Sequence[str], registry: Any = None,
            kinds: Sequence[str] = KINDS, pairs: bool = False, world: str = "classic") -> Job[list[Row]]:
    """Measure ``n`` counted cases of each kind of ``kinds`` (a job). ``models`` maps "main" and
    optionally "shortcut" to loaded models; kinds whose model is missing are skipped. ``world``:
    the main model's (``scenes.WORLDS``)."""
    from lvlm_studio.core.tracing.trace import generate_trace

    kinds = [k for k in kinds if ("shortcut" if k == "shortcut" else "main") in models]
    rows: list[Row] = []
    total = n * len(kinds)
    for k, kind in enumerate(kinds):
        taken = 0
        for tried, case in enumerate(cases(kind, split, world)):
            if taken >= n or tried >= TRIES * n:
                break
            loaded = models[case.model]
            trace = generate_trace(loaded, case.image, case.question)
            label = kind
            if case.reference is not None and normalised_answer(trace.answer_text) != normalised_answer(case.reference):
                label = "wrong"
            if case.cue is not None and not _follows(trace.answer_text, case.cue):
                continue  # the twin answered from the object: neither grounded truth nor the planted failure
            step = Progress(k * n + taken, total, f"{split}: {kind} {taken + 1}/{n}")
            measured = yield from relay(measure(loaded, trace, methods, registry, MAX_KEY_TOKENS, CRITICAL_QUANTILE,
                                                MILD_BLUR), lambda p, step=step: step)
            row = Row(label, split, case.source, case.question, trace.answer_text, dict(measured.signals))
            if pairs:
                row.pairs = _pair_agreement(measured, trace)
            if case.truth is not None and label == "grounded":
                row.pointing = _pointing(measured, trace, case.truth)
            rows.append(row)
            taken += 1
    yield Progress(total, total, f"{split}: done")
    return rows


def _follows(answer: str, cue: str) -> bool:
    """Whether a colour answer names the cue's colour (its last word)."""
    words = answer.replace(".", " ").split()
    return bool(words) and words[-1].lower() == cue


def _pair_agreement(measured: Any, trace: Any) -> dict[str, tuple[float, float]]:
    """Per pair of methods: rank correlation and critical-region overlap, mean over the key words."""
    inside = image_cells(trace)
    k = max(1, round(TOP_FRACTION * int(inside.sum())))
    out = {}
    for a, b in itertools.combinations(sorted(measured.grids), 2):
        pairs = [pair_agreement(np.concatenate([g.ravel() for g in ga])[inside],
                                np.concatenate([g.ravel() for g in gb])[inside], k)
                 for ga, gb in zip(measured.grids[a], measured.grids[b])]
        out[f"{a}|{b}"] = (float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs])))
    return out


def _pointing(measured: Any, trace: Any, truth: np.ndarray) -> dict[str, bool]:
    from lvlm_studio.core.metrics.plausibility import pointing_hit
    from lvlm_studio.demo.pointing import tolerance_zone

    zone = tolerance_zone(truth, trace, 0.5)
    out = {}
    for method, pixels in measured.maps.items():
        finite = pixels[np.isfinite(pixels)]
        out[method] = bool(finite.size and finite.max() > finite.min() and pointing_hit(pixels, zone))
    return out


# -- choosing the methods -------------------------------------------------------------------------
def compare_methods(rows: Sequence[Row], candidates: Sequence[str]) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Score every set of two or three candidates (see the module docstring); the best set and the table."""
    grounded = [r for r in rows if r.grounded]
    failures = [r for r in rows if not r.grounded]
    pointing = {m: _share([r.pointing[m] for r in grounded if m in r.pointing]) for m in candidates}
    table = []
    for size in (2, 3):
        for subset in itertools.combinations(sorted(candidates), size):
            keys = [f"{a}|{b}" for a, b in itertools.combinations(subset, 2)]
            if not all(k in r.pairs for r in rows for k in keys):
                continue

            def mean(row: Row, j: int, keys: list[str] = keys) -> float:
                return float(np.mean([row.pairs[k][j] for k in keys]))

            rho = auroc([mean(r, 0) for r in grounded], [mean(r, 0) for r in failures])
            overlap = auroc([mean(r, 1) for r in grounded], [mean(r, 1) for r in failures])
            points = float(np.nan_to_num(np.mean([pointing[m] for m in subset])))  # no grounded case: 0
            table.append({"methods": list(subset), "auroc_rank": rho, "auroc_overlap": overlap, "pointing": points,
                          "score": (rho + overlap) / 2 + points})
    if not table:
        raise InputError("no two methods could be compared.", "Check that the candidate methods run on this model.")
    table.sort(key=lambda t: (-t["score"], len(t["methods"])))
    return tuple(table[0]["methods"]), table


def _share(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# -- fitting --------------------------------------------------------------------------------------
def fit_calibration(rows: Sequence[Row], budget: float = DEFAULT_BUDGET) -> dict[str, Any]:
    """The combination, the two thresholds and every signal's cutoff, fitted on the calibration rows."""
    grounded = [r for r in rows if r.grounded]
    if not grounded or len(grounded) == len(rows):
        raise InputError(f"the calibration split has {len(grounded)} grounded answers and "
                         f"{len(rows) - len(grounded)} failures; both are needed.",
                         "Use a trained demo model and more cases (--n).")
    names = [s for s in SIGNALS if any(math.isfinite(r.signals.get(s, math.nan)) for r in rows)]
    combiner = fit([r.signals for r in rows], [r.grounded for r in rows], names)
    scores = np.array([consistency_of(r.signals, combiner) for r in rows])
    labels = np.array([r.grounded for r in rows])
    # Defer below the largest threshold that defers at most ``budget`` of the grounded answers.
    ordered = np.sort(scores[labels])
    allowed = int(math.floor(budget * len(ordered)))
    threshold_defer = float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1])
    failures = np.sort(scores[~labels])
    cap = failures[max(0, int(math.ceil((1 - HIGH_FAILURES) * len(failures))) - 1)]
    threshold_high = float(min(1.0, max(threshold_defer, np.nextafter(cap, 2.0))))
    cutoffs = {}
    for name in combiner.names:
        values = np.array([r.signals.get(name, math.nan) for r in grounded], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            q = CUTOFF_QUANTILE if SIGNALS[name].direction > 0 else 1 - CUTOFF_QUANTILE
            cutoffs[name] = float(np.quantile(values, q))
    return {"combiner": combiner, "threshold_defer": threshold_defer, "threshold_high": threshold_high,
            "cutoffs": cutoffs}


def signal_aurocs(rows: Sequence[Row], bootstrap: int = 500) -> dict[str, list[float]]:
    """Each signal's AUROC (grounded above failures, on its trustworthy side) with a 95% interval."""
    out = {}
    for name, spec in SIGNALS.items():
        a = [spec.direction * r.signals[name] for r in rows
             if r.grounded and math.isfinite(r.signals.get(name, math.nan))]
        b = [spec.direction * r.signals[name] for r in rows
             if not r.grounded and math.isfinite(r.signals.get(name, math.nan))]
        if a and b:
            out[name] = list(bootstrap_auroc(a, b, n=bootstrap))
    return out


def evaluate(rows: Sequence[Row], combiner: Combiner, threshold_defer: float, threshold_high: float,
             bootstrap: int = 1000) -> dict[str, Any]:
    """How the fitted score and thresholds do on ``rows``: AUROC with its interval, defer rates."""
    from lvlm_studio.demo.pointing import wilson_interval

    scores = [consistency_of(r.signals, combiner) for r in rows]
    grounded = [s for s, r in zip(scores, rows) if r.grounded]
    failures = [s for s, r in zip(scores, rows) if not r.grounded]
    value, low, high = bootstrap_auroc(grounded, failures, n=bootstrap)
    kinds: dict[str, dict[str, Any]] = {}
    for kind in ["grounded", "wrong", *FAILURE_KINDS]:
        mine = [s for s, r in zip(scores, rows) if r.kind == kind]
        if not mine:
            continue
        deferred = sum(s < threshold_defer for s in mine)
        kinds[kind] = {"cases": len(mine), "deferred": deferred, "share": deferred / len(mine),
                       "interval": list(wilson_interval(deferred, len(mine))),
                       "high": sum(s >= threshold_high for s in mine)}
    deferred_failures = sum(s < threshold_defer for s in failures)
    return {
        "auroc": [value, low, high],
        "grounded_deferred": kinds.get("grounded", {}).get("share", math.nan),
        "failures_deferred": deferred_failures / len(failures) if failures else math.nan,
        "failures": len(failures),
        "failures_interval": list(wilson_interval(deferred_failures, len(failures))),
        "kinds": kinds,
    }


# -- output ---------------------------------------------------------------------------------------
def calibration_record(fitted: dict[str, Any], methods: Sequence[str], report: dict[str, Any],
                       description: str) -> dict[str, Any]:
    return {
        "format": CALIBRATION_FORMAT,
        "description": description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "methods": list(methods),
        "threshold_defer": fitted["threshold_defer"],
        "threshold_high": fitted["threshold_high"],
        "cutoffs": fitted["cutoffs"],
        "combiner": fitted["combiner"].to_dict(),
        "max_key_tokens": MAX_KEY_TOKENS,
        "critical_quantile": CRITICAL_QUANTILE,
        "mild_blur": MILD_BLUR,
        "report": report,
    }


def format_report(record: dict[str, Any]) -> str:
    """The calibration's numbers as Markdown (docs/REVIEW.md quotes it); ``record`` as written (``_plain``)."""
    report = record["report"]
    held = report["held_out"]
    lines = [f"Calibration of the review's consistency score: {record['description']}.", ""]
    sizes = report["sizes"]
    lines += ["| kind | calibration | held out |", "|---|---:|---:|"]
    for kind in ["grounded", "wrong", *FAILURE_KINDS]:
        if kind in sizes["calibration"] or kind in sizes["held-out"]:
            lines.append(f"| {KIND_TITLES[kind]} | {sizes['calibration'].get(kind, 0)} | "
                         f"{sizes['held-out'].get(kind, 0)} |")
    for note in report.get("notes", []):
        lines += ["", note]
    if report.get("methods_table"):
        lines += ["", "Method sets (calibration cases; agreement AUROC: grounded answers agree more than failures; "
                  "pointing: the maps' maximum on the named object):", "",
                  "| methods | AUROC rank corr. | AUROC overlap | pointing | score |", "|---|---:|---:|---:|---:|"]
        for row in report["methods_table"][:8]:
            lines.append(f"| {', '.join(row['methods'])} | {_num(row['auroc_rank'])} | {_num(row['auroc_overlap'])} | "
                         f"{_pct(row['pointing'])} | {_num(row['score'])} |")
    lines += ["", f"Chosen methods: {', '.join(record['methods'])}.", "",
              "| signal | AUROC calibration [95% CI] | AUROC held out | weight |", "|---|---|---|---:|"]
    weights = record["combiner"]["weights"]
    for name in SIGNALS:
        cal = report["signals_calibration"].get(name)
        held_signal = report["signals_held_out"].get(name)
        if cal is None:
            continue
        weight = _num(weights[name]) if name in weights else "dropped"
        held_value = _num(held_signal[0]) if held_signal else "-"
        lines.append(f"| {name} | {_num(cal[0])} [{_num(cal[1])}, {_num(cal[2])}] | {held_value} | {weight} |")
    value, low, high = held["auroc"]
    lines += ["", f"Thresholds: defer below a consistency of {_num(record['threshold_defer'], 3)}; high "
                  f"confidence from {_num(record['threshold_high'], 3)}.", "",
              f"**Held-out split**: AUROC of the consistency score {_num(value, 3)} (95% bootstrap interval "
              f"{_num(low, 3)}-{_num(high, 3)}); deferred: {_pct(held['grounded_deferred'])} of grounded correct "
              f"answers (target at most 10%), {_pct(held['failures_deferred'])} of {held['failures']} failures "
              f"(target at least 80%).", "",
              "| held out | cases | deferred | 95% interval | high confidence |", "|---|---:|---:|---|---:|"]
    for kind, row in held["kinds"].items():
        lines.append(f"| {KIND_TITLES[kind]} | {row['cases']} | {_pct(row['share'])} | "
                     f"{_pct(row['interval'][0])}-{_pct(row['interval'][1])} | {row['high']} |")
    met = (held["grounded_deferred"] is not None and held["failures_deferred"] is not None
           and held["grounded_deferred"] <= 0.10 and held["failures_deferred"] >= 0.80)
    lines += ["", f"Targets {'met' if met else 'NOT met'} on the held-out split."]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.0%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def plot(rows: Sequence[Row], combiner: Combiner, threshold_defer: float, threshold_high: float,
         path: str | Path, bins: int = 10) -> Path:
    """Reliability (the share of grounded answers per consistency bin, both classes weighted equally
    as in the fit) and the scores of each kind, held-out split; PNG."""
    from matplotlib.figure import Figure

    from lvlm_studio.core.io.files import atomic_path

    scores = np.array([consistency_of(r.signals, combiner) for r in rows])
    labels = np.array([r.grounded for r in rows])
    weights = np.where(labels, 0.5 / max(labels.sum(), 1), 0.5 / max((~labels).sum(), 1))
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(scores, edges) - 1, 0, bins - 1)
    figure = Figure(figsize=(10, 4.2))
    left, right = figure.subplots(1, 2)
    centres, observed, counts = [], [], []
    for b in range(bins):
        inside = which == b
        if inside.any():
            centres.append(scores[inside].mean())
            observed.append(float((weights[inside] * labels[inside]).sum() / weights[inside].sum()))
            counts.append(int(inside.sum()))
    left.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect calibration")
    left.plot(centres, observed, marker="o", color="#1f77b4", label="held-out split")
    for x, y, c in zip(centres, observed, counts):
        left.annotate(str(c), (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
    left.axvline(threshold_defer, color="#d68910", linewidth=1)
    left.set_xlabel("consistency score")
    left.set_ylabel("share grounded (classes weighted equally)")
    left.set_title("Reliability (numbers: cases per bin)", fontsize=10)
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.legend(fontsize=8, loc="upper left")
    kinds = [k for k in ["grounded", "wrong", *FAILURE_KINDS] if any(r.kind == k for r in rows)]
    for i, kind in enumerate(kinds):
        values = scores[[r.kind == kind for r in rows]]
        jitter = np.random.default_rng(i).uniform(-0.25, 0.25, values.size)
        right.scatter(values, i + jitter, s=6, alpha=0.6, color="#2e86c1" if kind == "grounded" else "#c0392b")
    right.axvline(threshold_defer, color="#d68910", linewidth=1, label="defer below")
    right.axvline(threshold_high, color="#27ae60", linewidth=1, label="high confidence from")
    right.set_yticks(range(len(kinds)))
    right.set_yticklabels(kinds, fontsize=8)
    right.set_xlim(0, 1)
    right.set_xlabel("consistency score")
    right.set_title("Held-out cases by kind", fontsize=10)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    return path


# -- the whole run --------------------------------------------------------------------------------
def calibrate(models: dict[str, Any], n: int = DEFAULT_N, methods: Sequence[str] | None = None,
              compare: int = DEFAULT_COMPARE, candidates: Sequence[str] = CANDIDATE_METHODS,
              budget: float = DEFAULT_BUDGET, registry: Any = None, description: str = "",
              notes: Sequence[str] = (), log: Callable[[str], None] = lambda message: None,
              bootstrap: int = 1000, world: str = "classic") -> Job[tuple[dict[str, Any], list[Row]]]:
    """Run the four stages (a job); returns the calibration record and the held-out rows."""
    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    started = time.perf_counter()
    table: list[dict[str, Any]] = []
    if methods is None:
        compared = yield from collect(models, "calibration", compare, candidates, registry, pairs=True, world=world)
        methods, table = compare_methods(compared, candidates)
        log(f"methods chosen: {', '.join(methods)} ({time.perf_counter() - started:.0f} s)")
    calibration = yield from collect(models, "calibration", n, methods, registry, world=world)
    log(f"calibration split measured ({time.perf_counter() - started:.0f} s)")
    held_out = yield from collect(models, "held-out", n, methods, registry, world=world)
    log(f"held-out split measured ({time.perf_counter() - started:.0f} s)")
    fitted = fit_calibration(calibration, budget)
    combiner = fitted["combiner"]
    report = {
        "sizes": {split: _sizes(rows) for split, rows in (("calibration", calibration), ("held-out", held_out))},
        "notes": list(notes),
        "methods_table": table,
        "signals_calibration": signal_aurocs(calibration, bootstrap // 2),
        "signals_held_out": signal_aurocs(held_out, bootstrap // 2),
        "calibration": evaluate(calibration, combiner, fitted["threshold_defer"], fitted["threshold_high"], bootstrap),
        "held_out": evaluate(held_out, combiner, fitted["threshold_defer"], fitted["threshold_high"], bootstrap),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return calibration_record(fitted, methods, report, description), held_out


def _sizes(rows: Sequence[Row]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row.kind] = sizes.get(row.kind, 0) + 1
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvlm_studio.review.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the demo model folder (default: the embedded demo model)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="classic",
                        help="the world the model was trained on (default: classic, the shipped model's)")
    parser.add_argument("--shortcut", help="the shortcut twin's folder (left out when missing)")
    parser.add_argument("--out", default="lvlm_studio/review/calibration.json", help="the calibration JSON to write")
    parser.add_argument("--plot", default="docs/images/review-reliability.png", help="the reliability plot (PNG)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"cases per kind and split (default {DEFAULT_N})")
    parser.add_argument("--compare", type=int, default=DEFAULT_COMPARE,
                        help=f"calibration cases per kind for choosing the methods (default {DEFAULT_COMPARE})")
    parser.add_argument("--methods", help="comma-separated methods: skips choosing them")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"share of grounded calibration answers that may be deferred (default {DEFAULT_BUDGET})")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for PyTorch (default 1: the demo model is too small to gain from more)")
    args = parser.parse_args(argv)
    try:
        record = _run(args)
    except LVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(record))
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lvlm_studio.core.formats.audit import model_folder_hash
    from lvlm_studio.core.io.files import check_output_file, write_text
    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR, LoadOptions, load_model

    if args.n < 2 or args.compare < 2:
        raise InputError("--n and --compare must be at least 2.", "Example: --n 100 --compare 30.")
    if not 0 < args.budget < 1:
        raise InputError(f"--budget is {args.budget}; it must lie between 0 and 1.", "Example: --budget 0.07.")
    check_output_file(args.out)
    check_output_file(args.plot)
    torch.set_num_threads(max(1, args.threads))
    main_folder = Path(args.model) if args.model else DEMO_MODEL_DIR
    models = {"main": load_model(main_folder, LoadOptions(device="cpu"))}
    described = [f"{main_folder.name} (folder SHA-256 {model_folder_hash(main_folder)[:12]})"]
    notes = []
    if args.shortcut and Path(args.shortcut).is_dir():
        models["shortcut"] = load_model(args.shortcut, LoadOptions(device="cpu"))
        described.append(f"shortcut twin {Path(args.shortcut).name} "
                         f"(SHA-256 {model_folder_hash(args.shortcut)[:12]})")
    else:
        notes.append(f"The shortcut twin was not available ({args.shortcut or 'no --shortcut given'}): its kind of "
                     "failure is left out of this calibration.")
        print(f"warning: {notes[-1]}", file=sys.stderr)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None
    description = (f"demo world ({args.world}), {args.n} cases per kind and split; models: "
                   f"{'; '.join(described)}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    last = [0.0]

    def progress(p: Progress) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            log(f"  {p.message}")

    job = calibrate(models, args.n, methods, args.compare, budget=args.budget, description=description,
                    notes=notes, log=log, world=args.world)
    record, held_out = run_job(job, progress)
    record = _plain(record)
    write_text(args.out, json.dumps(record, indent=1, allow_nan=False) + "\n")
    fitted = Combiner.from_dict(record["combiner"])
    plot(held_out, fitted, record["threshold_defer"], record["threshold_high"], args.plot)
    log(f"wrote {args.out} and {args.plot} in {record['report']['seconds']:.0f} s")
    return record


def _plain(value: Any) -> Any:
    """``value`` as strict JSON data: NumPy numbers as Python ones, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, Combiner):
        return _plain(value.to_dict())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


if __name__ == "__main__":
    sys.exit(main())
