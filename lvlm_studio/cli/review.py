"""``lvlm-studio review``: the headless clinical review of a worklist (docs/REVIEW.md).

    lvlm-studio review --cases MANIFEST --out DIR [--reviewer NAME]

MANIFEST is a folder of images (each asked "describe the image.") or a CSV or JSON manifest of
cases, images, questions and optional reference answers (``lvlm_studio.core.formats.worklist``).
Each question is answered and its grounding assessed (``lvlm_studio.review.assessment``); DIR
receives ``verdicts.csv`` (case, question, answer, probability, consistency, confidence, decision,
reasons), one case report per case (``reports/CASE.pdf``) and one audit record per question marked
"pending" (``audit.jsonl``, docs/AUDIT.md), plus ``run.json``. A case with several questions is
recorded per question as "case#1", "case#2"... in the verdicts and the audit trail, as the app does.

A bad manifest row or a case that fails (an unreadable image) gets one message on stderr and the
other cases go on; the command then ends with exit code 2. DIR may be a folder an earlier review
wrote: its audit log is continued (never rewritten), its verdicts and reports are replaced.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path
from typing import Any

from lvlm_studio.cli import common

VERDICT_COLUMNS = ("case", "question", "answer", "probability", "consistency", "confidence", "decision", "reasons")
DEFAULT_REVIEWER = "unassigned"
DEFAULT_QUESTION = "describe the image."


def add_parsers(sub: argparse._SubParsersAction) -> None:
    review = sub.add_parser("review", help="assess every case of a worklist: verdicts, case reports, audit records",
                            description=__doc__.replace("``", ""),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    review.add_argument("--cases", required=True, metavar="MANIFEST",
                        help="a folder of images, or a .csv/.json manifest (case, image, question, reference)")
    review.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (new, empty, or an earlier review's)")
    review.add_argument("--reviewer", default=DEFAULT_REVIEWER,
                        help=f"who the audit records are for (default: {DEFAULT_REVIEWER})")
    review.add_argument("--methods", help="comma-separated explanation methods (default: the calibrated ones)")
    review.add_argument("--calibration", metavar="FILE", help="a calibration JSON (default: the shipped one)")
    common.add_model_options(review)
    review.set_defaults(func=cmd_review)


def cmd_review(args: argparse.Namespace) -> int:
    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.formats.audit import AuditLog
    from lvlm_studio.core.formats.worklist import read_worklist
    from lvlm_studio.core.io.files import check_output_folder

    worklist = read_worklist(args.cases, question=DEFAULT_QUESTION)  # no usable row at all: an InputError
    for problem in worklist.skipped:
        common.status(f"error: {worklist.name}, {problem} Skipped; the other cases go on.")
    if not args.reviewer.strip() or any(ord(c) < 32 for c in args.reviewer):
        raise InputError("--reviewer is empty or holds control characters.", "Example: --reviewer dr.lee.")
    settings = _settings(args)
    out = check_output_folder(args.out, resume=True)
    registry = _registry(settings)
    loaded, _ = common.load(args)
    out.mkdir(parents=True, exist_ok=True)
    log = AuditLog(out / "audit.jsonl")
    failures = _review(worklist, settings, registry, loaded, out, log, args)
    return common.EXIT_INPUT if failures or worklist.skipped else 0


def _settings(args: argparse.Namespace):
    from dataclasses import replace

    from lvlm_studio.review.assessment import ReviewSettings

    settings = ReviewSettings.from_file(args.calibration) if args.calibration else ReviewSettings()
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        settings = replace(settings, methods=methods)
    return settings


def _registry(settings):
    from lvlm_studio.core.plugin.registry import create_registry

    registry = create_registry()
    for method in settings.methods:
        registry.explainer(method)  # an unknown method fails now, before the model loads
    return registry


def _review(worklist, settings, registry, loaded, out: Path, log, args: argparse.Namespace) -> int:
    """Assess every question of every case; write the verdicts, reports and audit records as it goes
    (a crash loses at most the case in progress). Returns how many cases failed."""
    from lvlm_studio.core.errors import Cancelled, LVLMError
    from lvlm_studio.core.formats.audit import AuditEntry, file_sha256, model_folder_hash, plugin_versions
    from lvlm_studio.core.io.files import write_record
    from lvlm_studio.core.io.images import open_image
    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.review.assessment import assess
    from lvlm_studio.review.report import write_case_report

    model_folder = Path(args.model).expanduser() if args.model else DEMO_MODEL_DIR
    model_hash = model_folder_hash(model_folder)
    cases: dict[str, list[Any]] = {}
    for item in worklist.items:
        cases.setdefault(item.case, []).append(item)
    record: dict[str, Any] = {"command": "review", "worklist": worklist.name, "reviewer": args.reviewer,
                              "model": model_folder.name, "model_sha256": model_hash,
                              "methods": list(settings.methods), "calibration": settings.calibration,
                              "cases": len(cases), "questions": len(worklist.items),
                              "problems": [f"{worklist.name}, {p}" for p in worklist.skipped]}
    write_record(out, record)
    plugins = plugin_versions(registry)
    verdicts: list[dict[str, str]] = []
    names: set[str] = set()
    failures = 0
    started = time.perf_counter()
    for number, (case, items) in enumerate(cases.items(), start=1):
        image_path = items[0].image
        try:
            image = open_image(image_path)
            image_hash = file_sha256(image_path)
            assessments = []
            for item in items:
                with common.progress_bar(f"case {number}/{len(cases)} {item.id}") as update:
                    assessment = run_job(assess(loaded, image, item.question, settings, registry), update)
                assessments.append(assessment)
                log.append(AuditEntry(reviewer=args.reviewer, case=item.id, image=image_hash, model=model_hash,
                                      answer=assessment.answer, decision="pending", scores=_scores(assessment),
                                      thresholds=assessment.thresholds, plugins=plugins))
                verdicts.append(_verdict_row(item.id, assessment))
            write_case_report(assessments, out / "reports" / f"{_unique(safe_name(case), names)}.pdf", case=case,
                              reviewer=args.reviewer, image_name=image_path.name, model_name=model_folder.name,
                              model_version=f"folder SHA-256 {model_hash[:12]}")
        except Cancelled:
            raise
        except LVLMError as exc:
            failures += 1
            message = str(exc).replace(str(image_path), image_path.name)
            common.status(f"error: case {case}: {message} The other cases go on.")
            record["problems"].append(f"case {case}: {message}")
        _write_verdicts(out / "verdicts.csv", verdicts)
    record["seconds"] = round(time.perf_counter() - started, 1)
    write_record(out, record)
    deferred = sum(v["decision"] == "defer" for v in verdicts)
    print(f"{len(cases) - failures} of {len(cases)} cases reviewed, {len(verdicts)} answers: "
          f"{len(verdicts) - deferred} accept, {deferred} defer (all pending sign-off). Verdicts: "
          f"{out / 'verdicts.csv'}; reports: {out / 'reports'}; audit log: {out / 'audit.jsonl'}")
    return failures


def _scores(assessment) -> dict[str, float | None]:
    """The audit record's scores: the probability, the consistency and every signal (None where not measured)."""
    import math

    scores: dict[str, float | None] = {"probability": assessment.probability, "consistency": assessment.consistency}
    for name, value in assessment.signals.items():
        scores.setdefault(name, value if value is not None and math.isfinite(value) else None)
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in scores.items()}


def _verdict_row(case: str, assessment) -> dict[str, str]:
    return {"case": case, "question": assessment.question, "answer": assessment.answer,
            "probability": f"{assessment.probability:.4f}", "consistency": f"{assessment.consistency:.4f}",
            "confidence": assessment.confidence, "decision": assessment.decision,
            "reasons": "; ".join(assessment.reasons)}


def _write_verdicts(path: Path, rows: list[dict[str, str]]) -> None:
    from lvlm_studio.core.io.files import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=VERDICT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def safe_name(case: str) -> str:
    """A file name for a case's report: letters, digits, '.', '-' and '_' kept, anything else '_'."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", case).strip("._") or "case"
    return name[:120]
