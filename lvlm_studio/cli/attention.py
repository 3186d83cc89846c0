"""``lvlm-studio attention VIEW``: the attention views of the app as files.

    lvlm-studio attention gallery --image IMG --prompt TEXT --token 1 --layers 0-3 --out heads.png
    lvlm-studio attention patch-text --image IMG --prompt TEXT --box 10,10,40,40 --out patches.csv
    lvlm-studio attention question-answer --image IMG --prompt TEXT --words --out qa.csv

The file's suffix chooses its form: the gallery writes .png (a grid of overlays, layers x heads, on
one colour scale) or .npz (the maps, the layers and the scale); patch-text and question-answer
write .csv, .npz or .png (a bar chart, a heat map). The computations are the app's own
(``lvlm_studio.core.tracing.attention_views``).
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from lvlm_studio.cli import common
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import atomic_path, check_output_file, write_text

SUFFIXES = {"gallery": (".png", ".npz"), "patch-text": (".csv", ".npz", ".png"),
            "question-answer": (".csv", ".npz", ".png")}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("attention", help="attention views as files: per-head gallery, patch -> text, "
                                              "question -> answer")
    views = parser.add_subparsers(dest="view", metavar="VIEW", required=True)
    for name, text in (("gallery", "every head's map of one answer token over a range of layers (.png, .npz)"),
                       ("patch-text", "how much each text token attends to chosen image patches (.csv, .npz, .png)"),
                       ("question-answer", "answer tokens x question tokens or words (.csv, .npz, .png)")):
        view = views.add_parser(name, help=text)
        common.add_model_options(view)
        common.add_question_options(view)
        view.add_argument("--layers", default="all", help="layers, e.g. 0-3, 0,2 or -1 (default: all)")
        view.add_argument("--out", required=True, help=f"output file ({', '.join(SUFFIXES[name])})")
        if name == "gallery":
            view.add_argument("--token", type=int, default=0, help="answer token (0 is the first; default 0)")
            view.add_argument("--colormap", default="inferno", help="matplotlib colormap (default: inferno)")
            view.add_argument("--cell", type=int, default=96, help="size of each map in pixels (default: 96)")
        else:
            view.add_argument("--heads", default="all", help="heads to average, e.g. 0,1 (default: all)")
        if name == "patch-text":
            view.add_argument("--box", help="the patches under a box LEFT,TOP,RIGHT,BOTTOM in image pixels "
                                            "(equal corners: the patches under that point)")
            view.add_argument("--patches", help="image patch numbers, e.g. 0,1,8 (in the order of the image tokens)")
        if name == "question-answer":
            view.add_argument("--words", action="store_true", help="join sub-word tokens into words")
        view.set_defaults(func=cmd_attention)


def cmd_attention(args: argparse.Namespace) -> int:
    image = common.check_question(args)
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES[args.view]:
        raise InputError(f"--out {args.out}: the {args.view} view writes {', '.join(SUFFIXES[args.view])} files.",
                         f"Give a file name ending in {' or '.join(SUFFIXES[args.view])}.")
    check_output_file(out)
    if args.view == "gallery":
        common.check_colormap(args.colormap)
        common.check_at_least("--cell", args.cell, 16)
    box = _box(args.box) if args.view == "patch-text" else None
    patches = _numbers(args.patches, "--patches") if args.view == "patch-text" else None
    if args.view == "patch-text" and (box is None) == (patches is None):
        raise InputError("patch-text needs the patches: --box or --patches (one of them).",
                         "Example: --box 10,10,40,40.")

    loaded, _ = common.load(args)
    trace = common.trace(args, loaded, image)
    if not len(trace.answer_ids):
        raise InputError("the model gave an empty answer; there is nothing to look at.",
                         "Try another prompt or more --max-new-tokens.")
    common.status(f"answer: {trace.answer_text}")
    if args.view == "gallery":
        _gallery(args, loaded, trace, out)
    elif args.view == "patch-text":
        _patch_text(args, loaded, trace, out, box, patches)
    else:
        _question_answer(args, loaded, trace, out)
    print(f"{args.view} written to {out}")
    return 0


def _gallery(args, loaded, trace, out: Path) -> None:
    import numpy as np

    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.tracing.attention_views import head_gallery, render_gallery
    from lvlm_studio.core.tracing.head_attention import head_attention

    (token,) = common.parse_tokens(str(args.token), len(trace.answer_ids))
    with common.progress_bar("attention per head") as on_progress:
        heads = run_job(head_attention(trace, loaded), on_progress)
    gallery = head_gallery(heads, trace, token, args.layers)
    if out.suffix.lower() == ".png":
        with atomic_path(out) as temporary:
            render_gallery(gallery, trace, args.colormap, args.cell).save(temporary, format="PNG")
    else:
        arrays = {f"region{i}": m.astype(np.float32) for i, m in enumerate(gallery.maps)}
        _save_npz(out, layers=np.array(gallery.layers), levels=np.array(gallery.levels), token=np.array(token),
                  answer_tokens=np.array(trace.answer_tokens), **arrays)


def _patch_text(args, loaded, trace, out: Path, box, patches) -> None:
    import numpy as np

    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.tracing.attention_views import patch_text_attention, patches_in_box

    chosen = patches_in_box(trace.regions, box) if box is not None else patches
    if not chosen:
        raise InputError(f"--box {args.box} touches no image patch.", "Give a box inside the image.")
    with common.progress_bar("attention of the text to the image") as on_progress:
        view = run_job(patch_text_attention(trace, loaded), on_progress)
    scores = view.scores(chosen, args.layers, args.heads)
    if out.suffix.lower() == ".csv":
        rows = [(kind, i, label, f"{score:.6g}", int(sees))
                for i, (kind, label, score, sees) in enumerate(zip(view.kinds, view.labels, scores, view.sees_image))]
        _save_csv(out, ("kind", "index", "token", "attention", "sees_image"), rows)
    elif out.suffix.lower() == ".npz":
        _save_npz(out, scores=scores, labels=np.array(view.labels), kinds=np.array(view.kinds),
                  sees_image=view.sees_image, patches=np.array(sorted(set(chosen))), queries=np.array(view.queries))
    else:
        _bar_chart(out, view.labels, scores, [k == "answer" for k in view.kinds],
                   f"attention to {len(set(chosen))} image patches")


def _question_answer(args, loaded, trace, out: Path) -> None:
    import numpy as np

    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.tracing.attention_views import question_answer_attention

    with common.progress_bar("attention of the answer to the question") as on_progress:
        view = run_job(question_answer_attention(trace, loaded), on_progress)
    matrix, rows, columns = view.matrix(args.layers, args.heads, words=args.words)
    if out.suffix.lower() == ".csv":
        lines = [(row, *(f"{v:.6g}" for v in values)) for row, values in zip(rows, matrix)]
        _save_csv(out, ("answer", *columns), lines)
    elif out.suffix.lower() == ".npz":
        _save_npz(out, matrix=matrix, answer=np.array(rows), question=np.array(columns))
    else:
        _heat_map(out, matrix, rows, columns)


# -- arguments -------------------------------------------------------------------------------------
def _numbers(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise InputError(f"{option} {text!r} is not a list of patch numbers (0 is the first).",
                         f"Example: {option} 0,1,8.")
    return values


def _box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"--box {text!r} is not LEFT,TOP,RIGHT,BOTTOM.", "Example: --box 10,10,40,40 (image pixels).")
    return values  # type: ignore[return-value]


# -- files -----------------------------------------------------------------------------------------
def _save_csv(out: Path, header: tuple, rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(out, buffer.getvalue())


def _save_npz(out: Path, **arrays) -> None:
    import numpy as np

    with atomic_path(out) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _bar_chart(out: Path, labels: list[str], values, answer: list[bool], title: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.0, 0.35 * len(labels) + 1), 3.2), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    axes.bar(range(len(labels)), values, color=["#e8743b" if a else "#4e79a7" for a in answer])
    axes.set_xticks(range(len(labels)), [label.strip() or "\u2423" for label in labels], rotation=60, fontsize=7)
    axes.set_ylabel("share of attention")
    axes.set_title(f"{title}\nblue: prompt tokens, orange: answer tokens", fontsize=8)
    with atomic_path(out) as temporary:
        figure.savefig(temporary, format="png")


def _heat_map(out: Path, matrix, rows: list[str], columns: list[str]) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(3.5, 0.45 * len(columns) + 2), max(2.5, 0.35 * len(rows) + 1.5)), dpi=150,
                    layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="viridis", vmin=0, aspect="auto")
    axes.set_xticks(range(len(columns)), [c.strip() for c in columns], rotation=60, fontsize=7)
    axes.set_yticks(range(len(rows)), [r.strip() for r in rows], fontsize=7)
    axes.set_xlabel("question")
    axes.set_ylabel("answer")
    figure.colorbar(image, ax=axes, label="attention")
    with atomic_path(out) as temporary:
        figure.savefig(temporary, format="png")
