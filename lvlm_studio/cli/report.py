"""``lvlm-studio report``: the PDF report of a session saved in the app."""

from __future__ import annotations

import argparse

from lvlm_studio.cli import common
from lvlm_studio.core.io.files import (
    check_output_file,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="write the PDF report of a session saved by the app")
    report.add_argument("session", help="a .lvlm session file (File > Save session in the app)")
    report.add_argument("--out", default="report.pdf", help="the PDF to write (default: report.pdf)")
    report.add_argument("--tokens", help="answer tokens to show, e.g. 1,5 (default: selected and relevant ones)")
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from lvlm_studio.core.formats.report import write_report
    from lvlm_studio.core.formats.session import load_session

    common.token_numbers(args.tokens)
    check_output_file(args.out)
    session = load_session(args.session)
    count = len(session.trace.answer_tokens) if session.trace else 0
    tokens = common.parse_tokens(args.tokens, count) if args.tokens and session.trace else None
    print(write_report(session, args.out, tokens))
    return 0
