"""``lvlm-studio sae hooks|train|crosscoder|eval|inspect|dashboard``: sparse coders from the command line.

    lvlm-studio sae hooks                                         the model's hook-point names
    lvlm-studio sae train --hook blocks.1.hook_resid_post --out my-sae      (demo scenes by default)
    lvlm-studio sae eval --sae my-sae --out eval/                 L0, EV, cosine, KL, density, CE recovered
    lvlm-studio sae inspect --sae my-sae --image IMG --patch 3,4 --feature 17 --folder imgs/ --out insp/
    lvlm-studio sae dashboard my-sae --demo 200 --out dash/ --features 3,17 --export neuronpedia
    lvlm-studio sae crosscoder --model-a BASE --model-b FINETUNE --hook blocks.1.hook_resid_post --out cc/

Each command writes Markdown tables and PNGs into ``--out``; training writes a SAELens folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from lvlm_studio.cli import common
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import (
    atomic_path,
    check_output_file,
    check_output_folder,
    staged_folder,
    write_record,
    write_text,
)
from lvlm_studio.core.io.images import open_image


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``sae`` and its subcommands to the main parser."""

    sae = sub.add_parser("sae", help="sparse autoencoders, transcoders and crosscoders on hook points")
    sae_sub = sae.add_subparsers(dest="sae_command", metavar="WHAT", required=True)

    listing = sae_sub.add_parser("hooks", help="list the model's hook points")
    common.add_model_options(listing)
    listing.set_defaults(func=cmd_hooks)

    train = sae_sub.add_parser("train", help="train a sparse coder on streamed activations; save it (SAELens)")
    common.add_model_options(train)
    train.add_argument("--hook", required=True, help="hook point, e.g. blocks.1.hook_resid_post (see `sae hooks`)")
    train.add_argument("--kind", default="sae", choices=["sae", "transcoder", "crosscoder"])
    train.add_argument("--hook-out", default="", help="transcoder: the hook point it predicts")
    train.add_argument("--hooks", default="", help="crosscoder: comma-separated hook points (the first is --hook)")
    train.add_argument("--skip", action="store_true", help="transcoder: add a linear skip path")
    train.add_argument("--architecture", default="standard",
                       choices=["standard", "topk", "jumprelu", "gated", "batchtopk", "matryoshka_batchtopk"],
                       help="standard (ReLU + L1), topk, jumprelu, gated (with its auxiliary gate loss), batchtopk "
                            "(k per token on average over a batch; saved with one threshold), matryoshka_batchtopk "
                            "(needs --nested)")
    train.add_argument("--expansion", type=int, default=4, help="features per input dimension (default 4)")
    train.add_argument("--k", type=int, default=16,
                       help="TopK: active features per token; BatchTopK: per token on average (default 16)")
    train.add_argument("--nested", default="", metavar="M1,M2,...",
                       help="Matryoshka: the first M1, M2, ... features must also reconstruct on their own "
                            "(general concepts first), e.g. 8,32,128")
    train.add_argument("--coefficient", type=float, default=None,
                       help="sparsity coefficient (default: 0.15 for standard, 0.003 for jumprelu)")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--lr-warmup-steps", type=int, default=0,
                       help="learning rate rises linearly from lr/N to lr over the first N steps")
    train.add_argument("--lr-decay-steps", type=int, default=0,
                       help="learning rate falls linearly to 0 over the last N steps")
    train.add_argument("--l1-warmup-steps", type=int, default=0,
                       help="sparsity coefficient rises linearly from 0 over the first N steps")
    train.add_argument("--clip-grad-norm", type=float, default=0.0,
                       help="clip the gradient's global norm to this (SAELens uses 1.0; default 0: off)")
    train.add_argument("--b-dec-init", default="mean", choices=["mean", "geometric_median"],
                       help="where the decoder bias starts (default mean)")
    train.add_argument("--aux-k-coefficient", type=float, default=1 / 32,
                       help="TopK/BatchTopK: weight of the auxiliary-k loss that revives dead features "
                            "(default 1/32; 0: off)")
    train.add_argument("--batch-tokens", type=int, default=256)
    train.add_argument("--data", default="demo", help="'demo' (generated scenes) or a folder of images")
    train.add_argument("--count", type=int, default=2000, help="images (or, for text, examples) to read")
    train.add_argument("--tokens", default=None, choices=["patch", "cls", "all", "text"],
                       help="which tokens to read (default: patch; text for language hook points)")
    train.add_argument("--seed", type=common.seed, default=0)
    train.add_argument("--checkpoint", help="folder for checkpoints (saved every 200 steps and on Ctrl-C)")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    train.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="weights' type on disk (float16 halves the file)")
    train.add_argument("--out", required=True, help="output folder (SAELens format + training.json + curve PNG)")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier output folder")
    train.set_defaults(func=cmd_train)

    cross = sae_sub.add_parser("crosscoder", help="one dictionary over two models' activations at one hook point; "
                                                   "per feature, which model it writes to (model diffing)")
    common.add_model_options(cross)
    cross.add_argument("--model-a", required=True, help="first model folder (e.g. the base model; 'demo' for the "
                                                        "embedded demo model)")
    cross.add_argument("--model-b", required=True, help="second model folder, same architecture (e.g. its fine-tune)")
    cross.add_argument("--hook", default="blocks.1.hook_resid_post", help="hook point read in both models")
    cross.add_argument("--architecture", default="standard", choices=["standard", "topk", "batchtopk"])
    cross.add_argument("--expansion", type=int, default=4, help="features per input dimension (default 4)")
    cross.add_argument("--k", type=int, default=16, help="topk/batchtopk: features per token (default 16)")
    cross.add_argument("--coefficient", type=float, default=1.0,
                       help="L1 coefficient on f·(‖d_A‖ + ‖d_B‖) (standard; default 1.0)")
    cross.add_argument("--lr", type=float, default=1e-3)
    cross.add_argument("--batch-tokens", type=int, default=256)
    cross.add_argument("--data", default="demo", help="'demo' (generated scenes) or a folder of images")
    cross.add_argument("--count", type=int, default=1000, help="images to read (default 1000)")
    cross.add_argument("--tokens", default="patch", choices=["patch", "cls", "all"])
    cross.add_argument("--eval-count", type=int, default=100,
                       help="held-out demo scenes (or the folder's first images) for the firing rates (default 100)")
    cross.add_argument("--seed", type=common.seed, default=0)
    cross.add_argument("--out", required=True,
                       help="output folder: the crosscoder (cfg.json + sae_weights.safetensors), crosscoder.md, "
                            "crosscoder.json")
    cross.add_argument("--overwrite", action="store_true", help="replace an earlier output folder")
    cross.set_defaults(func=cmd_crosscoder)

    evaluate = sae_sub.add_parser("eval", help="L0, explained variance (patch, CLS), cosine, L2 ratio, KL divergence, "
                                               "feature density, dead/dense features, CE recovered (+ demo checks)")
    common.add_model_options(evaluate)
    evaluate.add_argument("--sae", action="append", default=[],
                          help="coder folder (repeatable, side by side; default: the shipped demo SAEs)")
    evaluate.add_argument("--data", default="demo", help="'demo' (held-out scenes) or a folder of images")
    evaluate.add_argument("--n", type=int, default=100, help="examples (default 100)")
    evaluate.add_argument("--prompt", default="describe the image.", help="prompt for folder images")
    evaluate.add_argument("--concepts", action="store_true", help="demo: AUROC of the best feature per colour/shape")
    evaluate.add_argument("--ablate", default="", metavar="WORD",
                          help="demo: ablate the best feature for this colour (e.g. red) and count changed answers")
    evaluate.add_argument("--ablate-feature", type=int, action="append", default=[], metavar="N",
                          help="with --ablate: edit this feature instead of the best one for the colour "
                               "(repeatable: all of them at once)")
    evaluate.add_argument("--factor", type=float, default=0.0,
                          help="with --ablate: scale the feature by this (0 ablates, -10 pushes against it)")
    evaluate.add_argument("--baseline", action="store_true",
                          help="also evaluate a random TopK SAE (k=16) of each coder's shape, side by side")
    evaluate.add_argument("--out", help="write eval.md, eval.json and density.png into this folder")
    evaluate.add_argument("--plot", help="write the feature-density histogram to this PNG file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier output folder")
    evaluate.set_defaults(func=cmd_eval)

    inspect = sae_sub.add_parser("inspect", help="top features of a patch, feature maps, top patches, attribution")
    common.add_model_options(inspect)
    inspect.add_argument("--sae", help="coder folder (default: the shipped demo SAE)")
    inspect.add_argument("--image", required=True)
    inspect.add_argument("--prompt", default="describe the image.")
    inspect.add_argument("--patch", help="ROW,COL of the selected patch (default: the most active patch)")
    inspect.add_argument("--feature", type=int, action="append", default=[],
                         help="feature to map (repeatable; default: the patch's top 3)")
    inspect.add_argument("--folder", help="folder of images for each feature's top-activating patches")
    inspect.add_argument("--token", type=int, help="answer token for feature attribution (default: none)")
    inspect.add_argument("--scale", action="append", default=[], metavar="FEATURE=FACTOR",
                         help="re-answer with a feature scaled (0 ablates; repeatable)")
    inspect.add_argument("--tokens", default=None, choices=["patch", "cls", "all"],
                         help="tokens the coder is applied at (default: those it was trained on; a coder trained "
                              "on all, as SAELens and ViT-Prisma coders are, may be applied at patch or cls only); "
                              "maps, top patches and attribution read the patches, --scale edits these tokens")
    inspect.add_argument("--out", required=True, help="output folder (inspect.md and PNGs)")
    inspect.add_argument("--overwrite", action="store_true", help="replace an earlier output folder")
    inspect.set_defaults(func=cmd_inspect)

    dash = sae_sub.add_parser("dashboard", help="one pass over images caches every feature's top patches, activation "
                                                "histogram, density and logit attribution; contact sheets, export")
    dash.add_argument("sae", nargs="?", default="", help="coder folder (default: the shipped demo SAE)")
    common.add_model_options(dash)
    source = dash.add_mutually_exclusive_group()
    source.add_argument("--images", help="folder of images to read (default: held-out demo scenes)")
    source.add_argument("--demo", type=int, default=None, metavar="N",
                        help="read the first N held-out demo scenes, as the benchmark does (default 200)")
    dash.add_argument("--limit", type=int, default=None, help="with --images: read only the first N images")
    dash.add_argument("--top-k", type=int, default=16, help="top-activating patches kept per feature (default 16)")
    dash.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    dash.add_argument("--prompt", default="describe the image.", help="prompt the images are read with")
    dash.add_argument("--features", default="", metavar="LIST",
                      help="features to draw contact sheets for, e.g. 3,17,40-43 (default: the 8 strongest)")
    dash.add_argument("--export", choices=["neuronpedia"], help="also write the sae-dashboard / Neuronpedia JSON "
                                                                "batches into OUT/neuronpedia")
    dash.add_argument("--out", required=True, help="output folder: cache/ (reused when the coder file, images and "
                                                   "model match), features/*.png, neuronpedia/")
    dash.add_argument("--overwrite", action="store_true", help="replace an earlier output folder that holds "
                                                               "another dashboard")
    dash.set_defaults(func=cmd_dashboard)


# -- commands ------------------------------------------------------------------------------------------
def cmd_hooks(args: argparse.Namespace) -> int:
    from lvlm_studio.core.models.hooks import hook_points

    loaded, _ = common.load(args)
    for name, point in hook_points(loaded).items():
        print(f"{name:<36} {point.part:<10} {type(point.module).__name__} {point.where}")
    return 0


def _sizes(text: str) -> tuple[int, ...]:
    """"8,32,128" -> (8, 32, 128), increasing; an empty string gives ()."""
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--nested {text!r} is not a list of whole numbers.", "Example: --nested 8,32,128.") from None
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or any(m < 1 for m in sizes):
        raise InputError(f"--nested {text!r} must be increasing positive sizes.", "Example: --nested 8,32,128.")
    return sizes


def _check_data(data: str) -> None:
    if data != "demo" and not Path(data).is_dir():
        raise InputError(f"--data {data} is not a folder of images.", "Give a folder, or 'demo' for generated scenes.")


def cmd_train(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.sae.formats import save_saelens
    from lvlm_studio.sae.training import TrainSettings, train_coder

    if args.resume and not args.checkpoint:
        raise InputError("--resume needs --checkpoint FOLDER.", "Give the folder the first run checkpointed to.")
    for option in ("expansion", "k", "batch_tokens", "count"):
        common.check_at_least(f"--{option.replace('_', '-')}", getattr(args, option))
    common.check_number("--lr", args.lr, "1e-3", minimum=0, above=True)
    common.check_number("--coefficient", args.coefficient, "0.15", minimum=0)
    for option, example in (("clip_grad_norm", "1.0"), ("aux_k_coefficient", "0.03125")):
        common.check_number(f"--{option.replace('_', '-')}", getattr(args, option), example, minimum=0)
    for option in ("lr_warmup_steps", "lr_decay_steps", "l1_warmup_steps"):
        common.check_number(f"--{option.replace('_', '-')}", getattr(args, option), "100", minimum=0)
    nested = _sizes(args.nested)
    if args.architecture == "matryoshka_batchtopk" and not nested:
        raise InputError("--architecture matryoshka_batchtopk needs the nested prefix sizes.",
                         "Add --nested, e.g. 8,32,128.")
    _check_data(args.data)
    out = check_output_folder(args.out, args.overwrite)  # before loading: a refusal should cost nothing
    loaded, _ = common.load(args)
    from lvlm_studio.core.models.hooks import hook_points

    points = hook_points(loaded)
    tokens = args.tokens or ("text" if args.hook in points and points[args.hook].part == "language" else "patch")
    coefficient = args.coefficient if args.coefficient is not None else {"jumprelu": 3e-3}.get(args.architecture, 0.15)
    hook_names = tuple(h.strip() for h in args.hooks.split(",") if h.strip())
    if args.kind == "crosscoder" and hook_names and hook_names[0] != args.hook:
        hook_names = (args.hook, *hook_names)
    settings = TrainSettings(hook_name=args.hook, architecture=args.architecture, kind=args.kind,
                             expansion=args.expansion, k=args.k, nested=nested,
                             coefficient=coefficient, lr=args.lr,
                             batch_tokens=args.batch_tokens, data=args.data, count=args.count, tokens=tokens,
                             hook_name_out=args.hook_out, hook_names=hook_names, skip=args.skip, seed=args.seed,
                             lr_warmup_steps=args.lr_warmup_steps, lr_decay_steps=args.lr_decay_steps,
                             l1_warmup_steps=args.l1_warmup_steps, clip_grad_norm=args.clip_grad_norm,
                             b_dec_init=args.b_dec_init, aux_k_coefficient=args.aux_k_coefficient)
    with common.progress_bar(f"training {args.kind} at {args.hook}") as on_progress:
        result = run_job(train_coder(loaded, settings, args.checkpoint, args.resume), on_progress)
    last = result.history[-1] if result.history else {}
    record = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
              "tokens_seen": result.tokens_seen, "seconds": round(result.seconds, 2),
              "activation_seconds": round(result.activation_seconds, 2),
              "training_tokens_per_second": round(result.tokens_per_second, 1), "last": last,
              "history": result.history}
    with staged_folder(out, args.overwrite) as folder:
        save_saelens(result.coder, folder, args.save_dtype)
        (folder / "training.json").write_text(json.dumps(record, indent=1))
        _curve(result.history, folder / "training_curve.png")
        _mark(folder)
    common.status(f"{result.tokens_seen} tokens in {result.seconds:.0f} s")
    print(f"saved to {out}: explained variance {last.get('explained_variance', float('nan')):.3f}, "
          f"L0 {last.get('l0', float('nan')):.1f}, dead {last.get('dead', 0)} (last training batch)")
    return 0


def cmd_crosscoder(args: argparse.Namespace) -> int:
    import torch

    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.sae.activations import image_batch_rows
    from lvlm_studio.sae.crosscoder import crosscoder_report, format_report
    from lvlm_studio.sae.formats import save_saelens
    from lvlm_studio.sae.training import TrainSettings, train_coder

    if args.model:
        raise InputError("sae crosscoder reads two models: --model-a and --model-b, not --model.",
                         "Drop --model.")
    for option in ("expansion", "k", "batch_tokens", "count", "eval_count"):
        common.check_at_least(f"--{option.replace('_', '-')}", getattr(args, option))
    common.check_number("--lr", args.lr, "1e-3", minimum=0, above=True)
    common.check_number("--coefficient", args.coefficient, "1.0", minimum=0)
    _check_data(args.data)
    out = check_output_folder(args.out, args.overwrite)  # before loading: a refusal should cost nothing
    models = []
    for path in (args.model_a, args.model_b):
        args.model = None if path == "demo" else path
        models.append(common.load(args)[0])
    args.model = None
    settings = TrainSettings(hook_name=args.hook, architecture=args.architecture, kind="crosscoder",
                             expansion=args.expansion, k=args.k, coefficient=args.coefficient, lr=args.lr,
                             batch_tokens=args.batch_tokens, data=args.data, count=args.count, tokens=args.tokens,
                             seed=args.seed)
    with common.progress_bar(f"training a crosscoder at {args.hook} over two models") as on_progress:
        result = run_job(train_coder(models[0], settings, twin=models[1]), on_progress)
    images = _crosscoder_images(args)
    rows = torch.stack([image_batch_rows(model, [args.hook], images, args.tokens)[0] for model in models], dim=1)
    names = [Path(p).name if p != "demo" else "demo-model" for p in (args.model_a, args.model_b)]
    report = crosscoder_report(result.coder, rows, *names)
    last = result.history[-1] if result.history else {}
    text = format_report(report) + (
        f"\nTrained on {result.tokens_seen} tokens ({args.count} images, {args.tokens} tokens) in "
        f"{result.seconds:.0f} s: explained variance {last.get('explained_variance', float('nan')):.3f}, "
        f"L0 {last.get('l0', float('nan')):.1f} (last batch); firing rates on {len(images)} held-out images.\n")
    with staged_folder(out, args.overwrite) as folder:
        save_saelens(result.coder, folder)
        (folder / "crosscoder.md").write_text(text)
        (folder / "crosscoder.json").write_text(json.dumps({**report.to_dict(), "training": last}, indent=1))
        _mark(folder)
    print(text, end="")
    return 0


def _crosscoder_images(args: argparse.Namespace) -> list:
    """Images the crosscoder was not trained on: held-out demo scenes, or a folder's first images."""
    if args.data == "demo":
        from lvlm_studio.demo.evaluate import heldout_examples

        return [scene.image for scene, _ in heldout_examples(args.eval_count, "caption")]
    from lvlm_studio.sae.activations import folder_images, open_images

    return list(open_images(folder_images(args.data)[: args.eval_count]))


def _curve(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    tokens = [h["tokens"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(10, 3))
    for axis, key in zip(axes, ("explained_variance", "l0", "dead")):
        axis.plot(tokens, [h[key] for h in history])
        axis.set_title(key.replace("_", " "))
        axis.set_xlabel("tokens")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _coders(paths: list[str]) -> list[tuple[str, Any]]:
    from lvlm_studio.sae.formats import load_coder
    from lvlm_studio.sae.shipped import shipped_coders

    if not paths:
        paths = [str(p) for p in shipped_coders()]
        if not paths:
            raise InputError("no --sae given and no demo SAE is shipped.", "Train one with `lvlm-studio sae train`.")
    return [(Path(p).name, load_coder(p)) for p in paths]


def _examples(args: argparse.Namespace, language: bool):
    """(image, prompt, answer) to evaluate on: held-out demo examples, or folder images with the
    model's own answers."""
    if args.data == "demo":
        from lvlm_studio.demo.evaluate import heldout_examples
        from lvlm_studio.demo.scenes import TASKS

        per_task = max(1, args.n // len(TASKS)) if language else args.n
        tasks = TASKS if language else ("caption",)
        return [(scene.image, ex.prompt, ex.answer) for task in tasks for scene, ex in heldout_examples(per_task, task)]
    from lvlm_studio.sae.activations import folder_images, open_images

    files = folder_images(args.data)[: args.n]
    return [(image, args.prompt, None) for image in open_images(files)]


def cmd_eval(args: argparse.Namespace) -> int:
    from lvlm_studio.core.models.hooks import hook_points
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.demo.scenes import COLOURS
    from lvlm_studio.sae.evaluate import evaluate_coder, format_evaluations, plot_density, random_topk_like
    from lvlm_studio.sae.splice import splice_points

    out = check_output_folder(args.out, args.overwrite) if args.out else None
    plot = check_output_file(args.plot) if args.plot else None
    common.check_at_least("--n", args.n)
    common.check_number("--factor", args.factor, "0")
    common.check_prompt(args.prompt)
    _check_data(args.data)
    if (args.concepts or args.ablate) and args.data != "demo":
        raise InputError("--concepts and --ablate need the demo model and its scenes.", "Drop --model and --data.")
    if args.ablate_feature and not args.ablate:
        raise InputError("--ablate-feature says which features --ablate edits.",
                         "Add --ablate red (or another colour).")
    if args.ablate and args.ablate not in COLOURS:
        raise InputError(f"--ablate {args.ablate!r} is not a demo colour.", f"Try {', '.join(COLOURS)}.")
    coders = _coders(args.sae)
    if args.baseline:
        if any(coder.cfg.kind == "crosscoder" for _, coder in coders):
            raise InputError("--baseline builds a random SAE or transcoder; crosscoders have no random twin yet.",
                             "Drop --baseline, or evaluate SAEs and transcoders only.")
        coders += [(f"random TopK ({name})", random_topk_like(coder)) for name, coder in coders]
    loaded, _ = common.load(args)
    points = hook_points(loaded)
    results, report = [], {}
    for name, coder in coders:
        if coder.cfg.hook_name not in points:
            raise InputError(f"{name} reads {coder.cfg.hook_name!r}, which this model does not have.",
                             "Evaluate a coder on the model it was trained for.")
        splice_points(loaded, coder)  # a transcoder's output must be a hook point too
        examples = _examples(args, points[coder.cfg.hook_name].part == "language")
        with common.progress_bar(f"evaluating {name}") as on_progress:
            evaluation = run_job(evaluate_coder(loaded, coder, examples, len(examples)), on_progress)
        results.append((name, evaluation))
        report[name] = evaluation.to_dict()
    text = format_evaluations(results)
    for name, coder in coders:
        if args.concepts or args.ablate:
            text += "\n" + _demo_checks(args, loaded, name, coder, report)
    print(text, end="")
    if plot is not None:
        plot_density(results, plot)
    if out is not None:
        with staged_folder(out, args.overwrite) as folder:
            (folder / "eval.md").write_text(text)
            (folder / "eval.json").write_text(json.dumps(report, indent=1))
            plot_density(results, folder / "density.png")
            _mark(folder)
    return 0


def _demo_checks(args, loaded, name: str, coder, report: dict) -> str:
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.sae.demo import ablation_test, concept_table, format_concept_table

    if args.data != "demo" or loaded.source != "demo" and "demo-model" not in str(loaded.source):
        raise InputError("--concepts and --ablate need the demo model and its scenes.", "Drop --model and --data.")
    if hook_part(loaded, coder) not in ("vision", "projector") or coder.cfg.tokens not in ("patch", "all"):
        return (f"{name}: --concepts and --ablate read image patches; this coder is at {coder.cfg.hook_name} "
                f"({coder.cfg.tokens} tokens), so they were skipped.\n")
    with common.progress_bar(f"concepts of {name}") as on_progress:
        rows = run_job(concept_table(loaded, coder), on_progress)
    text = format_concept_table(rows, coder)
    report[name]["concepts"] = [vars(r) for r in rows]
    if args.ablate:
        chosen = [r for r in rows if r.word == args.ablate]
        if not chosen:
            raise InputError(f"--ablate {args.ablate!r} is not a demo colour.", "Try red, green, blue or yellow.")
        edited = args.ablate_feature or [chosen[0].feature]
        if any(not 0 <= f < coder.cfg.d_sae for f in edited):
            raise InputError(f"--ablate-feature {edited}: {name} has features 0 to {coder.cfg.d_sae - 1}.",
                             "Pick features from the concept table.")
        feature = edited[0] if len(edited) == 1 else edited
        which = f"best '{args.ablate}'" if not args.ablate_feature else "chosen"
        with common.progress_bar(f"ablating feature {feature}") as on_progress:
            result = run_job(ablation_test(loaded, coder, dict.fromkeys(edited, args.factor), args.ablate, n=args.n),
                             on_progress)
        text += (f"\nScaling feature {feature} ({which}) by {args.factor:g} at {coder.cfg.hook_name} "
                 f"changed the answer to 'what color is the ...?' about a {args.ablate} object in "
                 f"{result.changed}/{result.scenes} held-out scenes ({result.fraction:.0%}); p(colour word) "
                 f"{result.p_before:.4f} -> {result.p_after:.4f}.\n")
        for seed, prompt, before, after in result.examples:
            text += f"  scene {seed}: {prompt!r}: {before!r} -> {after!r}\n"
        report[name]["ablation"] = {"feature": feature, "factor": args.factor, "changed": result.changed,
                                    "scenes": result.scenes, "p_before": result.p_before, "p_after": result.p_after}
    return text


def hook_part(loaded, coder) -> str:
    from lvlm_studio.core.models.hooks import hook_points

    return hook_points(loaded)[coder.cfg.hook_name].part


def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.sae.formats import load_coder
    from lvlm_studio.sae.inspect import (
        cls_features,
        edited_answer,
        feature_attribution,
        feature_map,
        image_features,
        scoped,
        top_features,
        top_patches,
    )
    from lvlm_studio.sae.render import dashboard, map_overlay
    from lvlm_studio.sae.shipped import demo_sae_path
    from lvlm_studio.sae.splice import splice_points

    image = open_image(args.image)
    common.check_prompt(args.prompt)
    patch = _patch(args.patch)
    scales = _parse_scales(args.scale)
    if any(f < 0 for f in args.feature) or (args.token is not None and args.token < 0):
        raise InputError("--feature and --token count from 0.", "Example: --feature 17 --token 0.")
    if args.folder:
        from lvlm_studio.sae.activations import folder_images

        paths = folder_images(args.folder)
    out = check_output_folder(args.out, args.overwrite)  # before loading: a refusal should cost nothing
    coder = load_coder(args.sae or demo_sae_path())
    tokens = scoped(coder, args.tokens).cfg.tokens  # a scope the coder was not trained on is refused here
    if tokens == "cls" and (patch or args.folder or args.feature or args.token is not None):
        raise InputError("--patch, --feature (maps), --folder and --token read the image's patches; --tokens cls "
                         "reads the class token.",
                         "Drop them, or use --tokens patch or all with a coder trained on patches.")
    loaded, _ = common.load(args)
    if scales:
        splice_points(loaded, coder)  # a transcoder's edits land at its output hook point, which must exist
    if tokens == "cls":
        values = cls_features(loaded, coder, image, args.prompt)
        order = np.argsort(-values, kind="stable")[:10]
        top = [(int(i), float(values[i])) for i in order if values[i] > 0]
        lines = [f"# Features of the class token of {args.image}"]
    else:
        features = image_features(loaded, coder, image, args.prompt)
        if patch:
            row, col = patch
        else:
            row, col = np.unravel_index(int(features.sum(axis=-1).argmax()), features.shape[:2])
        top = top_features(features, int(row), int(col), k=10)
        lines = [f"# Features at patch ({row}, {col}) of {args.image}"]
    at = coder.cfg.hook_name + (f" (predicting {coder.cfg.hook_name_out})" if coder.cfg.kind == "transcoder" else "")
    lines += ["", f"Coder at {at}, trained on {coder.cfg.tokens} tokens, applied at {tokens}.",
              "", "| feature | activation |", "|---:|---:|"]
    lines += [f"| {f} | {v:.3f} |" for f, v in top]
    chosen = [] if tokens == "cls" else args.feature or [f for f, _ in top[:3]]
    with staged_folder(out, args.overwrite) as folder:  # written beside --out, moved into place at the end
        files = []
        for feature in chosen:
            name = f"feature{feature:05d}_map.png"
            map_overlay(image, feature_map(features, feature), f"feature {feature}").save(folder / name)
            files.append(name)
            if args.folder:
                with common.progress_bar(f"top patches of feature {feature}") as on_progress:
                    hits = run_job(top_patches(loaded, coder, paths, feature), on_progress)
                name = f"feature{feature:05d}_top_patches.png"
                dashboard(hits, features.shape[:2], f"feature {feature}: top patches").save(folder / name)
                files.append(name)
        if args.token is not None:
            from lvlm_studio.core.tracing.trace import generate_trace

            trace = generate_trace(loaded, image, args.prompt)
            attribution = feature_attribution(loaded, coder, trace, args.token)
            totals = attribution.sum(axis=(0, 1))
            order = np.argsort(-np.abs(totals))[:10]
            lines += ["", f"# Attribution to answer token {args.token} ({trace.answer_tokens[args.token]!r}) "
                      f"of {trace.answer_text!r}", "", "| feature | activation x gradient |", "|---:|---:|"]
            lines += [f"| {int(f)} | {totals[f]:+.4f} |" for f in order]
        if args.scale:
            from lvlm_studio.core.tracing.trace import generate_trace

            before = generate_trace(loaded, image, args.prompt).answer_text
            after = edited_answer(loaded, coder, image, args.prompt, scales, tokens=tokens)
            lines += ["", "# Edited answer", "", f"scales {scales} at {tokens} tokens: {before!r} -> {after!r}"]
        text = "\n".join(lines) + "\n"
        (folder / "inspect.md").write_text(text)
        _mark(folder)
    print(text, end="")
    common.status(f"inspect.md and {len(files)} PNGs written to {out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.sae import dashboard as dash
    from lvlm_studio.sae.formats import load_coder
    from lvlm_studio.sae.inspect import scoped
    from lvlm_studio.sae.shipped import demo_sae_path

    common.check_at_least("--top-k", args.top_k)
    common.check_at_least("--batch", args.batch)
    common.check_prompt(args.prompt)
    if args.limit is not None:
        common.check_at_least("--limit", args.limit)
    if args.demo is not None:
        common.check_at_least("--demo", args.demo)
    images = dash.folder_image_set(args.images, args.limit) if args.images else dash.demo_image_set(args.demo or 200)
    sae_path = Path(args.sae) if args.sae else demo_sae_path()
    coder = load_coder(sae_path)
    scoped(coder, "patch")  # a coder without patch features is refused before anything is loaded
    features = dash.feature_list(args.features, coder.cfg.d_sae)
    key = dash.cache_key(coder, dash.coder_hash(sae_path), images,
                         dash.model_identity(args.model or DEMO_MODEL_DIR), args.top_k, args.prompt)
    out = Path(args.out).expanduser()
    cache = out / "cache"
    found = dash.load_cache(cache, key) if read_run_record_of(out) else None
    if found is None:
        check_output_folder(out, args.overwrite)  # before loading: a refusal should cost nothing
        loaded, _ = common.load(args)
        with common.progress_bar(f"dashboard of {sae_path.name} over {len(images.ids)} images") as on_progress:
            found = run_job(dash.build_dashboard(loaded, coder, images, key, args.top_k, args.batch, args.prompt),
                            on_progress)
        if out.exists() and args.overwrite:
            import shutil

            for old in ("cache", "features", "neuronpedia"):
                shutil.rmtree(out / old, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        dash.save_cache(found, cache)
        _mark(out)
    else:
        common.status(f"reusing the cache in {cache} (same coder file, images, model and settings)")
    chosen = features or dash.strongest_features(found, 8)
    sheets = out / "features"
    sheets.mkdir(exist_ok=True)
    for feature in chosen:
        with atomic_path(sheets / f"feature{feature:05d}.png") as temporary:
            dash.contact_sheet(found, feature).save(temporary)
    lines = [f"# Feature dashboard of {sae_path.name} at {coder.cfg.hook_name}", "",
             f"{len(found.image_ids)} images, {found.n_patches} patches; dead features: "
             f"{int((found.nonzero == 0).sum())} of {found.d_sae}.", "",
             "| feature | density | top activation | promotes | suppresses |", "|---:|---:|---:|---|---|"]
    for feature in chosen:
        pos, neg = found.logits(feature) if found.logit_pos_ids.shape[1] else ([], [])
        lines.append(f"| {feature} | {found.density[feature]:.4f} | {found.top_values[feature, 0]:.3f} | "
                     f"{' '.join(repr(s) for s, _ in pos[:5])} | {' '.join(repr(s) for s, _ in neg[:5])} |")
    text = "\n".join(lines) + "\n"
    write_text(out / "dashboard.md", text)
    if args.export == "neuronpedia":
        written = dash.write_neuronpedia(found, coder, out / "neuronpedia", model_id=Path(found.key["model"]).name,
                                         sae_set=sae_path.name, dataset=images.key.rsplit(":", 1)[0])
        common.status(f"{len(written)} Neuronpedia files written to {out / 'neuronpedia'}")
    print(text, end="")
    common.status(f"dashboard.md and {len(chosen)} contact sheets written to {out}")
    return 0


def read_run_record_of(folder: Path) -> bool:
    """Whether ``folder`` is an output folder LVLM Studio wrote (its cache may then be reused)."""
    from lvlm_studio.core.io.files import read_run_record

    return folder.is_dir() and read_run_record(folder) is not None


def _mark(folder: Path) -> None:
    """The run record that marks ``folder`` as ours (so that --overwrite may replace it)."""
    write_record(folder, {"command": ["lvlm-studio", *sys.argv[1:]]})


def _patch(text: str | None) -> tuple[int, int] | None:
    """``--patch ROW,COL`` (None: the most active patch)."""
    if not text:
        return None
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--patch {text!r} is not ROW,COL.", "Example: --patch 3,4.") from None
    return row, col


def _parse_scales(items: list[str]) -> dict[int, float]:
    scales = {}
    for item in items:
        feature, sep, factor = item.partition("=")
        try:
            scales[int(feature)] = float(factor) if sep else 0.0
        except ValueError:
            raise InputError(f"--scale {item!r} is not FEATURE=FACTOR.", "Example: --scale 17=0.") from None
    if not all(math.isfinite(factor) for factor in scales.values()):
        raise InputError(f"--scale {' '.join(items)}: a factor is not a finite number.", "Example: --scale 17=0.")
    return scales
