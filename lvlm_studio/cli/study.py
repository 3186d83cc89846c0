"""``lvlm-studio study``: run a study (an analysis plugin) over a dataset and models, resumably."""

from __future__ import annotations

import argparse
from functools import partial

from lvlm_studio.cli import common
from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.io.files import check_output_folder


def add_parsers(sub: argparse._SubParsersAction) -> None:
    study = sub.add_parser("study", help="a study over a dataset and models: tables, plots, run.json (resumable)",
                           description="Run a study: `lvlm-studio study --list` names them. The dataset is held-out "
                                       "demo scenes (default), a manifest (--manifest) or a COCO file (--images, "
                                       "--coco). docs/studies.md describes each study and the manifest format.")
    study.add_argument("name", nargs="?", help="the study's id (see --list)")
    study.add_argument("--list", action="store_true", help="list the studies and their parameters")
    common.add_model_options(study, repeat_model=True)  # a study may compare models
    study.add_argument("--n", type=int, default=20,
                       help="samples: demo scenes, images or manifest entries (default 20)")
    study.add_argument("--world", default="classic", help="demo world of the scenes (classic or open)")
    study.add_argument("--cue", default="none", help="demo scenes with the shortcut twin's corner mark: none, "
                                                     "contradict or agree (colour questions)")
    study.add_argument("--manifest", help="JSON or CSV manifest: images, questions, answers, object masks")
    study.add_argument("--images", help="folder of images (with --coco)")
    study.add_argument("--coco", help="COCO-format annotation file with the images' object masks")
    study.add_argument("--question", action="append", default=[], help="question for every COCO image (repeatable)")
    study.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="study parameter (repeatable); recorded in run.json")
    study.add_argument("--seed", type=common.seed, default=0, help="seed of bootstrap intervals (default 0)")
    study.add_argument("--out", help="output folder; rerun into it to resume (default: lvlm-studio-study-NAME)")
    common.add_ray_options(study)
    study.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry
    from lvlm_studio.studies.datasets import DatasetSettings
    from lvlm_studio.studies.report import write_report
    from lvlm_studio.studies.runner import RESULTS, StudySettings, model_labels, read_records, run_study

    registry = create_registry()
    if args.list:
        print(list_studies(registry), end="")
        return 0
    if not args.name:
        raise InputError("name the study to run.", "See `lvlm-studio study --list`.")
    study = registry.study(args.name)
    params = study.resolve_params(common.parse_params(args.param))
    folders = _model_folders(args)
    labels = model_labels(folders)
    dataset = DatasetSettings(n=args.n, world=args.world, cue=args.cue, manifest=args.manifest, images=args.images,
                              coco=args.coco, questions=list(args.question))
    dataset.check()
    for question in args.question:
        common.check_prompt(question)
    if len(folders) < study.min_models:
        raise InputError(f"study {study.id} compares models: it needs at least {study.min_models} --model.",
                         "Pass --model once per model folder.")
    settings = StudySettings(study.id, labels, params, dataset, args.seed)
    out = check_output_folder(args.out or f"lvlm-studio-study-{study.id}", resume=True)

    def loader(folder):
        return lambda: common.load(argparse.Namespace(**{**vars(args), "model": folder}))[0]

    models = {label: loader(folder) for label, folder in zip(labels, folders)}
    replicas = None  # --ray: per model, Ray replicas that each load it (started when its samples come up)
    if common.check_ray_options(args):
        replicas = {label: partial(common.replica_pool, args, folder) for label, folder in zip(labels, folders)}
    try:
        with common.progress_bar(study.id) as on_progress:
            records = run_job(run_study(study, models, settings, out, registry, replicas=replicas), on_progress)
    except (Cancelled, KeyboardInterrupt):
        common.status(f"interrupted; the finished samples ({len(read_records(out))}) are kept in {out / RESULTS}. "
                      "Run the same command again to resume.")
        return common.EXIT_CANCELLED
    heading = f"Dataset: {dataset.describe()}. Models: {', '.join(labels)}."
    print(write_report(out, study, records, params, heading), end="")
    common.status(f"summary.md, tables/, plots, report.json, {RESULTS} and run.json written to {out}")
    return 0


def _model_folders(args: argparse.Namespace) -> list[str | None]:
    given = args.model
    if given is None:
        return [None]
    return list(given) if isinstance(given, list) else [given]


def list_studies(registry) -> str:
    """Each study: id, title, description and parameters."""
    lines = []
    for study_id, study in sorted(registry.studies().items()):
        lines.append(f"{study_id}: {study.title}")
        if study.description:
            lines.append(f"    {study.description}")
        for param in study.params:
            lines.append(f"    --param {param.name}={param.default}  {param.help}")
    return "\n".join(lines) + "\n" if lines else "no study is installed\n"
