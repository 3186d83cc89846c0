"""``lvlm-studio new-plugin NAME [--panel]``: a ready plugin package to start from.

The package (``lvlm_studio/cli/plugin_template/``, files ending in ``.tmpl``) has a pyproject with the
``lvlm_studio.plugins`` entry point, an explanation method, a metric, optionally a panel, tests
written with the fixtures LVLM Studio installs for pytest, a README and a CI workflow; its tests
pass right after ``pip install -e '.[test]'``. In the templates ``__DIST__`` stands for the
distribution name, ``__PKG__`` for the import name; a line starting ``##panel:`` is kept (without
the marker) only with ``--panel``, one starting ``##nopanel:`` only without.
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path

from lvlm_studio.core.errors import InputError

TEMPLATE = Path(__file__).with_name("plugin_template")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("new-plugin", help="write a ready plugin package (method, metric, tests, CI) to start from",
                            description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="distribution name, e.g. lvlm-brightness (its import name: lvlm_brightness)")
    parser.add_argument("--panel", action="store_true", help="also a dockable panel for the app, and its test")
    parser.add_argument("--out", help="folder to create (default: ./NAME)")
    parser.set_defaults(func=cmd_new_plugin)


def cmd_new_plugin(args: argparse.Namespace) -> int:
    out = write_plugin(args.name, Path(args.out) if args.out else Path(args.name), panel=args.panel)
    package = import_name(args.name)
    print(f"wrote {out} (import name {package})")
    print(f"next: cd {out} && pip install -e '.[test]' && pytest")
    print(f"then: lvlm-studio plugins --check {package}")
    return 0


def import_name(name: str) -> str:
    """The package's import name for distribution ``name``; ``InputError`` for a name pip or Python
    would refuse."""
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(f"{name!r} is not a usable plugin name.",
                         "Use lower-case letters, digits and single - or _ between them, starting with a letter, "
                         "e.g. lvlm-brightness.")
    package = name.replace("-", "_")
    if keyword.iskeyword(package) or package in {"lvlm_studio", "lvlm_explainers", "lvlm_metrics", "lvlm_panels",
                                                  "lvlm_sae", "lvlm_studies", "test", "tests"}:
        raise InputError(f"{name!r} would be imported as {package!r}, a name already taken.",
                         "Choose another name, e.g. lvlm-brightness.")
    return package


def render(text: str, name: str, package: str, panel: bool) -> str:
    """One template file filled in for this plugin."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("##panel:"):
            if not panel:
                continue
            line = line[len("##panel:"):]
        elif line.startswith("##nopanel:"):
            if panel:
                continue
            line = line[len("##nopanel:"):]
        lines.append(line)
    return "".join(lines).replace("__DIST__", name).replace("__PKG__", package)


def template_files(panel: bool) -> list[tuple[Path, Path]]:
    """(template file, path in the new package) for every file the package gets."""
    files = []
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        relative = source.relative_to(TEMPLATE).with_suffix("")  # drops .tmpl
        if not panel and relative.name in {"panel.py", "test_panel.py"}:
            continue
        files.append((source, relative))
    return files


def write_plugin(name: str, out: Path, panel: bool = False) -> Path:
    """Write the package for plugin ``name`` into the new folder ``out`` (all files or none) and return it."""
    from lvlm_studio.core.io.files import staged_folder, write_text

    package = import_name(name)
    out = out.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists.", "Choose a new folder with --out, or remove that one.")
    with staged_folder(out) as staging:
        for source, relative in template_files(panel):
            parts = relative.parts
            if parts[:2] == ("src", "package"):  # the template's package folder takes the import name
                parts = ("src", package, *parts[2:])
            target = staging.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text(target, render(source.read_text(encoding="utf-8"), name, package, panel))
    return out
