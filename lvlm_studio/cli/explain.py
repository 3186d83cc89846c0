"""``lvlm-studio ask`` and ``lvlm-studio explain``: answer a question about an image, and explain each
answer token with a method (overlays, maps, the trace and a run record)."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from lvlm_studio.cli import common
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import (
    check_output_file,
    check_output_folder,
    staged_folder,
    write_record,
)
from lvlm_studio.core.io.records import environment, jsonable, package_version


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ask = sub.add_parser("ask", help="answer a prompt about an image, with per-token probabilities")
    common.add_model_options(ask)
    common.add_question_options(ask)
    ask.add_argument("--save-trace", metavar="FILE", help="save the trace (.safetensors) for later analysis")
    ask.set_defaults(func=cmd_ask)

    explain = sub.add_parser("explain", help="explain each answer token with a method; write overlays and maps")
    common.add_model_options(explain)
    common.add_question_options(explain)
    explain.add_argument("--method", required=True, help="explanation method id (see `lvlm-studio plugins`)")
    explain.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="method parameter (repeatable), e.g. --param layers=0,1")
    explain.add_argument("--tokens", help="answer tokens to explain, e.g. 0,2 (default: all)")
    explain.add_argument("--contrast", metavar="TOKEN",
                         help="explain each token against this alternative (e.g. blue: why red rather than blue); "
                              "the score becomes the logit difference. Gradient, relevancy and perturbation "
                              "methods only; `lvlm-studio ask` lists each token's top alternatives")
    explain.add_argument("--out", default="lvlm-studio-output", help="output folder (default: lvlm-studio-output)")
    explain.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    explain.add_argument("--colormap", default="inferno",
                         help="matplotlib colormap for overlays and figures (signed maps get a diverging one)")
    explain.add_argument("--figure", action="append", default=[], metavar="FORMAT",
                         help="also write a figure per token (map, labelled colour bar, token, method) as "
                              "png, svg or pdf; repeatable or comma-separated, e.g. --figure svg,pdf")
    explain.add_argument("--dpi", type=int, default=300, help="resolution of the figures (default: 300)")
    explain.add_argument("--shared-scale", action="store_true",
                         help="draw every token's map on one colour scale, so strengths compare across tokens")
    explain.set_defaults(func=cmd_explain)


def cmd_ask(args: argparse.Namespace) -> int:
    image = common.check_question(args)
    if args.save_trace:
        check_output_file(args.save_trace)
    loaded, _ = common.load(args)
    trace = common.trace(args, loaded, image)
    print(trace.answer_text)
    print()
    print(f"{'#':>3}  {'token':<14} {'prob':>6}   top alternatives")
    for i, token in enumerate(trace.answer_tokens):
        alternatives = ", ".join(
            f"{alt} {p:.2f}" for alt, p in zip(trace.top_tokens[i], _exp(trace.top_logprobs[i])) if alt != token
        )
        print(f"{i:>3}  {token:<14} {float(trace.probabilities[i]):>6.3f}   {alternatives}")
    if args.save_trace:
        path = trace.save(args.save_trace)
        common.status(f"trace saved to {path}")
    return 0


def _exp(values) -> list[float]:
    import numpy as np

    return np.exp(values).tolist()


def cmd_explain(args: argparse.Namespace) -> int:
    from lvlm_studio.core.formats.figure import check_dpi, explanation_figure, figure_format, save_figure
    from lvlm_studio.core.plugin.checks import blamed_on, check_explanation
    from lvlm_studio.core.plugin.contracts import CONTRAST, require_applicable, require_contrast, supports_contrast
    from lvlm_studio.core.plugin.explanation import colormap_for, is_signed, map_levels, overlay, to_pixels
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry

    image = common.check_question(args)
    registry = create_registry()
    explainer = registry.explainer(args.method)  # unknown method: fail before loading anything
    given = common.parse_params(args.param)
    params = explainer.resolve_params(given)
    if args.contrast is not None:  # before loading: a method that cannot contrast is refused at once
        require_contrast(explainer, sorted(m for m, e in registry.explainers().items() if supports_contrast(e)))
        if not args.contrast.strip():
            raise InputError("--contrast got an empty token.", "Name the alternative, e.g. --contrast blue.")
    common.check_colormap(args.colormap)
    formats = [f.strip().lower().lstrip(".") for item in args.figure for f in item.split(",") if f.strip()]
    for kind in formats:
        figure_format(f"figure.{kind}")  # an unknown format: fail before loading anything
    if formats:
        check_dpi(args.dpi)
    common.token_numbers(args.tokens)
    out = check_output_folder(args.out, args.overwrite)  # before loading: a refusal should cost nothing

    loaded, load_s = common.load(args)
    require_applicable(explainer, loaded, params)  # before generating: a refusal should cost nothing
    trace = common.trace(args, loaded, image)
    targets = common.parse_tokens(args.tokens, len(trace.answer_ids))
    common.status(f"answer: {trace.answer_text}")
    if args.contrast is not None:
        alternative = contrast_id(trace, loaded, args.contrast, targets)
        params = explainer.resolve_params({**given, CONTRAST.name: alternative})
        same = [t for t in targets if int(trace.answer_ids[t]) == alternative]
        common.status(f"explaining against {args.contrast.strip()!r} (token id {alternative})" +
                      (f"; token {', '.join(map(str, same))} is that token itself: its map is zero" if same else ""))

    started = time.perf_counter()
    with common.progress_bar(f"{explainer.title}") as on_progress, blamed_on(explainer):
        explanation = run_job(explainer.explain(trace, loaded, targets, params), on_progress)
    check_explanation(explanation, trace, targets, explainer)
    explain_s = time.perf_counter() - started

    # Written beside --out and moved into place at the end: an interrupted run leaves nothing that
    # looks complete, and a failed --overwrite leaves the previous output.
    with staged_folder(out, args.overwrite) as scratch:
        files = []
        signed, colormap = is_signed(explanation), colormap_for(explanation, args.colormap)
        for t in targets:
            pixels = to_pixels(explanation.maps[t], trace.regions, trace.image.size)
            stem = f"token{t:02d}_{_safe(trace.answer_tokens[t])}"
            levels = map_levels(explanation, pixels, args.shared_scale)
            overlay(trace.image, pixels, colormap, levels=levels, signed=signed).save(scratch / f"{stem}.png")
            files.append(f"{stem}.png")
            if formats:
                figure = explanation_figure(trace, explanation, t, args.colormap, shared=args.shared_scale,
                                            method_title=explainer.title or explainer.id)
                for kind in dict.fromkeys(formats):
                    save_figure(figure, scratch / f"{stem}_figure.{kind}", args.dpi)
                    files.append(f"{stem}_figure.{kind}")
        explanation.save_npz(scratch / "maps.npz")
        trace.save(scratch / "trace.safetensors")
        record = _run_record(args, loaded, trace, explanation, targets, files,
                             {"load_s": load_s, **trace.timings, "explain_s": explain_s},
                             registry.provider("methods", args.method))
        write_record(scratch, record)
    figures = f", {len(targets) * len(set(formats))} figures" if formats else ""
    print(f"{len(targets)} overlays{figures}, maps.npz, trace.safetensors and run.json written to {out}")
    return 0


def contrast_id(trace: Any, loaded: Any, text: str, targets: list[int]) -> int:
    """The token id that ``--contrast`` names: an alternative the trace lists among the top-k of one
    of ``targets`` (by its readable form), or else the one token the tokenizer makes of ``text``."""
    wanted = text.strip()
    for t in targets:
        for token, token_id in zip(trace.top_tokens[t], trace.top_ids[t]):
            if token.strip() == wanted:
                return int(token_id)
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    for candidate in (text, wanted, " " + wanted):
        ids = tokenizer.encode(candidate, add_special_tokens=False)
        if len(ids) == 1:
            return int(ids[0])
    listed = "; ".join(f"token {t}: {', '.join(repr(x.strip()) for x in trace.top_tokens[t])}" for t in targets[:3])
    raise InputError(f"--contrast {text!r} is not one token of this model's vocabulary.",
                     f"Name a single token, e.g. one of the top alternatives ({listed}).")


def _safe(token: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in token.strip())
    return cleaned[:24] or "tok"


def _run_record(args, loaded, trace, explanation, targets, files, timings, provider) -> dict[str, Any]:
    from lvlm_studio.core.io.dicom import looks_like_dicom

    image_path = Path(args.image)
    command = ["lvlm-studio", *sys.argv[1:]]
    where: dict[str, Any] = {"path": str(image_path)}
    if looks_like_dicom(image_path):  # a patient's folder or file name stays out of the record: only the base name
        command = [arg.replace(args.image, image_path.name) if arg.endswith(args.image) else arg for arg in command]
        where = {"name": image_path.name}
    return {
        "lvlm_studio": package_version("lvlm-studio"),
        "command": command,
        "model": loaded.describe(),
        # provided_by: the plugin, distribution and version that gave the method
        "method": {"id": explanation.method, "params": jsonable(explanation.params), "provided_by": provider},
        "provenance": jsonable(explanation.provenance),
        "image": where | {"sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(),
                          "size": list(trace.image.size)},
        "prompt": trace.prompt,
        "answer": trace.answer_text,
        "answer_tokens": trace.answer_tokens,
        "targets": targets,
        "regions": [r.to_dict() | {"positions": len(r.positions)} for r in trace.regions],
        "generation": trace.generation,
        "seed": args.seed,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "files": files,
        "versions": environment(("torch", "transformers", "numpy", "pluggy")),
    }
