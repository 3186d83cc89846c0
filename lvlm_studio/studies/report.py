"""A study's report on disk: summary.md, tables/NAME.csv, NAME.png and report.json.

``report.json`` lists the tables (with their rows) and figures, so the app's study view needs no
CSV parsing or Markdown rendering; summary.md holds the same tables as Markdown, for people and
for the docs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import atomic_path, write_text
from lvlm_studio.core.io.records import jsonable
from lvlm_studio.core.plugin.contracts import Study, StudyReport
from lvlm_studio.studies.runner import RECORD, all_rows

REPORT = "report.json"
SUMMARY = "summary.md"
TABLES = "tables"


def write_report(out: str | Path, study: Study, records: list[dict[str, Any]], params: dict[str, Any],
                 heading: str = "") -> str:
    """Summarize the records with ``study`` and write the report files; return summary.md's text."""
    out = Path(out)
    report = study.summarize(all_rows(records), params)
    if not isinstance(report, StudyReport):
        raise InputError(f"study {study.id} returned {type(report).__name__} from summarize, not a StudyReport.",
                         "Its plugin breaks the Study contract (docs/plugins.md).")
    errors = [f"{r['model']} / {r['sample']}: {r['error']}" for r in records if r.get("error")]
    lines = [f"# {report.title}", ""]
    if heading:
        lines += [heading, ""]
    if report.text:
        lines += [report.text.rstrip(), ""]
    index: dict[str, Any] = {"study": study.id, "title": report.title, "heading": heading, "text": report.text,
                             "tables": [], "figures": [], "errors": errors}
    for table in report.tables:
        columns = table_columns(table.rows)
        csv_name = f"{TABLES}/{_safe(table.name)}.csv"
        write_text(out / csv_name, to_csv(columns, table.rows))
        lines += [f"## {table.name}", ""] + ([table.caption, ""] if table.caption else [])
        lines += [to_markdown(columns, table.rows), ""]
        index["tables"].append({"name": table.name, "caption": table.caption, "csv": csv_name,
                                "columns": columns, "rows": jsonable(table.rows)})
    for figure in report.figures:
        png = f"{_safe(figure.name)}.png"
        save_figure(figure.draw, out / png)
        lines += [f"![{figure.name}]({png})", ""] + ([figure.caption, ""] if figure.caption else [])
        index["figures"].append({"name": figure.name, "caption": figure.caption, "png": png})
    if errors:
        lines += [f"{len(errors)} sample(s) failed and have no rows:", ""] + [f"- {e}" for e in errors[:20]] + [""]
    text = "\n".join(lines)
    write_text(out / SUMMARY, text)
    write_text(out / REPORT, json.dumps(index, indent=2))
    return text


def read_report(folder: str | Path) -> dict[str, Any]:
    """The report.json of a study's output folder (with run.json under "run" when present), or an
    ``InputError`` saying what the folder is missing."""
    folder = Path(folder)
    path = folder / REPORT
    if not path.is_file():
        raise InputError(f"{folder} holds no study report ({REPORT}).",
                         "Open the --out folder of `lvlm-studio study`, after the run finished.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        run = json.loads((folder / RECORD).read_text(encoding="utf-8")) if (folder / RECORD).is_file() else {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} could not be read ({exc}).", "Run the study again into a new folder.") from None
    if not isinstance(report, dict) or not isinstance(report.get("tables"), list):
        raise InputError(f"{path} is not a study report.", "Open the --out folder of `lvlm-studio study`.")
    report["run"] = run if isinstance(run, dict) else {}
    report["folder"] = str(folder)
    return report


def save_figure(draw: Any, path: Path) -> None:
    """Draw a figure on one matplotlib Axes (no pyplot, no window) and save it as PNG, atomically."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    draw(figure.add_subplot())
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


def cell(value: Any) -> str:
    """A table cell: floats to 3 decimals, or 3 significant digits below 0.001 (p-values, KL; never a
    bare 0.000 for a number that is not 0); NaN and None as ""."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 0.0005 else f"{value:.3f}"
    return str(value)


def to_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name.lower()) or "table"
