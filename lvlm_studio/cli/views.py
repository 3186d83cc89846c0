"""``lvlm-studio view influence|causal-graph|lens``: the numbers behind the app's views, as a JSON file.

    lvlm-studio view influence --image IMG --prompt TEXT --out influence.json [--words]
    lvlm-studio view causal-graph --image IMG --prompt TEXT --out graph.json [--tokens 0,2]
    lvlm-studio view lens --image IMG --prompt TEXT --out lens.json [--tokens 1] [--patch 10] [--k 5]

``influence``: per answer token (or answer word, ``--words``) the image's share of its relevance
(relevancy) and each prompt word's share (``influence_shares``). ``causal-graph``: per chosen token,
the causal subset method's graph (union over heads), chosen subset and validation against random
subsets (``causal_graph``). ``lens``: per chosen token, the logit lens's top-k tokens per layer and
the answer token's probability, at the query that predicts it or at image token ``--patch``
(``lens_at``). Each file also names the model, prompt, answer and method parameters.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lvlm_studio.cli import common
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import check_output_file, write_text
from lvlm_studio.core.io.records import jsonable, package_version

VIEWS = ("influence", "causal-graph", "lens")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    view = sub.add_parser("view", help="the numbers behind a view (influence, causal-graph, lens) as a JSON file")
    view.add_argument("view", choices=VIEWS, help="which view")
    common.add_model_options(view)
    common.add_question_options(view)
    view.add_argument("--out", required=True, metavar="FILE.json", help="the JSON file to write")
    view.add_argument("--tokens", help="answer tokens, e.g. 0,2 (default: all)")
    view.add_argument("--words", action="store_true", help="influence: join the answer's sub-word tokens into words")
    view.add_argument("--patch", type=int, metavar="I", help="lens: read it at image token I instead of the answer")
    view.add_argument("--k", type=int, default=5, help="lens: most likely tokens per layer (default 5)")
    view.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="parameter of the method behind the view (relevancy, causal), repeatable")
    view.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.registry import create_registry

    image = common.check_question(args)
    if not args.out.lower().endswith(".json"):
        raise InputError(f"--out {args.out}: the view is written as a JSON file.", "Give a file name ending in .json.")
    check_output_file(args.out)
    common.token_numbers(args.tokens)
    if args.view == "lens":
        common.check_at_least("--k", args.k)
        if args.patch is not None:
            common.check_at_least("--patch", args.patch, 0)
    method = {"influence": "relevancy", "causal-graph": "causal"}.get(args.view)
    explainer = params = None
    if method is not None:
        explainer = create_registry().explainer(method)
        params = explainer.resolve_params(common.parse_params(args.param))
    elif args.param:
        raise InputError("the lens has no method parameters.", "Drop --param.")

    loaded, _ = common.load(args)
    trace = common.trace(args, loaded, image)
    targets = common.parse_tokens(args.tokens, len(trace.answer_ids))
    common.status(f"answer: {trace.answer_text}")
    record: dict[str, Any] = {"lvlm_studio": package_version("lvlm-studio"), "view": args.view,
                              "model": loaded.describe(), "prompt": trace.prompt, "answer": trace.answer_text,
                              "answer_tokens": trace.answer_tokens}
    if explainer is not None:
        from lvlm_studio.core.plugin.contracts import require_applicable
        from lvlm_studio.core.plugin.jobs import run_job

        require_applicable(explainer, loaded, params)
        with common.progress_bar(explainer.title) as on_progress:
            explanation = run_job(explainer.explain(trace, loaded, targets, params), on_progress)
        record["method"] = {"id": method, "params": jsonable(params)}
    if args.view == "influence":
        from lvlm_studio.core.metrics.modality import influence_shares

        record["influence"] = influence_shares(trace, explanation, loaded.processor.tokenizer, targets,
                                               answer_words=args.words).to_dict()
    elif args.view == "causal-graph":
        from lvlm_studio.core.metrics.causal_graph import causal_graph

        record["graphs"] = [causal_graph(trace, explanation, t).to_dict() for t in targets]
    else:
        from lvlm_studio.core.tracing.vision_entry import lens_at

        record["lens"] = [{"token": t, **lens_at(loaded, trace, t, k=args.k, patch=args.patch).to_dict()}
                          for t in targets]
    path = write_text(args.out, json.dumps(jsonable(record), indent=1, allow_nan=False) + "\n")
    print(f"{args.view} of {len(targets)} token{'s' if len(targets) != 1 else ''} written to {path}")
    return 0
