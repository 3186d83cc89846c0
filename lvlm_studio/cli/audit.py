"""``lvlm-studio audit``: check and read the audit trail of clinical review (docs/AUDIT.md).

    lvlm-studio audit verify LOG [--head HASH]   exit 0: "LOG: N records, chain intact"; exit 1: the first bad record
    lvlm-studio audit show LOG [--case ID]       the records as a table, then whether the chain is intact
    lvlm-studio audit recover LOG                move an incomplete last line (a crash while writing) aside

A missing or unreadable log is an input error (exit 2), like every other.
"""

from __future__ import annotations

import argparse
import sys

#: The log was read and does not verify (the records are not as they were written, or the last one is torn).
EXIT_NOT_INTACT = 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="verify or show an audit trail of clinical review",
                           description="Check and read the audit trail of clinical review (docs/AUDIT.md). "
                                       "verify exits 0 when the chain is intact, 1 naming the first bad record, "
                                       "2 when the log is missing or unreadable.")
    commands = audit.add_subparsers(dest="audit_command", metavar="WHAT", required=True)
    verify = commands.add_parser("verify", help="check that no record was edited, removed or reordered")
    verify.add_argument("log", help="the audit trail (.jsonl)")
    verify.add_argument("--head", help="a head hash printed by an earlier verify: the log must still contain "
                                       "that record (catches records cut off its end)")
    verify.set_defaults(func=cmd_verify)
    show = commands.add_parser("show", help="print the records as a table")
    show.add_argument("log", help="the audit trail (.jsonl)")
    show.add_argument("--case", help="only the records of this case id")
    show.set_defaults(func=cmd_show)
    recover = commands.add_parser("recover", help="move an incomplete last line (a crash while writing) aside")
    recover.add_argument("log", help="the audit trail (.jsonl)")
    recover.set_defaults(func=cmd_recover)


def cmd_verify(args: argparse.Namespace) -> int:
    from lvlm_studio.core.formats.audit import verify

    result = verify(args.log, head=args.head)
    print(f"{args.log}: {result.summary()}")
    if result.ok:
        print(f"head: {result.head}")  # to keep elsewhere: a later --head proves nothing was cut off the end
    return 0 if result.ok else EXIT_NOT_INTACT


def cmd_show(args: argparse.Namespace) -> int:
    from lvlm_studio.core.formats.audit import read_records, verify

    records = [r for r in read_records(args.log) if args.case is None or r.get("case") == args.case]
    columns = (("seq", 5), ("time", 24), ("reviewer", 16), ("case", 16), ("decision", 10), ("answer", 30),
               ("comment", 40))
    print("  ".join(f"{name:<{width}}" for name, width in columns).rstrip())
    for record in records:
        print("  ".join(f"{_cell(record.get(name), width):<{width}}" for name, width in columns).rstrip())
    result = verify(args.log)
    print(f"{args.log}: {result.summary()}", file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else EXIT_NOT_INTACT


def cmd_recover(args: argparse.Namespace) -> int:
    from lvlm_studio.core.formats.audit import recover

    result, kept = recover(args.log)
    if kept is not None:
        print(f"{args.log}: the incomplete last line was moved to {kept}")
    print(f"{args.log}: {result.summary()}")
    return 0 if result.ok else EXIT_NOT_INTACT


def _cell(value: object, width: int) -> str:
    """A table cell on one line, cut to ``width``."""
    text = " ".join(str("" if value is None else value).split())
    return text if len(text) <= width else text[:width - 1] + "\u2026"
