"""``lvlm-studio demo accuracy|pointing|causal|scene``: the embedded demo model and its synthetic scenes."""

from __future__ import annotations

import argparse
import sys

from lvlm_studio.cli import common
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import (
    atomic_path,
    check_output_file,
    write_text,
)

CUE_METHODS = ("raw_attention", "rollout", "relevancy", "grad_x_input", "gradcam", "tam")
WORLDS = ("classic", "open")  # lvlm_studio.demo.scenes.WORLDS, named here so that parsing imports no drawing code


def add_parsers(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the embedded demo model and its synthetic scenes")
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="WHAT", required=True)
    accuracy = demo_sub.add_parser("accuracy", help="exact-match accuracy per task on held-out scenes")
    common.add_model_options(accuracy)
    accuracy.add_argument("--n", type=int, default=500, help="held-out scenes per task (default 500)")
    accuracy.add_argument("--minimum", type=float, help="exit 1 when a task scores below this fraction")
    accuracy.add_argument("--set", choices=("generator", "outside", "both"), default="both",
                          help="held-out generator scenes, the out-of-generator set, or both (default)")
    accuracy.add_argument("--world", choices=WORLDS, default="classic",
                          help="the generator's world: classic (the shipped model's, default) or open")
    accuracy.add_argument("--by-size", type=int, metavar="N", default=0,
                          help="also N held-out caption scenes: objects named right by their size in the "
                               "model's square, and captions right by the number of objects")
    accuracy.set_defaults(func=cmd_demo_accuracy)
    cue = demo_sub.add_parser("cue", help="the shortcut twin's test: colour answers with the corner mark agreeing "
                                          "or contradicting the object")
    common.add_model_options(cue)
    cue.add_argument("--n", type=int, default=200, help="held-out scenes of each kind (default 200)")
    cue.add_argument("--maps", type=int, default=50,
                     help="contradicting scenes on which each method's map is checked: object or cue "
                          "(default 50; 0: none)")
    cue.add_argument("--methods", default=",".join(CUE_METHODS),
                     help="comma-separated method ids for the maps (default: the single-pass methods)")
    cue.add_argument("--world", choices=WORLDS, default="classic",
                     help="the world the twin was trained on: classic (default, the shipped twin's) or open")
    cue.set_defaults(func=cmd_demo_cue)
    pointing = demo_sub.add_parser("pointing", help="pointing game: does each method's map peak on the named object?")
    common.add_model_options(pointing)
    pointing.add_argument("--n", type=int, default=200, help="held-out scenes (default 200)")
    pointing.add_argument("--methods", help="comma-separated method ids (default: every method)")
    pointing.add_argument("--seed", type=common.seed, default=0, help="seed of the random baseline (default 0)")
    pointing.add_argument("--set", choices=("generator", "outside"), default="generator",
                          help="held-out generator scenes (default) or the out-of-generator set")
    pointing.add_argument("--world", choices=WORLDS, default="classic",
                          help="the generator's world: classic (default, the shipped model's) or open")
    pointing.add_argument("--tolerance", type=float, default=0.0,
                          help="grid cells around the object that still count as a hit (default 0: strict)")
    pointing.add_argument("--out", help="also write the table (Markdown) to this file")
    pointing.set_defaults(func=cmd_demo_pointing)
    causal = demo_sub.add_parser("causal", help="does each causal token subset matter more than a random one?")
    common.add_model_options(causal)
    causal.add_argument("--n", type=int, default=100, help="held-out scenes (default 100)")
    causal.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="parameter of the causal method (repeatable), e.g. --param radius=2")
    causal.set_defaults(func=cmd_demo_causal)
    scene = demo_sub.add_parser("scene", help="draw one synthetic scene to a PNG")
    scene.add_argument("--seed", type=common.seed, default=0)
    scene.add_argument("--world", choices=WORLDS, default="classic",
                       help="classic (the shipped model's world, default) or open (any size and background)")
    scene.add_argument("--out", default="scene.png")
    scene.set_defaults(func=cmd_demo_scene)


def cmd_demo_accuracy(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lvlm_studio.demo.evaluate import evaluate, evaluate_outside
    from lvlm_studio.demo.outside import load_scenes
    from lvlm_studio.demo.scenes import TASKS

    common.check_at_least("--n", args.n)
    common.check_at_least("--by-size", args.by_size, minimum=0)
    common.check_number("--minimum", args.minimum, "0.9", minimum=0, maximum=1)
    loaded, _ = common.load(args)
    columns: dict[str, dict[str, float]] = {}
    n_outside = len(load_scenes()) if args.set != "generator" else 0
    total = (args.n if args.set != "outside" else 0) + n_outside
    with tqdm(total=total * len(TASKS), desc="held-out answers", file=sys.stderr, leave=False) as bar:
        if args.set != "outside":
            columns[f"{args.world} ({args.n})"] = evaluate(loaded.model, loaded.processor, n=args.n,
                                                           on_batch=bar.update, world=args.world)
        if args.set != "generator":
            columns[f"outside ({n_outside})"] = evaluate_outside(loaded.model, loaded.processor,
                                                                 on_batch=bar.update)
    print(f"{'task':<10} " + "  ".join(f"{name:>16}" for name in columns))
    for task in TASKS:
        print(f"{task:<10} " + "  ".join(f"{column[task]:>16.1%}" for column in columns.values()))
    if args.by_size > 0:
        print_by_size(loaded, args.by_size, args.world)
    worst = min(v for column in columns.values() for v in column.values())
    if args.minimum is not None and worst < args.minimum:
        common.status(f"below the required {args.minimum:.0%} on at least one task")
        return 1
    return 0


def print_by_size(loaded, n: int, world: str) -> None:
    from tqdm import tqdm

    from lvlm_studio.demo.evaluate import objects_by_size

    with tqdm(total=n, desc="captions by object size", file=sys.stderr, leave=False) as bar:
        result = objects_by_size(loaded.model, loaded.processor, n=n, world=world, on_batch=bar.update)
    side = loaded.model.config.vision_config.image_size
    print(f"\ncaptions of {n} held-out {world} scenes; objects by size in the model's {side} px square")
    for table in ("objects", "captions"):
        for name, (right, asked) in result[table].items():
            print(f"{name:<14} {right:>5} of {asked:<5} {right / asked:>7.1%}")


def cmd_demo_cue(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lvlm_studio.demo.evaluate import evaluate_cue

    common.check_at_least("--n", args.n)
    common.check_at_least("--maps", args.maps, minimum=0)
    loaded, _ = common.load(args)
    with tqdm(total=2 * args.n, desc="colour answers", file=sys.stderr, leave=False) as bar:
        result = evaluate_cue(loaded.model, loaded.processor, n=args.n, on_batch=bar.update, world=args.world)
    print(f"colour questions, {args.n} held-out scenes of each kind")
    for name, value in result.items():
        print(f"{name:<16} {value:.1%}")
    if args.maps > 0:
        from lvlm_studio.core.plugin.jobs import run_job
        from lvlm_studio.core.plugin.registry import create_registry
        from lvlm_studio.demo.cue_check import cue_check, format_cue_check

        registry = create_registry()
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for method in methods:
            registry.explainer(method)  # an unknown method fails with the list of known ones
        with common.progress_bar("maps on cue scenes") as on_progress:
            check = run_job(cue_check(loaded, args.maps, methods, registry, world=args.world), on_progress)
        print()
        print(format_cue_check(check), end="")
    return 0


def cmd_demo_pointing(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry
    from lvlm_studio.demo.pointing import format_table, pointing_game

    if args.n < 1:
        raise InputError(f"--n {args.n} leaves nothing to play.", "Use at least 1 scene, e.g. --n 200.")
    common.check_number("--tolerance", args.tolerance, "0.5", minimum=0, maximum=8)
    registry = create_registry()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    for method in methods or []:
        registry.explainer(method)  # an unknown method fails before the model loads
    if args.out:
        check_output_file(args.out)
    loaded, _ = common.load(args)
    with common.progress_bar("pointing game") as on_progress:
        result = run_job(pointing_game(loaded, args.n, methods, registry, seed=args.seed,
                                         scene_set=args.set, tolerance=args.tolerance, world=args.world),
                         on_progress)
    table = format_table(result)
    print(table, end="")
    for method, error in result.failed.items():
        common.status(f"{method} failed and was skipped: {error}")
    if args.out:
        write_text(args.out, table)
        common.status(f"table written to {args.out}")
    return 0


def cmd_demo_causal(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry
    from lvlm_studio.demo.causal_check import causal_check, format_check

    if args.n < 1:
        raise InputError(f"--n {args.n} leaves nothing to check.", "Use at least 1 scene, e.g. --n 100.")
    params = common.parse_params(args.param)
    registry = create_registry()
    registry.explainer("causal").resolve_params(params)  # a typo fails before the model loads
    loaded, _ = common.load(args)
    with common.progress_bar("causal subsets") as on_progress:
        check = run_job(causal_check(loaded, args.n, registry, params=params), on_progress)
    print(format_check(check), end="")
    return 0


def cmd_demo_scene(args: argparse.Namespace) -> int:
    from lvlm_studio.demo.scenes import WORLDS

    out = check_output_file(args.out)
    scene = WORLDS[args.world](args.seed)
    with atomic_path(out) as temporary:
        scene.image.save(temporary)
    print(f"{args.out}: {scene.caption()}")
    return 0
