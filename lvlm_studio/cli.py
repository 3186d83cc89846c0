"""The ``lvlm-studio`` command: the desktop app with no arguments, headless analyses with a subcommand.

    lvlm-studio                                     open the app (demo model unless --model)
    lvlm-studio ask --image IMG --prompt TEXT       answer, with per-token probabilities
    lvlm-studio explain --method ID --image IMG --prompt TEXT --out DIR
    lvlm-studio plugins                             list plugins, methods and their status
    lvlm-studio demo accuracy                       the demo model's held-out exact-match accuracy
    lvlm-studio demo pointing --n 200               pointing game of every method on held-out scenes
    lvlm-studio demo causal --n 100                 causal token subsets against random ones
    lvlm-studio demo scene --seed N --out FILE.png  draw a demo scene
    lvlm-studio sae train|eval|inspect|hooks        sparse autoencoders on the vision tower (see `sae -h`)
    lvlm-studio benchmark --methods tam,relevancy --n 100 --out DIR   grounded benchmark (resumable)

Bad input ends with one line on stderr and a non-zero exit, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from lvlm_studio.core.errors import Cancelled, InputError, LVLMError
from lvlm_studio.core.files import (
    atomic_path,
    check_output_file,
    check_output_folder,
    staged_folder,
    write_record,
    write_text,
)
from lvlm_studio.core.records import environment, jsonable, package_version

EXIT_INPUT = 2
EXIT_BUG = 1
EXIT_CANCELLED = 130


# -- shared options -----------------------------------------------------------------------------
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """The type of every --seed: a number each random generator involved accepts (torch, NumPy)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed; give a whole number from 0 to {MAX_SEED}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="local model folder (default: the embedded demo model)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    group.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    group.add_argument("--placement", choices=["auto"], help="spread a large model over GPUs and CPU (accelerate)")
    group.add_argument("--max-memory", action="append", default=[], metavar="DEVICE=SIZE",
                       help="with --placement auto: cap a device, e.g. 0=20GiB or cpu=64GiB (repeatable)")
    group.add_argument("--offload-folder", help="with --placement auto: a folder for weights that fit on no device")
    group.add_argument("--quantize", choices=["4bit", "8bit"],
                       help="load the weights in 4 or 8 bits (bitsandbytes: pip install 'lvlm-studio[quant]'; CUDA)")
    group.add_argument("--allow-pickle", action="store_true", 
                       help="allow pickle weights (.bin) from a source you trust")
    group.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")


def _add_question_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    parser.add_argument("--prompt", required=True, help="question or instruction about the image")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--seed", type=seed, default=0, help="seed for sampling (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0)


def _load(args: argparse.Namespace):
    from lvlm_studio.core.models.loading import LoadOptions, load_model

    max_memory = {}
    for item in args.max_memory:
        device, _, size = item.partition("=")
        if not size:
            raise InputError(f"--max-memory {item!r} is not DEVICE=SIZE.", "Example: --max-memory 0=20GiB.")
        max_memory[device] = size
    options = LoadOptions(device=args.device, dtype=args.dtype, placement=args.placement,
                          max_memory=max_memory or None, offload_folder=args.offload_folder,
                          quantization=args.quantize, allow_pickle=args.allow_pickle,
                          trust_remote_code=args.trust_remote_code)
    _status(f"loading {args.model or 'the demo model'} ...")
    started = time.perf_counter()
    loaded = load_model(args.model, options)
    _status(f"loaded {loaded.family} on {loaded.device} in {time.perf_counter() - started:.1f} s")
    return loaded, time.perf_counter() - started


def _trace(args: argparse.Namespace, loaded, image):
    from lvlm_studio.core.trace import generate_trace

    _status("generating ...")
    return generate_trace(loaded, image, args.prompt, max_new_tokens=args.max_new_tokens,
                          do_sample=args.sample, seed=args.seed, temperature=args.temperature)


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- checks before the model loads: a mistake should fail in a second, not after a minute of work ----
def _open_image(path: str):
    """The user's image, opened (and decoded) before any model work; one clear line if it cannot be."""
    from lvlm_studio.core.images import open_image

    image = Path(path)
    if image.is_dir():
        raise InputError(f"image {image} is a folder, not an image file.", "Give the path of one image file.")
    if image.exists() and not os.access(image, os.R_OK):
        raise InputError(f"image {image} cannot be read: permission denied.", "Check the file's permissions.")
    return open_image(image)


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise InputError("the prompt is empty.", "Type a question or instruction about the image, e.g. "
                                                 "--prompt 'describe the image.'.")


def _check_at_least(option: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise InputError(f"{option} is {value}; it must be at least {minimum}.",
                         f"Example: {option} {max(minimum, 1)}.")


def _check_number(option: str, value: float | None, example: str, minimum: float | None = None,
                  maximum: float | None = None, above: bool = False) -> None:
    """A finite number within bounds (``above``: strictly greater than ``minimum``); None (not given) passes.
    argparse's float() takes "nan" and "inf", and NaN passes every comparison."""
    if value is None:
        return
    low = minimum is not None and (value <= minimum if above else value < minimum)
    if not math.isfinite(value) or low or (maximum is not None and value > maximum):
        bounds = [f"{'above' if above else 'at least'} {minimum:g}" if minimum is not None else "",
                  f"at most {maximum:g}" if maximum is not None else ""]
        wanted = " and ".join(b for b in bounds if b)
        raise InputError(f"{option} is {value}; it must be a finite number{' ' + wanted if wanted else ''}.",
                         f"Example: {option} {example}.")


def _check_question(args: argparse.Namespace):
    """Prompt, generation options and image of ``ask`` and ``explain``; returns the opened image."""
    _check_prompt(args.prompt)
    _check_at_least("--max-new-tokens", args.max_new_tokens)
    _check_number("--temperature", args.temperature, "0.7", minimum=0, above=True)
    return _open_image(args.image)


def _check_colormap(name: str) -> None:
    from matplotlib import colormaps

    if name not in colormaps:
        raise InputError(f"--colormap {name!r} is not a matplotlib colormap.",
                         "Try inferno, viridis, magma or turbo.")


# -- commands -----------------------------------------------------------------------------------
def cmd_ask(args: argparse.Namespace) -> int:
    image = _check_question(args)
    if args.save_trace:
        check_output_file(args.save_trace)
    loaded, _ = _load(args)
    trace = _trace(args, loaded, image)
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
        _status(f"trace saved to {path}")
    return 0


def _exp(values) -> list[float]:
    import numpy as np

    return np.exp(values).tolist()


def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--param {item!r} is not NAME=VALUE.", "Example: --param layers=0,1.")
        params[name.strip()] = value.strip()
    return params


def _token_numbers(text: str | None) -> list[int] | None:
    """The answer tokens ``--tokens`` names (None: all); its form is checked before any work."""
    if not text or text == "all":
        return None
    try:
        chosen = [int(t) for t in text.split(",")]
    except ValueError:
        chosen = []
    if not chosen or min(chosen) < 0:
        raise InputError(f"--tokens {text!r} is not a list of answer token numbers (0 is the first).",
                         "Example: --tokens 0,2.")
    return chosen


def _parse_tokens(text: str | None, count: int) -> list[int]:
    if count == 0:
        raise InputError("the model gave an empty answer; there is no token to explain.",
                         "Try another prompt or more --max-new-tokens.")
    chosen = _token_numbers(text)
    if chosen is None:
        return list(range(count))
    bad = [t for t in chosen if not 0 <= t < count]
    if bad:
        raise InputError(f"answer token {bad[0]} does not exist.", f"The answer has tokens 0 to {count - 1}.")
    return chosen


def cmd_explain(args: argparse.Namespace) -> int:
    from lvlm_studio.core.checks import check_explanation
    from lvlm_studio.core.contracts import require_applicable
    from lvlm_studio.core.explanation import overlay, to_pixels
    from lvlm_studio.core.jobs import run_job
    from lvlm_studio.core.plugins import create_registry

    image = _check_question(args)
    registry = create_registry()
    explainer = registry.explainer(args.method)  # unknown method: fail before loading anything
    params = explainer.resolve_params(_parse_params(args.param))
    _check_colormap(args.colormap)
    _token_numbers(args.tokens)
    out = check_output_folder(args.out, args.overwrite)  # before loading: a refusal should cost nothing

    loaded, load_s = _load(args)
    require_applicable(explainer, loaded, params)  # before generating: a refusal should cost nothing
    trace = _trace(args, loaded, image)
    targets = _parse_tokens(args.tokens, len(trace.answer_ids))
    _status(f"answer: {trace.answer_text}")

    started = time.perf_counter()
    with _progress_bar(f"{explainer.title}") as on_progress:
        explanation = run_job(explainer.explain(trace, loaded, targets, params), on_progress)
    check_explanation(explanation, trace, targets, explainer)
    explain_s = time.perf_counter() - started

    # Written beside --out and moved into place at the end: an interrupted run leaves nothing that
    # looks complete, and a failed --overwrite leaves the previous output.
    with staged_folder(out, args.overwrite) as scratch:
        files = []
        for t in targets:
            pixels = to_pixels(explanation.maps[t], trace.regions, trace.image.size)
            name = f"token{t:02d}_{_safe(trace.answer_tokens[t])}.png"
            overlay(trace.image, pixels, args.colormap).save(scratch / name)
            files.append(name)
        explanation.save_npz(scratch / "maps.npz")
        trace.save(scratch / "trace.safetensors")
        record = _run_record(args, loaded, trace, explanation, targets, files,
                             {"load_s": load_s, **trace.timings, "explain_s": explain_s})
        write_record(scratch, record)
    print(f"{len(files)} overlays, maps.npz, trace.safetensors and run.json written to {out}")
    return 0


def _safe(token: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in token.strip())
    return cleaned[:24] or "tok"


def _run_record(args, loaded, trace, explanation, targets, files, timings) -> dict[str, Any]:
    image_path = Path(args.image)
    return {
        "lvlm_studio": package_version("lvlm-studio"),
        "command": ["lvlm-studio", *sys.argv[1:]],
        "model": loaded.describe(),
        "method": {"id": explanation.method, "params": jsonable(explanation.params)},
        "provenance": jsonable(explanation.provenance),
        "image": {"path": str(image_path), "sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(),
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





class _progress_bar:
    """tqdm on stderr for a job's progress reports."""

    def __init__(self, title: str):
        self.title = title
        self.bar = None

    def __enter__(self):
        from tqdm import tqdm

        def update(progress) -> None:
            if self.bar is None:
                self.bar = tqdm(total=progress.total, desc=self.title, file=sys.stderr, leave=False)
            self.bar.total = progress.total
            self.bar.n = progress.done
            self.bar.set_postfix_str(progress.message, refresh=True)

        return update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_plugins(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugins import create_registry

    registry = create_registry()
    explainers, metrics = registry.explainers(), registry.metrics()
    analyzers, panels, adapters = registry.analyzers(), registry.panels(), registry.adapters()
    print("plugins")
    for status in registry.status:
        line = f"  {status.state:<8} {status.name}  [{status.origin}]"
        print(line + (f"\n           {status.error}" if status.error else ""))
    print("model families")
    for adapter in adapters:
        print(f"  {', '.join(adapter.model_types):<16} {adapter.family}")
    for heading, items in (("explanation methods", explainers), ("metrics", metrics),
                           ("analyzers", analyzers), ("panels", panels)):
        print(heading + ("" if items else "  (none)"))
        for item_id, item in items.items():
            print(f"  {item_id:<20} {item.title}")
            for param in getattr(item, "params", ()):
                choices = f" [{'|'.join(map(str, param.choices))}]" if param.choices else ""
                print(f"      {param.name}={_show(param.default)}{choices}  {param.help}")
    return 0


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "all"
    return str(value).lower() if isinstance(value, bool) else str(value)


def cmd_demo_accuracy(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lvlm_studio.demo.evaluate import evaluate
    from lvlm_studio.demo.scenes import TASKS

    _check_at_least("--n", args.n)
    _check_number("--minimum", args.minimum, "0.9", minimum=0, maximum=1)
    loaded, _ = _load(args)
    with tqdm(total=args.n * len(TASKS), desc="held-out answers", file=sys.stderr, leave=False) as bar:
        accuracy = evaluate(loaded.model, loaded.processor, n=args.n, on_batch=bar.update)
    print(f"{'task':<10} exact match ({args.n} held-out scenes)")
    for task, value in accuracy.items():
        print(f"{task:<10} {value:.1%}")
    if args.minimum is not None and min(accuracy.values()) < args.minimum:
        _status(f"below the required {args.minimum:.0%} on at least one task")
        return 1
    return 0


def cmd_demo_pointing(args: argparse.Namespace) -> int:
    from lvlm_studio.core.jobs import run_job
    from lvlm_studio.core.plugins import create_registry
    from lvlm_studio.demo.pointing import format_table, pointing_game

    if args.n < 1:
        raise InputError(f"--n {args.n} leaves nothing to play.", "Use at least 1 scene, e.g. --n 200.")
    registry = create_registry()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    for method in methods or []:
        registry.explainer(method)  # an unknown method fails before the model loads
    if args.out:
        check_output_file(args.out)
    loaded, _ = _load(args)
    with _progress_bar("pointing game") as on_progress:
        result = run_job(pointing_game(loaded, args.n, methods, registry, seed=args.seed), on_progress)
    table = format_table(result)
    print(table, end="")
    for method, error in result.failed.items():
        _status(f"{method} failed and was skipped: {error}")
    if args.out:
        write_text(args.out, table)
        _status(f"table written to {args.out}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from lvlm_studio.benchmark import PROMPT, RESULTS, BenchmarkSettings, read_results, run_benchmark
    from lvlm_studio.benchmark_report import write_report
    from lvlm_studio.core.jobs import run_job
    from lvlm_studio.core.plugins import create_registry

    if (args.images is None) != (args.coco is None):
        raise InputError("--images and --coco go together.", "Pass both (a folder and its COCO JSON), or neither "
                                                             "for the held-out demo scenes.")
    registry = create_registry()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(registry.explainers())
    if not methods:
        raise InputError(f"--methods {args.methods!r} names no method.", "Example: --methods tam,relevancy.")
    for method in methods:
        registry.explainer(method)  # an unknown method fails before the model loads
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else []
    metric_params: dict[str, dict[str, str]] = {}
    for item in args.metric_param:
        name, sep, rest = item.partition(".")
        if not sep:
            raise InputError(f"--metric-param {item!r} is not METRIC.NAME=VALUE.",
                             "Example: --metric-param deletion_insertion.steps=20.")
        metric_params.setdefault(name, {}).update(_parse_params([rest]))
    _check_benchmark(args, registry, metrics, metric_params)
    settings = BenchmarkSettings(methods=methods, n=args.n, prompt=args.prompt or PROMPT, images=args.images,
                                 coco=args.coco, metrics=metrics, metric_params=metric_params,
                                 max_new_tokens=args.max_new_tokens, seed=args.seed, examples=args.examples)
    out = check_output_folder(args.out, resume=True)  # a run of ours is resumed, never replaced
    loaded, _ = _load(args)
    try:
        with _progress_bar("benchmark") as on_progress:
            records = run_job(run_benchmark(loaded, settings, out, registry), on_progress)
    except (Cancelled, KeyboardInterrupt):
        done = len(read_results(out))
        _status(f"interrupted; the finished samples ({done}) are kept in {out / RESULTS}. Run the same command "
                "again to resume.")
        return EXIT_CANCELLED
    dataset = f"{args.n} held-out demo scenes" if args.images is None else f"{len(records)} images of {args.coco}"
    title = f"Grounded benchmark: {dataset}, prompt {settings.prompt!r}, model {loaded.describe().get('source')}."
    print(write_report(out, records, title), end="")
    _status(f"tables, curves.png, examples.png, {RESULTS} and run.json written to {out}")
    return 0


def _check_benchmark(args: argparse.Namespace, registry, metrics: list[str],
                     metric_params: dict[str, dict[str, str]]) -> None:
    """What a benchmark run would otherwise find wrong in every sample's row, after the model loaded."""
    if args.prompt is not None:
        _check_prompt(args.prompt)
    _check_at_least("--n", args.n)
    _check_at_least("--max-new-tokens", args.max_new_tokens)
    _check_at_least("--examples", args.examples, 0)
    for option, value, is_right, kind in (("--images", args.images, Path.is_dir, "folder"),
                                          ("--coco", args.coco, Path.is_file, "file")):
        if value is not None and not is_right(Path(value)):
            raise InputError(f"{option} {value} is not a {kind}.", f"Check the path of the {kind}.")
    available = registry.metrics()
    chosen = metrics or list(available)
    for metric_id in [*metrics, *metric_params]:
        if metric_id not in available:
            raise InputError(f"no metric {metric_id!r}.", f"Available: {', '.join(sorted(available))}.")
    for metric_id, given in metric_params.items():
        if metric_id not in chosen:
            raise InputError(f"--metric-param names {metric_id}, which this run does not score.",
                             "Add the metric to --metrics, or drop the --metric-param.")
        available[metric_id].resolve_params(given)
        if metric_id == "agreement" and "other" in given:  # the method it compares with
            registry.explainer(given["other"])


def cmd_demo_causal(args: argparse.Namespace) -> int:
    from lvlm_studio.core.jobs import run_job
    from lvlm_studio.core.plugins import create_registry
    from lvlm_studio.demo.causal_check import causal_check, format_check

    if args.n < 1:
        raise InputError(f"--n {args.n} leaves nothing to check.", "Use at least 1 scene, e.g. --n 100.")
    params = _parse_params(args.param)
    registry = create_registry()
    registry.explainer("causal").resolve_params(params)  # a typo fails before the model loads
    loaded, _ = _load(args)
    with _progress_bar("causal subsets") as on_progress:
        check = run_job(causal_check(loaded, args.n, registry, params=params), on_progress)
    print(format_check(check), end="")
    return 0


def cmd_demo_scene(args: argparse.Namespace) -> int:
    from lvlm_studio.demo.scenes import make_scene

    out = check_output_file(args.out)
    scene = make_scene(args.seed)
    with atomic_path(out) as temporary:
        scene.image.save(temporary)
    print(f"{args.out}: {scene.caption()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lvlm_studio.core.report import write_report
    from lvlm_studio.core.session import load_session

    _token_numbers(args.tokens)
    check_output_file(args.out)
    session = load_session(args.session)
    tokens = _parse_tokens(args.tokens, len(session.trace.answer_tokens)) if args.tokens and session.trace else None
    print(write_report(session, args.out, tokens))
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    try:
        from lvlm_studio.gui.app import run
    except ImportError as exc:
        raise LVLMError(f"the desktop app needs Qt, which is not installed ({exc.name}).",
                        "Install it with: pip install 'lvlm-studio[gui]'. Every analysis also runs headless: "
                        "see `lvlm-studio --help`.") from None
    return run(model=args.model, image=args.image, prompt=args.prompt)


# -- parser -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other refusal (it prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"error: {message}. See `{self.prog} -h`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lvlm-studio", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--model", help="model folder for the app (default: the demo model)")
    parser.add_argument("--image", help="image to open in the app")
    parser.add_argument("--prompt", help="prompt to put in the app")
    parser.set_defaults(func=cmd_gui)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ask = sub.add_parser("ask", help="answer a prompt about an image, with per-token probabilities")
    _add_model_options(ask)
    _add_question_options(ask)
    ask.add_argument("--save-trace", metavar="FILE", help="save the trace (.safetensors) for later analysis")
    ask.set_defaults(func=cmd_ask)

    explain = sub.add_parser("explain", help="explain each answer token with a method; write overlays and maps")
    _add_model_options(explain)
    _add_question_options(explain)
    explain.add_argument("--method", required=True, help="explanation method id (see `lvlm-studio plugins`)")
    explain.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="method parameter (repeatable), e.g. --param layers=0,1")
    explain.add_argument("--tokens", help="answer tokens to explain, e.g. 0,2 (default: all)")
    explain.add_argument("--out", default="lvlm-studio-output", help="output folder (default: lvlm-studio-output)")
    explain.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    explain.add_argument("--colormap", default="inferno", help="matplotlib colormap for overlays")
    explain.set_defaults(func=cmd_explain)

    plugins = sub.add_parser("plugins", help="list plugins, model families, methods and their status")
    plugins.set_defaults(func=cmd_plugins)

    from lvlm_studio.sae.cli import add_parser as add_sae_parser  # sae hooks|train|eval|inspect

    add_sae_parser(sub)

    demo = sub.add_parser("demo", help="the embedded demo model and its synthetic scenes")
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="WHAT", required=True)
    accuracy = demo_sub.add_parser("accuracy", help="exact-match accuracy per task on held-out scenes")
    _add_model_options(accuracy)
    accuracy.add_argument("--n", type=int, default=500, help="held-out scenes per task (default 500)")
    accuracy.add_argument("--minimum", type=float, help="exit 1 when a task scores below this fraction")
    accuracy.set_defaults(func=cmd_demo_accuracy)
    pointing = demo_sub.add_parser("pointing", help="pointing game: does each method's map peak on the named object?")
    _add_model_options(pointing)
    pointing.add_argument("--n", type=int, default=200, help="held-out scenes (default 200)")
    pointing.add_argument("--methods", help="comma-separated method ids (default: every method)")
    pointing.add_argument("--seed", type=seed, default=0, help="seed of the random baseline (default 0)")
    pointing.add_argument("--out", help="also write the table (Markdown) to this file")
    pointing.set_defaults(func=cmd_demo_pointing)
    causal = demo_sub.add_parser("causal", help="does each causal token subset matter more than a random one?")
    _add_model_options(causal)
    causal.add_argument("--n", type=int, default=100, help="held-out scenes (default 100)")
    causal.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="parameter of the causal method (repeatable), e.g. --param radius=2")
    causal.set_defaults(func=cmd_demo_causal)
    scene = demo_sub.add_parser("scene", help="draw one synthetic scene to a PNG")
    scene.add_argument("--seed", type=seed, default=0)
    scene.add_argument("--out", default="scene.png")
    scene.set_defaults(func=cmd_demo_scene)
    bench = sub.add_parser("benchmark", help="grounded benchmark: methods x metrics over a dataset, resumable")
    _add_model_options(bench)
    bench.add_argument("--methods", help="comma-separated method ids (default: every method)")
    bench.add_argument("--n", type=int, default=100, help="samples: held-out demo scenes, or images (default 100)")
    bench.add_argument("--images", help="folder of images (with --coco; default: held-out demo scenes)")
    bench.add_argument("--coco", help="COCO-format annotation file with the images' object masks")
    bench.add_argument("--prompt", help="prompt for every image (default: 'describe the image.')")
    bench.add_argument("--metrics", help="comma-separated metric ids (default: every metric)")
    bench.add_argument("--metric-param", action="append", default=[], metavar="METRIC.NAME=VALUE",
                       help="metric parameter (repeatable), e.g. deletion_insertion.steps=20")
    bench.add_argument("--max-new-tokens", type=int, default=32)
    bench.add_argument("--seed", type=seed, default=0, help="seed of the random baseline (default 0)")
    bench.add_argument("--examples", type=int, default=4, help="samples drawn in examples.png (default 4)")
    bench.add_argument("--out", default="lvlm-studio-benchmark",
                       help="output folder; rerun into it to resume (default: lvlm-studio-benchmark)")
    bench.set_defaults(func=cmd_benchmark)
    report = sub.add_parser("report", help="write the PDF report of a session saved by the app")
    report.add_argument("session", help="a .lvlm session file (File > Save session in the app)")
    report.add_argument("--out", default="report.pdf", help="the PDF to write (default: report.pdf)")
    report.add_argument("--tokens", help="answer tokens to show, e.g. 1,5 (default: selected and relevant ones)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Argument parsing and the slow imports (torch, transformers) happen inside the
    handlers, so Ctrl-C at any moment ends with "cancelled" and exit 130, never a traceback."""
    debug = False
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, or a refused argument (already printed): a code, for callers too
            return exc.code if isinstance(exc.code, int) else 0
        debug = args.debug
        _quiet_libraries(debug)
        return args.func(args)
    except LVLMError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (Cancelled, KeyboardInterrupt):
        print("cancelled; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's, without torch
            print("error: out of memory. Try a smaller image, fewer --max-new-tokens, --dtype bfloat16, "
                  "--quantize 4bit, or another --device (--device cpu when the GPU is full).", file=sys.stderr)
            return EXIT_INPUT
        print(f"error: unexpected {type(exc).__name__}: {exc} (this is a bug; rerun with --debug and report it)",
              file=sys.stderr)
        return EXIT_BUG


def _quiet_libraries(debug: bool) -> None:
    """Library chatter (progress bars, torchvision notices) is not for the terminal user."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if not debug:
        import os
        import warnings

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:
            pass


if __name__ == "__main__":
    sys.exit(main())
