"""``lvlm-studio benchmark``: the grounded benchmark, methods x metrics over a dataset, resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lvlm_studio.cli import common
from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.io.files import (
    check_output_folder,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("benchmark", help="grounded benchmark: methods x metrics over a dataset, resumable")
    common.add_model_options(bench)
    bench.add_argument("--methods", help="comma-separated method ids (default: every method)")
    bench.add_argument("--n", type=int, default=100, help="samples: held-out demo scenes, or images (default 100)")
    bench.add_argument("--images", help="folder of images (with --coco; default: held-out demo scenes)")
    bench.add_argument("--coco", help="COCO-format annotation file with the images' object masks")
    bench.add_argument("--prompt", help="prompt for every image (default: 'describe the image.')")
    bench.add_argument("--metrics", help="comma-separated metric ids (default: every metric)")
    bench.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                       help="method parameter (repeatable), e.g. raw_attention.layers=0,1; recorded in run.json")
    bench.add_argument("--metric-param", action="append", default=[], metavar="METRIC.NAME=VALUE",
                       help="metric parameter (repeatable), e.g. deletion_insertion.steps=20")
    bench.add_argument("--max-new-tokens", type=int, default=32)
    bench.add_argument("--seed", type=common.seed, default=0, help="seed of the random baseline (default 0)")
    bench.add_argument("--examples", type=int, default=4, help="samples drawn in examples.png (default 4)")
    bench.add_argument("--out", default="lvlm-studio-benchmark",
                       help="output folder; rerun into it to resume (default: lvlm-studio-benchmark)")
    common.add_ray_options(bench)
    bench.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from lvlm_studio.benchmark.report import write_report
    from lvlm_studio.benchmark.runner import PROMPT, RECORD, RESULTS, BenchmarkSettings, read_results, run_benchmark
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry

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
        metric_params.setdefault(name, {}).update(common.parse_params([rest]))
    method_params = _method_params(args.param, registry, methods)
    _check_benchmark(args, registry, metrics, metric_params)
    settings = BenchmarkSettings(methods=methods, n=args.n, prompt=args.prompt or PROMPT, images=args.images,
                                 coco=args.coco, metrics=metrics, metric_params=metric_params,
                                 max_new_tokens=args.max_new_tokens, seed=args.seed, examples=args.examples,
                                 method_params=method_params)
    out = check_output_folder(args.out, resume=True)  # a run of ours is resumed, never replaced
    replicas = common.replica_pool(args, args.model)  # with --ray each replica loads the model; this process does not
    loaded = common.load(args)[0] if replicas is None else None
    try:
        with common.progress_bar("benchmark") as on_progress:
            records = run_job(run_benchmark(loaded, settings, out, registry, replicas=replicas), on_progress)
    except (Cancelled, KeyboardInterrupt):
        done = len(read_results(out))
        common.status(f"interrupted; the finished samples ({done}) are kept in {out / RESULTS}. Run the same command "
                "again to resume.")
        return common.EXIT_CANCELLED
    finally:
        if replicas is not None:
            replicas.close()
    dataset = f"{args.n} held-out demo scenes" if args.images is None else f"{len(records)} images of {args.coco}"
    model = json.loads((out / RECORD).read_text())["model"]  # as a replica loaded it, with --ray
    title = f"Grounded benchmark: {dataset}, prompt {settings.prompt!r}, model {model.get('source')}."
    print(write_report(out, records, title), end="")
    common.status(f"tables, curves.png, examples.png, {RESULTS} and run.json written to {out}")
    return 0


def _method_params(items: list[str], registry, methods: list[str]) -> dict[str, dict[str, str]]:
    """``--param METHOD.NAME=VALUE`` as method -> name -> text, checked before the model loads."""
    given: dict[str, dict[str, str]] = {}
    for item in items:
        method, sep, rest = item.partition(".")
        if not sep or method not in methods:
            raise InputError(f"--param {item!r} does not name a method of this run ({', '.join(methods)}).",
                             "Write METHOD.NAME=VALUE, e.g. --param raw_attention.layers=0,1.")
        given.setdefault(method, {}).update(common.parse_params([rest]))
    for method, params in given.items():
        registry.explainer(method).resolve_params(params)
    return given


def _check_benchmark(args: argparse.Namespace, registry, metrics: list[str],
                     metric_params: dict[str, dict[str, str]]) -> None:
    """What a benchmark run would otherwise find wrong in every sample's row, after the model loaded."""
    if args.prompt is not None:
        common.check_prompt(args.prompt)
    common.check_at_least("--n", args.n)
    common.check_at_least("--max-new-tokens", args.max_new_tokens)
    common.check_at_least("--examples", args.examples, 0)
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
