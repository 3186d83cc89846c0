"""A worklist of cases to review: a folder of images, or a CSV or JSON manifest.

A manifest lists cases, each an image and one or more questions about it, with an optional
reference answer:

    case,image,question,reference            (CSV: one question per row; a case may take several rows)
    c-001,scans/001.png,Is there a fracture?,no

    [{"case": "c-001", "image": "scans/001.png", "question": "Is there a fracture?", "reference": "no"},
     {"case": "c-002", "image": "scans/002.png", "questions": ["What is shown?", "Which side?"]}]

(JSON: a list of objects, or an object whose "cases" is that list; "question" may be a list too,
and "reference" a list of the same length.) Image paths are relative to the manifest's folder.
A folder of images is a worklist with one case per image (the case id is its file name without
the extension) and one question given by the caller.

Each question about a case is one ``ReviewItem``: what a reviewer signs off. Its ``id`` is what the
audit trail records as the case: the manifest's case id, or "case#2" and so on for a case with
several questions. A case id must not be a patient identifier (use a study or case number).

A bad row (no image, an image that is not there, an empty question, a case id given twice with
two images...) is skipped and named in ``Worklist.skipped``; the others load. Only a manifest
that cannot be read at all, or has no usable row, is an ``InputError``. No Qt: the app and the
command line read worklists the same way.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvlm_studio.core.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".dcm")
MANIFEST_SUFFIXES = (".csv", ".json")
MAX_MANIFEST_BYTES = 32 << 20
MAX_ITEMS = 100_000
MAX_CASE_ID = 200  # as the audit trail allows
MAX_QUESTION = 2_000
SHOWN_PROBLEMS = 10  # rows named in the message; the rest are counted
MANIFEST_HINT = ("A manifest has the columns (CSV) or keys (JSON) case, image and question, and optionally "
                 "reference; image paths are relative to the manifest's folder.")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ReviewItem:
    """One question about one case: what a reviewer signs off."""

    id: str  # the case id the audit trail records: the manifest's, or "case#n" for its n-th question
    case: str  # the manifest's case id
    image: Path
    question: str
    reference: str | None = None  # the expected answer, when the manifest gives one
    row: str = ""  # where it came from ("row 3", "entry 2", the file name)


@dataclass
class Worklist:
    """The items of a worklist, in order, and the rows that were skipped (one line each)."""

    source: Path
    items: list[ReviewItem]
    skipped: list[str] = field(default_factory=list)
    rows: int = 0  # rows (or images) read, usable or not

    @property
    def name(self) -> str:
        return self.source.name

    def skipped_error(self) -> InputError | None:
        """One message naming every skipped row (the first ``SHOWN_PROBLEMS``), or None when none was."""
        if not self.skipped:
            return None
        count = len(self.skipped)
        shown = "\n".join(self.skipped[:SHOWN_PROBLEMS])
        more = f"\n... and {count - SHOWN_PROBLEMS} more." if count > SHOWN_PROBLEMS else ""
        rows = f"1 row of {self.name} was" if count == 1 else f"{count} rows of {self.name} were"
        return InputError(f"{rows} skipped; the other {len(self.items)} "
                          f"question{'s' * (len(self.items) != 1)} loaded:\n{shown}{more}",
                          f"Fix {'it' if count == 1 else 'them'} in the manifest and open it again. {MANIFEST_HINT}")


def read_worklist(path: str | Path, question: str | None = None) -> Worklist:
    """The worklist in ``path``: a folder of images (each asked ``question``) or a .csv or .json manifest."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"worklist {path} does not exist.", "Check the path.")
    if path.is_dir():
        return _read_folder(path, question)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(f"{path.name} is not a worklist: a manifest is a .csv or .json file.",
                         f"Open a folder of images, or a manifest. {MANIFEST_HINT}")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise InputError(f"{path.name} is {size / 2**20:.0f} MiB; a manifest is at most "
                             f"{MAX_MANIFEST_BYTES >> 20} MiB.", "Split it into several worklists.")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not UTF-8 text.", "Save the manifest as UTF-8 (CSV or JSON).") from None
    except OSError as exc:
        raise InputError(f"{path.name} cannot be read: {exc.strerror or exc}.", "Check its permissions.") from None
    rows = _csv_rows(path, text) if suffix == ".csv" else _json_rows(path, text)
    return _build(path, rows)


# -- reading rows ---------------------------------------------------------------------------------
# A row as read: where it is, and its fields (question and reference as lists), or the problem with it.
_Row = tuple[str, dict[str, Any] | str]


def _csv_rows(path: Path, text: str) -> list[_Row]:
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        lines = list(reader)
    except csv.Error as exc:
        raise InputError(f"{path.name} is not a readable CSV file ({exc}).", MANIFEST_HINT) from None
    if not lines:
        raise InputError(f"{path.name} is empty.", MANIFEST_HINT)
    header = [name.strip().lower() for name in lines[0]]
    missing = [name for name in ("image", "question") if name not in header]
    if missing:
        raise InputError(f"{path.name} has no {' and no '.join(repr(m) for m in missing)} column "
                         f"(its header is {', '.join(lines[0]) or 'empty'}).", MANIFEST_HINT)
    rows: list[_Row] = []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if len(rows) >= MAX_ITEMS:
            raise InputError(f"{path.name} has more than {MAX_ITEMS} rows.", "Split it into several worklists.")
        if len(cells) > len(header):
            rows.append((f"row {number}", f"it has {len(cells)} cells, the header names {len(header)}"))
            continue
        values = dict(zip(header, (cell.strip() for cell in cells)))
        rows.append((f"row {number}", {
            "case": values.get("case", ""),
            "image": values.get("image", ""),
            "questions": [values.get("question", "")],
            "references": [values.get("reference") or None],
        }))
    return rows


def _json_rows(path: Path, text: str) -> list[_Row]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path.name} is not valid JSON ({exc}).", MANIFEST_HINT) from None
    if isinstance(data, dict) and isinstance(data.get("cases"), list):
        data = data["cases"]
    if not isinstance(data, list):
        raise InputError(f"{path.name} holds no list of cases.",
                         'Give a JSON list of cases, or an object whose "cases" is that list. ' + MANIFEST_HINT)
    if len(data) > MAX_ITEMS:
        raise InputError(f"{path.name} has more than {MAX_ITEMS} cases.", "Split it into several worklists.")
    rows: list[_Row] = []
    for number, entry in enumerate(data, start=1):
        where = f"case {number}"
        if not isinstance(entry, dict):
            rows.append((where, "it is not an object with case, image and question"))
            continue
        questions = entry.get("questions", entry.get("question"))
        questions = questions if isinstance(questions, list) else [questions]
        references = entry.get("references", entry.get("reference"))
        if references is None:
            references = [None] * len(questions)
        elif not isinstance(references, list):
            references = [references]
        if len(references) != len(questions):
            rows.append((where, f"it has {len(questions)} questions and {len(references)} reference answers"))
            continue
        rows.append((where, {"case": entry.get("case", ""), "image": entry.get("image", ""),
                             "questions": questions, "references": references}))
    return rows


def _read_folder(folder: Path, question: str | None) -> Worklist:
    if not question or not question.strip():
        raise InputError(f"a folder of images ({folder.name}) needs the question to ask about each image.",
                         "Give the question.")
    try:
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise InputError(f"folder {folder} cannot be read: {exc.strerror or exc}.", "Check its permissions.") from None
    if not images:
        raise InputError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).",
                         "Open a folder of images, or a manifest.")
    if len(images) > MAX_ITEMS:
        raise InputError(f"folder {folder} holds more than {MAX_ITEMS} images.", "Split it into several worklists.")
    stems = [p.stem for p in images]
    rows: list[_Row] = [(p.name, {"case": p.stem if stems.count(p.stem) == 1 else p.name, "image": p.name,
                                  "questions": [question], "references": [None]}) for p in images]
    return _build(folder, rows, base=folder)


# -- checking rows --------------------------------------------------------------------------------
def _build(source: Path, rows: list[_Row], base: Path | None = None) -> Worklist:
    """Check each row, turn the good ones into items (ids made unique per question) and name the bad ones."""
    base = base or source.parent
    skipped: list[str] = []
    cases: dict[str, tuple[Path, str]] = {}  # case id -> its image and the row that gave it
    questions: dict[str, list[tuple[str, str | None, str]]] = {}  # case id -> (question, reference, row)
    for where, row in rows:
        if isinstance(row, str):
            skipped.append(f"{where}: {row}.")
            continue
        problem = _problem(row, base)
        if problem:
            skipped.append(f"{where}: {problem}.")
            continue
        case, image = str(row["case"]).strip(), (base / str(row["image"]).strip())
        if case in cases and cases[case][0].resolve() != image.resolve():
            skipped.append(f"{where}: case {case!r} was given before ({cases[case][1]}) with another image.")
            continue
        cases.setdefault(case, (image, where))
        asked = questions.setdefault(case, [])
        for question, reference in zip(row["questions"], row["references"]):
            question = question.strip()
            if any(question == seen for seen, _, _ in asked):
                skipped.append(f"{where}: case {case!r} is asked {_short(question)!r} twice.")
                continue
            asked.append((question, None if reference is None else str(reference).strip() or None, where))
    items: list[ReviewItem] = []
    ids: set[str] = set()
    for case, asked in questions.items():
        image = cases[case][0]
        for number, (question, reference, where) in enumerate(asked, start=1):
            item_id = case if len(asked) == 1 else f"{case}#{number}"
            if item_id in ids:  # "c#2" given as a case id, and case "c"'s second question
                skipped.append(f"{where}: case id {item_id!r} is taken by another case's question.")
                continue
            ids.add(item_id)
            items.append(ReviewItem(item_id, case, image, question, reference, where))
    if not items:
        first = f" ({skipped[0]})" if skipped else ""
        raise InputError(f"{source.name} has no case that can be reviewed{first}.", MANIFEST_HINT)
    return Worklist(source, items, skipped, len(rows))


def _problem(row: dict[str, Any], base: Path) -> str:
    """What is wrong with one row, or ""."""
    case, image = row["case"], row["image"]
    if not isinstance(case, (str, int)) or not str(case).strip():
        return "it has no case id"
    case = str(case).strip()
    if len(case) > MAX_CASE_ID or _CONTROL.search(case):
        return f"case id {_short(case)!r} is longer than {MAX_CASE_ID} characters or holds control characters"
    if not isinstance(image, str) or not image.strip():
        return f"case {case!r} has no image"
    path = base / image.strip()
    if not row["questions"]:
        return f"case {case!r} has no question"
    if not path.is_file():
        return f"image {image.strip()} of case {case!r} {'is a folder' if path.is_dir() else 'does not exist'}"
    for question, reference in zip(row["questions"], row["references"]):
        if not isinstance(question, str) or not question.strip():
            return f"case {case!r} has no question"
        if len(question) > MAX_QUESTION:
            return f"a question of case {case!r} is longer than {MAX_QUESTION} characters"
        if reference is not None and not isinstance(reference, (str, int, float)):
            return f"the reference answer of case {case!r} is not text"
    return ""


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
