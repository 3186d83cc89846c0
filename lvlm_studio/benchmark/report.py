"""Tables and figures of a grounded-benchmark run, from its ``results.jsonl`` (and the directions in ``run.json``).

Every metric value is per sample; a method's row gives the mean over the samples where the metric
applied, with a 95 % confidence interval from Student's t (the samples are independent draws of
the dataset). F1-IoU over a dataset is the harmonic mean of the dataset means of Obj-IoU and
Func-IoU (the TAM protocol), so its interval comes from a seeded bootstrap over samples.

Files written into the run folder:
  tables/<method>.csv, tables/<method>.md   one row per metric: mean, 95 % CI, samples
  summary.md, summary.csv                   methods side by side (the table in docs/benchmark.md)
  curves.png                                mean deletion and insertion curves of every method
  examples.png                              image and each method's overlay for the first samples

Which way each value is better comes from the metrics themselves (``Metric.directions``, saved in
``run.json`` by the runner): the tables mark it with an arrow and the best mean of each column in bold.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lvlm_studio.core.io.files import atomic_path, write_text

BOOTSTRAP = 2000
#: The headline columns of the summary, in order (others follow alphabetically).
HEADLINE = ("deletion_insertion.deletion_auc", "deletion_insertion.insertion_auc", "iou.obj_iou", "iou.func_iou",
            "iou.f1_iou (dataset)", "pointing_game.pointing", "model_randomisation.rho_language",
            "model_randomisation.rho_all", "input_independence.rho_input", "agreement.rank_correlation",
            "agreement.top_k_overlap", "agreement.inconsistent")
#: How a declared direction is shown ("higher" or "lower" is better).
ARROWS = {"higher": "\u2191", "lower": "\u2193"}


def directions_of(out: Path) -> dict[str, str]:
    """"METRIC.VALUE" -> "higher" or "lower", as the run's metrics declared it (``run.json``); empty for
    a run recorded before metrics declared directions."""
    from lvlm_studio.core.io.files import read_run_record

    record = read_run_record(out) or {}
    found = record.get("directions")
    return {k: v for k, v in found.items() if v in ARROWS} if isinstance(found, dict) else {}


def direction(directions: dict[str, str], column: str) -> str | None:
    """The direction of a column; the dataset F1-IoU is better the way the per-sample F1-IoU is."""
    return directions.get(column.replace(" (dataset)", ""))


def better_label(directions: dict[str, str], column: str) -> str:
    """"↓ lower", "↑ higher", or "" when the metric declared no direction for the column."""
    found = direction(directions, column)
    return f"{ARROWS[found]} {found}" if found else ""


def best_methods(summary: dict[str, dict[str, tuple[float, float, float, int]]], column: str,
                 directions: dict[str, str]) -> set[str]:
    """The methods with the best mean in ``column``: none without a direction or below two methods."""
    found = direction(directions, column)
    means = {m: rows[column][0] for m, rows in summary.items() if column in rows and rows[column][3]}
    if found is None or len(means) < 2:
        return set()
    best = max(means.values()) if found == "higher" else min(means.values())
    return {m for m, v in means.items() if v == best}


def mean_interval(values: list[float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with a 95 % Student-t interval; NaN interval below two values."""
    from scipy.stats import t

    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = data.size
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(data.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    half = float(t.ppf(0.975, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def harmonic(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def dataset_f1(obj: list[float | None], func: list[float | None], seed: int = 0) -> tuple[float, float, float, int]:
    """F1-IoU of the dataset means, with a bootstrap 95 % interval over samples scored on both."""
    pairs = np.asarray([(o, f) for o, f in zip(obj, func) if o is not None and f is not None], dtype=np.float64)
    if len(pairs) == 0:
        return math.nan, math.nan, math.nan, 0
    point = harmonic(*pairs.mean(axis=0))
    rng = np.random.default_rng(seed)
    draws = pairs[rng.integers(0, len(pairs), size=(BOOTSTRAP, len(pairs)))].mean(axis=1)
    boot = [harmonic(o, f) for o, f in draws]
    return point, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), len(pairs)


def methods_of(records: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for record in records:
        for method in record.get("methods", {}):
            if method not in seen:
                seen.append(method)
    return seen


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, float, int]]]:
    """method -> metric -> (mean, low, high, n)."""
    summary: dict[str, dict[str, tuple[float, float, float, int]]] = {}
    for method in methods_of(records):
        results = [r["methods"][method] for r in records if method in r.get("methods", {})]
        names = sorted({k for res in results for k in res.get("values", {})})
        rows = {name: mean_interval([res.get("values", {}).get(name) for res in results]) for name in names}
        if "iou.obj_iou" in names and "iou.func_iou" in names:
            rows["iou.f1_iou (dataset)"] = dataset_f1([res["values"].get("iou.obj_iou") for res in results],
                                                      [res["values"].get("iou.func_iou") for res in results])
            rows.pop("iou.f1_iou", None)  # per-sample F1 is not the protocol's F1-IoU
        summary[method] = rows
    return summary


def ordered(names: set[str] | list[str]) -> list[str]:
    names = set(names)
    return [n for n in HEADLINE if n in names] + sorted(names - set(HEADLINE))


def _fmt(row: tuple[float, float, float, int]) -> str:
    mean, low, high, n = row
    if n == 0:
        return "n/a"
    if not math.isfinite(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def write_tables(out: Path, records: list[dict[str, Any]], title: str = "",
                 directions: dict[str, str] | None = None) -> str:
    """Per-method CSV and Markdown tables and the side-by-side summary; returns the summary text.
    ``directions`` ("METRIC.VALUE" -> "higher"/"lower"): by default those in the run's run.json."""
    directions = directions_of(out) if directions is None else directions
    summary = summarise(records)
    tables = out / "tables"
    for method, rows in summary.items():
        stem = "".join(c if c.isalnum() else "_" for c in method)
        write_text(tables / f"{stem}.csv", _csv([["metric", "mean", "ci95_low", "ci95_high", "samples"]] + [
            [name, _cell(rows[name][0]), _cell(rows[name][1]), _cell(rows[name][2]), rows[name][3]]
            for name in ordered(rows)]))
        lines = [f"# {method}", "", "| metric | better | mean | 95% CI | samples |", "|---|---|---:|---:|---:|"]
        for name in ordered(rows):
            mean, low, high, n = rows[name]
            ci = f"{low:.3f}-{high:.3f}" if math.isfinite(low) else "n/a"
            lines.append(f"| {name} | {better_label(directions, name)} | "
                         f"{mean:.3f} | {ci} | {n} |" if n else f"| {name} | | n/a | n/a | 0 |")
        write_text(tables / f"{stem}.md", "\n".join(lines) + "\n")
    columns = ordered({name for rows in summary.values() for name in rows})
    table = [["method", *[f"{c} {part}" for c in columns for part in ("mean", "ci95_low", "ci95_high")]]]
    for method, rows in summary.items():
        cells = []
        for c in columns:
            mean, low, high, _ = rows.get(c, (math.nan, math.nan, math.nan, 0))
            cells += [_cell(mean), _cell(low), _cell(high)]
        table.append([method, *cells])
    write_text(out / "summary.csv", _csv(table))
    header = [c.split(".", 1)[-1] + (f" ({better_label(directions, c)} better)" if direction(directions, c) else "")
              for c in columns]
    best = {c: best_methods(summary, c, directions) for c in columns}
    lines = [title, ""] if title else []
    lines += ["| method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(columns)]
    for method, rows in summary.items():
        cells = [("**" + _fmt(rows[c]) + "**" if method in best[c] else _fmt(rows[c])) if c in rows else "n/a"
                 for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Mean over samples [95% confidence interval]; \u2191/\u2193: higher/lower is better, as each "
              "metric declares it; the best mean of such a column is in bold."]
    lines += [f"{method}: {metric} did not apply on {count} samples ({example})"
              for method, metric, count, example in skipped(records)]
    text = "\n".join(lines) + "\n"
    write_text(out / "summary.md", text)
    return text


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def skipped(records: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    """(method, metric or "explain", samples it failed on, first reason), for the table's footer."""
    found: dict[tuple[str, str], list[str]] = {}
    for record in records:
        for method, result in record.get("methods", {}).items():
            for part, reason in result.get("errors", {}).items():
                found.setdefault((method, part), []).append(reason)
    return [(method, part, len(reasons), reasons[0]) for (method, part), reasons in found.items()]


def _cell(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else ""


def mean_curves(records: list[dict[str, Any]], name: str, points: int = 51) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """method -> (fraction, mean curve) of curve ``name``, each sample's curve interpolated onto a
    common fraction axis first (samples may have different numbers of steps)."""
    axis = np.linspace(0.0, 1.0, points)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method in methods_of(records):
        curves = [r["methods"][method].get("curves", {}).get(name) for r in records if method in r.get("methods", {})]
        ys = [np.interp(axis, c[0], c[1]) for c in curves if c]
        if ys:
            found[method] = (axis, np.mean(ys, axis=0))
    return found


def plot_curves(out: Path, records: list[dict[str, Any]], directions: dict[str, str] | None = None) -> Path | None:
    """curves.png: mean deletion (left) and insertion (right) curves per method; the titles say which
    way their area is better, as the metric declares it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directions = directions_of(out) if directions is None else directions
    panels = []
    for name in ("deletion", "insertion"):
        found = direction(directions, f"deletion_insertion.{name}_auc")
        panels.append((f"deletion_insertion.{name}", f"{name} ({found} is better)" if found else name))
    curves = [mean_curves(records, name) for name, _ in panels]
    if not any(curves):
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (_, title), by_method in zip(axes, panels, curves):
        for method, (x, y) in by_method.items():
            axis.plot(x, y, label=method, linestyle="--" if method == "uniform random" else "-")
        axis.set_title(title)
        axis.set_xlabel("fraction of the image blurred" if "deletion" in title else "fraction revealed")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean probability of the scored tokens")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, out / "curves.png", dpi=120)


def example_grid(out: Path, methods: list[str]) -> Path | None:
    """examples.png: a row per example sample, the image then each method's overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folder = out / "examples"
    images = sorted(folder.glob("*_image.png")) if folder.exists() else []
    if not images:
        return None
    figure, axes = plt.subplots(len(images), len(methods) + 1, figsize=(2 * (len(methods) + 1), 2 * len(images)),
                                squeeze=False)
    for row, image_path in enumerate(images):
        prefix = image_path.name.split("_")[0]
        axes[row][0].imshow(Image.open(image_path))
        axes[row][0].set_title("image", fontsize=8)
        for col, method in enumerate(methods, start=1):
            stem = folder / f"{prefix}_{''.join(c if c.isalnum() else '_' for c in method)}"
            if stem.with_suffix(".png").exists():
                axes[row][col].imshow(Image.open(stem.with_suffix(".png")))
                word = json.loads(stem.with_suffix(".json").read_text())["word"]
                axes[row][col].set_title(f"{method}\n'{word}'", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    return _save(figure, out / "examples.png", dpi=100)


def _save(figure: Any, path: Path, dpi: int) -> Path:
    """Write ``figure`` atomically (a full disk leaves the previous file) and free it either way."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=dpi)
    finally:
        plt.close(figure)
    return path


def write_report(out: Path, records: list[dict[str, Any]], title: str = "",
                 directions: dict[str, str] | None = None) -> str:
    """All tables and figures of a run; returns the summary table. ``directions`` as for ``write_tables``."""
    directions = directions_of(out) if directions is None else directions
    text = write_tables(out, records, title, directions)
    plot_curves(out, records, directions)
    example_grid(out, methods_of(records))
    return text
