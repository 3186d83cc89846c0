"""The ``lvlm-studio`` command: the desktop app with no arguments, headless analyses with a subcommand.

    lvlm-studio                                     open the app (demo model unless --model)
    lvlm-studio --screenshot FILE.png               open the app, ask, save the window, quit (a check)
    lvlm-studio ask --image IMG --prompt TEXT       answer, with per-token probabilities
    lvlm-studio explain --method ID --image IMG --prompt TEXT --out DIR
    lvlm-studio attention gallery|patch-text|question-answer --image IMG --prompt TEXT --out FILE
                                                    attention views: per head, patches -> text, question -> answer
    lvlm-studio view influence|causal-graph|lens --image IMG --prompt TEXT --out FILE.json   a view's numbers
    lvlm-studio plugins                             list plugins, methods and their status
    lvlm-studio plugins --check [NAME]              run plugins' methods and metrics on every family, check results
    lvlm-studio new-plugin NAME [--panel]           write a ready plugin package (method, metric, tests, CI)
    lvlm-studio demo accuracy                       the demo model's held-out exact-match accuracy
    lvlm-studio demo pointing --n 200               pointing game of every method on held-out scenes
    lvlm-studio demo causal --n 100                 causal token subsets against random ones
    lvlm-studio demo scene --seed N --out FILE.png  draw a demo scene
    lvlm-studio sae train|eval|inspect|hooks        sparse autoencoders on the vision tower (see `sae -h`)
    lvlm-studio benchmark --methods tam,relevancy --n 100 --out DIR   grounded benchmark (resumable)
    lvlm-studio study --list | study NAME --model DIR [--model DIR] --n 20 --out DIR   a study (resumable)
    lvlm-studio review --cases MANIFEST --out DIR   assess a worklist: verdicts, case reports, pending audit records
    lvlm-studio audit verify LOG                    check an audit trail of clinical review (see `audit -h`)
    lvlm-studio dicom info FILE | dicom deidentify IN OUT   DICOM image information; a de-identified copy

Bad input ends with one line on stderr and a non-zero exit, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from lvlm_studio.cli import (
    attention,
    audit,
    benchmark,
    demo,
    dicom,
    explain,
    new_plugin,
    plugins,
    report,
    review,
    sae,
    study,
    views,
)
from lvlm_studio.cli.common import EXIT_BUG, EXIT_CANCELLED, EXIT_INPUT
from lvlm_studio.core.errors import Cancelled, InputError, LVLMError
from lvlm_studio.core.io.files import check_output_file

__all__ = ["EXIT_BUG", "EXIT_CANCELLED", "EXIT_INPUT", "build_parser", "main"]


def cmd_gui(args: argparse.Namespace) -> int:
    if args.screenshot is not None:  # refused before the window opens, not after the answer
        if not args.screenshot.lower().endswith(".png"):
            raise InputError(f"--screenshot {args.screenshot}: the window is saved as a PNG file.",
                             "Give a file name ending in .png.")
        check_output_file(args.screenshot)
    try:
        from lvlm_studio.gui.app import run
    except ImportError as exc:
        raise LVLMError(f"the desktop app needs Qt, which is not installed ({exc.name}).",
                        "Install it with: pip install 'lvlm-studio[gui]'. Every analysis also runs headless: "
                        "see `lvlm-studio --help`.") from None
    return run(model=args.model, image=args.image, prompt=args.prompt, screenshot=args.screenshot)


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
    parser.add_argument("--screenshot", metavar="FILE.png",
                        help="check the app: open it, ask the prompt, save the window to FILE.png and quit")
    parser.set_defaults(func=cmd_gui)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # the order of `lvlm-studio -h`
    for group in (explain, attention, views, plugins, new_plugin, sae, demo, benchmark, study, report, review,
                  audit, dicom):
        group.add_parsers(sub)
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
